"""The BGE-M3 recipe on the HF Trainer. Read top to bottom:
setup (data, model, loss) -> train (checkpoints, resume) -> save -> cleanup.

The data, collation, process group, checkpoints, Trainer arguments and logging are the
ones both recipes share (``flagops.training.common``). What M3 adds: the sparse and
ColBERT heads, the unified loss with self-distillation (``flagops.losses.m3``), optional
length-grouped batches and sub-batched encoding (``flagops.training.batching``), and a
checkpoint in FlagEmbedding's M3 layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from flagops.config import ConfigError
from flagops.data.formats import TrainExample
from flagops.losses.m3 import M3UnifiedLoss
from flagops.models.m3 import M3Embedder, M3Output, colbert_scores, inner_scores
from flagops.training import common
from flagops.training.batching import LengthGroupedBatches, encode_in_chunks, example_lengths, unwrap_batch

# --------------------------------------------------------------------------- model


class M3ForTraining(nn.Module):
    """M3Embedder + unified loss; returns {"loss"} as the Trainer expects.

    ``global_step`` (set by ``StepCallback`` from the Trainer's state, so it survives a
    resume) switches self-distillation on at ``self_distill_start_step``.
    """

    def __init__(
        self,
        m3: M3Embedder,
        loss: M3UnifiedLoss,
        modes: Sequence[str],
        *,
        sub_batch_size: int | None = None,
        self_distill: bool = True,
        self_distill_start_step: int = 0,
    ):
        super().__init__()
        self.m3 = m3
        self.loss = loss
        self.modes = tuple(modes)
        self.sub_batch_size = sub_batch_size
        self.self_distill = self_distill
        self.self_distill_start_step = self_distill_start_step
        self.global_step = 0
        self.last_terms: dict[str, float] = {}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> M3Output:
        return encode_in_chunks(self.m3, (input_ids, attention_mask), self.sub_batch_size, modes=self.modes)

    def similarities(self, q: M3Output, p: M3Output) -> dict[str, torch.Tensor]:
        """Raw mode -> (batch, batch * group) scores of every query against every passage."""
        out = {}
        if "dense" in self.modes:
            out["dense"] = inner_scores(q.dense, p.dense)
        if "sparse" in self.modes:
            out["sparse"] = inner_scores(self.m3.sparse_vectors(q), self.m3.sparse_vectors(p))
        if "colbert" in self.modes:
            out["colbert"] = colbert_scores(q.colbert, q.colbert_mask, p.colbert, p.colbert_mask)
        return out

    def forward(self, q_input_ids, q_attention_mask, p_input_ids, p_attention_mask, teacher_scores=None):
        q = self.encode(q_input_ids, q_attention_mask)  # (batch, ...)
        p = self.encode(p_input_ids, p_attention_mask)  # (batch * group, ...)
        group = p_input_ids.shape[0] // q_input_ids.shape[0]
        distil = self.self_distill and self.global_step >= self.self_distill_start_step
        out = self.loss(self.similarities(q, p), group, teacher=teacher_scores, self_distill=distil, dense=(q.dense, p.dense))
        self.last_terms = {k: float(v.detach()) for k, v in out.terms.items()}
        return {"loss": out.loss}


class StepCallback(TrainerCallback):
    def __init__(self, model: M3ForTraining):
        self.model = model

    def on_step_begin(self, args, state, control, **kwargs):
        self.model.global_step = state.global_step


# --------------------------------------------------------------------------- head learning rate


def set_head_learning_rate(trainer: Trainer, model: M3ForTraining, head_lr: float) -> None:
    """Train the sparse and ColBERT heads at ``head_lr``, the rest at the Trainer's rate.

    Keeps the Trainer's optimizer class, its weight-decay split and its scheduler (which
    scales each group's own rate); only the parameter groups change.
    """
    decay = set(trainer.get_decay_parameter_names(model))
    heads = {id(p) for head in model.m3.heads().values() for p in head.parameters()}
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr = head_lr if id(param) in heads else trainer.args.learning_rate
            groups.setdefault((lr, trainer.args.weight_decay if name in decay else 0.0), []).append(param)
    cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    trainer.optimizer_cls_and_kwargs = (cls, {**kwargs, "params": params})  # create_optimizer takes "params" as the groups


# --------------------------------------------------------------------------- recipe


def train(model_cfg, m3_cfg, train_cfg, examples: Sequence[TrainExample], output: Path, loss_curve: Path | None = None) -> dict[str, float]:
    # ---- setup
    torch.manual_seed(train_cfg.seed)
    world = common.world_size()  # from torchrun's WORLD_SIZE: the process group is joined only by the Trainer's arguments
    modes = m3_cfg.trained_modes
    cross_device = train_cfg.cross_device_negatives
    if cross_device and not (train_cfg.in_batch_negatives and "dense" in modes):
        raise ConfigError(
            "train.cross_device_negatives=true gathers dense in-batch negatives: "
            "it needs train.in_batch_negatives=true and the dense mode in m3.modes"
        )
    if cross_device and world > 1 and set(m3_cfg.bucket_batch_sizes) - {train_cfg.batch_size}:
        # the all-gather needs the same batch size on every rank, and ranks draw different buckets
        raise ConfigError("train.cross_device_negatives=true under torchrun needs one batch size: drop m3.bucket_batch_sizes")
    m3 = M3Embedder.from_config(model_cfg, m3_cfg, seed=train_cfg.seed)
    if train_cfg.gradient_checkpointing:
        m3.embedder.model.gradient_checkpointing_enable()
    if m3_cfg.fix_encoder:
        m3.embedder.model.requires_grad_(False)  # the Trainer's optimizer skips frozen parameters
    groups = common.GroupDataset(examples, train_cfg.train_group_size, train_cfg.seed, train_cfg.distill)
    collate = common.GroupCollator(m3)  # needs only .tokenize, which M3Embedder forwards to its Embedder
    dataset, per_device, queries_per_step = groups, train_cfg.batch_size, float(train_cfg.batch_size)
    if m3_cfg.length_buckets:
        lengths = example_lengths(examples, m3.tokenizer, m3.settings.passage_max_len)
        dataset = LengthGroupedBatches(
            groups, lengths, m3_cfg.length_buckets, m3_cfg.bucket_batch_sizes, train_cfg.batch_size, train_cfg.seed
        )
        collate, per_device, queries_per_step = unwrap_batch(collate), 1, dataset.mean_batch_size
    loss = M3UnifiedLoss(train_cfg.temperature, train_cfg.in_batch_negatives, m3_cfg.kd_loss, train_cfg.distill_weight, cross_device)
    model = M3ForTraining(
        m3,
        loss,
        modes,
        sub_batch_size=m3_cfg.sub_batch_size,
        self_distill=m3_cfg.self_distill,
        self_distill_start_step=m3_cfg.self_distill_start_step,
    )

    args = common.training_arguments(train_cfg, output, per_device)  # joins the process group under torchrun
    stamp = common.fingerprint(model_cfg, m3_cfg, train_cfg, examples=examples)
    ckpt, resume = common.prepare_checkpoints(output, stamp, train_cfg.resume_from_checkpoint)
    steps_per_epoch, total = common.schedule(
        len(dataset) // per_device, world, train_cfg, queries=len(groups), queries_per_batch=queries_per_step
    )
    group = train_cfg.train_group_size
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"train_m3: {len(groups)} queries | modes {'+'.join(modes)}"
        f"{' + self-distillation from step ' + str(m3_cfg.self_distill_start_step) if m3_cfg.self_distill and len(modes) > 1 else ''} | "
        f"{queries_per_step:g} queries x {world} device(s)/step, {queries_per_step * world * group:g} passages/step (group {group}"
        f"{', in-batch negatives' if train_cfg.in_batch_negatives else ''}"
        f"{f', dense negatives across {world} devices' if cross_device and world > 1 else ''}"
        f"{', length-grouped' if m3_cfg.length_buckets else ''}"
        f"{f', sub-batches of {m3_cfg.sub_batch_size}' if m3_cfg.sub_batch_size else ''}) | "
        f"{steps_per_epoch} steps/epoch, {total} steps | {trainable / 1e6:.2f}M trainable parameters"
        f"{' (heads only)' if m3_cfg.fix_encoder else ''} | colbert_dim {m3.m3_settings.colbert_dim}"
        f"{f' | heads at lr {m3_cfg.head_learning_rate:g}' if m3_cfg.head_learning_rate else ''}"
        + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collate,
        callbacks=[common.MlflowThroughputCallback(queries_per_step * world), common.EpochSeedCallback(dataset), StepCallback(model)],
    )

    if m3_cfg.head_learning_rate is not None:
        set_head_learning_rate(trainer, model, m3_cfg.head_learning_rate)

    # ---- train
    result = common.train(trainer, resume)

    # ---- save (rank 0 only) and cleanup
    common.save_and_clean_up(trainer, m3, output, ckpt)
    common.write_loss_curve(trainer, loss_curve)
    return {**common.loss_summary(trainer, result), **{f"loss_{k}_last": v for k, v in model.last_terms.items()}}
