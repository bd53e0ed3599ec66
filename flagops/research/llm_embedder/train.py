"""The LLM-Embedder recipe on the HF Trainer. Read top to bottom:
setup (data, model, loss) -> train (checkpoints, resume) -> save -> cleanup.

The embedder starts from ``model.base`` (the pipeline's base encoder) with CLS pooling and L2
normalisation, as BAAI/llm-embedder; the score is cosine / ``temperature`` (0.01). Each step is one
task's batch (``data.OneTaskBatches``): ``batch_size`` queries behind that task's query instruction,
each with ``group_size`` keys (its positive and sampled negatives, with their LM rewards) behind the
key instruction; every query sees all the batch's keys. The loss is ``losses.llm_embedder_loss``.

The saved directory is an ordinary flagops embedder (CLS pooling, no instruction of its own) plus
``llm_embedder.json``: the task instructions a caller puts before queries and keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from flagops.data.formats import atomic_path
from flagops.models.embedder import Embedder
from flagops.research.llm_embedder.data import INSTRUCTIONS, OneTaskBatches, RewardedExample, with_instruction
from flagops.research.llm_embedder.losses import llm_embedder_loss
from flagops.training import common
from flagops.training.batching import unwrap_batch

INSTRUCTIONS_FILE = "llm_embedder.json"


def load_embedder(source: str | Path, model_cfg) -> Embedder:
    """``source`` as LLM-Embedder encodes: CLS pooling, normalised, the profile's lengths, no built-in instruction."""
    return Embedder.load(
        source,
        pooling="cls",
        normalize=True,
        query_instruction="",
        query_max_len=model_cfg.query_max_len,
        passage_max_len=model_cfg.passage_max_len,
    )


@dataclass
class InstructedEncoder:
    """An ``Embedder`` behind one task's instructions: the ``TextEncoder`` the evaluators take."""

    embedder: Embedder
    task: str = "qa"

    def encode(self, texts: Sequence[str], *, is_query: bool, batch_size: int = 32, progress: str | None = None):
        texts = with_instruction(texts, self.task, is_query=is_query)
        return self.embedder.encode(texts, is_query=is_query, batch_size=batch_size, progress=progress)


class LLMEmbedderForTraining(nn.Module):
    """Embedder + LLM-Embedder's losses; returns {"loss"} as the Trainer expects."""

    def __init__(self, embedder: Embedder, train_cfg):
        super().__init__()
        self.embedder = embedder
        self.cfg = train_cfg

    def forward(self, q_input_ids, q_attention_mask, p_input_ids, p_attention_mask, teacher_scores):
        q = self.embedder(q_input_ids, q_attention_mask)  # (B, dim)
        keys = self.embedder(p_input_ids, p_attention_mask)  # (B * G, dim)
        c = self.cfg
        loss = llm_embedder_loss(
            q,
            keys,
            teacher_scores,
            temperature=c.temperature,
            stable_distill=c.stable_distill,
            distill_weight=c.distill_weight,
            contrastive_weight=c.contrastive_weight,
            teacher_temperature=c.teacher_temperature,
            student_temperature=c.student_temperature,
        )
        return {"loss": loss}

    def save(self, dest: Path) -> None:
        with atomic_path(dest, is_dir=True) as tmp:
            self.embedder.save_to(tmp)
            (tmp / INSTRUCTIONS_FILE).write_text(json.dumps({"instructions": INSTRUCTIONS}, indent=2) + "\n")


@dataclass
class OneTaskCollator:
    """Tokenises one ``OneTaskBatches`` item: the task's instructions before queries and keys."""

    embedder: Embedder

    def __call__(self, item):
        task, rows = item
        queries = with_instruction([q for q, _, _ in rows], task, is_query=True)
        keys = with_instruction([k for _, group, _ in rows for k in group], task, is_query=False)
        q = self.embedder.tokenize(queries, is_query=True)
        p = self.embedder.tokenize(keys, is_query=False)
        return {
            "q_input_ids": q["input_ids"],
            "q_attention_mask": q["attention_mask"],
            "p_input_ids": p["input_ids"],
            "p_attention_mask": p["attention_mask"],
            "teacher_scores": torch.tensor([s for _, _, s in rows], dtype=torch.float32),  # (B, G)
        }


def train(model_cfg, cfg, rows: Sequence[RewardedExample], output: Path, loss_curve: Path | None = None) -> dict[str, float]:
    """Train LLM-Embedder (the ``llm_embedder`` section ``cfg``) on ``rows``; the model to ``output``."""
    # ---- setup
    t = cfg.train
    torch.manual_seed(t.seed)
    embedder = load_embedder(model_cfg.base, model_cfg)
    groups = common.GroupDataset([r.as_train_example() for r in rows], t.group_size, t.seed, distill=True)
    dataset = OneTaskBatches(groups, [r.task for r in rows], t.batch_size, t.seed)
    model = LLMEmbedderForTraining(embedder, t)
    args = common.training_arguments(t, output, 1)  # one item is one task's batch
    world = common.world_size()
    stamp = common.fingerprint(model_cfg, cfg, examples=[r.as_train_example() for r in rows])
    ckpt, resume = common.prepare_checkpoints(output, stamp, t.resume_from_checkpoint)
    steps_per_epoch, total = common.schedule(len(dataset), world, t, queries=len(rows), queries_per_batch=t.batch_size)
    tasks = sorted({r.task for r in rows})
    print(
        f"train_llm_embedder: {len(rows)} queries of task(s) {', '.join(tasks)} | batch {t.batch_size} queries of one task x "
        f"{t.group_size} keys | {steps_per_epoch} steps/epoch, {total} steps | "
        f"{'stabilized' if t.stable_distill else 'KL'} distillation x {t.distill_weight:g} + contrastive x {t.contrastive_weight:g}"
        + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=unwrap_batch(OneTaskCollator(embedder)),
        callbacks=[common.MlflowThroughputCallback(t.batch_size * world), common.EpochSeedCallback(dataset)],
    )

    # ---- train
    result = common.train(trainer, resume)

    # ---- save (rank 0 only) and cleanup
    common.save_and_clean_up(trainer, model, output, ckpt)
    common.write_loss_curve(trainer, loss_curve)
    return common.loss_summary(trainer, result)
