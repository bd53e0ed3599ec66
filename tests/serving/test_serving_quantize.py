"""``serve.quantize``: int8 serves only where the model carries a passing check, and says so.

A tiny random embedder is saved three times: with a passing ``flagops_quantization.json``,
with a failing one, and with none. Under the default ``auto`` only the first is served in
int8; the V2 metadata route and the start-up log name the backend, and the int8 server's
vectors stay within cosine 0.999 of the fp32 model's (tiny random weights quantise almost
losslessly; MiniLM's figures are in benchmarks/README.md).
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from serving_helpers import start_server, stop_server

from flagops.config import ConfigError, ServeConfig, load_config
from flagops.models.device import CPU_FP32, Placement
from flagops.models.embedder import Embedder
from flagops.models.quantize import QuantCheck
from flagops.serving.base import serve_quantize
from flagops.serving.embedder_model import EmbedderModel

TEXTS = ["a volcano erupts", "ice carves a valley between two ridges", "violin strings resonate", "the tide comes in twice a day"]
MIN_COSINE = 0.999  # int8 vs fp32 on the tiny random model, stated in the module docstring


def check(passed: bool) -> QuantCheck:
    quant = 0.698 if passed else 0.680  # -0.002 passes, -0.020 fails the 0.005 rule
    return QuantCheck("int8-dynamic", "heldout (4 queries)", ndcg_fp32=0.700, ndcg_quant=quant, min_cosine=0.99, mean_cosine=0.995)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """``{"pass": dir, "fail": dir, "absent": dir}``: one tiny embedder, three records."""
    root = tmp_path_factory.mktemp("quantize")
    embedder = Embedder.load("tiny-bert")
    dirs = {}
    for name in ("pass", "fail", "absent"):
        dirs[name] = root / name
        embedder.save(dirs[name])
        if name != "absent":
            check(name == "pass").save(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def int8_server(tmp_path_factory, model_dirs):
    server = start_server(tmp_path_factory.mktemp("int8") / "server.log", "tiny-int8", "--model", str(model_dirs["pass"]))
    yield server
    stop_server(server)


def loaded(model_dir, setting: str = "auto") -> EmbedderModel:
    model = EmbedderModel("m", str(model_dir), ServeConfig(quantize=setting, device="cpu"))
    model.load()
    model.stop()  # its threads; load() is what is under test
    return model


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_quantize_defaults_to_auto_and_validates():
    assert load_config("tiny").serve.quantize == "auto"
    assert load_config("tiny", ["serve.quantize=int8"]).serve.quantize == "int8"
    with pytest.raises(ConfigError, match=r"serve\.quantize"):
        load_config("tiny", ["serve.quantize=int4"])


def test_auto_serves_int8_only_with_a_passing_check(model_dirs):
    assert loaded(model_dirs["pass"]).backend_name == "torch-int8-dynamic"
    assert loaded(model_dirs["fail"]).backend_name == "torch-fp32"
    assert loaded(model_dirs["absent"]).backend_name == "torch-fp32"
    # Forced either way, the check does not decide.
    assert loaded(model_dirs["absent"], "int8").backend_name == "torch-int8-dynamic"
    assert loaded(model_dirs["pass"], "none").backend_name == "torch-fp32"


def test_metadata_carries_the_check_when_the_model_has_one(model_dirs):
    failing = loaded(model_dirs["fail"]).backend_metadata()
    assert failing["backend"] == "torch-fp32" and failing["quantization_check"]["passed"] is False
    assert failing["quantization_check"]["summary"].endswith("FAIL")
    assert loaded(model_dirs["absent"]).backend_metadata() == {"backend": "torch-fp32"}


def test_int8_only_for_embedders_on_cpu_in_float32(model_dirs):
    gpu = Placement(torch.device("cuda"), torch.float16)
    assert serve_quantize("auto", str(model_dirs["pass"]), gpu, supported=True)[0] == "none"
    assert serve_quantize("auto", str(model_dirs["pass"]), CPU_FP32, supported=False)[0] == "none"  # M3, reranker
    with pytest.raises(ConfigError, match=r"serve\.quantize=int8 runs on CPU in float32, not on cuda float16"):
        serve_quantize("int8", str(model_dirs["pass"]), gpu, supported=True)
    with pytest.raises(ConfigError, match=r"serve\.quantize=int8 serves embedders only"):
        serve_quantize("int8", str(model_dirs["pass"]), CPU_FP32, supported=False)


def test_int8_server_reports_its_backend_and_stays_close_to_fp32(int8_server, model_dirs):
    meta = httpx.get(f"{int8_server.url}/v2/models/{int8_server.name}").json()
    assert meta["backend"] == meta["platform"] == "torch-int8-dynamic"
    assert meta["quantization_check"]["passed"] is True and "PASS" in meta["quantization_check"]["summary"]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 64]}]
    assert "served by torch-int8-dynamic; accuracy check int8-dynamic on heldout (4 queries)" in int8_server.log.read_text()

    body = {"input": TEXTS, "model": int8_server.name}
    got = np.asarray([d["embedding"] for d in httpx.post(f"{int8_server.url}/v1/embeddings", json=body).json()["data"]])
    fp32 = Embedder.load(str(model_dirs["pass"])).encode(TEXTS)
    assert cosines(got, fp32).min() >= MIN_COSINE
    assert not np.allclose(got, fp32, atol=1e-6)  # int8 did run: not the fp32 vectors


def test_unknown_model_metadata_is_404(int8_server):
    r = httpx.get(f"{int8_server.url}/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.text


# ---------------------------------------------------------------- serve.backend=openvino


def test_openvino_backend_serves_the_same_vectors_and_says_so(model_dirs):
    """serve.backend=openvino: the transformer runs compiled by OpenVINO (f32 here: the same vectors
    as torch), the backend is named, and torch's int8 is not combined with it."""
    pytest.importorskip("openvino", reason="openvino is in the dev extra; `make install` installs it")
    model = EmbedderModel("m", str(model_dirs["pass"]), ServeConfig(backend="openvino", device="cpu"))
    model.load()
    model.stop()
    assert model.backend_name == "openvino-f32" and model.backend_metadata() == {"backend": "openvino-f32"}
    served = model.backend.encode(TEXTS, is_query=False, max_length=128)
    torch_vecs = Embedder.load(model_dirs["pass"]).encode(TEXTS, is_query=False)
    cosines = np.einsum("nd,nd->n", served, torch_vecs)  # both normalised
    assert cosines.min() > 0.9999
    with pytest.raises(ConfigError, match=r"serve: .*backend=openvino does not run torch's int8"):
        load_config("tiny", ["serve.backend=openvino", "serve.quantize=int8"])


def test_auto_backend_serves_openvino_bf16_where_its_check_passed(tmp_path, model_dirs, monkeypatch):
    """serve.backend=auto (the default): a model that also carries a passing openvino-bf16 check is
    served by OpenVINO in bf16 (the faster path wins over int8), and the metadata carries that
    check; a failing bf16 record falls back to int8's. The CPU's bf16 units are mocked present so
    the decision is tested on any CPU; test_openvino_backend covers the numerics."""
    import shutil

    from flagops.models import openvino_backend
    from flagops.models.quantize import OPENVINO_BF16

    pytest.importorskip("openvino")
    monkeypatch.setattr(openvino_backend, "bf16_ready", lambda: True)
    monkeypatch.setattr(openvino_backend, "cache_dir", lambda: tmp_path / "cache")
    for name, quant in (("bf16-pass", 0.701), ("bf16-fail", 0.690)):
        shutil.copytree(model_dirs["pass"], tmp_path / name)
        QuantCheck(OPENVINO_BF16, "heldout (4 queries)", ndcg_fp32=0.700, ndcg_quant=quant, min_cosine=0.9999, mean_cosine=0.99995).save(
            tmp_path / name
        )
    assert ServeConfig().backend == "auto"
    model = loaded(tmp_path / "bf16-pass")
    assert model.backend_name == "openvino-bf16" and model.quant_check.method == OPENVINO_BF16
    assert model.backend_metadata()["quantization_check"]["passed"] is True
    assert loaded(tmp_path / "bf16-fail").backend_name == "torch-int8-dynamic"  # int8's record still passes
    assert loaded(model_dirs["pass"]).backend_name == "torch-int8-dynamic"  # no bf16 record
