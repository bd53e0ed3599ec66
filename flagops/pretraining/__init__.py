"""Pretraining recipes that prepare a base encoder before contrastive fine-tuning (RetroMAE)."""
