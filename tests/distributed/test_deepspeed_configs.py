"""Bundled DeepSpeed ZeRO configs: each parses, asks for its stage, and leaves to the HF
Trainer what it fills in ("auto"); `train.deepspeed` takes a bundled name or a path.
DeepSpeed itself is not installed here (it gains nothing on CPU); the image has it.
"""

from __future__ import annotations

import json

import pytest

from flagops.config import ConfigError, load_config
from flagops.training.deepspeed import bundled, resolve_deepspeed_config, zero_stage

EXPECTED = {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}
# Filled in by the Trainer from TrainingArguments, so one file serves every batch size and precision.
AUTO = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


@pytest.mark.parametrize(("name", "stage"), sorted(EXPECTED.items()))
def test_bundled_config_parses_with_its_stage(name, stage):
    path = resolve_deepspeed_config(name)
    data = json.loads(path.read_text())
    assert zero_stage(path) == data["zero_optimization"]["stage"] == stage
    assert all(data[key] == "auto" for key in AUTO)
    assert data["bf16"]["enabled"] == data["fp16"]["enabled"] == "auto"


def test_every_bundled_file_is_known():
    assert set(bundled()) == set(EXPECTED)


def test_offload_moves_the_optimizer_to_cpu_with_deepspeeds_own_adam():
    data = json.loads(resolve_deepspeed_config("zero3_offload").read_text())
    assert data["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    # ZeRO-Offload refuses a torch optimizer by default; a config optimizer makes DeepSpeed build its CPU Adam.
    assert data["optimizer"]["type"] == "AdamW" and set(data["optimizer"]["params"].values()) == {"auto"}


def test_a_path_works_too(tmp_path):
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "train_batch_size": "auto"}))
    assert resolve_deepspeed_config(str(own)) == own and zero_stage(own) == 2


def test_unknown_name_is_a_clear_error():
    with pytest.raises(
        ConfigError, match=r"train.deepspeed='zero9': neither a bundled config \(zero0, zero1, zero2, zero3, zero3_offload\)"
    ):
        resolve_deepspeed_config("zero9")


def test_invalid_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2},}')
    with pytest.raises(ConfigError, match=r"ds.json:1: invalid JSON"):
        resolve_deepspeed_config(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        resolve_deepspeed_config(str(bad))


def test_recipe_resolves_the_name_before_training_even_without_cuda(tmp_path):
    from flagops.training.embedder import train

    cfg = load_config("tiny", ["train.deepspeed=zero7"])
    with pytest.raises(ConfigError, match="zero7"):
        train(cfg.model, cfg.train, [], tmp_path / "m")
    cfg = load_config("tiny", ["train.cross_device_negatives=true", "train.in_batch_negatives=false"])
    with pytest.raises(ConfigError, match="needs train.in_batch_negatives=true"):
        train(cfg.model, cfg.train, [], tmp_path / "m")
