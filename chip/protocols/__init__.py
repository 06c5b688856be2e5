"""Card protocols as sans-I/O flows and chip-side state machines (BAC, GlobalPlatform SCP03)."""
