"""register_long_context and deploy_long_context on a real MLflow sqlite store and tiny real Llamas.

The scenario, once per module: train_base_lm (a few steps) and two extensions of it (LoRA
seeds 1 and 2), then

  a  extended/needle_rouge_l 0.40  registered v1 -> champion; registered again -> v1 reused
  b  extended/needle_rouge_l 0.30  registered v2 -> challenger; champion stays v1
  deploy_long_context              renders v1 on KServe's Hugging Face runtime
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from flagops.config import validate  # noqa: E402
from flagops.data.corpus import module_passages  # noqa: E402
from flagops.data.formats import DataError, read_json, write_json, write_jsonl  # noqa: E402
from flagops.deploy.inference_service import check_with_sdk  # noqa: E402
from flagops.longctx.evaluate import load  # noqa: E402
from flagops.registry import tracking  # noqa: E402
from flagops.registry.lineage import dir_sha256, file_md5  # noqa: E402
from flagops.steps import execute  # noqa: E402

NAME = "test-longctx"
LONGCTX = {
    "enabled": True,
    "base_context": 64,
    "vocab_size": 400,
    "hidden_size": 32,
    "num_heads": 2,
    "num_kv_heads": 1,
    "samples": 16,
    "base_train": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "save_steps": 100},
    "extend_train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "save_steps": 100},
    "needle_lengths": [64, 256],
    "model_name": NAME,
    "service_name": "test-longctx",
}


def metrics(rouge: float) -> dict[str, float]:
    return {
        "base/needle_rouge_l": 0.10,
        "extended/needle_rouge_l": rouge,
        "extended/topic_accuracy": 0.5,
        "extended/short_ppl": 40.0,
        "extended/needle_rouge_l/len256/depth0.5": rouge,
        "short_ppl_change": 0.05,
    }


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    work = tmp_path_factory.mktemp("longctx-registry")
    cfg = validate({"profile": "tiny", "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}"}, "longctx": LONGCTX})
    corpus = work / "corpus.jsonl"
    write_jsonl(corpus, [p.to_json() for p in module_passages(["json", "csv", "textwrap", "shutil"], 60)])
    client = MlflowClient(cfg.registry.tracking_uri, cfg.registry.tracking_uri)
    out: dict = {"cfg": cfg, "work": work, "corpus": corpus, "client": client}

    def register(model: str, rouge: float, tag: str) -> dict:
        write_json(work / f"metrics_{tag}.json", metrics(rouge))
        inputs = {"extended_lm": work / model, "base_lm": work / "base", "longctx_metrics": work / f"metrics_{tag}.json", "corpus": corpus}
        execute("register_long_context", cfg, inputs, {"longctx_registration": work / f"reg_{tag}.json"})
        return read_json(work / f"reg_{tag}.json")

    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the sqlite store's artifact root is ./mlartifacts
        mp.delenv(tracking.PARENT_ENV, raising=False)
        execute("train_base_lm", cfg, {"corpus": corpus}, {"base_lm": work / "base", "base_lm_loss_curve": work / "base_loss.json"})
        for model, seed in (("a", 1), ("b", 2)):
            seeded = cfg.model_copy(update={"longctx": cfg.longctx.model_copy(update={"seed": seed})})
            outs = {"extended_lm": work / model, "extend_loss_curve": work / f"{model}_loss.json"}
            execute("extend_context", seeded, {"base_lm": work / "base", "corpus": corpus}, outs, track=False)
        out["reg_a"] = register("a", 0.40, "a")
        out["reg_a_again"] = register("a", 0.40, "a_again")
        out["reg_b"] = register("b", 0.30, "b")
        out["versions"] = len(client.search_model_versions(f"name = '{NAME}'"))
        out["aliases"] = {alias: int(v) for alias, v in client.get_registered_model(NAME).aliases.items()}
        manifest = work / "isvc.yaml"
        execute("deploy_long_context", cfg, {"longctx_registration": work / "reg_b.json"}, {"longctx_inference_service": manifest})
        out["manifest"] = manifest
        out["downloaded"] = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(work / "download"))
        yield out
    mlflow.set_tracking_uri(previous_uri)


def test_loss_curves_are_written(scenario):
    for name in ("base_loss.json", "a_loss.json"):
        rows = json.loads((scenario["work"] / name).read_text())
        assert rows and all(set(r) == {"step", "loss"} for r in rows)


def test_registered_with_lineage_and_champion(scenario):
    reg, client, work = scenario["reg_a"], scenario["client"], scenario["work"]
    assert reg["version"] == 1 and not reg["reused"] and reg["max_model_len"] == 256
    assert reg["promotion"]["promoted"] and reg["promotion"]["alias"] == "champion"
    tags = client.get_model_version(NAME, "1").tags
    assert tags["longctx.factor"] == "4" and tags["longctx.rope_scaling"] == "theta"
    assert float(tags["longctx.rope_theta"]) == 160000.0 and float(tags["longctx.original_rope_theta"]) == 10000.0
    assert tags["longctx.max_position_embeddings"] == "256" and tags["longctx.original_max_position_embeddings"] == "64"
    assert json.loads(tags["longctx.lora"])["r"] == 32 and json.loads(tags["longctx.lora"])["alpha"] == 16
    assert tags["base_lm_sha256"] == dir_sha256(work / "base") and tags["data_md5"] == file_md5(scenario["corpus"])
    assert tags["model_sha256"] == dir_sha256(work / "a")
    base_run = client.get_run(tags["base_lm_run"])  # the train_base_lm step run of this store
    assert base_run.data.tags["flagops.step"] == "train_base_lm"
    assert json.loads(tags["metrics"])["extended/needle_rouge_l"] == 0.40


def test_version_holds_merged_weights_and_adapter(scenario):
    root = scenario["downloaded"]
    adapter = json.loads(open(os.path.join(root, "adapter", "adapter_config.json")).read())
    assert adapter["r"] == 32 and adapter["lora_alpha"] == 16
    assert not os.path.exists(os.path.join(root, "merged", "adapter"))  # the adapter is logged once, beside
    _, served = load(os.path.join(root, "merged"))
    _, trained = load(scenario["work"] / "a")
    assert served.config.max_position_embeddings == 256
    ids = torch.arange(1, 200).unsqueeze(0)  # past the base's 64 positions
    with torch.no_grad():
        torch.testing.assert_close(served(ids).logits, trained(ids).logits)


def test_rerun_reuses_and_a_worse_model_is_challenger(scenario):
    assert scenario["reg_a_again"]["reused"] and scenario["reg_a_again"]["version"] == 1
    assert scenario["reg_b"]["version"] == 2 and not scenario["reg_b"]["promotion"]["promoted"]
    assert "0.3000 vs champion 0.4000" in scenario["reg_b"]["promotion"]["reasons"][0]
    assert scenario["versions"] == 2 and scenario["aliases"] == {"champion": 1, "challenger": 2}


def test_deploy_renders_the_champion_on_the_hf_runtime(scenario):
    doc = yaml.safe_load(scenario["manifest"].read_text())
    check_with_sdk(doc)  # the kserve SDK's model of the CRD keeps every field
    model = doc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert "--max_model_len=256" in model["args"] and "--backend=vllm" in model["args"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1" == model["resources"]["requests"]["nvidia.com/gpu"]
    source = scenario["client"].get_model_version_download_uri(NAME, "1")  # the champion, though b was registered last
    assert model["storageUri"] == source.rstrip("/") + "/merged"
    notes = doc["metadata"]["annotations"]
    assert notes["flagops/mlflow-version"] == "1" and notes["flagops/max-model-len"] == "256"
    assert notes["flagops/base-lm-sha256"] == dir_sha256(scenario["work"] / "base")


def test_cluster_mode_refuses_a_local_storage_uri(scenario, tmp_path):
    cfg = scenario["cfg"].model_copy(update={"deploy": scenario["cfg"].deploy.model_copy(update={"mode": "cluster"})})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(scenario["work"])
        with pytest.raises(Exception, match="KServe cannot download"):
            execute(
                "deploy_long_context",
                cfg,
                {"longctx_registration": scenario["work"] / "reg_a.json"},
                {"longctx_inference_service": tmp_path / "x.yaml"},
            )
    assert not (tmp_path / "x.yaml").exists()


def test_registering_the_base_is_a_clear_error(scenario, tmp_path):
    cfg, work = scenario["cfg"], scenario["work"]
    inputs = {
        "extended_lm": work / "base",
        "base_lm": work / "base",
        "longctx_metrics": work / "metrics_a.json",
        "corpus": scenario["corpus"],
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        with pytest.raises(DataError, match="not an extend_context output"):
            execute("register_long_context", cfg, inputs, {"longctx_registration": tmp_path / "r.json"}, track=False)
    assert not (tmp_path / "r.json").exists()
