"""The BGE contrastive recipe on the HF Trainer. Read top to bottom:
setup (data, model, loss) -> train (checkpoints, resume) -> save -> cleanup.

Each query is trained against a group of ``train_group_size`` passages: one positive and
``train_group_size - 1`` hard negatives (resampled with repetition when too few), plus
every other query's group when in-batch negatives are on. With teacher scores and
``distill`` on, a KL term pulls the group's softmax towards the teacher's. Queries and
passages are encoded in length-sorted chunks of ``train.length_chunk`` rows, each padded to
its own longest (``batching.encode_length_sorted``): the same loss, far fewer padded tokens;
with ``train.checkpoint_chunks`` each chunk is checkpointed (GradCache's memory trade).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from flagops.config import ConfigError
from flagops.data.formats import TrainExample
from flagops.losses.infonce import InBatchContrastiveLoss, group_scores, local_scores
from flagops.losses.kl_distill import KLDistillLoss
from flagops.models.embedder import Embedder
from flagops.training import common
from flagops.training.batching import encode_length_sorted

# --------------------------------------------------------------------------- model


class BiEncoderForTraining(nn.Module):
    """Embedder + losses; returns {"loss"} as the Trainer expects."""

    def __init__(
        self,
        embedder: Embedder,
        temperature: float,
        in_batch: bool,
        distill_weight: float,
        cross_device: bool = False,
        length_chunk: int | None = None,
        checkpoint_chunks: bool = False,
    ):
        super().__init__()
        self.embedder = embedder
        self.length_chunk = length_chunk
        self.checkpoint_chunks = checkpoint_chunks
        self.in_batch = in_batch
        self.temperature = temperature
        self.contrastive = InBatchContrastiveLoss(temperature, in_batch, cross_device)  # gathers across ranks if asked
        self.distill = KLDistillLoss()
        self.distill_weight = distill_weight

    def forward(self, q_input_ids, q_attention_mask, p_input_ids, p_attention_mask, teacher_scores=None):
        chunks = (self.length_chunk, self.checkpoint_chunks)
        q = encode_length_sorted(self.embedder, q_input_ids, q_attention_mask, *chunks)  # (batch, dim)
        p = encode_length_sorted(self.embedder, p_input_ids, p_attention_mask, *chunks)  # (batch * group, dim)
        loss = self.contrastive(q, p)
        if teacher_scores is not None:  # each query's group is on its own rank: the KL term stays local
            scores = group_scores(q, p, self.temperature, self.in_batch)
            student = local_scores(scores, teacher_scores.shape[1], self.in_batch)  # (batch, group)
            loss = loss + self.distill_weight * self.distill(student, teacher_scores)
        return {"loss": loss}


# --------------------------------------------------------------------------- recipe


def train(model_cfg, train_cfg, examples: Sequence[TrainExample], output: Path, loss_curve: Path | None = None) -> dict[str, float]:
    # ---- setup
    if train_cfg.cross_device_negatives and not train_cfg.in_batch_negatives:
        raise ConfigError("train.cross_device_negatives=true needs train.in_batch_negatives=true")
    if train_cfg.checkpoint_chunks and train_cfg.length_chunk is None:
        raise ConfigError("train.checkpoint_chunks=true checkpoints each length chunk; set train.length_chunk (e.g. 16)")
    torch.manual_seed(train_cfg.seed)
    embedder = Embedder.from_config(model_cfg)
    if train_cfg.gradient_checkpointing:
        embedder.model.gradient_checkpointing_enable()
    dataset = common.GroupDataset(examples, train_cfg.train_group_size, train_cfg.seed, train_cfg.distill)
    model = BiEncoderForTraining(
        embedder,
        train_cfg.temperature,
        train_cfg.in_batch_negatives,
        train_cfg.distill_weight,
        train_cfg.cross_device_negatives,
        train_cfg.length_chunk,
        train_cfg.checkpoint_chunks,
    )

    args = common.training_arguments(train_cfg, output, train_cfg.batch_size)  # joins the process group under torchrun
    world = common.world_size()
    stamp = common.fingerprint(model_cfg, train_cfg, examples=examples)
    ckpt, resume = common.prepare_checkpoints(output, stamp, train_cfg.resume_from_checkpoint)
    steps_per_epoch, total = common.schedule(
        len(dataset) // train_cfg.batch_size, world, train_cfg, queries=len(dataset), queries_per_batch=train_cfg.batch_size
    )
    group = train_cfg.train_group_size
    print(
        f"train_embedder: {len(dataset)} queries | batch {train_cfg.batch_size} x {world} device(s) = "
        f"{train_cfg.batch_size * world} queries/step, {train_cfg.batch_size * world * group} passages/step "
        f"(group {group}{', in-batch negatives' if train_cfg.in_batch_negatives else ''}"
        f"{' from all devices' if train_cfg.cross_device_negatives and world > 1 else ''}) | "
        f"{steps_per_epoch} steps/epoch, {total} steps | tokens/step/device <= "
        f"{train_cfg.batch_size * (model_cfg.query_max_len + group * model_cfg.passage_max_len)}"
        + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=common.GroupCollator(embedder),
        callbacks=[common.MlflowThroughputCallback(train_cfg.batch_size * world), common.EpochSeedCallback(dataset)],
    )

    # ---- train
    result = common.train(trainer, resume)

    # ---- save (rank 0 only) and cleanup
    common.save_and_clean_up(trainer, embedder, output, ckpt)
    common.write_loss_curve(trainer, loss_curve)
    return common.loss_summary(trainer, result)
