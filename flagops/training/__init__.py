"""Training recipes on the HF Trainer: BGE (embedder.py), BGE-M3 (m3.py) and what they share (common.py)."""
