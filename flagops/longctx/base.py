"""The base LM: a tiny Llama trained from scratch on the corpus at a short context.

No pretrained causal LM is available offline here, so the long-context recipe needs a base
of its own: a byte-level BPE trained on the corpus with the ``tokenizers`` library (digits
split one per token, so a code is copied digit by digit), and a Llama with
``max_position_embeddings = base_context`` and rope_theta 10000. It is trained on the
``needle`` module's mix at that context: plain text (language modelling) and short needle
QA, so that it can answer a needle question inside its own window, as Llama-3-Instruct can
at 8K, and the extension has an ability to stretch.

``train_lm`` is the Trainer run that the extension reuses: setup -> train (checkpoints,
resume) -> hand back the trainer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer

from flagops.data.formats import DataError, Passage, atomic_path
from flagops.longctx.needle import ANSWER, IGNORE, NEEDLE, QUESTION, needle_keys, training_samples
from flagops.models.llm_reranker import save_tokenizer
from flagops.training import common

ROPE_THETA = 10000.0  # the base's; Llama-2's value
SPECIALS = ("<pad>", "<s>", "</s>")


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` (and the needle templates); bos added, pad on the right."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    templates = [NEEDLE.format(key="json", code="0123456789") + QUESTION.format(key="json") + ANSWER.format(code="42")] * 20
    bpe.train_from_iterator([*texts, *templates], trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="right")


def base_model(cfg, tokenizer) -> LlamaForCausalLM:
    """A random Llama of the ``longctx`` section's size, its window ``base_context`` tokens."""
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.hidden_size * 4,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.base_context,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,  # safetensors checkpoints and peft's modules_to_save stay simple
    )
    return LlamaForCausalLM(config)


# --------------------------------------------------------------------------- data


class SampleDataset(Dataset):
    def __init__(self, samples: list[dict[str, list[int]]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.samples[i]


@dataclass
class PadCollator:
    """Right-pads ``input_ids`` (pad id) and ``labels`` (ignored) to the batch's longest sample."""

    pad_id: int

    def __call__(self, items):
        width = max(len(it["input_ids"]) for it in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)  # (batch, seq)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            input_ids[i, :n] = torch.tensor(it["input_ids"])
            labels[i, :n] = torch.tensor(it["labels"])
            mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a label (position i predicts token i + 1): those i where
    any row has ``labels[:, i + 1]`` set. 1-D, ascending."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)


class AnswerLossTrainer(Trainer):
    """The causal-LM loss from the logits of the labelled positions only.

    HF's loss projects every position through the LM head: at 80K tokens and Llama-3's 128K
    vocabulary that is some 63 GB of fp32 logits, the biggest term of the memory plan
    (docs/long-context.md), when only the answer's few tokens carry a label. Here the model
    returns logits at the predicting positions (``logits_to_keep``) and the loss is the same
    mean cross-entropy over labelled tokens (a test checks it against HF's loss and gradient).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        keep = predicting_positions(labels)  # (k,)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
        logits = outputs.logits.float()  # (batch, k, vocab)
        targets = labels[:, keep + 1]  # (batch, k)
        total = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        # As HF's loss: over the step's labelled tokens when the Trainer counts them across
        # accumulated micro-batches (and then does not divide by the accumulation steps itself).
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            loss = total / num_items_in_batch
        else:
            loss = total / (targets != IGNORE).sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss


def data_fingerprint(*parts) -> str:
    """A hash of configs (pydantic) and data: another run's checkpoints never resume."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.model_dump_json().encode() if hasattr(part, "model_dump_json") else json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- recipe


def train_lm(model, tokenizer, samples: list[dict[str, list[int]]], train_cfg, output: Path, stamp: str, what: str):
    """Causal-LM training of ``model`` on ``samples`` with checkpoints beside ``output`` and resume;
    (trainer, loss summary, checkpoint dir)."""
    dataset = SampleDataset(samples)
    args = common.training_arguments(train_cfg, output, train_cfg.batch_size)
    world = common.world_size()
    steps_per_epoch = len(dataset) // train_cfg.batch_size // world
    if steps_per_epoch == 0:
        raise DataError(f"{len(dataset)} samples make no full step of {train_cfg.batch_size} x {world} device(s); lower the batch size")
    total = train_cfg.max_steps if train_cfg.max_steps > 0 else int(steps_per_epoch * train_cfg.epochs)
    ckpt, resume = common.prepare_checkpoints(output, stamp, train_cfg.resume_from_checkpoint)
    tokens = sum(len(s["input_ids"]) for s in samples) / len(samples)
    print(
        f"{what}: {len(dataset)} samples (mean {tokens:.0f} tokens) | batch {train_cfg.batch_size} x {world} device(s) | "
        f"{steps_per_epoch} steps/epoch, {total} steps | tokens/step/device ~{train_cfg.batch_size * tokens:.0f}"
        + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = AnswerLossTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        callbacks=[common.MlflowThroughputCallback(train_cfg.batch_size * world)],
    )
    result = common.train(trainer, resume)
    return trainer, common.loss_summary(trainer, result), ckpt


def train_base(cfg, passages: Sequence[Passage], output: Path, loss_curve: Path | None = None) -> dict[str, float]:
    """Train the base LM (the ``longctx`` section ``cfg``) on ``passages``; model + tokenizer to ``output``."""
    # ---- setup
    tokenizer = train_tokenizer([p.full_text for p in passages], cfg.vocab_size)
    needle_keys(passages)  # a corpus with nothing to name needles after fails here, before training
    model = base_model(cfg, tokenizer)
    samples = training_samples(tokenizer, passages, cfg.samples, (64, cfg.base_context), cfg.base_context, cfg.short_fraction, cfg.seed)
    stamp = data_fingerprint(cfg, [p.to_json() for p in passages])

    # ---- train
    trainer, summary, ckpt = train_lm(model, tokenizer, samples, cfg.base_train, output, stamp, "train_base_lm")

    # ---- save (rank 0) and cleanup
    if trainer.is_world_process_zero():
        with atomic_path(output, is_dir=True) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            save_tokenizer(tokenizer, tmp)
        shutil.rmtree(ckpt, ignore_errors=True)
    common.write_loss_curve(trainer, loss_curve)
    return summary
