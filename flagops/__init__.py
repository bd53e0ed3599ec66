"""flagops: an MLOps pipeline for BAAI FlagEmbedding / BGE retrieval models."""

__version__ = "0.1.0"
