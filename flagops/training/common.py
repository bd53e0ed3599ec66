"""What the training recipes (``embedder``, ``m3``) share: the group data, the process
group, checkpoints, the Trainer's arguments, the derived quantities and the loss summary.

Under torchrun every rank runs the whole recipe. ``training_arguments`` joins the process
group, so call it before anything that asks for the world size or waits at a barrier.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import shutil
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

from flagops.data.formats import DataError, TrainExample, write_json
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
                raise DataError(
                    f"training example {i + 1} ({ex.query[:40]!r}) has no negatives; "
                    "run mine_hard_negatives or set train.train_group_size=1"
                )
            if distill and (ex.pos_scores is None or ex.neg_scores is None):
                raise DataError(
                    f"training example {i + 1} has no pos_scores/neg_scores; score it with a teacher or set train.distill=false"
                )

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
    """Tokenises a list of ``GroupDataset`` items; ``encoder`` needs only ``.tokenize``."""

    encoder: Any

    def __call__(self, items):
        queries = [q for q, _, _ in items]
        passages = [p for _, group, _ in items for p in group]
        q = self.encoder.tokenize(queries, is_query=True)
        p = self.encoder.tokenize(passages, is_query=False)
        batch = {
            "q_input_ids": q["input_ids"],
            "q_attention_mask": q["attention_mask"],
            "p_input_ids": p["input_ids"],
            "p_attention_mask": p["attention_mask"],
        }
        if items[0][2] is not None:
            batch["teacher_scores"] = torch.tensor([s for _, _, s in items], dtype=torch.float32)  # (batch, group)
        return batch


# --------------------------------------------------------------------------- process group


def world_size() -> int:
    """Processes in this run: the process group's size, else torchrun's WORLD_SIZE (set before
    the group exists, so a recipe that asks early still gets the right answer), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's global rank: the process group's, else torchrun's RANK, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def barrier() -> None:
    """Wait for every rank; a no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --------------------------------------------------------------------------- checkpoints and arguments


def stamp(*configs, data: Iterable[str] = ()) -> str:
    """A hash of the config sections and the data's texts: checkpoints of another run never resume."""
    h = hashlib.sha256(b"".join(c.model_dump_json().encode() for c in configs))
    for text in data:
        h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


def fingerprint(*configs, examples: Sequence[TrainExample], extra: Iterable[str] = ()) -> str:
    """``stamp`` of the config sections, the training examples and ``extra`` (a base model's digest, say)."""
    return stamp(*configs, data=itertools.chain((json.dumps(ex.to_json(), sort_keys=True) for ex in examples), extra))


def checkpoint_dir(output: Path) -> Path:
    """Checkpoints live beside the output so a crashed run can resume; removed on success."""
    return output.parent / f".{output.name}.checkpoints"


def checkpoint_complete(path: Path) -> bool:
    """The Trainer writes a checkpoint in place, trainer_state.json last (and not atomically):
    a run killed while saving leaves a checkpoint without it, or with it cut short."""
    try:
        json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def prepare_checkpoints(output: Path, stamp: str, resume: bool) -> tuple[Path, str | None]:
    """The checkpoint dir beside ``output``, wiped when it holds another config's or data's
    checkpoints; and the newest checkpoint to resume from (None: start fresh).

    Rank 0 alone wipes and stamps (ranks share the directory: one PVC, one disk); the others
    wait at a barrier, then every rank looks up the same newest checkpoint.
    """
    ckpt = checkpoint_dir(output)
    stamp_file = ckpt / FINGERPRINT
    if rank() == 0:
        if ckpt.exists() and (not stamp_file.is_file() or stamp_file.read_text().strip() != stamp):
            shutil.rmtree(ckpt)  # never resume from another run's checkpoints
        ckpt.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp)
        for partial in ckpt.glob("checkpoint-*"):
            if partial.is_dir() and not checkpoint_complete(partial):
                shutil.rmtree(partial)  # get_last_checkpoint would pick it, and the resume would fail or load half
    barrier()
    return ckpt, (get_last_checkpoint(str(ckpt)) if resume else None)


def training_arguments(train_cfg, output: Path, per_device_batch_size: int) -> TrainingArguments:
    """The Trainer's arguments from the train section; DeepSpeed (a bundled name or a path)
    only when CUDA is present. Under torchrun this joins the process group (gloo on CPU,
    NCCL on GPU), so ``world_size``, ``rank`` and ``barrier`` see it from here on."""
    cuda = torch.cuda.is_available()
    # Resolved on every machine, so a wrong name fails here too; used only with CUDA.
    deepspeed = resolve_deepspeed_config(train_cfg.deepspeed) if train_cfg.deepspeed else None
    args = TrainingArguments(
        output_dir=str(checkpoint_dir(output)),
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
    _ = args.device  # sets up the devices, and with them the process group, now rather than inside train()
    return args


def schedule(batches: int, world: int, train_cfg, *, queries: int, queries_per_batch: float) -> tuple[int, int]:
    """(steps per epoch, total steps) for ``batches`` per-device batches shared by ``world`` ranks;
    a clear error when the data makes no full step on every rank."""
    steps_per_epoch = batches // world
    if steps_per_epoch == 0:
        raise DataError(
            f"{queries} training queries make no full step of {queries_per_batch:g} queries x {world} device(s); "
            "lower train.batch_size or add training data"
        )
    total = train_cfg.max_steps if train_cfg.max_steps > 0 else int(steps_per_epoch * train_cfg.epochs)
    return steps_per_epoch, total


def train(trainer: Trainer, resume: str | None):
    """``trainer.train(resume_from_checkpoint=resume)``, except from a checkpoint of the last step.

    There the HF Trainer would run one more batch: it skips the batches its epoch already
    trained, then steps before it checks ``max_steps`` (a run killed after its final checkpoint,
    before the model was saved, came back with a step 7 of 6 on its loss curve; found by
    tests/reliability's kill-and-resume chain). So the checkpoint's weights and state are loaded
    and training is not entered; the result is what ``train`` returns, from the logged losses."""
    if resume is not None and trainer.args.max_steps > 0:
        state = TrainerState.load_from_json(os.path.join(resume, TRAINER_STATE_NAME))
        if state.global_step >= trainer.args.max_steps:
            trainer._load_from_checkpoint(resume)  # the weights (a peft adapter too), as train() would load them
            trainer.state = state
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            return TrainOutput(state.global_step, statistics.fmean(losses) if losses else float("nan"), {})
    return trainer.train(resume_from_checkpoint=resume)


def save_and_clean_up(trainer: Trainer, model, output: Path, ckpt: Path) -> None:
    """Rank 0 saves ``model`` (anything with ``.save(path)``) and removes the checkpoints."""
    if trainer.is_world_process_zero():
        model.save(output)
        shutil.rmtree(ckpt, ignore_errors=True)


# --------------------------------------------------------------------------- logging


class MlflowThroughputCallback(TrainerCallback):
    """Loss, learning rate and queries/s to the step's MLflow run at each logging step."""

    def __init__(self, queries_per_step: float):
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
    """Re-seeds the dataset's negatives (and length batches) at each epoch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.epoch = int(state.epoch or 0)


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


def untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its own copy for each further name of a tied tensor (an MLM or LM head that
    is the embedding matrix): the Trainer writes checkpoints of a plain module with safetensors,
    which refuses tensors that share memory. A resume fills both names alike."""
    seen = set()
    for key, tensor in state.items():
        ident = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if tensor.numel() and ident in seen:
            state[key] = tensor.detach().clone()
        seen.add(ident)
    return state


def with_base_model(cfg, inputs):
    """``cfg`` with ``model.base`` set to the ``base_model`` input when the pipeline hands one
    over (pretrain_retromae's encoder); the profile's own base otherwise. Only the trainers see
    it: evaluate's ``base`` system stays the profile's base, the yardstick of both."""
    if "base_model" not in inputs:
        return cfg
    print(f"training from {inputs['base_model']} (the pretrained base) instead of {cfg.model.base}")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"base": str(inputs["base_model"])})})


def write_loss_curve(trainer: Trainer, path: Path | None) -> None:
    """Rank 0 writes every logged loss as ``[{"step", "loss"}]``: the ``dvc plots`` line plot
    of the run (a resumed run's history comes back with its checkpoint, so the curve is whole)."""
    if path is not None and trainer.is_world_process_zero():
        rows = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
        write_json(path, rows)


def describe_loss(summary: dict[str, float]) -> str:
    return (
        f"loss {summary['loss_start']:.4f} -> {summary['loss_end']:.4f} "
        f"(median of the first and the last third of {summary['loss_logged']:.0f} logged losses)"
    )
