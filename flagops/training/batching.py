"""Efficient batching: length-grouped batches (M3), length-sorted chunks, and sub-batched encoding.

**Length-grouped batches** (FlagEmbedding splits its training files by length and draws
each batch from one file). Each training query falls in a bucket by the token length of
its longest passage; batches are cut within a bucket, so a batch pads to about its own
length rather than the longest text of the corpus, and short buckets may take bigger
batches. A bucket's remainder (fewer than a batch) joins a shared pool, which is sorted by
length and cut into batches of the default size; the pool's last partial batch is
dropped (in-batch negatives want full batches). The batches are then shuffled. The batch
count is the same every epoch, which the Trainer's resume needs.

**Sub-batches.** ``encode_in_chunks`` runs an encoder over a big batch ``size`` texts at a
time, each chunk under activation checkpointing, and concatenates the outputs, so the loss
still sees the whole batch (every in-batch negative) while only one chunk's activations
are alive at once; backward recomputes each chunk. Loss and gradients are those of the
un-chunked batch (up to float rounding; dropout masks are replayed exactly).

**Length-sorted chunks.** A step's passages mix lengths (a group is one positive and random
negatives, so grouping batches by length cannot help here), and a batch padded to its
longest text is mostly padding: on the stdlib rows passages average 60 tokens and the batch
pads to 128. ``encode_length_sorted`` sorts the rows by length, encodes ``size`` of them at a
time with each chunk cut to its own longest row, and puts the outputs back in order. Only
trailing columns that are padding in every row of a chunk are cut, so no token moves and the
outputs are the padded batch's up to float rounding (attention gives masked keys no weight).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset

from flagops.data.formats import TrainExample

# --------------------------------------------------------------------------- length grouping


def bucket_index(length: int, buckets: Sequence[int]) -> int:
    """The first bucket whose upper bound holds ``length``; longer texts go to the last bucket."""
    for i, bound in enumerate(buckets):
        if length <= bound:
            return i
    return len(buckets) - 1


def length_grouped_batches(
    lengths: Sequence[int], buckets: Sequence[int], batch_sizes: Sequence[int], default_batch_size: int, seed: int | str
) -> list[list[int]]:
    """Indices into ``lengths`` cut into batches of similar length, in a seeded random order."""
    if len(batch_sizes) != len(buckets):
        raise ValueError(f"{len(batch_sizes)} batch sizes for {len(buckets)} buckets")
    rng = random.Random(seed)
    members: list[list[int]] = [[] for _ in buckets]
    for i, n in enumerate(lengths):
        members[bucket_index(n, buckets)].append(i)
    batches, pool = [], []
    for idx, size in zip(members, batch_sizes, strict=True):
        rng.shuffle(idx)
        full = len(idx) // size * size
        batches += [idx[s : s + size] for s in range(0, full, size)]
        pool += idx[full:]
    pool.sort(key=lambda i: (lengths[i], i))  # remainders stay roughly grouped too
    usable = len(pool) // default_batch_size * default_batch_size
    batches += [pool[s : s + default_batch_size] for s in range(0, usable, default_batch_size)]
    rng.shuffle(batches)
    return batches


def example_lengths(examples: Sequence[TrainExample], tokenizer, max_length: int) -> list[int]:
    """Each example's longest passage (positives and negatives) in tokens, truncated to ``max_length``."""
    texts = [t for ex in examples for t in (*ex.pos, *ex.neg)]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
    out, at = [], 0
    for ex in examples:
        n = len(ex.pos) + len(ex.neg)
        out.append(max(len(x) for x in ids[at : at + n]))
        at += n
    return out


class LengthGroupedBatches(Dataset):
    """Item i -> the i-th batch of this epoch: a list of ``items`` entries of similar length.

    Give the Trainer a per-device batch size of 1 and ``unwrap_batch`` around the collator.
    Setting ``epoch`` re-cuts the batches with a per-epoch seed (and passes the epoch on).
    """

    def __init__(
        self,
        items: Dataset,
        lengths: Sequence[int],
        buckets: Sequence[int],
        batch_sizes: Sequence[int] | None,
        default_batch_size: int,
        seed: int,
    ):
        if len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
        self.items = items
        self.lengths = list(lengths)
        self.buckets = tuple(buckets)
        self.batch_sizes = tuple(batch_sizes or [default_batch_size] * len(buckets))
        self.default_batch_size = default_batch_size
        self.seed = seed
        self.epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = value
        if hasattr(self.items, "epoch"):
            self.items.epoch = value
        seed = f"{self.seed}:{value}"  # random.Random hashes a str seed stably across processes
        self.batches = length_grouped_batches(self.lengths, self.buckets, self.batch_sizes, self.default_batch_size, seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list:
        return [self.items[j] for j in self.batches[i]]

    @property
    def mean_batch_size(self) -> float:
        return sum(len(b) for b in self.batches) / max(len(self.batches), 1)


def unwrap_batch(collate: Callable) -> Callable:
    """A collator for ``LengthGroupedBatches`` under batch size 1: collate the one batch it holds."""

    def collate_batch(wrapped: list) -> dict:
        if len(wrapped) != 1:
            raise ValueError(f"length-grouped batches need per_device_train_batch_size=1, got {len(wrapped)}")
        return collate(wrapped[0])

    return collate_batch


# --------------------------------------------------------------------------- length-sorted chunks


def encode_length_sorted(
    encode: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor, size: int | None, checkpointed: bool = False
) -> torch.Tensor:
    """``encode(input_ids, attention_mask)`` -> (rows, ...), run ``size`` rows at a time in order of length,
    each chunk without the trailing columns that are padding in all its rows; rows come back in input order.

    ``checkpointed`` (with gradients on) runs each chunk under non-reentrant activation
    checkpointing: GradCache's trade (Gao et al., 2021). Only one chunk's activations are alive
    at a time, backward runs each chunk's forward again (dropout replayed), and the loss over
    the whole batch and its gradients stay those of the plain run."""
    n = input_ids.shape[0]
    if checkpointed and torch.is_grad_enabled():
        encode = _checkpointed(encode)
    if size is None or n <= size:
        return encode(input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    outs = []
    for start in range(0, n, size):
        rows = order[start : start + size]
        used = attention_mask[rows].any(dim=0).nonzero()
        width = int(used[-1]) + 1 if len(used) else 1  # the last column any row of the chunk uses
        outs.append(encode(input_ids[rows, :width], attention_mask[rows, :width]))
    return torch.cat(outs)[torch.argsort(order)]


def _checkpointed(encode: Callable) -> Callable:
    def run(*tensors):
        return checkpoint(encode, *tensors, use_reentrant=False)

    return run


# --------------------------------------------------------------------------- sub-batches


def encode_in_chunks(encode: Callable, tensors: Sequence[torch.Tensor], size: int | None, **kwargs):
    """``encode(*tensors, **kwargs)`` over rows ``size`` at a time, concatenated along dim 0.

    ``encode`` returns a tensor or a (named) tuple of tensors / None. Chunks run under
    non-reentrant activation checkpointing when gradients are on. ``size`` None, or not
    smaller than the batch, runs one plain call.
    """
    n = tensors[0].shape[0]
    if size is None or n <= size:
        return encode(*tensors, **kwargs)
    outs = []
    for start in range(0, n, size):
        chunk = [t[start : start + size] for t in tensors]
        if torch.is_grad_enabled():
            outs.append(checkpoint(encode, *chunk, use_reentrant=False, **kwargs))
        else:
            outs.append(encode(*chunk, **kwargs))
    if isinstance(outs[0], torch.Tensor):
        return torch.cat(outs)
    fields = [None if parts[0] is None else torch.cat(parts) for parts in zip(*outs, strict=True)]
    return type(outs[0])(*fields) if hasattr(outs[0], "_fields") else tuple(fields)
