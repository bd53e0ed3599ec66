"""Inference placement: the device/dtype table, the errors, and that each consumer asks for it.

There is no GPU here, so the CUDA rows mock ``torch.cuda.is_available`` / ``device_count``
(and ``fake_cuda`` records moves instead of doing them): they test the *choice* only. The
real move and fp16 numbers are the ``gpu``-marked test at the end, skipped without CUDA.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flagops.config import ConfigError, ServeConfig, load_config
from flagops.models import device
from flagops.models.device import CPU_FP32, Placement, inference_placement, select_device, select_dtype
from flagops.models.embedder import Embedder

CUDA0_FP16 = Placement(torch.device("cuda", 0), torch.float16)
TEXTS = ["a volcano erupts", "ice carves a valley", "violin strings resonate"]


def cuda(monkeypatch, available: bool, count: int = 2) -> None:
    """Mock what torch reports about CUDA (no GPU here): the selection reads only these two."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)


@pytest.mark.parametrize(
    ("preference", "available", "expected"),
    [
        ("auto", False, "cpu"),
        ("auto", True, "cuda:0"),
        ("cpu", False, "cpu"),
        ("cpu", True, "cpu"),
        ("cuda", True, "cuda:0"),
        ("cuda:1", True, "cuda:1"),
        ("cuda", False, "error"),
        ("cuda:1", False, "error"),
    ],
)
def test_device_table(monkeypatch, preference, available, expected):
    cuda(monkeypatch, available)
    if expected == "error":
        with pytest.raises(ConfigError, match=rf"^model.device={preference}: torch sees no CUDA device .*set model.device=auto or cpu$"):
            select_device(preference)
    else:
        assert select_device(preference) == torch.device(expected)


def test_cuda_index_past_the_devices_is_an_error(monkeypatch):
    cuda(monkeypatch, True, count=1)
    with pytest.raises(ConfigError, match=r"serve.device=cuda:1: torch sees 1 CUDA device\(s\) \(cuda:0..cuda:0\)"):
        select_device("cuda:1", key="serve.device")


@pytest.mark.parametrize(
    ("dev", "preference", "expected"),
    [
        ("cpu", "auto", torch.float32),
        ("cuda:0", "auto", torch.float16),
        ("cpu", "float32", torch.float32),
        ("cpu", "bfloat16", torch.bfloat16),
        ("cuda:0", "float32", torch.float32),
        ("cuda:0", "float16", torch.float16),
        ("cuda:0", "bfloat16", torch.bfloat16),
    ],
)
def test_dtype_table(dev, preference, expected):
    assert select_dtype(torch.device(dev), preference) == expected


def test_fp16_on_cpu_is_refused_not_replaced():
    with pytest.raises(ConfigError) as err:
        select_dtype(torch.device("cpu"), "float16", key="serve.dtype")
    assert str(err.value).startswith("serve.dtype=float16 runs on CUDA only")
    assert "set serve.dtype=auto or float32" in str(err.value)
    assert "\n" not in str(err.value)


def test_config_validates_the_spelling():
    with pytest.raises(ConfigError, match="model.device"):
        load_config("tiny", ["model.device=gpu"])
    with pytest.raises(ConfigError, match="serve.dtype"):
        load_config("tiny", ["serve.dtype=half"])
    cfg = load_config("tiny", ["model.device=cuda:1", "serve.dtype=bfloat16"])
    assert (cfg.model.device, cfg.serve.dtype) == ("cuda:1", "bfloat16")


def test_placement_reads_a_section(monkeypatch):
    cuda(monkeypatch, False)
    assert inference_placement() == CPU_FP32  # no config (the MLflow pyfunc): auto, auto
    assert inference_placement(load_config("tiny").model) == CPU_FP32
    bf16 = inference_placement(ServeConfig(dtype="bfloat16"), name="serve")
    assert bf16 == Placement(torch.device("cpu"), torch.bfloat16)
    cuda(monkeypatch, True)
    assert inference_placement(load_config("tiny").model) == CUDA0_FP16
    assert inference_placement(load_config("tiny", ["model.device=cpu"]).model) == CPU_FP32
    assert inference_placement(ServeConfig(device="cuda:1", dtype="float32"), name="serve") == Placement(
        torch.device("cuda", 1), torch.float32
    )


# ---------------------------------------------------------------- the consumers


def test_embedder_on_cpu_is_unchanged(tiny_embedder):
    """CPU, fp32, auto or explicit: nothing moves, and the numbers are those of a plain load."""
    for override in ([], ["model.device=cpu", "model.dtype=float32"]):
        cfg = load_config("tiny", override)
        placed = Embedder.from_config(cfg.model, inference=True)
        assert device.current_placement(placed) == CPU_FP32
        np.testing.assert_array_equal(placed.encode(TEXTS), Embedder.from_config(cfg.model).encode(TEXTS))


def test_embedder_bfloat16_really_moves():
    """A real move on this CPU (bfloat16 works here): the weights change dtype, outputs stay float32 and close."""
    cfg = load_config("tiny", ["model.dtype=bfloat16"])
    bf16 = Embedder.from_config(cfg.model, inference=True)
    assert device.current_placement(bf16) == Placement(torch.device("cpu"), torch.bfloat16)
    got, want = bf16.encode(TEXTS), Embedder.from_config(cfg.model).encode(TEXTS)
    assert got.dtype == np.float32
    assert (got * want).sum(1).min() > 0.99  # unit vectors: cosine


def test_embedder_and_m3_choose_cuda_fp16(fake_cuda):
    from flagops.models.m3 import M3Embedder

    cfg = load_config("tiny")
    Embedder.from_config(cfg.model)  # training's load: the Trainer places it, not us
    assert fake_cuda == []
    Embedder.from_config(cfg.model, inference=True)
    M3Embedder.from_config(cfg.model, cfg.m3, inference=True)  # encoder and heads together
    Embedder.from_config(load_config("tiny", ["model.dtype=bfloat16"]).model, inference=True)
    Embedder.from_config(load_config("tiny", ["model.device=cpu"]).model, inference=True)  # already there: no move
    bf16 = Placement(torch.device("cuda", 0), torch.bfloat16)
    assert fake_cuda == [("Embedder", CUDA0_FP16), ("M3Embedder", CUDA0_FP16), ("Embedder", bf16)]


def test_serving_models_choose_from_the_serve_section(fake_cuda, tiny_embedder, tmp_path):
    from flagops.models.m3 import M3Embedder
    from flagops.serving.embedder_model import EmbedderModel
    from flagops.serving.m3_model import M3Model
    from flagops.serving.reranker_model import RerankerModel

    M3Embedder.load("tiny-bert", colbert_dim=16).save(tmp_path / "m3")
    models = [
        EmbedderModel("e", "tiny-bert", ServeConfig()),
        RerankerModel("r", "tiny-reranker", ServeConfig(dtype="bfloat16")),
        M3Model("m", str(tmp_path / "m3"), ServeConfig(device="cuda:1")),
    ]
    try:
        for model in models:
            assert model.load()
    finally:
        for model in models:
            model.runtime.stop()
    assert fake_cuda == [
        ("Embedder", CUDA0_FP16),
        ("CrossEncoderReranker", Placement(torch.device("cuda", 0), torch.bfloat16)),
        ("M3Embedder", Placement(torch.device("cuda", 1), torch.float16)),
    ]


def test_mlflow_pyfunc_chooses_auto(fake_cuda):
    from flagops.models.layout import ARTIFACT
    from flagops.models.sources import resolve_model_source
    from flagops.registry.pyfunc import EmbedderPyfunc

    EmbedderPyfunc().load_context(SimpleNamespace(artifacts={ARTIFACT: str(resolve_model_source("tiny-bert"))}))
    assert fake_cuda == [("Embedder", CUDA0_FP16)]


def test_mining_step_chooses_cuda_fp16(fake_cuda, tmp_path):
    from flagops.data.formats import TrainExample, read_train_jsonl, write_train_jsonl
    from flagops.steps import execute

    examples = [TrainExample(query=f"query {i}", pos=[f"passage {i}"], neg=[f"other {i}"]) for i in range(12)]
    write_train_jsonl(tmp_path / "pairs.jsonl", examples)
    cfg = load_config("tiny", ["mining.range_start=0", "mining.range_end=5", "mining.negative_number=2"])
    execute("mine_hard_negatives", cfg, {"train_pairs": tmp_path / "pairs.jsonl"}, {"train_data": tmp_path / "mined.jsonl"}, track=False)
    assert fake_cuda == [("Embedder", CUDA0_FP16)]
    assert len(list(read_train_jsonl(tmp_path / "mined.jsonl"))) == 12  # the model stayed on the CPU and ran


def test_cuda_on_a_cpu_machine_is_a_config_error(monkeypatch):
    cuda(monkeypatch, False)
    with pytest.raises(ConfigError, match=r"^model.device=cuda: torch sees no CUDA device"):
        Embedder.from_config(load_config("tiny", ["model.device=cuda"]).model, inference=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_server_with_cuda_on_a_cpu_machine_exits_2_in_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "flagops.cli", "serve", "--model", "tiny-bert", "serve.device=cuda"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith(
        f"error: serve.device=cuda: torch sees no CUDA device here (torch {torch.__version__}); set serve.device=auto or cpu"
    )


@pytest.mark.gpu
def test_fp16_on_a_real_gpu_matches_fp32_on_cpu():
    """On CUDA, auto is cuda:0 in fp16; its vectors agree with fp32 ones on the CPU."""
    cfg = load_config("tiny")
    gpu = Embedder.from_config(cfg.model, inference=True)
    assert device.current_placement(gpu) == CUDA0_FP16
    want = Embedder.from_config(load_config("tiny", ["model.device=cpu"]).model, inference=True).encode(TEXTS)
    assert (gpu.encode(TEXTS) * want).sum(1).min() > 0.999
