"""deploy_model and `flagops deploy promote|rollback` on a real MLflow sqlite store and tiny BERTs.

One scenario runs once per module, in dry-run mode (the default), and the tests check what
it leaves behind:

  a (tiny-bert)   registered v1 -> champion; deployed: all traffic; deployed again: the same
  c (tiny-bert@2) registered v2 -> champion (previous v1); deployed: 10% canary beside v1
  `flagops deploy promote`  -> v2 takes all traffic (the kubectl patch is printed)
  `flagops deploy rollback` -> @champion back to v1, deployed with all traffic

Local mode really serves (slow, ~15 s); cluster mode without a cluster fails in one line.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from flagops import cli  # noqa: E402
from flagops.config import ConfigError, DeployConfig, load_config, to_yaml, validate  # noqa: E402
from flagops.data.formats import DataError, read_json, write_json, write_jsonl  # noqa: E402
from flagops.deploy import apply as deploy_apply  # noqa: E402
from flagops.deploy import champion as store  # noqa: E402
from flagops.deploy.inference_service import check_fetchable, check_with_sdk, kserve_storage_uri  # noqa: E402
from flagops.registry import tracking  # noqa: E402
from flagops.steps import execute  # noqa: E402

NAME = "deploy-test"


def eval_metrics(ndcg: float) -> dict[str, float]:
    return {"candidate/ndcg@10": ndcg, "candidate/recall@100": 0.80, "candidate/mrr@10": 0.40}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    from flagops.models.embedder import Embedder

    work = tmp_path_factory.mktemp("deploy")
    for name, source in (("a", "tiny-bert"), ("c", "tiny-bert@2")):
        Embedder.load(source).save(work / "models" / name)
    cfg = validate({"profile": "tiny", "registry": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "model_name": NAME}})
    (work / "params.yaml").write_text(to_yaml(cfg))
    write_jsonl(work / "train.jsonl", [{"query": "q1", "pos": ["p1"], "neg": ["n1"]}])
    client = MlflowClient(cfg.registry.tracking_uri, cfg.registry.tracking_uri)
    out: dict = {"cfg": cfg, "work": work, "client": client}

    def register_and_promote(model: str, ndcg: float) -> None:
        write_json(work / f"metrics_{model}.json", eval_metrics(ndcg))
        inputs = {"model": work / "models" / model, "metrics": work / f"metrics_{model}.json", "train_data": work / "train.jsonl"}
        execute("register_model", cfg, inputs, {"registration": work / f"registration_{model}.json"})
        execute("promote_model", cfg, {"registration": work / f"registration_{model}.json"}, {"promotion": work / "promotion.json"})

    def deploy(tag: str) -> dict:
        outputs = {"inference_service": work / f"isvc_{tag}.yaml", "deployment": work / f"deployment_{tag}.json"}
        execute("deploy_model", cfg, {"promotion": work / "promotion.json"}, outputs)
        return {"record": read_json(outputs["deployment"]), "text": outputs["inference_service"].read_text()}

    def deploy_cli(action: str, tag: str, capsys) -> dict:
        manifest, record = work / f"isvc_{tag}.yaml", work / f"deployment_{tag}.json"
        assert cli.main(["deploy", action, "--params", "params.yaml", "--manifest", str(manifest), "--record", str(record)]) == 0
        return {"record": read_json(record), "text": manifest.read_text(), "stdout": capsys.readouterr().out}

    out["deploy"] = deploy
    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the sqlite store's artifact root is ./mlartifacts
        mp.delenv(tracking.PARENT_ENV, raising=False)
        register_and_promote("a", 0.50)
        out["first"] = deploy("first")
        out["again"] = deploy("again")
        register_and_promote("c", 0.60)
        out["canary"] = deploy("canary")
        out["canary_again"] = deploy("canary_again")
        out["deploy_cli"] = deploy_cli
        yield out
    mlflow.set_tracking_uri(previous_uri)


def doc_of(result: dict) -> dict:
    return yaml.safe_load(result["text"])


def test_first_deployment_serves_the_champion_with_all_traffic(scenario):
    client, first = scenario["client"], scenario["first"]
    record, doc = first["record"], doc_of(first)
    check_with_sdk(doc)
    assert (record["action"], record["name"], record["version"], record["mode"]) == ("deploy", NAME, 1, "dry-run")
    assert record["applied"] is False and record["canary_traffic_percent"] is None and record["previous_version"] is None
    predictor = doc["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    # storageUri is the registered version's artifact location (a file URI on a local store).
    assert env["STORAGE_URI"] == record["storage_uri"] == client.get_model_version_download_uri(NAME, "1")
    assert container["args"][:2] == ["--model", "/mnt/models/artifacts/a"]  # the embedder inside the pyfunc
    mv = client.get_model_version(NAME, "1")
    notes = doc["metadata"]["annotations"]
    assert notes["flagops/mlflow-model"] == NAME and notes["flagops/mlflow-version"] == "1"
    assert notes["flagops/git-commit"] == mv.tags["git_commit"] and notes["flagops/data-md5"] == mv.tags["data_md5"]
    assert notes["flagops/model-sha256"] == mv.tags["model_sha256"] == record["lineage"]["model_sha256"]


def test_a_rerun_renders_the_same_bytes(scenario):
    assert scenario["again"]["text"] == scenario["first"]["text"]
    assert scenario["again"]["record"] == scenario["first"]["record"]


def test_a_new_champion_goes_out_as_a_canary_beside_the_previous(scenario):
    record, doc = scenario["canary"]["record"], doc_of(scenario["canary"])
    check_with_sdk(doc)
    assert (record["version"], record["previous_version"], record["canary_traffic_percent"]) == (2, 1, 10)
    assert doc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert doc["metadata"]["annotations"]["flagops/mlflow-version"] == "2"
    # A re-run while the canary is in flight keeps it there.
    assert scenario["canary_again"]["record"] == record


def test_promote_then_rollback(scenario, capsys, monkeypatch):
    client, run = scenario["client"], scenario["deploy_cli"]
    monkeypatch.chdir(scenario["work"])
    capsys.readouterr()
    promoted = run("promote", "promoted", capsys)
    assert (promoted["record"]["version"], promoted["record"]["canary_traffic_percent"]) == (2, None)
    assert "canaryTrafficPercent" not in doc_of(promoted)["spec"]["predictor"]
    assert "kubectl patch inferenceservice bge-embedder -n flagops --type json" in promoted["stdout"]
    assert '"op": "remove", "path": "/spec/predictor/canaryTrafficPercent"' in promoted["stdout"]

    rolled = run("rollback", "rolled", capsys)
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 1
    assert json.loads(client.get_model_version(NAME, "2").tags[store.ROLLBACK_TAG]) == {"champion_now": 1}
    record, doc = rolled["record"], doc_of(rolled)
    assert (record["action"], record["version"], record["canary_traffic_percent"]) == ("rollback", 1, None)
    assert doc["metadata"]["annotations"]["flagops/mlflow-version"] == "1"
    assert "canaryTrafficPercent" not in doc["spec"]["predictor"]
    # v1 replaced no champion: there is nothing further back.
    assert cli.main(["deploy", "rollback", "--params", "params.yaml"]) == 2
    assert "replaced no earlier champion" in capsys.readouterr().err
    # The next deploy_model run serves what @champion holds now, not the stale promotion record.
    assert scenario["deploy"]("after_rollback")["record"]["version"] == 1


def test_a_bad_promotion_record_is_a_clear_error(scenario, tmp_path):
    write_json(tmp_path / "promotion.json", {"name": NAME})
    outputs = {"inference_service": tmp_path / "i.yaml", "deployment": tmp_path / "d.json"}
    with pytest.raises(DataError, match="missing version, promoted, alias"):
        execute("deploy_model", scenario["cfg"], {"promotion": tmp_path / "promotion.json"}, outputs, track=False)


# --------------------------------------------------------------------------- modes


def test_cluster_mode_without_a_cluster_fails_in_one_line(scenario, tmp_path, monkeypatch, capsys):
    work = scenario["work"]
    monkeypatch.chdir(work)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster.kubeconfig"))  # kubectl then dials localhost:8080
    key = "deploy.mode=cluster"
    argv = ["step", "deploy_model", "--params", "params.yaml", "--in", "promotion=promotion.json"]
    argv += ["--out", f"inference_service={tmp_path / 'i.yaml'}"]
    argv += ["--out", f"deployment={tmp_path / 'd.json'}", key]
    # A file:// storage URI (a local MLflow store) cannot reach a cluster's storage initializer.
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flagops: error: storageUri 'file://") and "KServe cannot download" in err and "\n" not in err
    # With an S3 URI it gets as far as kubectl, which finds no cluster.
    if deploy_apply.shutil.which("kubectl") is not None:
        assert cli.main([*argv, "deploy.storage_uri=s3://bucket/model"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("flagops: error: deploy.mode=cluster: `kubectl api-resources --api-group=serving.kserve.io")
        assert "\n" not in err
        assert "` failed: " in err
    monkeypatch.setattr(deploy_apply.shutil, "which", lambda _: None)
    assert cli.main([*argv, "deploy.storage_uri=s3://bucket/model"]) == 2
    assert capsys.readouterr().err.strip() == f"flagops: error: {deploy_apply.NO_KUBECTL}"
    cluster = load_config(work / "params.yaml", [key]).deploy
    assert store.serving(scenario["client"], NAME, cluster) is None  # nothing recorded for a failed apply
    assert not (tmp_path / "d.json").exists()


def test_local_mode_serves_the_champion_and_answers(scenario, monkeypatch, tmp_path):
    monkeypatch.chdir(scenario["work"])
    cfg = load_config(scenario["work"] / "params.yaml", ["deploy.mode=local", "deploy.service_name=local-embedder"])
    outputs = {"inference_service": tmp_path / "i.yaml", "deployment": tmp_path / "d.json"}
    execute("deploy_model", cfg, {"promotion": scenario["work"] / "promotion.json"}, outputs)
    record = read_json(outputs["deployment"])
    assert record["applied"] is True and record["mode"] == "local" and record["service"] == "local-embedder"
    assert record["smoke"] == {"queries": 2, "dimensions": 64}  # tiny-bert: hidden size 64


def test_smoke_serve_reads_the_champion_from_the_configured_store(scenario, monkeypatch, tmp_path):
    # The store is the configured one (registry.tracking_uri), not sqlite under the workspace
    # (tmp_path, empty): only that store knows the champion.
    from flagops.serving.smoke import SAMPLE_QUERIES, smoke_serve

    monkeypatch.chdir(scenario["work"])  # the sqlite store's artifact root is ./mlartifacts
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    served = smoke_serve(f"models:/{NAME}@champion", scenario["cfg"], tmp_path)
    assert len(served.vectors) == len(SAMPLE_QUERIES) and len(served.vectors[0]) == 64  # tiny-bert: hidden size 64
    assert not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------- config and URIs


def test_proxied_mlflow_artifacts_map_to_the_bucket_kserve_reads():
    uri = "mlflow-artifacts:/1/models/m-abc/artifacts"
    assert kserve_storage_uri(uri, DeployConfig()) == uri
    mapped = kserve_storage_uri(uri, DeployConfig(artifacts_destination="s3://flagops-mlflow/artifacts/"))
    assert mapped == "s3://flagops-mlflow/artifacts/1/models/m-abc/artifacts"
    assert kserve_storage_uri(uri, DeployConfig(storage_uri="pvc://models/bge")) == "pvc://models/bge"
    check_fetchable(mapped)
    with pytest.raises(ConfigError, match="deploy.artifacts_destination"):
        check_fetchable(uri)
    with pytest.raises(ConfigError, match="cannot download file URIs"):
        check_fetchable("file:///tmp/mlartifacts/x")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("deploy.deployment_mode=Standard", "scales on cpu or memory"),
        ("deploy.service_name=Bad_Name", "deploy.service_name"),
        ("deploy.canary_traffic_percent=100", "deploy.canary_traffic_percent"),
        ("deploy.mode=kubectl", "deploy.mode"),
    ],
)
def test_bad_deploy_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("tiny", [override])
    load_config("tiny", ["deploy.deployment_mode=Standard", "deploy.scale_metric=cpu", "deploy.canary_traffic_percent=0"])
