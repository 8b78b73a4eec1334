"""Pure planning: desired state in, the flows that should exist out. No I/O here."""
