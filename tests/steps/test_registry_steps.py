"""register_model and promote_model on a real MLflow sqlite store and tiny random BERTs.

One scenario runs once per module (models are saved once, logged three times) and the
tests below check its records and the registry it leaves behind:

  a (tiny-bert)   ndcg 0.50  registered v1 -> champion; registered again -> v1 reused
  b (tiny-bert@1) ndcg 0.45  registered v2 -> challenger, champion stays v1
  c (tiny-bert@2) ndcg 0.60  registered v3 -> champion, previous champion v1;
                             promoted again (track=False) -> "already champion", no change
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from flagops.config import validate  # noqa: E402
from flagops.data.formats import read_json, write_json, write_jsonl  # noqa: E402
from flagops.registry import tracking  # noqa: E402
from flagops.registry.lineage import dir_sha256  # noqa: E402
from flagops.registry.models import fetch_model_dir  # noqa: E402
from flagops.steps import execute  # noqa: E402

NAME = "test-embedder"
TEXTS = ["how do I open a file?", "open() returns a file object.", "x" * 300, "🙂 unicode text"]


def eval_metrics(ndcg: float) -> dict[str, float]:
    return {
        "candidate/ndcg@10": ndcg,
        "candidate/recall@100": 0.80,
        "candidate/mrr@10": 0.40,
        "base/ndcg@10": 0.30,
        "base/recall@100": 0.70,
        "bm25/ndcg@10": 0.25,
    }


# evaluate's quant/int8/* keys for c: int8 kept nDCG@10 within the rule (0.600 -> 0.597).
INT8_CHECK = {
    "quant/int8/ndcg_fp32": 0.60,
    "quant/int8/ndcg": 0.597,
    "quant/int8/ndcg_delta": -0.003,
    "quant/int8/min_cosine": 0.991,
    "quant/int8/mean_cosine": 0.996,
    "quant/int8/passed": 1.0,
}


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    from flagops.models.embedder import Embedder

    root = tmp_path_factory.mktemp("models")
    for name, source in (("a", "tiny-bert"), ("b", "tiny-bert@1"), ("c", "tiny-bert@2")):
        Embedder.load(source).save(root / name)
    return root


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, embedders):
    work = tmp_path_factory.mktemp("registry")
    cfg = validate({"profile": "tiny", "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "model_name": NAME}})
    train = work / "train.jsonl"
    write_jsonl(train, [{"query": "q1", "pos": ["p1"], "neg": ["n1"]}, {"query": "q2", "pos": ["p2"], "neg": []}])
    out: dict = {"cfg": cfg, "work": work, "train": train}
    client = MlflowClient(cfg.registry.tracking_uri, cfg.registry.tracking_uri)

    def register(model: str, ndcg: float, tag: str, extra: dict | None = None) -> dict:
        write_json(work / f"metrics_{tag}.json", eval_metrics(ndcg) | (extra or {}))
        reg = work / f"registration_{tag}.json"
        inputs = {"model": embedders / model, "metrics": work / f"metrics_{tag}.json", "train_data": train}
        execute("register_model", cfg, inputs, {"registration": reg})
        return read_json(reg)

    def promote(tag: str, track: bool = True) -> dict:
        path = work / f"promotion_{tag}.json"
        inputs = {"registration": work / f"registration_{tag}.json"}
        execute("promote_model", cfg, inputs, {"promotion": path}, track=track)
        return read_json(path)

    def aliases() -> dict[str, int]:
        return {alias: int(v) for alias, v in client.get_registered_model(NAME).aliases.items()}

    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the sqlite store's artifact root is ./mlartifacts
        mp.delenv(tracking.PARENT_ENV, raising=False)
        # DVC runs each stage in its own process: the parent run id arrives in the environment.
        parent = client.create_run(tracking.setup(cfg.registry), run_name="test-pipeline").info.run_id
        out["parent"] = parent
        mp.setenv(tracking.PARENT_ENV, parent)
        out["reg_a"] = register("a", 0.50, "a")
        out["promo_a"] = promote("a")
        mp.delenv(tracking.PARENT_ENV)
        out["reg_a_again"] = register("a", 0.50, "a_again")
        out["versions_after_rerun"] = len(client.search_model_versions(f"name = '{NAME}'"))
        out["promo_a_again"] = promote("a_again")
        out["reg_b"] = register("b", 0.45, "b")
        out["promo_b"] = promote("b")
        out["aliases_b"] = aliases()
        out["reg_c"] = register("c", 0.60, "c", extra=INT8_CHECK)  # evaluate's int8 check travels with c
        out["promo_c"] = promote("c")
        out["aliases_c"] = aliases()
        out["promo_c_untracked"] = promote("c", track=False)  # the step opens a run of its own
        out["client"] = client
        yield out
    mlflow.set_tracking_uri(previous_uri)


def test_first_model_is_registered_and_becomes_champion(scenario):
    reg, promo = scenario["reg_a"], scenario["promo_a"]
    assert set(reg) == {"name", "version", "run_id", "model_uri", "model_sha256", "metrics", "reused"}
    assert (reg["name"], reg["version"], reg["model_uri"], reg["reused"]) == (NAME, 1, f"models:/{NAME}/1", False)
    assert reg["metrics"] == eval_metrics(0.50)
    assert promo["promoted"] and promo["alias"] == "champion" and promo["previous_champion"] is None
    assert promo["reasons"][0].startswith("first model")


def test_version_tags_description_and_run_carry_lineage(scenario, embedders):
    client, reg = scenario["client"], scenario["reg_a"]
    mv = client.get_model_version(NAME, "1")
    tags = mv.tags
    assert tags["data_md5"] == hashlib.md5(scenario["train"].read_bytes()).hexdigest()
    assert tags["model_sha256"] == reg["model_sha256"] == dir_sha256(embedders / "a")
    assert dir_sha256(embedders / "a") != dir_sha256(embedders / "b")
    assert tags["git_commit"]  # a sha inside a git checkout, else "unknown"
    assert set(json.loads(tags["config"])) == {"model", "train"}
    assert tags["flagops.profile"] == "tiny"
    assert json.loads(tags["metrics"]) == eval_metrics(0.50)
    assert float(tags["candidate/ndcg_at_10"]) == 0.50
    assert mv.description.startswith(f"# {NAME} v1")
    assert "| **ndcg@10** (primary) | 0.5000 | 0.3000 | 0.2500 |" in mv.description
    run = client.get_run(reg["run_id"])
    assert run.data.metrics["candidate/ndcg_at_10"] == 0.50
    assert run.data.tags["mlflow.parentRunId"] == scenario["parent"]
    assert "README.md" in {f.path for f in client.list_artifacts(reg["run_id"])}


def test_promotion_decision_is_logged_to_its_step_run(scenario):
    client = scenario["client"]
    runs = client.search_runs(
        [client.get_experiment_by_name("flagops").experiment_id],
        "tags.`flagops.step` = 'promote_model' and tags.`flagops.candidate_version` = '2'",
    )
    assert len(runs) == 1
    assert runs[0].data.tags["flagops.promoted"] == "false"
    assert "promotion.json" in {f.path for f in client.list_artifacts(runs[0].info.run_id)}


def test_same_model_reuses_its_version_and_stays_champion(scenario):
    reg = scenario["reg_a_again"]
    assert (reg["version"], reg["reused"], reg["run_id"]) == (1, True, scenario["reg_a"]["run_id"])
    assert scenario["versions_after_rerun"] == 1
    promo = scenario["promo_a_again"]
    assert promo["promoted"] and not promo["changed"]
    assert promo["reasons"][0].startswith("already champion")


def test_worse_model_becomes_challenger(scenario):
    assert scenario["reg_b"]["version"] == 2
    promo = scenario["promo_b"]
    assert (promo["promoted"], promo["alias"], promo["previous_champion"]) == (False, "challenger", 1)
    assert "0.4500 vs champion 0.5000 (-0.0500)" in promo["reasons"][0]
    assert scenario["aliases_b"] == {"champion": 1, "challenger": 2}


def test_better_model_becomes_champion(scenario):
    assert scenario["reg_c"]["version"] == 3
    promo = scenario["promo_c"]
    assert (promo["promoted"], promo["alias"], promo["previous_champion"]) == (True, "champion", 1)
    assert scenario["aliases_c"] == {"champion": 3, "challenger": 1}  # the dethroned champion is the runner-up
    again = scenario["promo_c_untracked"]
    assert (again["promoted"], again["changed"], again["previous_champion"]) == (True, False, 1)


@pytest.fixture(scope="module")
def champion_vectors(embedders) -> np.ndarray:
    from flagops.models.embedder import Embedder

    return Embedder.load(embedders / "c").encode(TEXTS)


def test_pyfunc_champion_predicts_like_the_embedder(scenario, champion_vectors):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    got = np.asarray(model.predict(TEXTS))
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(got, champion_vectors, atol=1e-5)
    assert np.asarray(model.predict(TEXTS[:1], params={"is_query": True})).shape == (1, 64)
    assert model.metadata.get_input_schema().input_types() == [mlflow.types.DataType.string]
    assert model.metadata.get_params_schema().params[0].name == "is_query"


def test_fetch_model_dir_accepts_version_and_alias(scenario, embedders):
    by_version = fetch_model_dir(f"models:/{NAME}/1")
    by_alias = fetch_model_dir(f"models:/{NAME}@champion")
    assert dir_sha256(by_version) == scenario["reg_a"]["model_sha256"]
    assert dir_sha256(by_alias) == scenario["reg_c"]["model_sha256"]
    requirements = (by_version.parent.parent / "requirements.txt").read_text()
    assert "torch==" in requirements and "+cpu" not in requirements
    # c was registered with evaluate's int8 check: the record travels with the weights (quantize=auto
    # reads it), the source directory is untouched, and the tag says what was measured.
    from flagops.models.quantize import QUANT_CHECK_FILE, QuantCheck, resolve_quantize

    assert not (by_version / QUANT_CHECK_FILE).exists() and resolve_quantize("auto", by_version) == "none"
    check = QuantCheck.load(by_alias)
    assert (check.ndcg_fp32, check.ndcg_quant, check.min_cosine, check.passed) == (0.60, 0.597, 0.991, True)
    assert resolve_quantize("auto", by_alias) == "int8"
    assert not (embedders / "c" / QUANT_CHECK_FILE).exists()
    mv = scenario["client"].get_model_version(NAME, scenario["reg_c"]["version"])
    assert mv.tags["flagops.quantization"].startswith("int8-dynamic on evaluate's held-out set") and mv.tags[
        "flagops.quantization"
    ].endswith("PASS")
    # A downloaded MLflow model folder (KServe's /mnt/models) is a model source too.
    from flagops.models.sources import resolve_model_source

    assert resolve_model_source(str(by_version.parent.parent)) == by_version


# A fresh interpreter that cannot import the installed flagops (the editable finder is
# removed): the pyfunc must load from the copy of flagops that travels with the version.
WITHOUT_FLAGOPS = """
import importlib.util, json, sys
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path = [p for p in sys.path if "__editable__" not in p]
assert importlib.util.find_spec("flagops") is None, "flagops is still importable"
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
import flagops
print(json.dumps({"flagops": flagops.__file__, "vectors": model.predict(json.loads(sys.argv[3])).tolist()}))
"""


def test_pyfunc_loads_without_an_installed_flagops(scenario, champion_vectors):
    uri = scenario["cfg"].registry.tracking_uri
    args = [sys.executable, "-c", WITHOUT_FLAGOPS, uri, f"models:/{NAME}@champion", json.dumps(TEXTS)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": ""}
    done = subprocess.run(args, cwd=scenario["work"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/flagops/" in out["flagops"]
    np.testing.assert_allclose(np.asarray(out["vectors"], dtype=np.float32), champion_vectors, atol=1e-5)
