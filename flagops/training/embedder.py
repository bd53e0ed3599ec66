"""The BGE contrastive recipe on the HF Trainer. Read top to bottom:
setup (data, model, loss) -> train (checkpoints, resume) -> save -> cleanup.

Each query is trained against a group of ``train_group_size`` passages: one positive and
``train_group_size - 1`` hard negatives (resampled with repetition when too few), plus
every other query's group when in-batch negatives are on. With teacher scores and
``distill`` on, a KL term pulls the group's softmax towards the teacher's.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from flagops.config import ConfigError
from flagops.data.formats import DataError, TrainExample
from flagops.losses.infonce import InBatchContrastiveLoss, group_scores, local_scores
from flagops.losses.kl_distill import KLDistillLoss
from flagops.models.embedder import Embedder
from flagops.registry import tracking
from flagops.training.deepspeed import resolve_deepspeed_config

FINGERPRINT = "flagops_fingerprint.txt"


# --------------------------------------------------------------------------- data


class GroupDataset(Dataset):
    """Item i -> (query, [positive, negatives...], teacher scores or None), seeded per epoch."""

    def __init__(self, examples: Sequence[TrainExample], group_size: int, seed: int, distill: bool):
        self.examples = list(examples)
        self.group_size = group_size
        self.seed = seed
        self.distill = distill
        self.epoch = 0
        for i, ex in enumerate(self.examples):
            if group_size > 1 and not ex.neg:
                raise DataError(f"training example {i + 1} ({ex.query[:40]!r}) has no negatives; run mine_hard_negatives or set train.train_group_size=1")
            if distill and (ex.pos_scores is None or ex.neg_scores is None):
                raise DataError(f"training example {i + 1} has no pos_scores/neg_scores; score it with a teacher or set train.distill=false")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        ex = self.examples[i]
        rng = random.Random(f"{self.seed}:{self.epoch}:{i}")
        p = rng.randrange(len(ex.pos))
        n_neg = self.group_size - 1
        if n_neg <= len(ex.neg):
            negs = rng.sample(range(len(ex.neg)), n_neg)
        else:  # too few negatives: repeat the list, as FlagEmbedding does
            negs = rng.sample(list(range(len(ex.neg))) * (n_neg // len(ex.neg) + 1), n_neg)
        passages = [ex.pos[p]] + [ex.neg[j] for j in negs]
        scores = None
        if self.distill:
            scores = [ex.pos_scores[p]] + [ex.neg_scores[j] for j in negs]
        return ex.query, passages, scores


@dataclass
class GroupCollator:
    embedder: Embedder

    def __call__(self, items):
        queries = [q for q, _, _ in items]
        passages = [p for _, group, _ in items for p in group]
        q = self.embedder.tokenize(queries, is_query=True)
        p = self.embedder.tokenize(passages, is_query=False)
        batch = {
            "q_input_ids": q["input_ids"],
            "q_attention_mask": q["attention_mask"],
            "p_input_ids": p["input_ids"],
            "p_attention_mask": p["attention_mask"],
        }
        if items[0][2] is not None:
            batch["teacher_scores"] = torch.tensor([s for _, _, s in items], dtype=torch.float32)  # (batch, group)
        return batch


# --------------------------------------------------------------------------- model


class BiEncoderForTraining(nn.Module):
    """Embedder + losses; returns {"loss"} as the Trainer expects."""

    def __init__(self, embedder: Embedder, temperature: float, in_batch: bool, distill_weight: float, cross_device: bool = False):
        super().__init__()
        self.embedder = embedder
        self.in_batch = in_batch
        self.temperature = temperature
        self.contrastive = InBatchContrastiveLoss(temperature, in_batch, cross_device)  # gathers across ranks if asked
        self.distill = KLDistillLoss()
        self.distill_weight = distill_weight

    def forward(self, q_input_ids, q_attention_mask, p_input_ids, p_attention_mask, teacher_scores=None):
        q = self.embedder(q_input_ids, q_attention_mask)  # (batch, dim)
        p = self.embedder(p_input_ids, p_attention_mask)  # (batch * group, dim)
        loss = self.contrastive(q, p)
        if teacher_scores is not None:  # each query's group is on its own rank: the KL term stays local
            scores = group_scores(q, p, self.temperature, self.in_batch)
            student = local_scores(scores, teacher_scores.shape[1], self.in_batch)  # (batch, group)
            loss = loss + self.distill_weight * self.distill(student, teacher_scores)
        return {"loss": loss}


# --------------------------------------------------------------------------- logging


class MlflowThroughputCallback(TrainerCallback):
    """Loss, learning rate and queries/s to the step's MLflow run at each logging step."""

    def __init__(self, queries_per_step: int):
        self.queries_per_step = queries_per_step
        self._t = time.perf_counter()
        self._step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        now = time.perf_counter()
        steps = state.global_step - self._step
        metrics = {k: v for k, v in (logs or {}).items() if k in ("loss", "learning_rate", "grad_norm", "train_loss")}
        if steps > 0:
            metrics["samples_per_second"] = steps * self.queries_per_step / (now - self._t)
        self._t, self._step = now, state.global_step
        tracking.log_metrics(metrics, step=state.global_step)


class EpochSeedCallback(TrainerCallback):
    def __init__(self, dataset: GroupDataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int(state.epoch or 0)


# --------------------------------------------------------------------------- recipe


def fingerprint(model_cfg, train_cfg, examples: Sequence[TrainExample]) -> str:
    h = hashlib.sha256(model_cfg.model_dump_json().encode() + train_cfg.model_dump_json().encode())
    for ex in examples:
        h.update(json.dumps(ex.to_json(), sort_keys=True).encode())
    return h.hexdigest()


def checkpoint_dir(output: Path) -> Path:
    """Checkpoints live beside the output so a crashed run can resume; removed on success."""
    return output.parent / f".{output.name}.checkpoints"


def prepare_checkpoints(output: Path, stamp: str, resume: bool) -> tuple[Path, str | None]:
    """The checkpoint dir beside ``output``, wiped when it holds another config's or data's
    checkpoints; and the newest checkpoint to resume from (None: start fresh)."""
    ckpt = checkpoint_dir(output)
    stamp_file = ckpt / FINGERPRINT
    if ckpt.exists() and (not stamp_file.is_file() or stamp_file.read_text().strip() != stamp):
        shutil.rmtree(ckpt)  # never resume from another run's checkpoints
    ckpt.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    return ckpt, (get_last_checkpoint(str(ckpt)) if resume else None)


def training_arguments(train_cfg, ckpt: Path, per_device_batch_size: int) -> TrainingArguments:
    """The Trainer's arguments from the train section; DeepSpeed (a bundled name or a path)
    only when CUDA is present."""
    cuda = torch.cuda.is_available()
    # Resolved on every machine, so a wrong name fails here too; used only with CUDA.
    deepspeed = resolve_deepspeed_config(train_cfg.deepspeed) if train_cfg.deepspeed else None
    return TrainingArguments(
        output_dir=str(ckpt),
        per_device_train_batch_size=per_device_batch_size,
        learning_rate=train_cfg.learning_rate,
        num_train_epochs=train_cfg.epochs,
        max_steps=train_cfg.max_steps,
        warmup_steps=train_cfg.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=train_cfg.weight_decay,
        logging_steps=train_cfg.logging_steps,
        save_steps=train_cfg.save_steps,
        save_total_limit=train_cfg.save_total_limit,
        seed=train_cfg.seed,
        data_seed=train_cfg.seed,
        dataloader_drop_last=True,  # in-batch negatives want full batches
        remove_unused_columns=False,
        report_to="none",
        use_cpu=not cuda,
        deepspeed=str(deepspeed) if (cuda and deepspeed) else None,
    )


def loss_summary(trainer: Trainer, result) -> dict[str, float]:
    """Loss at the start and the end of training: the median of the first and of the last
    third of the logged losses. Batches differ a lot (length buckets, hard negatives), so
    one logged step, or a mean with one outlier in it, can read as a rise when training went down."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    k = max(1, len(losses) // 3)
    return {
        "train_loss": float(result.training_loss),
        "loss_start": statistics.median(losses[:k]) if losses else float("nan"),
        "loss_end": statistics.median(losses[-k:]) if losses else float("nan"),
        "loss_logged": float(len(losses)),
        "steps": float(trainer.state.global_step),
    }


def describe_loss(summary: dict[str, float]) -> str:
    return (
        f"loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f} "
        f"(median of the first and the last third of {summary['loss_logged']:.0f} logged losses)"
    )


def train(model_cfg, train_cfg, examples: Sequence[TrainExample], output: Path) -> dict[str, float]:
    # ---- setup
    if train_cfg.cross_device_negatives and not train_cfg.in_batch_negatives:
        raise ConfigError("train.cross_device_negatives=true needs train.in_batch_negatives=true")
    torch.manual_seed(train_cfg.seed)
    embedder = Embedder.from_config(model_cfg)
    if train_cfg.gradient_checkpointing:
        embedder.model.gradient_checkpointing_enable()
    dataset = GroupDataset(examples, train_cfg.train_group_size, train_cfg.seed, train_cfg.distill)
    model = BiEncoderForTraining(
        embedder, train_cfg.temperature, train_cfg.in_batch_negatives, train_cfg.distill_weight, train_cfg.cross_device_negatives
    )

    # Under torchrun, building the arguments joins the process group (gloo on CPU, NCCL on GPU).
    args = training_arguments(train_cfg, checkpoint_dir(output), train_cfg.batch_size)
    world = args.world_size
    with args.main_process_first(local=False, desc="checkpoint fingerprint"):  # rank 0 cleans up, the rest then agree
        ckpt, resume = prepare_checkpoints(output, fingerprint(model_cfg, train_cfg, examples), train_cfg.resume_from_checkpoint)

    steps_per_epoch = len(dataset) // (train_cfg.batch_size * world)
    if steps_per_epoch == 0:
        raise DataError(f"{len(dataset)} training queries are fewer than one batch of {train_cfg.batch_size * world}; lower train.batch_size")
    total = train_cfg.max_steps if train_cfg.max_steps > 0 else int(steps_per_epoch * train_cfg.epochs)
    group = train_cfg.train_group_size
    print(
        f"train_embedder: {len(dataset)} queries | batch {train_cfg.batch_size} x {world} device(s) = "
        f"{train_cfg.batch_size * world} queries/step, {train_cfg.batch_size * world * group} passages/step "
        f"(group {group}{', in-batch negatives' if train_cfg.in_batch_negatives else ''}"
        f"{' from all devices' if train_cfg.cross_device_negatives and world > 1 else ''}) | "
        f"{steps_per_epoch} steps/epoch, {total} steps | tokens/step <= "
        f"{train_cfg.batch_size * (model_cfg.query_max_len + group * model_cfg.passage_max_len)}"
        + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=GroupCollator(embedder),
        callbacks=[MlflowThroughputCallback(train_cfg.batch_size * world), EpochSeedCallback(dataset)],
    )

    # ---- train
    result = trainer.train(resume_from_checkpoint=resume)

    # ---- save (rank 0 only) and cleanup
    if trainer.is_world_process_zero():
        embedder.save(output)
        shutil.rmtree(ckpt, ignore_errors=True)
    return loss_summary(trainer, result)
