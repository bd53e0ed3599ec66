"""KFP: components and the retraining pipeline agree with the catalog, the committed IR is
fresh, the whole pipeline runs in kfp.local on the tiny_all profile (every branch: pretraining,
the reranker, the merge, the second domain and the long-context extension; three registered
models), and `flagops kfp
submit|schedule` send the right requests to a KFP API server (a mock stands in for the
server: none can run on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # components/ and pipelines/ are top-level packages of the repo
    sys.path.insert(0, str(REPO))

import components  # noqa: E402
from flagops import catalog, kfp_client  # noqa: E402
from flagops.config import FlagopsConfig, load_config, shipped_profiles, to_yaml  # noqa: E402
from flagops.registry import tracking  # noqa: E402
from pipelines import retrain  # noqa: E402

pytestmark = [
    # kfp.local runs tasks here, not in the image, and ignores cluster resources: both expected.
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*have no effect in the current local runner:UserWarning"),
]


LOCAL = "tiny_all"  # the profile kfp.local runs: the tiny loop with every branch (pretraining, reranker, merge, ood, long context)
TINY = catalog.pipeline(load_config(LOCAL))


def task_name(step: str) -> str:
    """KFP names a task after its component, with dashes."""
    return step.replace("_", "-")


@pytest.fixture(scope="module", params=shipped_profiles())
def profile(request) -> str:
    """Each shipped profile has its DAG and committed IR."""
    return request.param


@pytest.fixture(scope="module")
def pipe(profile) -> catalog.Pipeline:
    return catalog.pipeline(load_config(profile))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, profile) -> Path:
    """`python -m pipelines.retrain` (what `make kfp-compile` runs) in a fresh process, default image."""
    out = tmp_path_factory.mktemp("ir") / f"{profile}.yaml"
    env = {k: v for k, v in os.environ.items() if k != "FLAGOPS_IMAGE"}
    cmd = [sys.executable, "-m", "pipelines.retrain", "--profile", profile, "-o", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ir(compiled) -> dict:
    return yaml.safe_load(compiled.read_text())


# --------------------------------------------------------------------------- IR and parity


def test_committed_ir_is_fresh_and_compilation_is_deterministic(compiled, profile, tmp_path):
    committed = retrain.package(profile)
    assert compiled.read_bytes() == committed.read_bytes(), f"{committed.name} is stale: run `make kfp-compile`"
    if catalog.image() != catalog.DEFAULT_IMAGE:
        pytest.skip("FLAGOPS_IMAGE is set: this process's components use another image")
    again = retrain.compile_to(tmp_path / "again.yaml", profile)  # another process, another compile: same bytes
    assert again.read_bytes() == compiled.read_bytes()


def test_every_catalog_step_has_exactly_one_component_module():
    assert components.module_names() == sorted(s.name for s in catalog.STEPS)
    assert list(components.load()) == [s.name for s in catalog.STEPS]


def test_a_step_without_a_component_fails(monkeypatch):
    extra = catalog.Step("orphan_step", "flagops.steps.evaluate", ("model",), (), ())
    monkeypatch.setattr(catalog, "STEPS", (*catalog.STEPS, extra))
    assert components.module_names() != sorted(s.name for s in catalog.STEPS)
    with pytest.raises(ModuleNotFoundError, match="orphan_step"):
        components.load()


def test_tasks_and_edges_are_the_catalogs(ir, pipe):
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == {task_name(n) for n in pipe.names}
    edges = {(up, name) for name, t in tasks.items() for up in t.get("dependentTasks", [])}
    assert edges == {(task_name(a), task_name(b)) for a, b in pipe.edges()}
    producer = pipe.producer()
    for t in pipe.tasks:  # each input comes from the output of the artifact that feeds it
        wired = tasks[task_name(t.name)]["inputs"].get("artifacts", {})
        assert set(wired) == set(t.inputs)
        for name, ref in wired.items():
            art = t.inputs[name]
            assert ref["taskOutputArtifact"] == {"outputArtifactKey": art, "producerTask": task_name(producer[art])}


def test_component_artifacts_and_descriptions_are_the_catalogs(ir, pipe):
    def schemas(defs):
        return {k: v["artifactType"]["schemaTitle"] for k, v in defs.get("artifacts", {}).items()}

    def kfp_type(name):
        return components.ARTIFACT_TYPES[catalog.ARTIFACTS[name].kind].schema_title

    built = components.load()
    for t in pipe.tasks:
        step = t.step
        comp = ir["components"][f"comp-{task_name(step.name)}"]
        assert set(comp["inputDefinitions"]["parameters"]) == set(components.PARAMETERS)
        assert schemas(comp["inputDefinitions"]) == {n: kfp_type(step.feeds(n)[0]) for n in step.inputs}
        optional = {n for n, d in comp["inputDefinitions"].get("artifacts", {}).items() if d.get("isOptional")}
        assert optional == set(step.optional), step.name
        assert schemas(comp["outputDefinitions"]) == {n: kfp_type(n) for n in step.output_names}
        assert built[step.name].description == step.summary, step.name


def test_every_task_gets_the_run_group_as_its_pipeline_key(ir):
    """From the pipeline parameter, default "": a per-run value would be in every cache key."""
    for name, task in ir["root"]["dag"]["tasks"].items():
        assert task["inputs"]["parameters"]["pipeline_key"] == {"componentInputParameter": "run_group"}, name
    assert ir["root"]["inputDefinitions"]["parameters"]["run_group"]["defaultValue"] == ""


@pytest.mark.parametrize(("pipeline_key", "seen"), [("run-1", "kfp:run-1"), ("", None)])
def test_run_step_exports_the_pipeline_key_only_while_the_step_runs(monkeypatch, tmp_path, pipeline_key, seen):
    import flagops.steps

    monkeypatch.delenv(tracking.PIPELINE_KEY_ENV, raising=False)
    calls = []
    monkeypatch.setattr(flagops.steps, "execute", lambda *a: calls.append(os.environ.get(tracking.PIPELINE_KEY_ENV)))
    corpus = argparse.Namespace(path=str(tmp_path / "corpus"))
    components.run_step("build_corpus", to_yaml(load_config("tiny")), "", pipeline_key, corpus=corpus)
    assert calls == [seen] and tracking.PIPELINE_KEY_ENV not in os.environ


def test_resources_retries_and_caching_are_the_catalogs(ir, pipe):
    tasks = ir["root"]["dag"]["tasks"]
    for step in pipe.steps:
        res = ir["deploymentSpec"]["executors"][f"exec-{task_name(step.name)}"]["container"]["resources"]
        r = step.resources
        assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == (r.cpu, r.cpu), step.name
        assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == (r.memory, r.memory), step.name
        gpu = {k: v for k, v in res.get("accelerator", {}).items() if k in ("resourceType", "resourceCount")}
        assert gpu == ({"resourceType": "nvidia.com/gpu", "resourceCount": str(r.gpus)} if r.gpus else {}), step.name
        task = tasks[task_name(step.name)]
        assert task["retryPolicy"]["maxRetryCount"] == retrain.RETRIES
        records = any(a.kind == "record" for a in step.outputs)
        assert task["cachingOptions"].get("enableCache", False) is not records, step.name


def test_components_run_on_the_flagops_image_without_pip(ir):
    for name, ex in ir["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == catalog.DEFAULT_IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_default_params_are_the_profiles(ir, profile):
    default = ir["root"]["inputDefinitions"]["parameters"]["params"]["defaultValue"]
    assert FlagopsConfig.model_validate(yaml.safe_load(default)) == load_config(profile)
    assert ir["pipelineInfo"]["name"] == retrain.pipeline_name(profile)
    assert ir["root"]["inputDefinitions"]["parameters"]["tracking_uri"]["defaultValue"] == ""


# --------------------------------------------------------------------------- kfp.local


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, pytestconfig):
    """The whole pipeline once in kfp.local (subprocesses of this venv) on the tiny_all profile."""
    from kfp import local

    root = tmp_path_factory.mktemp("kfp_local")
    uri = f"sqlite:///{root / 'mlflow.db'}"  # root is absolute: four slashes
    runner = local.SubprocessRunner(use_venv=False)  # this venv: no Docker here, no pip installs
    local.init(runner=runner, pipeline_root=str(root / "outputs"), workspace_root=str(root / "ws"))
    start = time.perf_counter()
    task = retrain.for_config(LOCAL)(params=to_yaml(load_config(LOCAL)), tracking_uri=uri, run_group="local-1")
    wall = time.perf_counter() - start
    with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\nkfp.local: the retraining pipeline ({len(TINY.tasks)} tasks, {LOCAL} profile) took {wall:.1f} s")
    return root, uri, task.output


@pytest.mark.slow
def test_local_run_registers_a_champion(local_run):
    from mlflow import MlflowClient

    _, uri, _ = local_run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    cfg = load_config(LOCAL)
    for name in (cfg.registry.model_name, cfg.reranker.model_name, cfg.longctx.model_name):  # embedder, reranker, extended LM
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == "1" and mv.tags["model_sha256"], name
    runs = client.search_runs([client.get_experiment_by_name("flagops").experiment_id])
    assert {r.data.tags.get("flagops.step") for r in runs} >= set(TINY.names)


@pytest.mark.slow
def test_local_run_groups_its_step_runs_under_one_parent_run(local_run):
    from mlflow import MlflowClient

    _, uri, _ = local_run
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("flagops").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("flagops.kind") == "pipeline"]
    key = parent.data.tags["flagops.pipeline_key"]
    assert key == "kfp:local-1" and parent.info.run_name == key and parent.data.tags["flagops.profile"] == LOCAL
    steps = [r for r in runs if "flagops.step" in r.data.tags]
    assert sorted(r.data.tags["flagops.step"] for r in steps) == sorted(TINY.names)
    assert {r.data.tags["mlflow.parentRunId"] for r in steps} == {parent.info.run_id}


@pytest.mark.slow
def test_local_run_metrics_reach_kfp_and_every_output_exists(local_run):
    root, _, metrics = local_run
    written = json.loads(Path(metrics.path).read_text())
    assert 0.0 <= written["candidate/ndcg@10"] <= 1.0 and 0.0 <= written["reranked/ndcg@10"] <= 1.0
    # The evaluator's keys, made safe for KFP: candidate/ndcg@10 -> candidate_ndcg_at_10.
    assert metrics.metadata["candidate_ndcg_at_10"] == written["candidate/ndcg@10"]
    assert len(metrics.metadata) == len(written)
    (run_dir,) = (root / "outputs").iterdir()
    for step in TINY.steps:
        for a in step.outputs:
            path = run_dir / task_name(step.name) / a.name
            assert path.is_dir() if a.is_dir else path.is_file(), path
    # The long-context branch handed its artifacts on through KFP: the extension read the base LM,
    # and the InferenceService serves the extended window.
    cfg = load_config(LOCAL).longctx
    extended = json.loads((run_dir / "extend-context" / "extended_lm" / "config.json").read_text())
    assert extended["max_position_embeddings"] == cfg.base_context * cfg.factor
    isvc = yaml.safe_load((run_dir / "deploy-long-context" / "longctx_inference_service").read_text())
    assert f"--max_model_len={cfg.base_context * cfg.factor}" in isvc["spec"]["predictor"]["model"]["args"]


# --------------------------------------------------------------------------- submit / schedule


class FakeKFPServer:
    """Stands in for the KFP API server: no KFP server can run on this machine, so the
    client's HTTP pool is replaced and each request is recorded and answered from a table."""

    def __init__(self, pipelines=()):
        self.requests: list[dict] = []
        self.pipelines = list(pipelines)

    def pool(self, *args, **kwargs):  # replaces urllib3.PoolManager
        return self

    def request(self, method, url, body=None, fields=None, headers=None, **_):
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if method == "GET" and fields:
            query |= dict(fields)
        body = json.loads(body) if body else None
        self.requests.append({"method": method, "path": parts.path, "query": query, "body": body, "fields": fields})
        return FakeResponse(self.answer(method, parts.path, query))

    def answer(self, method, path, query):
        api = "/apis/v2beta1"
        if path == f"{api}/healthz":
            return {"multi_user": False}
        if (method, path) == ("GET", f"{api}/pipelines"):
            return {"pipelines": self.pipelines}
        if path == f"{api}/pipelines/upload":
            return {"pipeline_id": "p-new", "display_name": query["name"]}
        if path.endswith("/versions"):  # the first upload's version, or none named like ours
            return {"pipeline_versions": [] if "filter" in query else [{"pipeline_version_id": "v-first"}]}
        if path == f"{api}/pipelines/upload_version":
            return {"pipeline_id": query["pipelineid"], "pipeline_version_id": "v-new"}
        if (method, path) == ("GET", f"{api}/experiments"):
            return {}
        if (method, path) == ("POST", f"{api}/experiments"):
            return {"experiment_id": "e-1", "display_name": "flagops"}
        if path == f"{api}/runs":
            return {"run_id": "r-1"}
        if path == f"{api}/recurringruns":
            return {"recurring_run_id": "rr-1"}
        raise AssertionError(f"unexpected request {method} {path}")

    def sent(self, method, path):
        return [r for r in self.requests if r["method"] == method and r["path"] == f"/apis/v2beta1{path}"]


class FakeResponse:
    def __init__(self, payload):
        self.status, self.reason, self.data = 200, "OK", json.dumps(payload).encode()

    def getheaders(self):
        return {"content-type": "application/json"}

    def getheader(self, name, default=None):
        return self.getheaders().get(name.lower(), default)


@pytest.fixture
def server(monkeypatch, tmp_path):
    import kfp
    import urllib3

    fake = FakeKFPServer()
    monkeypatch.setattr(urllib3, "PoolManager", fake.pool)
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "no-context.json"))
    return fake


def test_submit_uploads_the_ir_and_creates_a_run(server):
    """A mock stands in for the KFP API server (none can run on this machine); we check what is sent."""
    client = kfp_client.connect("http://kfp.test:8888")
    params = kfp_client.arguments(load_config("tiny"), "sqlite:////tmp/m.db")
    assert kfp_client.submit(client, retrain.package("tiny"), params, name="retrain-test") == "r-1"

    (upload,) = server.sent("POST", "/pipelines/upload")
    assert upload["query"]["name"] == "flagops-tiny"
    (filename, content, _) = dict(upload["fields"])["uploadfile"]
    assert filename == "tiny.yaml" and content == retrain.package("tiny").read_bytes()
    assert server.sent("POST", "/experiments")[0]["body"]["display_name"] == "flagops"
    (run,) = server.sent("POST", "/runs")
    body = run["body"]
    assert body["display_name"] == "retrain-test" and body["experiment_id"] == "e-1"
    assert body["pipeline_version_reference"] == {"pipeline_id": "p-new", "pipeline_version_id": "v-first"}
    assert body["runtime_config"]["parameters"] == params
    assert load_config("tiny") == FlagopsConfig.model_validate(yaml.safe_load(params["params"]))


def test_schedule_creates_a_cron_recurring_run_through_the_cli(server):
    """`flagops kfp schedule` against the mock KFP API server (none can run on this machine)."""
    server.pipelines = [{"pipeline_id": "p-old", "display_name": "flagops-tiny"}]
    parser = argparse.ArgumentParser()
    kfp_client.add_kfp_commands(parser.add_subparsers())
    argv = ["kfp", "schedule", "--host", "http://kfp.test:8888", "--cron", "0 3 * * *", "--profile", "tiny", "train.max_steps=2"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0

    (version,) = server.sent("POST", "/pipelines/upload_version")
    assert version["query"]["pipelineid"] == "p-old" and version["query"]["name"].startswith("flagops-tiny-")
    (job,) = server.sent("POST", "/recurringruns")
    body = job["body"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}  # KFP's 6 fields, seconds first
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {"pipeline_id": "p-old", "pipeline_version_id": "v-new"}
    sent = yaml.safe_load(body["runtime_config"]["parameters"]["params"])
    assert sent["profile"] == "tiny" and sent["train"]["max_steps"] == 2
    assert body["runtime_config"]["parameters"]["tracking_uri"] == ""
    assert body["runtime_config"]["parameters"]["run_group"] == ""  # a schedule keeps KFP's cache


def test_submit_group_runs_sends_a_fresh_run_group(server):
    """`flagops kfp submit --group-runs` against the mock KFP API server (none can run here)."""
    parser = argparse.ArgumentParser()
    kfp_client.add_kfp_commands(parser.add_subparsers())
    groups = []
    for extra in (["--group-runs"], ["--group-runs"], []):
        args = parser.parse_args(["kfp", "submit", "--host", "http://kfp.test:8888", "--name", "nightly", *extra])
        assert args.func(args) == 0
        groups.append(server.sent("POST", "/runs")[-1]["body"]["runtime_config"]["parameters"]["run_group"])
    assert groups[0].startswith("nightly-") and groups[1].startswith("nightly-") and groups[0] != groups[1]
    assert groups[2] == ""


@pytest.mark.parametrize(
    ("argv", "package"),
    [
        (["--profile", "demo_m3"], "demo_m3.yaml"),
        (["--profile", "demo", "model.kind=m3"], "demo_m3.yaml"),  # an override that changes the DAG picks its IR
        (["--profile", "tiny_m3"], "tiny_m3.yaml"),
    ],
)
def test_submit_uploads_the_profiles_own_pipeline(server, argv, package):
    """`flagops kfp submit --profile X` against the mock KFP API server (none can run here)."""
    parser = argparse.ArgumentParser()
    kfp_client.add_kfp_commands(parser.add_subparsers())
    args = parser.parse_args(["kfp", "submit", "--host", "http://kfp.test:8888", *argv])
    assert args.func(args) == 0
    (upload,) = server.sent("POST", "/pipelines/upload")
    assert dict(upload["fields"])["uploadfile"][0] == package
    assert upload["query"]["name"] == "flagops-" + package.removesuffix(".yaml").replace("_", "-")


def test_submit_refuses_a_config_whose_dag_no_ir_has(monkeypatch):
    import flagops.config

    monkeypatch.setattr(flagops.config, "shipped_profiles", lambda: ["demo", "tiny"])
    with pytest.raises(flagops.config.ConfigError, match=r"no compiled pipeline runs the DAG of this config .*--package"):
        kfp_client.package_for(load_config("tiny_m3"))


def test_cron_is_checked():
    assert kfp_client.kfp_cron("*/30 * * * * *") == "*/30 * * * * *"
    with pytest.raises(ValueError, match="5 fields"):
        kfp_client.kfp_cron("daily")


def test_llm_synthesis_task_reads_the_api_key_from_a_secret(tmp_path):
    """synthesis.generator=llm: the synthesize_queries task, and no other, gets the endpoint's key
    as the variable synthesis.llm.api_key_env names, from the flagops-llm Secret (optional, so a
    pod without it starts and the step says what is missing); a heuristic profile mounts none."""
    params = tmp_path / "llm.yaml"
    params.write_text("extends: tiny\nsynthesis:\n  generator: llm\n  llm:\n    api_key_env: VLLM_API_KEY\n")
    ir = list(yaml.safe_load_all(retrain.compile_to(tmp_path / "llm-ir.yaml", params).read_text()))
    executors = ir[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert list(executors) == ["exec-synthesize-queries"]
    [secret] = executors["exec-synthesize-queries"]["secretAsEnv"]
    assert secret["secretName"] == "flagops-llm" and secret["optional"] is True
    assert secret["keyToEnv"] == [{"secretKey": "api-key", "envVar": "VLLM_API_KEY"}]
    assert len(list(yaml.safe_load_all(retrain.package("tiny").read_text()))) == 1  # heuristic: no platform spec


def test_cache_pvc_mounts_one_claim_in_every_task_as_the_flagops_cache(tmp_path):
    """`python -m pipelines.retrain --cache-pvc NAME -o FILE`: every task mounts the claim at
    CACHE_MOUNT and has FLAGOPS_CACHE pointing there; the committed IRs mount none, and
    --cache-pvc without -o (which would rewrite a committed IR) is refused."""
    out = tmp_path / "cached.yaml"
    cmd = [sys.executable, "-m", "pipelines.retrain", "--profile", "tiny", "--cache-pvc", "flagops-cache", "-o", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    spec, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"]) and len(executors) == len(catalog.pipeline(load_config("tiny")).tasks)
    for name, executor in executors.items():
        [mount] = executor["pvcMount"]
        assert mount["mountPath"] == retrain.CACHE_MOUNT and mount["constant"] == "flagops-cache", name
        env = spec["deploymentSpec"]["executors"][name]["container"]["env"]
        assert {"name": "FLAGOPS_CACHE", "value": retrain.CACHE_MOUNT} in env, name
    assert "pvcMount" not in retrain.package("tiny").read_text()
    refused = subprocess.run([sys.executable, "-m", "pipelines.retrain", "--cache-pvc", "x"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "--cache-pvc needs -o FILE" in refused.stderr
    bad = subprocess.run([*cmd[:-4], "--cache-pvc", "Flagops_Cache", "-o", str(out)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "'Flagops_Cache' is no PersistentVolumeClaim name" in bad.stderr
