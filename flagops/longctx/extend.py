"""Context extension: RoPE rescaling by ``factor``, then LoRA on the long-context mix.

Read top to bottom: config (RoPE, window) -> model (4-bit on CUDA, LoRA, gradient
checkpointing) -> train (checkpoints, resume) -> save (merged weights, ``adapter/``,
``longctx.json``).

FlagEmbedding's Llama-3-8B-Instruct-80K-QLoRA raised ``rope_theta`` from 500e3 to 200e6 and
trained LoRA (r 32, alpha 16, q/k/v/o, ``embed_tokens`` trained in full) on QLoRA weights.
``rope_scaling: theta`` does the same; ``linear``, ``dynamic`` and ``yarn`` are
transformers' ``rope_parameters`` types (interpolating positions by ``factor``) instead.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from flagops.data.formats import DataError, Passage, atomic_path
from flagops.longctx.base import data_fingerprint, train_lm
from flagops.longctx.needle import training_samples
from flagops.models.llm_reranker import save_tokenizer
from flagops.models.lora import stable_adapter_config
from flagops.training import common

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
SETTINGS_FILE = "longctx.json"


def extended_config(config, cfg):
    """A copy of the base's HF ``config`` with the window x ``factor`` and the RoPE settings of ``cfg``."""
    out = copy.deepcopy(config)
    original = config.max_position_embeddings
    theta = float(config.rope_parameters["rope_theta"])
    if cfg.rope_scaling == "theta":
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    else:
        rope = {"rope_type": cfg.rope_scaling, "rope_theta": theta, "factor": float(cfg.factor)}
        if cfg.rope_scaling == "yarn":
            rope["original_max_position_embeddings"] = original
    out.rope_parameters = rope
    out.max_position_embeddings = original * cfg.factor
    return out


def rope_settings(base_config, config, cfg) -> dict:
    """What ``longctx.json`` records: the RoPE before and after, the factor and the LoRA."""
    return {
        "factor": cfg.factor,
        "rope_scaling": cfg.rope_scaling,
        "original_max_position_embeddings": base_config.max_position_embeddings,
        "max_position_embeddings": config.max_position_embeddings,
        "original_rope_parameters": dict(base_config.rope_parameters),
        "rope_parameters": dict(config.rope_parameters),
        "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "target_modules": list(cfg.lora_target_modules)},
        "train_embeddings": cfg.train_embeddings,
    }


def quantization_config(cfg):
    """QLoRA's 4-bit NF4 weights (double quantisation, bf16 compute) when ``qlora`` is on and CUDA is
    present; None otherwise (bitsandbytes has no CPU kernels for training)."""
    if not (cfg.qlora and torch.cuda.is_available()):
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
    )


def lora_config(cfg):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        modules_to_save=["embed_tokens"] if cfg.train_embeddings else None,  # trained in full, saved with the adapter
    )


def load_extended(base_dir: Path, cfg, quantization=None):
    """(tokenizer, the base's weights under the extended config); 4-bit when ``quantization`` is given."""
    config = extended_config(AutoConfig.from_pretrained(str(base_dir)), cfg)
    kwargs = {"dtype": torch.float32}
    if quantization:  # 4-bit weights load onto this process's GPU: under torchrun, LOCAL_RANK's, not every rank's cuda:0
        kwargs = {"quantization_config": quantization, "dtype": torch.bfloat16, "device_map": {"": int(os.environ.get("LOCAL_RANK", 0))}}
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), config=config, **kwargs)
    return AutoTokenizer.from_pretrained(str(base_dir)), model


def trainable_model(base_dir: Path, cfg):
    """(tokenizer, peft model): the extended base, 4-bit on CUDA, LoRA on, gradient checkpointing on."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    quantization = quantization_config(cfg)
    tokenizer, model = load_extended(base_dir, cfg, quantization)
    if tokenizer.pad_token is None:  # Llama-3's tokenizer has none; padded positions carry no loss anyway
        tokenizer.pad_token = tokenizer.eos_token
    missing = set(cfg.lora_target_modules) - {name.rpartition(".")[2] for name, _ in model.named_modules()}
    if missing:
        raise DataError(f"longctx.lora_target_modules: {sorted(missing)} are not modules of {base_dir}; name its projections")
    model.config.use_cache = False  # no KV cache while training; it would be dropped under checkpointing anyway
    if quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(cfg))
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: the checkpointed layers still need a grad path
    trainable, total = model.get_nb_trainable_parameters()
    print(
        f"extend_context: LoRA r {cfg.lora_r} alpha {cfg.lora_alpha:g} on {list(cfg.lora_target_modules)}: "
        f"{trainable:,} of {total:,} parameters trained"
    )
    return tokenizer, model


def extend_context(cfg, base_dir: Path, passages: Sequence[Passage], output: Path, loss_curve: Path | None = None) -> dict[str, float]:
    """Extend ``base_dir`` by ``cfg.factor`` (the ``longctx`` section); merged model, ``adapter/`` and
    ``longctx.json`` to ``output``."""
    # ---- setup
    torch.manual_seed(cfg.seed)  # LoRA's A matrices start the same on every run
    tokenizer, model = trainable_model(base_dir, cfg)
    top = cfg.base_context * cfg.factor
    samples = training_samples(
        tokenizer, passages, cfg.samples, (cfg.base_context, top), cfg.base_context, cfg.short_fraction, cfg.seed + 1
    )
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(base_dir).glob("*.safetensors"))
    stamp = data_fingerprint(cfg, [p.to_json() for p in passages], weights)  # a retrained base never resumes old checkpoints

    # ---- train
    trainer, summary, ckpt = train_lm(model, tokenizer, samples, cfg.extend_train, output, stamp, "extend_context")

    # ---- save (rank 0) and cleanup
    if trainer.is_world_process_zero():
        save_extended(model, tokenizer, base_dir, cfg, output)
        shutil.rmtree(ckpt, ignore_errors=True)
    common.write_loss_curve(trainer, loss_curve)
    return summary


def save_extended(peft_model, tokenizer, base_dir: Path, cfg, output: Path) -> None:
    """The adapter, then the merged model: the adapter merged into a full-precision reload of the
    base under the extended config (a 4-bit base cannot take the merge without losing it)."""
    from peft import PeftModel

    with atomic_path(output, is_dir=True) as tmp:
        peft_model.save_pretrained(str(tmp / ADAPTER_DIR))
        stable_adapter_config(tmp / ADAPTER_DIR)
        _, base = load_extended(base_dir, cfg)
        merged = PeftModel.from_pretrained(base, str(tmp / ADAPTER_DIR)).merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
        settings = rope_settings(AutoConfig.from_pretrained(str(base_dir)), merged.config, cfg)
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
