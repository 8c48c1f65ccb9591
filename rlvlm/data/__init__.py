"""Dataset adapters and the embedded "shapes" benchmark."""
