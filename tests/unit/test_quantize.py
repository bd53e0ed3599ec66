"""``model.quantize=int8``: the config field, where it applies (inference only), and how close it stays to fp32."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from flagops.config import ConfigError, load_config
from flagops.data.corpus import stdlib_passages
from flagops.models import quantize
from flagops.models.embedder import Embedder
from flagops.models.quantize import Int8Linear, cpu_has_vnni, is_quantized, quantize_int8

TEXTS = ["a volcano erupts", "ice carves a valley", "violin strings resonate", "the tide comes in twice a day"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------- config


def test_quantize_field_validates():
    assert load_config("tiny").model.quantize == "auto"
    assert load_config("tiny", ["model.quantize=int8"]).model.quantize == "int8"
    assert load_config("tiny", ["model.quantize=auto", "model.kind=m3"]).model.quantize == "auto"  # auto: int8 only for bge
    with pytest.raises(ConfigError, match=r"model\.quantize: Input should be 'none', 'int8' or 'auto'"):
        load_config("tiny", ["model.quantize=int4"])
    with pytest.raises(ConfigError, match="covers kind=bge only"):  # M3Embedder would ignore it silently
        load_config("tiny", ["model.quantize=int8", "model.kind=m3"])


# ---------------------------------------------------------------- where it applies


def test_int8_only_when_configured_and_only_at_inference():
    plain = load_config("tiny").model
    int8 = load_config("tiny", ["model.quantize=int8"]).model
    assert not is_quantized(Embedder.from_config(plain, inference=True))
    assert not is_quantized(Embedder.from_config(int8))  # training's load stays exact
    served = Embedder.from_config(int8, inference=True)
    linears = [m for m in served.model.modules() if isinstance(m, Int8Linear)]
    assert linears and type(linears[0]).reduce_range is not cpu_has_vnni()  # which Linears: the next test


def test_training_recipe_loads_exact(monkeypatch, tmp_path):
    """train() takes the model through from_config without inference, so int8 never reaches a gradient."""
    from flagops.training import embedder as recipe

    seen = []
    real = Embedder.from_config

    def spy(model_cfg, source=None, *, inference=False):
        loaded = real(model_cfg, source, inference=inference)
        seen.append(is_quantized(loaded))
        raise RuntimeError("stop after loading")

    monkeypatch.setattr(Embedder, "from_config", staticmethod(spy))
    cfg = load_config("tiny", ["model.quantize=int8"])
    with pytest.raises(RuntimeError, match="stop after loading"):
        recipe.train(cfg.model, cfg.train, [], tmp_path / "out")
    assert seen == [False]


def test_refuses_non_fp32_placement():
    bf16 = Embedder.from_config(load_config("tiny", ["model.dtype=bfloat16"]).model, inference=True)
    with pytest.raises(ConfigError, match=r"model\.quantize=int8 runs on CPU in float32, but the model is on cpu bfloat16"):
        quantize_int8(bf16)


def test_vnni_flag_read_from_cpuinfo(tmp_path):
    with_vnni, without = tmp_path / "a", tmp_path / "b"
    with_vnni.write_text("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    without.write_text("flags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_has_vnni(with_vnni) and not cpu_has_vnni(without)
    assert not cpu_has_vnni(tmp_path / "missing")


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("reduce_range", [False, True])
def test_int8_linear_against_hand_quantisation(monkeypatch, reduce_range):
    """One Linear, computed by hand: int8 weights per row, uint8 input over the tensor's range, int32 sums."""
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: not reduce_range)
    torch.manual_seed(0)
    lin = nn.Linear(16, 3)
    x = torch.randn(5, 16)
    layer = quantize_int8(SimpleNamespace(model=nn.Sequential(lin))).model[0]  # quantize_int8 reads only .model
    assert isinstance(layer, Int8Linear) and layer.reduce_range is reduce_range
    got = layer(x)

    w_scale = lin.weight.detach().abs().amax(1) / 127.5  # per output row, symmetric over [-128, 127]
    w_q = torch.clamp(torch.round(lin.weight.detach() / w_scale[:, None]), -128, 127)
    levels = 127 if reduce_range else 255
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    x_scale = (hi - lo) / levels
    zero = round(-lo / x_scale)
    x_q = torch.clamp(torch.round(x / x_scale) + zero, 0, levels)
    want = ((x_q - zero) @ w_q.T) * x_scale * w_scale + lin.bias.detach()
    torch.testing.assert_close(got, want, atol=2e-2 * want.abs().max().item(), rtol=0)
    exact = lin(x).detach()
    assert (got - exact).abs().max() < 0.05 * exact.abs().max()  # and it is near fp32, or the hand version would be moot


def test_tiny_model_stays_close():
    cfg = load_config("tiny", ["model.quantize=int8"]).model
    fp32 = Embedder.from_config(cfg).encode(TEXTS)
    int8 = Embedder.from_config(cfg, inference=True).encode(TEXTS)
    assert int8.dtype == np.float32 and int8.shape == fp32.shape
    assert cosines(int8, fp32).min() > 0.99
    assert not np.array_equal(int8, fp32)  # it really changed the arithmetic


def test_ffn_output_stays_fp32_and_the_rest_is_int8():
    e = Embedder.from_config(load_config("tiny", ["model.quantize=int8"]).model, inference=True)
    kinds = {name: type(m) for name, m in e.model.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    ffn_out = {n for n in kinds if n.endswith(".output.dense") and ".attention." not in n}
    assert ffn_out and all(kinds[n] is nn.Linear for n in ffn_out)  # one per layer, left in fp32
    rest = set(kinds) - ffn_out
    assert any(".attention.self." in n for n in rest) and any("intermediate.dense" in n for n in rest)
    assert all(issubclass(kinds[n], Int8Linear) for n in rest)


def test_minilm_cosine_band():
    """The real demo model on real passages. Measured on this VNNI CPU: min 0.990, mean 0.994
    (7-bit activations, as without VNNI: min 0.963, mean 0.979); bands leave a margin."""
    texts = [p.full_text for p in stdlib_passages(150)[:64]]
    cfg = load_config("demo", ["model.quantize=int8"]).model
    fp32 = Embedder.from_config(cfg).encode(texts)
    cos = cosines(Embedder.from_config(cfg, inference=True).encode(texts), fp32)
    lowest, mean = (0.98, 0.99) if cpu_has_vnni() else (0.94, 0.97)
    assert cos.min() > lowest and cos.mean() > mean, (cos.min(), cos.mean())


# ---------------------------------------------------------------- the accuracy check record


def _check(**kw):
    base = dict(method="int8-dynamic", eval_set="heldout", ndcg_fp32=0.7000, ndcg_quant=0.6960, min_cosine=0.99, mean_cosine=0.995)
    return quantize.QuantCheck(**{**base, **kw})


def test_quant_check_rule_edges():
    assert _check().passed  # -0.0040 is within 0.005
    assert not _check(ndcg_quant=0.6940).passed  # -0.0060
    assert _check(ndcg_quant=0.7040).passed  # +0.0040
    assert not _check(ndcg_quant=0.7100).passed  # +0.0100: the ranking moved as much as a loss would
    assert not _check(min_cosine=0.97).passed  # below the cosine floor even with nDCG kept
    assert "-0.0040" in _check().summary() and _check().summary().endswith("PASS")


def test_quant_check_round_trip_and_auto(tmp_path):
    assert quantize.QuantCheck.load(tmp_path) is None
    assert quantize.resolve_quantize("auto", tmp_path) == "none"  # never checked: fp32
    _check().save(tmp_path)
    saved = json.loads((tmp_path / quantize.QUANT_CHECK_FILE).read_text())
    assert [r["passed"] for r in saved["checks"]] == [True]
    assert quantize.QuantCheck.load(tmp_path) == _check()
    assert quantize.resolve_quantize("auto", tmp_path) == "int8"
    assert quantize.resolve_quantize("none", tmp_path) == "none"
    _check(ndcg_quant=0.6).save(tmp_path)
    assert quantize.resolve_quantize("auto", tmp_path) == "none"  # failed: fp32
    assert quantize.resolve_quantize("int8", tmp_path) == "int8"  # asked for explicitly
    (tmp_path / quantize.QUANT_CHECK_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"flagops_quantization\.json: not a quantization check record"):
        quantize.QuantCheck.load(tmp_path)


def test_one_record_per_method_and_the_old_single_record_format(tmp_path):
    """The file keeps one record per method: saving one method's check replaces that method's only.
    A file of one bare record (what flagops wrote before OpenVINO bf16 was checked) reads as int8."""
    bf16 = _check(method=quantize.OPENVINO_BF16, ndcg_quant=0.7001, min_cosine=0.9999)
    _check().save(tmp_path)
    bf16.save(tmp_path)
    _check(ndcg_quant=0.6).save(tmp_path)  # int8 again: replaced, bf16 kept
    checks = quantize.load_checks(tmp_path)
    assert checks == {"int8-dynamic": _check(ndcg_quant=0.6), "openvino-bf16": bf16}
    assert quantize.QuantCheck.load(tmp_path, quantize.OPENVINO_BF16) == bf16
    (tmp_path / quantize.QUANT_CHECK_FILE).write_text(json.dumps({**vars(_check()), "passed": True, "speedup": None}))
    assert quantize.load_checks(tmp_path) == {"int8-dynamic": _check()}
    # evaluate's metrics carry each method it measured; register_model reads them all back
    metrics = {**quantize.as_metrics(_check()), **quantize.as_metrics(bf16)}
    assert metrics["quant/openvino-bf16/ndcg_delta"] == pytest.approx(0.0001)
    assert quantize.from_metrics(metrics, eval_set="heldout") == [_check(), bf16]
    assert quantize.from_metrics({}) == []


def test_auto_loads_int8_only_where_the_check_passed(tmp_path):
    """model.quantize=auto (the default): a model that carries a passing check is loaded in int8 for
    inference, one that failed or was never checked in fp32, and training loads stay exact."""
    cfg = load_config("tiny").model
    assert cfg.quantize == "auto"
    Embedder.load("tiny-bert").save(tmp_path / "m")
    assert not is_quantized(Embedder.from_config(cfg, source=tmp_path / "m", inference=True).model)
    _check().save(tmp_path / "m")
    assert is_quantized(Embedder.from_config(cfg, source=tmp_path / "m", inference=True).model)
    assert not is_quantized(Embedder.from_config(cfg, source=tmp_path / "m").model)  # training
    assert not is_quantized(Embedder.from_config(cfg.model_copy(update={"quantize": "none"}), source=tmp_path / "m", inference=True).model)
    _check(ndcg_quant=0.5).save(tmp_path / "m")
    assert not is_quantized(Embedder.from_config(cfg, source=tmp_path / "m", inference=True).model)
