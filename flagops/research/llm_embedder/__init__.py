"""LLM-Embedder (FlagEmbedding ``research/llm_embedder``): an embedder trained on a causal LM's feedback.

- ``reward``: the LM's reward for a key (passage): ``-mean NLL`` of the answer given the key and the
  question in FlagEmbedding's qa template; the same scoring measures the downstream answer likelihood.
- ``data``: FlagEmbedding's training format ``{query, pos, neg, teacher_scores, answers, task}``, the
  six tasks' instructions, and one-task batches.
- ``losses``: stabilized distillation, KL distillation (teacher and student temperatures), contrastive.
- ``train``: the recipe (CLS pooling, cosine / temperature) on the HF Trainer.
- ``evaluate``: retrieval nDCG@10 and the LM's answer likelihood with the top-k keys each embedder retrieves.

See docs/research.md for what this reproduces and at what scale.
"""
