"""LLaRA (FlagEmbedding ``research/LLARA``, Li et al. 2023, "Making Large Language Models a Better
Foundation for Dense Retrieval"): a decoder as a dense retriever.

A text is wrapped in one of two prompts that end in eight special tokens; the text's embedding
is the mean of the last layer's hidden states at those eight positions, L2-normalised:

    "{text}", summarize the above passage within eight words: <s1>..<s8>   (passages)
    "{text}", predict the following passage within eight words: <s9>..<s16>  (queries)

EBAE/EBAR pretraining teaches those positions to carry the text: the logits at the eight
special positions are max-pooled, log-softmaxed over the vocabulary, and must give every
distinct token of a target a high probability, the text itself after the summarize prompt
(EBAE) and the next passage after the predict prompt (EBAR), beside the ordinary LM loss on the
text: ``total = ar + (ebae + ebar) / 2``.

Both prompts ride on one forward pass, as in FlagEmbedding's pretraining: the sequence is
``bos " text summarize-suffix predict-suffix``, the predict suffix reuses the summarize suffix's
position ids, and a 4-D attention mask hides the summarize suffix from the predict suffix, so
each suffix sees exactly what it would see alone (a test checks the logits against two passes).

Fine-tuning is InfoNCE over those embeddings (in-batch + the mined hard negatives) with LoRA
through peft. FlagEmbedding hard-codes Llama-2's token ids for the prompts; here every id is
looked up from the tokenizer, which gets the sixteen special tokens added (embeddings resized).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

from flagops.config import ConfigError
from flagops.data.formats import DataError, Passage, TrainExample, atomic_path
from flagops.losses.infonce import compute_loss_from_embeddings
from flagops.models.llm_reranker import save_tokenizer
from flagops.training.common import fingerprint, stamp
from flagops.training.loop_checkpoints import LoopCheckpoints, files_digest

PREFIX = '"'
SUMMARIZE = '", summarize the above passage within eight words: '
PREDICT = '", predict the following passage within eight words: '
SPECIAL_TOKENS = tuple(f"<s{i}>" for i in range(1, 17))  # <s1>..<s8> summarize, <s9>..<s16> predict
N_SPECIAL = 8
IGNORE = -100


# --------------------------------------------------------------------------- prompts


def add_special_tokens(tokenizer, model=None) -> int:
    """Add ``<s1>``..``<s16>`` to ``tokenizer`` (those it lacks) and resize ``model``'s embeddings
    to match; the number added. A model pretrained here already has them: nothing changes."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)}, replace_extra_special_tokens=False)
    if model is not None and model.get_input_embeddings().weight.shape[0] != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))  # new rows start at the mean of the old ones
    return len(missing)


@dataclass(frozen=True)
class Prompts:
    """The prompts' token ids, looked up from one tokenizer."""

    head: tuple[int, ...]  # bos (when the tokenizer has one) + the opening quote
    summarize: tuple[int, ...]  # the summarize words + <s1>..<s8>
    predict: tuple[int, ...]  # the predict words + <s9>..<s16>
    no_target: frozenset[int]  # ids never a bag-of-words target: pad, bos, eos, unk, <s1>..<s16>

    @classmethod
    def of(cls, tokenizer) -> Prompts:
        ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise DataError("the tokenizer lacks <s1>..<s16>; call add_special_tokens(tokenizer, model) first")
        words = lambda text: tuple(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        bos = (tokenizer.bos_token_id,) if tokenizer.bos_token_id is not None else ()
        return cls(
            head=bos + words(PREFIX),
            summarize=words(SUMMARIZE) + tuple(ids[:N_SPECIAL]),
            predict=words(PREDICT) + tuple(ids[N_SPECIAL:]),
            no_target=frozenset(tokenizer.all_special_ids) | frozenset(ids),
        )

    def wrap(self, text_ids: Sequence[int], suffix: Sequence[int], max_length: int) -> list[int]:
        """``head + text + suffix`` in at most ``max_length`` tokens (the text is cut)."""
        budget = max_length - len(self.head) - len(suffix)
        if budget < 1:
            raise DataError(
                f"max_length {max_length} leaves no room for text beside the {len(self.head) + len(suffix)}-token prompt; raise it"
            )
        return [*self.head, *text_ids[:budget], *suffix]


def target_ids(tokenizer, text: str, prompts: Prompts, max_tokens: int) -> list[int]:
    """The token ids of ``text`` (its first ``max_tokens``) a bag-of-words loss asks for: specials dropped."""
    return [i for i in tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens] if i not in prompts.no_target]


# --------------------------------------------------------------------------- EBAE / EBAR pretraining


def pretrain_records(passages: Sequence[Passage]) -> list[dict[str, str]]:
    """FlagEmbedding's pretraining rows ``{input, output_summarize, output_predict}``: each passage,
    itself, and the passage after it in the corpus within the same group (module)."""
    rows = [
        {"input": a.full_text, "output_summarize": a.full_text, "output_predict": b.full_text}
        for a, b in zip(passages, passages[1:], strict=False)
        if a.group == b.group
    ]
    if not rows:
        raise DataError("the corpus has no two consecutive passages of one group: EBAR has no next passage to predict")
    return rows


@dataclass(frozen=True)
class PretrainSample:
    """One row as ``head text summarize predict``; the predict suffix starts at ``predict_start``."""

    input_ids: list[int]
    text_start: int  # the text is input_ids[text_start:text_end]: the LM loss's labels
    text_end: int  # where the summarize suffix starts
    predict_start: int
    ebae: list[int]  # target ids: the text itself
    ebar: list[int]  # target ids: the next passage


def pretrain_sample(tokenizer, prompts: Prompts, row: dict[str, str], max_length: int) -> PretrainSample:
    """``max_length`` bounds the positions: the suffixes share theirs, so the summarize branch is the longest."""
    wrapped = prompts.wrap(tokenizer(row["input"], add_special_tokens=False)["input_ids"], prompts.summarize, max_length)
    text_end = len(wrapped) - len(prompts.summarize)
    return PretrainSample(
        input_ids=wrapped + list(prompts.predict),
        text_start=len(prompts.head),
        text_end=text_end,
        predict_start=len(wrapped),
        ebae=target_ids(tokenizer, row["output_summarize"], prompts, max_length),
        ebar=target_ids(tokenizer, row["output_predict"], prompts, max_length),
    )


def position_ids(sample: PretrainSample, width: int) -> list[int]:
    """0.. up to the predict suffix, which then restarts at the summarize suffix's first position."""
    summarize_start = sample.text_end
    n_predict = len(sample.input_ids) - sample.predict_start
    ids = [*range(sample.predict_start), *range(summarize_start, summarize_start + n_predict)]
    return ids + [0] * (width - len(ids))


def suffix_mask(lengths: Sequence[int], text_ends: Sequence[int], predict_starts: Sequence[int], width: int) -> torch.Tensor:
    """(batch, 1, width, width) bool, True = may attend: causal, no padding keys, and no predict-suffix
    row sees the summarize suffix (columns ``text_end..predict_start``)."""
    q = torch.arange(width)[:, None]
    k = torch.arange(width)[None, :]
    rows = []
    for n, t, p in zip(lengths, text_ends, predict_starts, strict=True):
        allowed = (k <= q) & (k < n)  # (width, width)
        allowed &= ~((q >= p) & (k >= t) & (k < p))
        rows.append(allowed)
    return torch.stack(rows)[:, None]  # (batch, 1, width, width)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as the additive float one every attention implementation takes (0 or the dtype's min)."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


def collate_pretrain(samples: Sequence[PretrainSample], pad_id: int) -> dict:
    """Right-padded ids, LM labels on the text, position ids, the 4-D mask, the special positions and targets."""
    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)  # (batch, width)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, : len(s.input_ids)] = torch.tensor(s.input_ids)
        labels[i, s.text_start : s.text_end] = torch.tensor(s.input_ids[s.text_start : s.text_end])
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": torch.tensor([position_ids(s, width) for s in samples]),  # (batch, width)
        "mask": suffix_mask([len(s.input_ids) for s in samples], [s.text_end for s in samples], [s.predict_start for s in samples], width),
        "summarize_at": torch.tensor([[s.predict_start - N_SPECIAL + j for j in range(N_SPECIAL)] for s in samples]),  # (batch, 8)
        "predict_at": torch.tensor([[len(s.input_ids) - N_SPECIAL + j for j in range(N_SPECIAL)] for s in samples]),  # (batch, 8)
        "ebae": [torch.tensor(s.ebae, dtype=torch.long) for s in samples],
        "ebar": [torch.tensor(s.ebar, dtype=torch.long) for s in samples],
    }


def bag_of_words_loss(special_logits: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """EBAE/EBAR: the mean over rows of the mean negative log-probability of each row's distinct target ids.

    special_logits: (batch, 8, vocab), the logits at the eight special positions; they are max-pooled
    over the positions, then log-softmaxed over the vocabulary. A row with no target is skipped.
    """
    log_probs = F.log_softmax(special_logits.float().max(dim=1).values, dim=-1)  # (batch, vocab)
    terms = [-log_probs[i, torch.unique(t)].mean() for i, t in enumerate(targets) if t.numel()]
    if not terms:
        raise DataError("no pretraining row has a target token; the texts are empty after dropping special tokens")
    return torch.stack(terms).mean()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ordinary next-token loss: position i predicts ``labels[i + 1]``, mean over labelled tokens."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def total_loss(ar: torch.Tensor, ebae: torch.Tensor, ebar: torch.Tensor) -> torch.Tensor:
    """LLaRA's pretraining objective as the issue states it. (FlagEmbedding's code also divides each
    bag-of-words term by 10; here they keep the paper's weight.)"""
    return ar + (ebae + ebar) / 2


def at_positions(tensor: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(batch, seq, d) gathered at (batch, k) positions -> (batch, k, d)."""
    return tensor.gather(1, positions[:, :, None].expand(-1, -1, tensor.shape[-1]))


def pretrain_losses(model, batch: dict) -> dict[str, torch.Tensor]:
    """One joint forward pass: ``ar``, ``ebae``, ``ebar`` and ``total``."""
    dtype = model.get_input_embeddings().weight.dtype
    out = model(input_ids=batch["input_ids"], attention_mask=additive(batch["mask"], dtype), position_ids=batch["position_ids"])
    logits = out.logits  # (batch, width, vocab)
    ar = lm_loss(logits, batch["labels"])
    ebae = bag_of_words_loss(at_positions(logits, batch["summarize_at"]), batch["ebae"])
    ebar = bag_of_words_loss(at_positions(logits, batch["predict_at"]), batch["ebar"])
    return {"ar": ar, "ebae": ebae, "ebar": ebar, "total": total_loss(ar, ebae, ebar)}


# --------------------------------------------------------------------------- embeddings


def special_positions(lengths: torch.Tensor) -> torch.Tensor:
    """(batch,) lengths of right-padded rows that end in the eight special tokens -> (batch, 8) positions."""
    return lengths[:, None] - N_SPECIAL + torch.arange(N_SPECIAL, device=lengths.device)[None, :]


def pool_special(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(batch, seq, dim) last-layer states -> (batch, dim): the mean at the eight special positions, L2-normalised."""
    return F.normalize(at_positions(hidden, special_positions(lengths)).mean(dim=1), dim=-1)


def pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (batch, width) ids and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def embed(model, rows: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """(batch, dim) embeddings of prompt-wrapped token rows."""
    ids, mask = pad(rows, pad_id)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1)
    return pool_special(out.hidden_states[-1], mask.sum(dim=1))


class LlaraEncoder:
    """An LM directory as a ``TextEncoder`` (flagops.evaluation): queries take the predict prompt,
    passages the summarize prompt."""

    def __init__(self, path: str | Path, query_max_len: int, passage_max_len: int):
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        add_special_tokens(self.tokenizer, self.model)  # a plain base LM scores too
        self.prompts = Prompts.of(self.tokenizer)
        self.max_len = {True: query_max_len, False: passage_max_len}

    def rows(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        suffix = self.prompts.predict if is_query else self.prompts.summarize
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [self.prompts.wrap(t, suffix, self.max_len[is_query]) for t in ids]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, is_query: bool, batch_size: int, progress: str | None = None) -> np.ndarray:
        rows = self.rows(texts, is_query)
        out = [embed(self.model, rows[i : i + batch_size], self.tokenizer.pad_token_id) for i in range(0, len(rows), batch_size)]
        return torch.cat(out).numpy()


# --------------------------------------------------------------------------- training


def train(
    model,
    loss_fn: Callable[[int], dict[str, torch.Tensor]],
    steps: int,
    learning_rate: float,
    warmup_ratio: float,
    checkpoints: LoopCheckpoints,
    draws: dict[str, Any],
) -> list[dict]:
    """AdamW with linear warmup and decay, ``steps`` steps of ``loss_fn(step)["total"]`` on the model's
    trainable parameters; every step's losses. Checkpointed every ``checkpoints.every`` steps with the
    state of each of ``draws`` (objects with ``getstate``/``setstate``: the batch draws), resumed from
    the newest."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(steps * warmup_ratio), steps)
    done, log, extra = checkpoints.restore(model, optimizer, schedule)
    for name, state in (extra or {}).items():
        draws[name].setstate(state)
    for step in range(done, steps):
        losses = loss_fn(step)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        log.append({"step": step + 1, **{k: round(float(v.detach()), 6) for k, v in losses.items()}})
        checkpoints.save(step + 1, model, optimizer, schedule, log, {name: d.getstate() for name, d in draws.items()})
    return log


class Batches:
    """Index batches of ``batch_size`` drawn from reshuffled passes over ``range(n)``, for ever; its
    state (``getstate``/``setstate``) is a checkpoint's, so a resumed run draws the same batches."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        while len(self.order) < self.batch_size:
            fresh = list(range(self.n))
            self.rng.shuffle(fresh)
            self.order += fresh
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch

    def getstate(self) -> tuple:
        return self.rng.getstate(), list(self.order)

    def setstate(self, state: tuple) -> None:
        rng, order = state
        self.rng.setstate(rng)
        self.order = list(order)


def summary(log: Sequence[dict], keys: Sequence[str]) -> dict[str, float]:
    """Each loss at the start and the end: the mean of the first and of the last fifth of the steps."""
    k = max(1, len(log) // 5)
    out = {}
    for key in keys:
        out[f"{key}_start"] = float(np.mean([r[key] for r in log[:k]]))
        out[f"{key}_end"] = float(np.mean([r[key] for r in log[-k:]]))
    return out


def load_lm(path: str | Path, cfg):
    """(tokenizer, model) of an LM directory, with the sixteen special tokens; the ``llara`` section's
    lengths must fit the LM's window (the pretraining suffixes share positions, so a row needs no more)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    add_special_tokens(tokenizer, model)
    window = model.config.max_position_embeddings
    if max(cfg.query_max_len, cfg.passage_max_len) > window:
        raise ConfigError(
            f"llara.query_max_len / passage_max_len ({cfg.query_max_len} / {cfg.passage_max_len}) exceed the LM's window of {window} "
            f"tokens ({path}); lower them or raise longctx.base_context"
        )
    return tokenizer, model


def save_lm(model, tokenizer, output: Path) -> None:
    with atomic_path(output, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tokenizer, tmp)


def pretrain(cfg, lm_dir: Path, passages: Sequence[Passage], output: Path) -> tuple[dict[str, float], list[dict]]:
    """EBAE + EBAR + LM loss on ``passages``, the whole model trained (as FlagEmbedding's pretraining);
    the model with its special tokens to ``output``. (summary, every step's losses)."""
    # ---- setup
    torch.manual_seed(cfg.seed)
    tokenizer, model = load_lm(lm_dir, cfg)
    prompts = Prompts.of(tokenizer)
    samples = [pretrain_sample(tokenizer, prompts, row, cfg.passage_max_len) for row in pretrain_records(passages)]
    draw = Batches(len(samples), cfg.pretrain_batch_size, cfg.seed)
    print(
        f"pretrain_llara: {len(samples)} (passage, next passage) rows | batch {cfg.pretrain_batch_size} | {cfg.pretrain_steps} steps | "
        f"mean {np.mean([len(s.input_ids) for s in samples]):.0f} tokens per row (both prompts)"
    )

    # ---- train (resumed from the newest checkpoint of the same config, data and LM)
    model.train()
    checkpoints = LoopCheckpoints(
        "pretrain_llara",
        output,
        stamp(cfg, data=[p.text for p in passages] + [files_digest(lm_dir)]),
        cfg.save_steps,
        cfg.resume_from_checkpoint,
    )
    log = train(
        model,
        lambda _: pretrain_losses(model, collate_pretrain([samples[i] for i in next(draw)], tokenizer.pad_token_id)),
        cfg.pretrain_steps,
        cfg.pretrain_learning_rate,
        cfg.warmup_ratio,
        checkpoints,
        {"draw": draw},
    )

    # ---- save
    save_lm(model.eval(), tokenizer, output)
    checkpoints.finish()
    return summary(log, ("ar", "ebae", "ebar", "total")), log


def training_groups(examples: Sequence[TrainExample], group_size: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    """(query, [positive, negatives...]) with ``group_size`` passages each; negatives drawn with
    repetition when a query has fewer (FlagEmbedding's rule)."""
    groups = []
    for ex in examples:
        if group_size > 1 and not ex.neg:
            raise DataError(
                f"query {ex.query[:40]!r} has no negatives but llara.train_group_size is {group_size}; mine negatives or set it to 1"
            )
        negs = rng.sample(ex.neg, group_size - 1) if len(ex.neg) >= group_size - 1 else [rng.choice(ex.neg) for _ in range(group_size - 1)]
        groups.append((ex.query, [rng.choice(ex.pos), *negs]))
    return groups


def lora(cfg):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=sorted(cfg.lora_target_modules),
    )


def finetune(
    cfg, lm_dir: Path, examples: Sequence[TrainExample], output: Path, label: str = "finetune_llara"
) -> tuple[dict[str, float], list[dict]]:
    """InfoNCE (in-batch + hard negatives, temperature ``cfg.temperature``) with LoRA; the merged
    model to ``output``. (summary, every step's loss)."""
    from peft import get_peft_model

    # ---- setup
    torch.manual_seed(cfg.seed)  # LoRA's A matrices and dropout start the same on every run
    rng = random.Random(cfg.seed)
    tokenizer, model = load_lm(lm_dir, cfg)
    prompts = Prompts.of(tokenizer)
    model = get_peft_model(model, lora(cfg))
    trainable, total = model.get_nb_trainable_parameters()
    draw = Batches(len(examples), cfg.finetune_batch_size, cfg.seed)
    print(
        f"finetune_llara: {lm_dir.name}: {len(examples)} queries | batch {cfg.finetune_batch_size} x group {cfg.train_group_size} | "
        f"{cfg.finetune_steps} steps | LoRA r {cfg.lora_rank}: {trainable:,} of {total:,} parameters trained"
    )

    def step(_: int) -> dict[str, torch.Tensor]:
        groups = training_groups([examples[i] for i in next(draw)], cfg.train_group_size, rng)
        ids = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
        queries = [prompts.wrap(t, prompts.predict, cfg.query_max_len) for t in ids([q for q, _ in groups])]
        passages = [prompts.wrap(t, prompts.summarize, cfg.passage_max_len) for t in ids([p for _, ps in groups for p in ps])]
        q = embed(model, queries, tokenizer.pad_token_id)  # (batch, dim)
        p = embed(model, passages, tokenizer.pad_token_id)  # (batch * group, dim), each query's positive first
        return {"total": compute_loss_from_embeddings(q, p, cfg.temperature, in_batch=True)}

    # ---- train (resumed from the newest checkpoint of the same config, data and LM)
    model.train()
    stamped = fingerprint(cfg, examples=examples, extra=[files_digest(lm_dir)])
    checkpoints = LoopCheckpoints(label, output, stamped, cfg.save_steps, cfg.resume_from_checkpoint)
    log = train(model, step, cfg.finetune_steps, cfg.finetune_learning_rate, cfg.warmup_ratio, checkpoints, {"draw": draw, "rng": rng})

    # ---- save: the adapter merged into the LM
    save_lm(model.merge_and_unload().eval(), tokenizer, output)
    checkpoints.finish()
    return summary(log, ("total",)), log
