"""Losses, one per file. Each module exposes a pure ``compute_loss_from_*`` function."""
