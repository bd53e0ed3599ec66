"""Hard-negative mining from a teacher's faiss search."""
