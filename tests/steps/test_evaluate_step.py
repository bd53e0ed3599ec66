"""The real `evaluate` step on a tiny BEIR folder with the random tiny BERT as base and candidate."""

from __future__ import annotations

import json

import pytest

from flagops.config import ConfigError, FlagopsConfig, ModelConfig, apply_override, load_config, validate
from flagops.data.formats import EvalSet, Passage, read_json, write_beir, write_jsonl
from flagops.evaluation import RETRIEVAL_METRICS
from flagops.models.openvino_backend import bf16_ready
from flagops.models.sources import resolve_model_source
from flagops.steps import execute

TOPICS = ["volcano", "glacier", "orchid", "violin"]
# Three passages per topic; each query's words occur only in its topic's passages, so BM25
# ranks them all on top (nDCG@10 = 1) while a random model does what it does.
PASSAGES = [
    Passage(f"{topic}-{i}", f"{topic.title()} note {i}" if i == 0 else "", f"{words} {topic} {extra}")
    for topic, words in zip(
        TOPICS,
        ["lava erupts from a", "ice slowly carves a", "petals bloom on an", "strings resonate in a"],
        strict=True,
    )
    for i, extra in enumerate(["crater", "valley", "summit"])
]
QUERIES = {f"q-{topic}": f"tell me about the {topic}" for topic in TOPICS}
QRELS = {f"q-{topic}": {f"{topic}-0": 2, f"{topic}-1": 1, f"{topic}-2": 1} for topic in TOPICS}
SYSTEMS = ("candidate", "base", "bm25")


def tiny_config(*overrides: str) -> FlagopsConfig:
    """The `tiny` profile when it exists, else the same essentials built by hand."""
    fixed = ["model.base=tiny-bert", "evaluate.base=true", "evaluate.bm25=true", "evaluate.batch_size=8", *overrides]
    try:
        return load_config("tiny", fixed)
    except ConfigError as exc:
        if "unknown profile" not in str(exc):
            raise
    data = FlagopsConfig(profile="tiny", model=ModelConfig(base="tiny-bert", pooling="cls")).model_dump()
    for item in fixed:
        data = apply_override(data, item)
    return validate(data)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_beir(root / "eval", EvalSet(PASSAGES, QUERIES, QRELS))
    write_jsonl(
        root / "sts.jsonl",
        [
            {"sentence1": "a volcano erupts", "sentence2": "lava pours from a volcano", "score": 4.5},
            {"sentence1": "a violin plays", "sentence2": "strings resonate", "score": 3.0},
            {"sentence1": "orchids bloom", "sentence2": "a glacier moves", "score": 0.5},
            {"sentence1": "ice carves valleys", "sentence2": "glaciers carve valleys", "score": 4.0},
        ],
    )
    return root


def step_paths(root, name):
    out = root / name
    inputs = {"model": resolve_model_source("tiny-bert"), "eval_set": root / "eval"}
    outputs = {"metrics": out / "eval.json", "chart": out / "chart.png", "chart_data": out / "chart.json"}
    return inputs, outputs


@pytest.fixture(scope="module")
def untracked(workspace):
    cfg = tiny_config(f"evaluate.sts={workspace / 'sts.jsonl'}")
    inputs, outputs = step_paths(workspace, "untracked")
    returned = execute("evaluate", cfg, inputs, outputs, track=False)
    return returned, outputs


def test_metrics_json_has_every_system_and_metric(untracked):
    returned, outputs = untracked
    metrics = read_json(outputs["metrics"])
    expected = {f"{s}/{m}" for s in SYSTEMS for m in RETRIEVAL_METRICS}
    expected |= {"candidate/sts_spearman", "base/sts_spearman"}
    checked = ("int8",) + (("openvino-bf16",) if bf16_ready() else ())  # OpenVINO bf16 only where the CPU has bf16 units
    expected |= {f"quant/{m}/{k}" for m in checked for k in ("ndcg_fp32", "ndcg", "ndcg_delta", "min_cosine", "mean_cosine", "passed")}
    assert set(metrics) == expected
    assert metrics == returned
    for key, value in metrics.items():
        assert isinstance(value, float), key
        if key.endswith("/ndcg_delta"):
            continue
        low = -1.0 if key.endswith("sts_spearman") else 0.0
        assert low <= value <= 1.0, (key, value)
        assert value == round(value, 6)


def test_same_model_scores_the_same_as_base(untracked):
    _, outputs = untracked
    metrics = read_json(outputs["metrics"])
    for name in [*RETRIEVAL_METRICS, "sts_spearman"]:
        assert metrics[f"candidate/{name}"] == metrics[f"base/{name}"], name


def test_bm25_finds_the_topic_passages(untracked):
    _, outputs = untracked
    metrics = read_json(outputs["metrics"])
    assert metrics["bm25/ndcg@10"] == 1.0
    assert metrics["bm25/recall@10"] == 1.0


def test_chart_outputs(untracked):
    _, outputs = untracked
    assert outputs["chart"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    rows = json.loads(outputs["chart_data"].read_text())
    metrics = read_json(outputs["metrics"])
    assert len(rows) == 3 * 3  # bm25, base, candidate x ndcg@10, mrr@10, recall@100
    for row in rows:
        assert set(row) == {"system", "metric", "label", "value"}
        assert row["value"] == metrics[f"{row['system']}/{row['metric']}"]
    assert {r["system"] for r in rows} == set(SYSTEMS)
    assert {r["metric"] for r in rows} == {"ndcg@10", "mrr@10", "recall@100"}
    # Only the declared outputs, no temporary leftovers.
    assert sorted(p.name for p in outputs["metrics"].parent.iterdir()) == ["chart.json", "chart.png", "eval.json"]


def test_int8_check_of_the_candidate(untracked):
    """evaluate measures the released model in int8: its fp32 score is the candidate's, the int8
    score is a real second evaluation (a random tiny BERT moves under int8), and passed follows the rule."""
    from flagops.models.quantize import from_metrics

    _, outputs = untracked
    metrics = read_json(outputs["metrics"])
    assert metrics["quant/int8/ndcg_fp32"] == metrics["candidate/ndcg@10"]
    assert 0.0 <= metrics["quant/int8/ndcg"] <= 1.0
    assert metrics["quant/int8/ndcg_delta"] == pytest.approx(metrics["quant/int8/ndcg"] - metrics["quant/int8/ndcg_fp32"], abs=2e-6)
    assert 0.5 < metrics["quant/int8/min_cosine"] <= metrics["quant/int8/mean_cosine"] <= 1.0
    assert metrics["quant/int8/passed"] == float(from_metrics(metrics)[0].passed)


@pytest.mark.skipif(not bf16_ready(), reason="OpenVINO bf16 is checked only on a CPU with bf16 units (AMX or AVX512-BF16)")
def test_openvino_bf16_check_of_the_candidate(untracked):
    """evaluate measures the release in OpenVINO bf16 too: a real second evaluation against the
    candidate's fp32 score, bf16-close in cosine, and passed follows the rule."""
    from flagops.models.quantize import OPENVINO_BF16, from_metrics

    _, outputs = untracked
    metrics = read_json(outputs["metrics"])
    assert metrics["quant/openvino-bf16/ndcg_fp32"] == metrics["candidate/ndcg@10"]
    assert 0.99 < metrics["quant/openvino-bf16/min_cosine"] <= metrics["quant/openvino-bf16/mean_cosine"] <= 1.0
    (check,) = [c for c in from_metrics(metrics) if c.method == OPENVINO_BF16]
    assert metrics["quant/openvino-bf16/passed"] == float(check.passed)


def test_int8_check_runs_int8(workspace):
    """Unrounded, the int8 vectors differ from fp32 (the tiny random BERT moves by ~1e-7 in cosine,
    which the metrics' 6 decimals hide): the check compared two numerics, not one model twice."""
    from flagops.data.formats import read_beir
    from flagops.evaluation import RetrievalEvaluator
    from flagops.evaluation.quant_check import check_int8

    cfg = tiny_config()
    evaluator = RetrievalEvaluator(read_beir(workspace / "eval"), 8)
    check = check_int8(cfg.model, str(resolve_model_source("tiny-bert")), evaluator, 0.5, primary="ndcg@10")
    assert check.method == "int8-dynamic" and "4 queries, 12 passages" in check.eval_set
    assert 0.999 < check.min_cosine < 1.0
    assert check.ndcg_fp32 == 0.5


def test_candidate_only(workspace):
    cfg = tiny_config("evaluate.base=false", "evaluate.bm25=false", "evaluate.quant_check=false")
    inputs, outputs = step_paths(workspace, "candidate-only")
    metrics = execute("evaluate", cfg, inputs, outputs, track=False)
    assert set(metrics) == {f"candidate/{m}" for m in RETRIEVAL_METRICS}
    assert {r["system"] for r in read_json(outputs["chart_data"])} == {"candidate"}


def test_tracked_run_logs_metrics_and_chart(workspace, untracked, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from flagops.registry.tracking import mlflow_key

    monkeypatch.chdir(tmp_path)  # a sqlite store puts its artifact root under the working directory
    monkeypatch.delenv("FLAGOPS_PARENT_RUN_ID", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = tiny_config(f"evaluate.sts={workspace / 'sts.jsonl'}", f"registry.tracking_uri={uri}")
    inputs, outputs = step_paths(workspace, "tracked")
    previous_uri = mlflow.get_tracking_uri()
    try:
        metrics = execute("evaluate", cfg, inputs, outputs, track=True)
    finally:
        mlflow.set_tracking_uri(previous_uri)

    assert metrics == untracked[0]  # same inputs, same config: same numbers
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.registry.experiment)
    (run,) = client.search_runs([experiment.experiment_id], filter_string="tags.`flagops.step` = 'evaluate'")
    assert run.data.metrics == {mlflow_key(k): pytest.approx(v) for k, v in metrics.items()}
    assert "candidate/ndcg_at_10" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["chart.png"]


# --------------------------------------------------------------------------- M3 candidate


@pytest.fixture(scope="module")
def m3_candidate(workspace):
    from flagops.models.m3 import M3Embedder

    path = workspace / "m3-candidate"
    M3Embedder.load("tiny-bert", pooling="cls", colbert_dim=32, seed=3).save(path)
    return path


def m3_config(*overrides: str) -> FlagopsConfig:
    return load_config("tiny_m3", ["evaluate.base=false", "evaluate.bm25=false", "evaluate.batch_size=8", *overrides])


def count_calls(monkeypatch) -> dict[str, int]:
    """Count model loads and encode calls; the real methods still run."""
    from flagops.models.embedder import Embedder
    from flagops.models.m3 import M3Embedder

    calls = {"load": 0, "encode": 0, "encode_m3": 0}
    for owner, name in ((Embedder, "load"), (Embedder, "encode"), (M3Embedder, "encode_m3")):
        real = getattr(owner, name)  # a classmethod comes bound, an instance method plain

        def spy(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    return calls


@pytest.mark.parametrize("mcls", [False, True])
def test_m3_candidate_is_loaded_once_and_its_dense_keys_are_unchanged(workspace, m3_candidate, monkeypatch, mcls):
    from flagops.evaluation.retrieval import RetrievalEvaluator
    from flagops.models.embedder import Embedder

    cfg = m3_config(f"m3.mcls={str(mcls).lower()}", "m3.mcls_interval=8")  # 8: the passages get several CLS
    inputs = {"model": m3_candidate, "eval_set": workspace / "eval"}
    out = workspace / f"m3-mcls-{mcls}"
    calls = count_calls(monkeypatch)
    metrics = execute(
        "evaluate", cfg, inputs, {"metrics": out / "eval.json", "chart": out / "c.png", "chart_data": out / "c.json"}, track=False
    )
    # One load; passages and queries encoded once each in every mode. Only MCLS, which the
    # server does not do, needs a plain dense pass (passages, queries) for the candidate keys.
    assert calls == {"load": 1, "encode": 2 if mcls else 0, "encode_m3": 2}
    monkeypatch.undo()
    if not mcls:
        for name in RETRIEVAL_METRICS:
            assert metrics[f"candidate/{name}"] == metrics[f"candidate/m3_dense/{name}"], name
    # The numbers the plain dense evaluation of the same directory gives (what evaluate did before).
    plain = RetrievalEvaluator(read_beir_set(workspace), 8)(Embedder.from_config(cfg.model, m3_candidate), prefix="candidate")
    assert {k: metrics[k] for k in plain} == pytest.approx(plain, abs=2e-6)


def read_beir_set(workspace) -> EvalSet:
    from flagops.data.formats import read_beir

    return read_beir(workspace / "eval")


def test_mocked_cuda_places_every_model_and_keeps_the_numbers(workspace, untracked, fake_cuda):
    """CUDA is mocked (no GPU here): evaluate asks for cuda:0 in fp16 for the candidate and the base.
    ``fake_cuda`` records the moves without doing them, so the numbers are the CPU run's."""
    import torch

    from flagops.models.device import Placement

    cfg = tiny_config(f"evaluate.sts={workspace / 'sts.jsonl'}")
    inputs, outputs = step_paths(workspace, "fake-cuda")
    on_cpu = {k: v for k, v in untracked[0].items() if not k.startswith("quant/")}
    assert execute("evaluate", cfg, inputs, outputs, track=False) == on_cpu  # int8 is a CPU path: no check on a GPU
    assert fake_cuda == [("Embedder", Placement(torch.device("cuda", 0), torch.float16))] * 2


def test_mocked_cuda_places_the_m3_candidate_too(workspace, fake_cuda, tmp_path):
    """model.kind=m3 also loads the candidate with its heads: all on the device the config asks for."""
    import torch

    from flagops.models.device import Placement
    from flagops.models.m3 import M3Embedder

    M3Embedder.load("tiny-bert", colbert_dim=32).save(tmp_path / "m3")  # tiny_m3's colbert_dim
    cfg = load_config("tiny_m3", ["evaluate.base=false", "evaluate.bm25=false", "model.device=cuda:1", "model.dtype=float32"])
    inputs, outputs = step_paths(workspace, "fake-cuda-m3")
    metrics = execute("evaluate", cfg, {**inputs, "model": tmp_path / "m3"}, outputs, track=False)
    assert "candidate/m3_hybrid/ndcg@10" in metrics
    cuda1 = Placement(torch.device("cuda", 1), torch.float32)
    assert fake_cuda == [("M3Embedder", cuda1)]  # loaded once: its dense run is the candidate's


def test_suite_tasks_score_the_candidate_and_base_and_feed_the_gate(workspace, repo_root):
    """evaluate.tasks: `flagops eval`'s tasks, scored for both systems under flat suite keys
    equal to what the suite gives for the same model (as the config loads it: the tiny
    profile's mean pooling); the gate can rank on their average."""
    from flagops.evaluation.suite import load_tasks, run_tasks
    from flagops.models.embedder import Embedder
    from flagops.registry.promotion import decide

    fixtures = repo_root / "tests" / "fixtures" / "eval"
    tasks = [str(fixtures / "stdlib_beir"), str(fixtures / "sts.jsonl")]
    cfg = tiny_config("evaluate.bm25=false", f"evaluate.tasks={json.dumps(tasks)}")
    inputs, outputs = step_paths(workspace, "suite")
    metrics = execute("evaluate", cfg, inputs, outputs, track=False)
    embedder = Embedder.from_config(cfg.model, source=str(inputs["model"]), inference=True)
    (retrieval, sts) = run_tasks(embedder, str(inputs["model"]), load_tasks(tasks), batch_size=8)
    assert metrics["candidate/suite/stdlib_beir/test/ndcg@10"] == pytest.approx(retrieval["main_score"], abs=1e-6)
    assert metrics["candidate/suite/sts/spearman"] == pytest.approx(sts["main_score"], abs=1e-6)
    assert metrics["candidate/suite/average"] == pytest.approx((retrieval["main_score"] + sts["main_score"]) / 2, abs=1e-6)
    assert metrics["candidate/suite/retrieval_average"] == metrics["candidate/suite/stdlib_beir/test/ndcg@10"]
    assert metrics["base/suite/average"] == metrics["candidate/suite/average"]  # the same tiny-bert
    better = dict(metrics, **{"candidate/suite/average": metrics["candidate/suite/average"] + 0.01})
    assert decide(better, metrics, "suite/average", 0.0, [], 0.01).promote
    # dvc plots: the suite's bars (each task's main score, then the averages) follow the held-out set's
    bars = {(r["system"], r["metric"]): r["value"] for r in json.loads(outputs["chart_data"].read_text())}
    assert bars[("candidate", "stdlib_beir/test\nndcg@10")] == pytest.approx(retrieval["main_score"], abs=1e-6)
    assert ("base", "sts\nspearman") in bars and ("candidate", "retrieval\naverage") in bars


def test_a_bad_suite_task_stops_before_any_model_loads(workspace, tmp_path):
    cfg = tiny_config(f"evaluate.tasks=[{tmp_path / 'nowhere'}]")
    inputs, outputs = step_paths(workspace, "bad-suite")
    with pytest.raises(Exception, match="nowhere"):
        execute("evaluate", cfg, inputs, outputs, track=False)
    assert not outputs["metrics"].exists()


def test_the_trained_reranker_runs_the_suites_reranking_tasks(workspace, repo_root):
    """With the reranker branch, evaluate.tasks' reranking tasks score the trained reranker too
    (``reranked/suite/...``), with the same code as `flagops eval --model <reranker>`."""
    from flagops.evaluation.suite import load_tasks, run_suite
    from flagops.models.reranker import resolve_reranker_source

    rerank_task = str(repo_root / "tests" / "fixtures" / "eval" / "reranking.jsonl")
    cfg = load_config("tiny_reranker", ["evaluate.bm25=false", "evaluate.base=false", f"evaluate.tasks=[{rerank_task}]"])
    inputs, outputs = step_paths(workspace, "suite-reranker")
    reranker = resolve_reranker_source("tiny-reranker@3")
    metrics = execute("evaluate", cfg, {**inputs, "reranker_model": reranker}, outputs, track=False)
    (row,) = run_suite([str(reranker)], load_tasks([rerank_task]))
    assert metrics["reranked/suite/reranking/map"] == pytest.approx(row["metrics"]["map"], abs=1e-6)
    assert metrics["reranked/suite/average"] == pytest.approx(row["main_score"], abs=1e-6)
    assert "candidate/suite/reranking/map" in metrics  # the embedder ranks the same rows by cosine
