"""CDS Hooks 2.0 (docs/contracts.md §6): hook requests in, the engine's checks out as cards."""
