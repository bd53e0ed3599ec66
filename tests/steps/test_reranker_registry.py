"""register_reranker, promote_reranker and deploy_reranker on a real MLflow sqlite store and
tiny random cross-encoders: the reranker is its own registered model with its own gate
(reranked/<metric>), its pyfunc scores as the model does, and it deploys to its own service."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from flagops.config import load_config  # noqa: E402
from flagops.data.formats import read_json, write_json, write_jsonl  # noqa: E402
from flagops.registry import tracking  # noqa: E402
from flagops.steps import execute  # noqa: E402

PAIRS = [("how do I parse json?", "json.loads parses a JSON document."), ("run a coroutine", "asyncio.run runs a coroutine.")]


def metrics(reranked: float) -> dict[str, float]:
    # The candidate/ keys belong to the embedder; the reranker's gate must not read them.
    return {"candidate/ndcg@10": 0.9, "reranked/ndcg@10": reranked, "reranked/recall@100": 0.8, "reranked/mrr@10": reranked}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from flagops.models.reranker import load_reranker

    work = tmp_path_factory.mktemp("reranker_registry")
    for name, source in (("a", "tiny-reranker"), ("b", "tiny-reranker@2")):
        load_reranker(source).save(work / name)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cfg = load_config("tiny_reranker", [f"registry.tracking_uri={uri}"])
    write_jsonl(work / "train.jsonl", [{"query": "q1", "pos": ["p1"], "neg": ["n1"]}])
    out = {"cfg": cfg, "work": work, "client": MlflowClient(uri, uri)}

    def register_promote_deploy(name: str, reranked: float) -> dict:
        write_json(work / f"metrics_{name}.json", metrics(reranked))
        reg, promo = work / f"registration_{name}.json", work / f"promotion_{name}.json"
        inputs = {"model": work / name, "metrics": work / f"metrics_{name}.json", "train_data": work / "train.jsonl"}
        execute("register_reranker", cfg, inputs, {"reranker_registration": reg})
        execute("promote_reranker", cfg, {"registration": reg}, {"reranker_promotion": promo})
        outputs = {"reranker_inference_service": work / f"isvc_{name}.yaml", "reranker_deployment": work / f"deployment_{name}.json"}
        execute("deploy_reranker", cfg, {"promotion": promo}, outputs)
        return {
            "registration": read_json(reg),
            "promotion": read_json(promo),
            "deployment": read_json(outputs["reranker_deployment"]),
            "isvc": yaml.safe_load(outputs["reranker_inference_service"].read_text()),
        }

    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.delenv(tracking.PARENT_ENV, raising=False)
        out["a"] = register_promote_deploy("a", 0.50)
        out["b"] = register_promote_deploy("b", 0.45)  # worse on reranked/ndcg@10: a challenger
        yield out
    mlflow.set_tracking_uri(previous)


def test_the_reranker_is_registered_under_its_own_name_with_lineage(scenario):
    reg = scenario["a"]["registration"]
    assert (reg["name"], reg["version"]) == ("bge-reranker-tiny", 1)
    mv = scenario["client"].get_model_version("bge-reranker-tiny", "1")
    assert mv.tags["flagops.family"] == "reranker" and mv.tags["data_md5"] and mv.tags["model_sha256"]
    assert '"teacher"' in mv.tags["config"] and '"reranker"' in mv.tags["config"]
    assert "cross-encoder reranker" in mv.description


def test_its_pyfunc_scores_pairs_as_the_model_does(scenario):
    from flagops.models.reranker import load_reranker

    model = mlflow.pyfunc.load_model("models:/bge-reranker-tiny/1")  # the steps pointed MLflow at the store
    got = model.predict(pd.DataFrame({"query": [q for q, _ in PAIRS], "passage": [p for _, p in PAIRS]}))
    want = load_reranker(scenario["work"] / "a").score_pairs(PAIRS)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_gate_compares_reranked_scores(scenario):
    a, b = scenario["a"]["promotion"], scenario["b"]["promotion"]
    assert a["promoted"] and a["alias"] == "champion"
    assert not b["promoted"] and b["alias"] == "challenger"
    assert b["reasons"][0] == "ndcg@10: 0.4500 vs champion 0.5000 (-0.0500); is worse than the champion"


def test_it_deploys_to_its_own_service_as_a_reranker(scenario):
    doc = scenario["a"]["isvc"]
    assert doc["metadata"]["name"] == "bge-reranker-tiny"
    args = doc["spec"]["predictor"]["containers"][0]["args"]
    assert "serve.kind=reranker" in args and args[args.index("--name") + 1] == "bge-reranker-tiny"
    assert scenario["b"]["deployment"]["version"] == 1  # the challenger is not deployed
