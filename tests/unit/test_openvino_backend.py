"""``model.backend=openvino``: the same vectors as torch, the converted model cached once, a clear error without the package."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from flagops.config import ConfigError, load_config
from flagops.evaluation.index import model_hash
from flagops.models import openvino_backend
from flagops.models.embedder import Embedder
from flagops.models.openvino_backend import OpenVINOModel, use_openvino
from flagops.models.sources import resolve_model_source

ov = pytest.importorskip("openvino")

PASSAGES = [
    "a volcano erupts",
    "ice carves a valley over many thousands of years, leaving a U-shaped trough",
    "violin strings resonate",
    "the tide comes in twice a day because the moon pulls on the oceans",
    "x",
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def ir_cache(tmp_path_factory):
    """The converted models go to a directory of this module's (each converted once here), not the user's cache."""
    root = tmp_path_factory.mktemp("ov-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino_backend, "cache_dir", lambda: root)
        yield root / "openvino"


def model_cfg(*overrides: str):
    return load_config("tiny", ["model.backend=openvino", "model.quantize=none", "model.device=cpu", *overrides]).model


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_float32_matches_torch(ir_cache, pooling):
    cfg = model_cfg(f"model.pooling={pooling}")
    torch_side = Embedder.from_config(load_config("tiny", ["model.quantize=none", f"model.pooling={pooling}"]).model, inference=True)
    ours = Embedder.from_config(cfg, inference=True)
    assert isinstance(ours.model, OpenVINOModel) and ours.settings == torch_side.settings
    for is_query in (False, True):
        want = torch_side.encode(PASSAGES, is_query=is_query, batch_size=2)
        got = ours.encode(PASSAGES, is_query=is_query, batch_size=2)  # batches of different lengths: dynamic shapes
        assert got.shape == want.shape and got.dtype == np.float32
        assert cosines(got, want).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bfloat16_stays_close(ir_cache):
    """bf16 kernels (AMX CPUs) or f32 ones (others): either way near torch fp32."""
    torch_side = Embedder.from_config(load_config("tiny", ["model.quantize=none"]).model, inference=True)
    ours = Embedder.from_config(model_cfg("model.dtype=bfloat16"), inference=True)
    assert cosines(ours.encode(PASSAGES), torch_side.encode(PASSAGES)).min() >= 0.99


def test_embedding_cache_tells_the_numerics_apart(ir_cache):
    """evaluate's vector cache (model_hash) must not hand bf16 vectors to an fp32 run, or OpenVINO's to torch's int8."""
    hashes = {
        model_hash(Embedder.from_config(load_config("tiny", ["model.quantize=none"]).model, inference=True)),
        model_hash(Embedder.from_config(model_cfg(), inference=True)),
        model_hash(Embedder.from_config(model_cfg("model.dtype=bfloat16"), inference=True)),
    }
    assert len(hashes) == 3 and None not in hashes


def test_converted_model_cached_and_reused(ir_cache, monkeypatch):
    first = Embedder.from_config(model_cfg(), inference=True)
    ir_dir = first.model.ir_dir
    assert ir_dir.parent == ir_cache and (ir_dir / "model.xml").is_file() and (ir_dir / "model.bin").is_file()
    model_dir = resolve_model_source("tiny-bert")
    before = sorted(p.name for p in model_dir.iterdir())

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    second = Embedder.from_config(model_cfg(), inference=True)
    assert second.model.ir_dir == ir_dir
    np.testing.assert_array_equal(second.encode(PASSAGES), first.encode(PASSAGES))
    assert sorted(p.name for p in model_dir.iterdir()) == before  # the model directory stays as it was


def test_changed_weights_convert_again(ir_cache, tmp_path):
    source = Embedder.load("tiny-bert")
    source.save(tmp_path / "a")
    with torch.no_grad():
        source.model.embeddings.word_embeddings.weight.mul_(2.0)
    source.save(tmp_path / "b")
    a = Embedder.from_config(model_cfg(), tmp_path / "a", inference=True)
    b = Embedder.from_config(model_cfg(), tmp_path / "b", inference=True)
    assert a.model.ir_dir != b.model.ir_dir
    assert cosines(b.encode(PASSAGES), Embedder.load(tmp_path / "b").encode(PASSAGES)).min() >= 0.9999


def test_missing_package_is_a_config_error(ir_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ConfigError, match=r"model\.backend=openvino .*pip install flagops\[openvino\]") as err:
        Embedder.from_config(model_cfg(), inference=True)
    assert "\n" not in str(err.value)


def test_config_refuses_what_it_cannot_run():
    assert load_config("tiny").model.backend == "auto"
    with pytest.raises(ConfigError, match="backend=openvino runs kind=bge without torch's int8"):
        load_config("tiny", ["model.backend=openvino", "model.quantize=int8"])
    with pytest.raises(ConfigError, match="float32 or bfloat16"):
        use_openvino(Embedder.load("tiny-bert"), resolve_model_source("tiny-bert"), torch.float16)


def _bf16_check(tmp_path, ndcg_quant: float):
    from flagops.models.quantize import OPENVINO_BF16, QuantCheck

    QuantCheck(OPENVINO_BF16, "heldout", ndcg_fp32=0.70, ndcg_quant=ndcg_quant, min_cosine=0.9999, mean_cosine=0.99995).save(tmp_path)


@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_auto_runs_openvino_bf16_only_where_its_check_passed(ir_cache, tmp_path, monkeypatch, cpu_has_bf16):
    """backend=auto (the default): OpenVINO bf16 for a model that carries a passing openvino-bf16
    check on a CPU with bf16 units; torch for one never checked, one that failed, a CPU without
    bf16 units (mocked here both ways: the decision, not the hardware, is under test), or a
    profile that pins dtype or turns quantize off; training loads stay torch."""
    monkeypatch.setattr(openvino_backend, "bf16_ready", lambda: cpu_has_bf16)
    cfg = load_config("tiny", ["model.quantize=auto"]).model
    Embedder.load("tiny-bert").save(tmp_path)

    def numerics(model_cfg=cfg, **kw):
        model = Embedder.from_config(model_cfg, source=tmp_path, **kw).model
        return getattr(model, "numerics", "torch")

    assert numerics(inference=True) == "torch"  # never checked
    _bf16_check(tmp_path, ndcg_quant=0.701)
    assert numerics(inference=True) == ("openvino-bf16" if cpu_has_bf16 else "torch")
    assert numerics() == "torch"  # training
    for pinned in (["model.dtype=float32"], ["model.quantize=none"], ["model.backend=torch"]):
        assert numerics(load_config("tiny", ["model.quantize=auto", *pinned]).model, inference=True) == "torch", pinned
    _bf16_check(tmp_path, ndcg_quant=0.690)  # -0.010: failed
    assert numerics(inference=True) == "torch"
    assert not openvino_backend.auto_openvino(tmp_path, kind="bge", dtype="auto", quantize="auto", device="cuda")
    assert not openvino_backend.auto_openvino(tmp_path, kind="m3", dtype="auto", quantize="auto", device="cpu")


def test_bf16_ready_reads_the_cpu_capabilities():
    """The real query (no mock): a bool from OpenVINO's CPU plugin; True where /proc/cpuinfo names bf16 units."""
    openvino_backend.bf16_ready.cache_clear()
    ready = openvino_backend.bf16_ready()
    flags = open("/proc/cpuinfo").read() if sys.platform == "linux" else ""
    assert ready is ("avx512_bf16" in flags or "amx_bf16" in flags) or not flags
