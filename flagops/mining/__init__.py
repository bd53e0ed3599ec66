"""Hard-negative mining from a teacher's faiss search, and teacher scores from a reranker."""
