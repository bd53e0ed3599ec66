"""The models: the embedder, BGE-M3 heads, the cross-encoder reranker, tiny test models, layout and device."""
