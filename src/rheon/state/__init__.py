"""State layer: checkpoint storage (and, later, keyed-state backends)."""
