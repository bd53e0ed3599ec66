"""Data: formats and validation, corpus builders, query synthesis."""
