"""Long-context extension of a Llama-architecture decoder (issue 14, docs/long-context.md).

``needle``: synthetic samples (needle facts at known depths in long concatenations of corpus
passages, plus plain short text); ``base``: the tiny base LM trained from scratch at a short
context (no pretrained causal LM is available offline); ``extend``: RoPE rescaling + LoRA
(QLoRA on CUDA); ``evaluate``: needle-in-a-haystack heatmap, topic retrieval, short-context
perplexity.
"""
