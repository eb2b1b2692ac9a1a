"""CDS Hooks 2.0: discovery, services, feedback, and who may call them."""
