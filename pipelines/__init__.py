"""KFP pipelines built from components/ (see pipelines/retrain.py)."""
