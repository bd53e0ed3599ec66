"""Data-driven merge weights: each ingredient's loss on a few target-task examples.

LM-Cocktail weighs ingredient ``i`` by ``softmax(-loss_i / T)`` (``T = 5``), with the loss
measured on about 5 examples of the task the merged model is for. The loss depends on the
kind of model:

* **encoder** (BGE, M3's dense vectors): contrastive cross-entropy over normalised
  embeddings at temperature 0.05, each query against its own group (1 positive + ``neg_number``
  sampled negatives), the positive the target. FlagEmbedding's version also scores the other
  queries' passages (in-batch); scoring the group only makes the loss independent of how the
  examples are batched.
* **reranker** (cross-encoder): the grouped cross-entropy train_reranker trains with, over
  the logits of (query, positive) and (query, negative_j). FlagEmbedding has no such loss.
* **decoder** (causal LM): the next-token loss on ``input + " " + output + eos`` with the
  ``input`` tokens masked, averaged over the scored tokens. Rows give ``input``/``output``
  (FlagEmbedding's LLM examples) or, for a training JSONL row, ``query``/``pos[0]``.

The negatives are sampled once (seeded), so every ingredient is scored on the same texts.
Models are loaded one at a time, so this needs the memory of one model.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from flagops.data.formats import DataError, iter_jsonl
from flagops.losses.reranker import grouped_ce
from flagops.merging.checkpoint import MergeError
from flagops.merging.cocktail import model_kind, softmax_weights

ENCODER_TEMPERATURE = 0.05  # LM-Cocktail's, for every encoder
IGNORE = -100  # label of a token the decoder loss skips
DECODER_MAX_TOKENS = 512


@dataclass(frozen=True)
class Group:
    """One query with its positive first and the sampled negatives after it."""

    query: str
    passages: tuple[str, ...]


@dataclass(frozen=True)
class Completion:
    """A decoder example: the loss scores ``output`` given ``input``."""

    input: str
    output: str


# --------------------------------------------------------------------------- the losses (pure)


def contrastive_loss(q: torch.Tensor, p: torch.Tensor, temperature: float = ENCODER_TEMPERATURE) -> torch.Tensor:
    """Mean CE of each query's group, positive at index 0.

    q: (n, dim) and p: (n, group, dim), both L2-normalised.
    """
    scores = torch.einsum("nd,ngd->ng", q, p) / temperature  # (n, group)
    return grouped_ce(scores.reshape(-1), p.shape[1])


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token CE over the labelled tokens: position t predicts ``labels[t + 1]``; ``IGNORE`` labels are skipped.

    logits: (n, length, vocab); labels: (n, length).
    """
    shifted = logits[:, :-1].float()  # (n, length - 1, vocab)
    target = labels[:, 1:]  # (n, length - 1)
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


# --------------------------------------------------------------------------- examples


def read_examples(path: Path, count: int) -> list[tuple[str, dict]]:
    """The first ``count`` rows of a JSONL file, each with its ``path:line``."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        rows.append((f"{path}:{lineno}", obj))
        if len(rows) == count:
            return rows
    raise MergeError(f"{path}: {len(rows)} examples, but merge.examples={count} needs {count}; give more rows or lower merge.examples")


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string (or list of strings)")
    return value


def sample_groups(rows: Sequence[tuple[str, dict]], neg_number: int, seed: int) -> list[Group]:
    """Each row's query, first positive and ``neg_number`` of its negatives, sampled without repetition."""
    rng = random.Random(seed)
    groups = []
    for where, obj in rows:
        negs = obj.get("neg") or []
        if not isinstance(negs, list) or len(negs) < neg_number:
            raise MergeError(
                f"{where}: {len(negs) if isinstance(negs, list) else 0} negatives, but merge.neg_number={neg_number} samples "
                f"{neg_number} per query; lower merge.neg_number or mine more negatives"
            )
        groups.append(Group(_text(obj, "query", where), (_text(obj, "pos", where), *rng.sample(negs, neg_number))))
    return groups


def completions(rows: Sequence[tuple[str, dict]]) -> list[Completion]:
    """``input``/``output`` rows as they are; training rows as (query, first positive)."""
    out = []
    for where, obj in rows:
        keys = ("input", "output") if "input" in obj else ("query", "pos")
        out.append(Completion(_text(obj, keys[0], where), _text(obj, keys[1], where)))
    return out


# --------------------------------------------------------------------------- one model's loss


@torch.inference_mode()
def encoder_loss(path: Path, groups: Sequence[Group]) -> float:
    from flagops.models.embedder import Embedder

    embedder = Embedder.load(path, normalize=True).eval()
    q = embedder(**embedder.tokenize([g.query for g in groups], is_query=True))  # (n, dim)
    p = embedder(**embedder.tokenize([t for g in groups for t in g.passages], is_query=False))  # (n * group, dim)
    return float(contrastive_loss(q, p.view(len(groups), -1, p.shape[-1])))


@torch.inference_mode()
def reranker_loss(path: Path, groups: Sequence[Group]) -> float:
    from flagops.models.reranker import load_reranker

    reranker = load_reranker(path, "cross_encoder").eval()
    pairs = [(g.query, t) for g in groups for t in g.passages]
    scores = torch.from_numpy(reranker.score_pairs(pairs, batch_size=len(pairs)))  # (n * group,)
    return float(grouped_ce(scores, len(groups[0].passages)))


def decoder_batch(tokenizer, examples: Sequence[Completion], max_tokens: int = DECODER_MAX_TOKENS) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (``IGNORE`` on the input's tokens and the padding)."""
    rows, labels = [], []
    for ex in examples:
        prompt = tokenizer(ex.input)["input_ids"]  # with the tokenizer's bos, as the model reads a text
        answer = tokenizer(" " + ex.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt + answer)[:max_tokens]
        rows.append(ids)
        labels.append(([IGNORE] * len(prompt) + answer)[:max_tokens])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for lab in labels]),
    }


@torch.inference_mode()
def decoder_loss(path: Path, examples: Sequence[Completion]) -> float:
    from flagops.models.llm_reranker import load_causal_lm

    tokenizer, model = load_causal_lm(path, "merge", MergeError)
    batch = decoder_batch(tokenizer, examples)
    logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (n, length, vocab)
    return float(masked_lm_loss(logits, batch["labels"]))


def task_losses(paths: Sequence[Path], rows: Sequence[tuple[str, dict]], *, neg_number: int, seed: int) -> list[float]:
    """Each model's loss on ``rows``, by the first model's kind, one model in memory at a time."""
    kind = model_kind(Path(paths[0]))
    if kind == "decoder":
        examples = completions(rows)
        return [decoder_loss(Path(p), examples) for p in paths]
    groups = sample_groups(rows, neg_number, seed)
    loss = encoder_loss if kind == "encoder" else reranker_loss
    return [loss(Path(p), groups) for p in paths]


def data_weights(
    paths: Sequence[Path], rows: Sequence[tuple[str, dict]], *, temperature: float, neg_number: int, seed: int
) -> tuple[list[float], list[float]]:
    """(weights, losses): ``softmax(-loss_i / temperature)`` of each model's loss on the examples."""
    losses = task_losses(paths, rows, neg_number=neg_number, seed=seed)
    return softmax_weights(losses, temperature), losses
