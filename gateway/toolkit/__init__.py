"""The operator's toolkit: `explain` (what the gateway would make of a message, stored
nowhere), `replay` (stored HL7 messages again, under the current configuration), `demo`, and the
progress bars of long commands."""
