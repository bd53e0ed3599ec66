"""A cross-encoder reranker: an HF sequence-classification model scoring (query, passage) pairs.

The model reads ``query [SEP] passage`` and its single logit is the relevance score, as
in FlagEmbedding's ``FlagReranker`` (bge-reranker-*). ``normalize=True`` maps scores to
(0, 1) with a sigmoid.

Sources: whatever ``resolve_model_source`` takes, plus ``tiny-reranker[@seed]``: a random
2-layer ``BertForSequenceClassification`` (hidden 64, one label) with the MiniLM
tokenizer, built once into the flagops cache, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from flagops.data.formats import atomic_path
from flagops.models.cache import cache_dir
from flagops.models.embedder import padding_multiple
from flagops.models.pair_scoring import PairScoring
from flagops.models.sources import ModelSourceError, resolve_model_source, weights_fit

TINY_RERANKER = "tiny-reranker"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def ensure_tiny_reranker(seed: int = 0) -> Path:
    """Build (once) a random tiny BERT cross-encoder with a real tokenizer; return its directory."""
    from transformers import BertForSequenceClassification

    from flagops.models.tiny import TOKENIZER_SOURCE, tiny_bert_config

    dest = cache_dir() / f"tiny-reranker-seed{seed}"
    if (dest / "model.safetensors").is_file():
        return dest
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_source(TOKENIZER_SOURCE)))
    torch.manual_seed(seed)
    config = tiny_bert_config(len(tokenizer))
    config.num_labels = 1
    model = BertForSequenceClassification(config)
    with atomic_path(dest, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
    return dest


def resolve_reranker_source(source: str) -> Path:
    """A local directory for ``source``: ``tiny-reranker[@seed]``, ``tiny-decoder[@seed]`` (a random
    causal LM for the llm/layerwise kinds) or any model source."""
    if source.partition("@")[0] == "tiny-decoder":
        from flagops.models.llm_reranker import resolve_decoder_source

        return resolve_decoder_source(source)
    if source == TINY_RERANKER or source.startswith(TINY_RERANKER + "@"):
        seed = source.partition("@")[2] or "0"
        if not seed.isdigit():
            raise ModelSourceError(f"model source {source!r}: expected {TINY_RERANKER}@<integer seed>")
        return ensure_tiny_reranker(int(seed))
    return resolve_model_source(source)


class NotARerankerError(ModelSourceError):
    """A model source that is not a reranker (an embedder, a multi-label classifier, ...)."""


def reranker_kind(path: Path) -> str:
    """``cross_encoder``, ``llm`` or ``layerwise`` from a model directory's files; a one-line
    ``NotARerankerError`` naming the directory when it holds none of them."""
    import json

    from flagops.models.layout import RERANKER_FILE

    meta = path / RERANKER_FILE
    if meta.is_file():
        return json.loads(meta.read_text())["kind"]
    config = path / "config.json"
    if not config.is_file():
        raise NotARerankerError(f"{path}: not a model directory (no config.json); pass a reranker")
    settings = json.loads(config.read_text())
    arch = settings.get("architectures") or []
    labels = len(settings.get("id2label") or {"0": ""})
    if any(a.endswith("ForSequenceClassification") for a in arch) and labels == 1:
        return "cross_encoder"
    if any(a.endswith("ForCausalLM") for a in arch):
        return "llm"
    raise NotARerankerError(
        f"{path}: not a reranker (architectures {arch or 'unknown'}, {labels} label(s)); pass a one-label "
        "*ForSequenceClassification cross-encoder or a causal LM reranker, e.g. a train_reranker output"
    )


def load_reranker(source: str | Path, kind: str = "auto", *, max_length: int | None = None, **options):
    """Any reranker flagops scores with: ``score_pairs``, ``score``, ``save``, ``tokenizer``.

    ``kind``: ``auto`` reads the directory (``reranker_kind``); a model source that is not a
    reranker is a ``NotARerankerError``. LLM and layerwise kinds live in
    ``flagops.models.llm_reranker``; ``options`` go to their loaders (prompt, cutoff_layers).
    ``max_length`` None: for a cross-encoder, what train_reranker trained it with (query +
    passage tokens, from ``flagops_reranker.json``), else 512.
    """
    import json

    from flagops.models.layout import RERANKER_FILE

    path = resolve_reranker_source(str(source))
    found = reranker_kind(path) if kind == "auto" else kind
    if found == "cross_encoder":
        if max_length is None:
            saved = json.loads((path / RERANKER_FILE).read_text()) if (path / RERANKER_FILE).is_file() else {}
            max_length = saved["query_max_len"] + saved["passage_max_len"] if "passage_max_len" in saved else 512
        return CrossEncoderReranker.load(path, max_length=max_length)
    from flagops.models import llm_reranker  # its own lengths: query, passage and prompt apart

    return llm_reranker.load(path, found, max_length=max_length or 512, **options)


class CrossEncoderReranker(PairScoring, nn.Module):
    """Sequence classifier + tokenizer. ``forward`` gives differentiable logits for training."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512):
        super().__init__()
        if model.config.num_labels != 1:
            raise NotARerankerError(f"a cross-encoder reranker needs one output label, this model has {model.config.num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple_of: int | None = None  # as Embedder's: the server sets it

    @classmethod
    def load(cls, source: str | Path, max_length: int = 512) -> CrossEncoderReranker:
        """Load a model directory, ``pkg:PACKAGE`` or ``tiny-reranker[@seed]``."""
        path = resolve_reranker_source(str(source))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        with weights_fit(path):
            model = AutoModelForSequenceClassification.from_pretrained(str(path))
        limit = getattr(model.config, "max_position_embeddings", max_length)
        return cls(model, tokenizer, max_length=min(max_length, limit))

    def tokenize(self, pairs: Sequence[tuple[str, str]], max_length: int | None = None) -> dict:
        """FlagReranker's inference input: the query cut to 3/4 of ``max_length`` tokens, then
        the pair to ``max_length`` by cutting the passage only."""
        limit = max_length or self.max_length
        queries = clip_tokens(self.tokenizer, [q for q, _ in pairs], limit * 3 // 4)
        passages = [p for _, p in pairs]
        return self.tokenizer(
            queries,
            passages,
            padding=True,
            truncation="only_second",
            max_length=limit,
            return_tensors="pt",
            pad_to_multiple_of=padding_multiple(limit, self.pad_to_multiple_of),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return out.logits[:, 0]  # (batch,)

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """Raw relevance logits, float32 (n,)."""
        return self._scores(pairs, batch_size, max_length, lambda **enc: self(**{k: v for k, v in enc.items() if k in MODEL_INPUTS}))

    def token_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Untruncated token count of each pair as the model would read it (special tokens included)."""
        return pair_token_lengths(self.tokenizer, pairs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def save(self, dest: str | Path) -> None:
        """Write an HF directory (safetensors + tokenizer) atomically."""
        with atomic_path(dest, is_dir=True) as tmp:
            self.model.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))


def clip_tokens(tokenizer, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut after its first ``max_tokens`` tokens (at the end of the last kept token).

    Cut as text because transformers 5 tokenizers have no ``prepare_for_model`` to pair
    pre-cut token ids; a word cut inside may re-tokenize to a token more or less, which the
    pair's ``only_second`` limit absorbs."""
    enc = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens, return_offsets_mapping=True)
    return [text[: offsets[-1][1]] if offsets else text for text, offsets in zip(texts, enc["offset_mapping"], strict=True)]


def pair_token_lengths(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """Untruncated token count of each (query, passage) pair under ``tokenizer``."""
    if not pairs:
        return []
    enc = tokenizer(
        [q for q, _ in pairs],
        [p for _, p in pairs],
        truncation=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the maximum" warning: callers compare to max_length
    )
    return [len(ids) for ids in enc["input_ids"]]
