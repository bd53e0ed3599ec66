"""`flagops eval`: task detection, the three scorers against references, the command end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytrec_eval

from flagops.cli import main
from flagops.data.formats import DataError, read_beir, read_sts
from flagops.evaluation import RetrievalEvaluator, sts_spearman
from flagops.evaluation.suite import RerankRow, Task, averages, load_task, reranking_metrics, score_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
BEIR = FIXTURES / "stdlib_beir"
ZH = FIXTURES / "zh_beir"
STS = FIXTURES / "sts.jsonl"
RERANK = FIXTURES / "reranking.jsonl"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _beir_frames(folder: Path, split: str):
    data = read_beir(folder, split)
    corpus = pd.DataFrame([{"id": p.id, "title": p.title, "text": p.text} for p in data.corpus])
    queries = pd.DataFrame([{"id": q, "text": t} for q, t in data.queries.items()])
    qrels = pd.DataFrame([{"qid": q, "pid": d, "score": s} for q, docs in data.qrels.items() for d, s in docs.items()])
    return data, corpus, queries, qrels


# --------------------------------------------------------------------------- detection


def test_detects_each_fixture_type():
    beir, zh, sts, rerank = (load_task(str(p)) for p in (BEIR, ZH, STS, RERANK))
    assert (beir.type, beir.name, len(beir.data.corpus), len(beir.data.queries)) == ("retrieval", "stdlib_beir/test", 199, 50)
    assert (zh.type, zh.name, len(zh.data.corpus), len(zh.data.queries)) == ("retrieval", "zh_beir/dev", 30, 15)  # only dev: chosen
    assert zh.data.queries["zq1"] == "长城有多长" and len(zh.data.qrels["zq14"]) == 4
    assert (sts.type, len(sts.data)) == ("sts", 22)
    assert (rerank.type, len(rerank.data)) == ("reranking", 20)
    assert all(len(r.positive) == 1 and len(r.negative) == 4 for r in rerank.data)


def test_split_choice(tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(BEIR, folder)
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tabc.ABCMeta\t1\n")
    assert load_task(str(folder)).name == "two/test"  # test before dev
    dev = load_task(f"{folder}::dev")
    assert dev.name == "two/dev" and dev.data.qrels == {"q1": {"abc.ABCMeta": 1}} and list(dev.data.queries) == ["q1"]
    with pytest.raises(DataError, match=r"no qrels for split 'train'; found dev, test"):
        load_task(f"{folder}::train")
    (folder / "qrels" / "test.tsv").rename(folder / "qrels" / "other.tsv")
    (folder / "qrels" / "dev.tsv").rename(folder / "qrels" / "train.tsv")
    with pytest.raises(DataError, match=r"several qrels splits \(other, train\); pick one with .*::SPLIT"):
        load_task(str(folder))


def test_cmteb_parquet_layout_reads_as_the_beir_folder(tmp_path):
    # C-MTEB publishes T2Retrieval as data/{corpus,queries}-*.parquet and its qrels apart, in T2Retrieval-qrels.
    data, corpus, queries, qrels = _beir_frames(BEIR, "test")
    root = tmp_path / "T2Retrieval"
    (root / "data").mkdir(parents=True)
    (tmp_path / "T2Retrieval-qrels" / "data").mkdir(parents=True)
    corpus.to_parquet(root / "data" / "corpus-00000-of-00001.parquet")
    queries.to_parquet(root / "data" / "queries-00000-of-00001.parquet")
    qrels.to_parquet(tmp_path / "T2Retrieval-qrels" / "data" / "dev-00000-of-00001.parquet")
    (root / ".cache" / "data").mkdir(parents=True)  # huggingface-cli's bookkeeping: never read
    corpus.to_parquet(root / ".cache" / "data" / "corpus-00000-of-00001.parquet")
    task = load_task(str(root))
    assert (task.type, task.name) == ("retrieval", "T2Retrieval/dev")
    assert task.data == data


def test_mteb_jsonl_layout_with_qrels_folder(tmp_path):
    data, corpus, queries, qrels = _beir_frames(ZH, "dev")
    root = tmp_path / "mteb_zh"
    _jsonl(root / "corpus" / "corpus.jsonl", [{"_id": r.id, "title": r.title, "text": r.text} for r in corpus.itertuples()])
    _jsonl(root / "queries" / "queries.jsonl", [{"_id": r.id, "text": r.text} for r in queries.itertuples()])
    _jsonl(root / "qrels" / "dev.jsonl", [{"query-id": r.qid, "corpus-id": r.pid, "score": r.score} for r in qrels.itertuples()])
    assert load_task(str(root)).data == data


def test_not_a_task_is_one_line(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(DataError) as err:
        load_task(str(tmp_path / "stuff"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'stuff'}: not an evaluation task (no corpus, queries, qrels files)")
    assert "BEIR folder" in msg and "reranking file" in msg
    with pytest.raises(DataError, match=r"notes.jsonl: columns \['a'\] match no task; expected a BEIR folder"):
        load_task(str(tmp_path / "stuff" / "notes.jsonl"))
    with pytest.raises(DataError, match="no such file or directory"):
        load_task(str(tmp_path / "missing"))


def test_unknown_qrels_id_names_the_row(tmp_path):
    _, corpus, queries, qrels = _beir_frames(ZH, "dev")
    root = tmp_path / "bad"
    (root / "qrels").mkdir(parents=True)
    corpus.to_parquet(root / "corpus.parquet")
    queries.to_parquet(root / "queries.parquet")
    qrels.loc[2, "pid"] = "nope"
    qrels.to_parquet(root / "qrels" / "test.parquet")
    with pytest.raises(DataError, match=r"qrels/test.parquet:row 3: unknown corpus id 'nope'"):
        load_task(str(root))


# --------------------------------------------------------------------------- scoring


class FakeEncoder:
    """Hand-made vectors per text, so reranking scores are known cosines."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def encode(self, texts, *, is_query=False, batch_size=32, progress=None):
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def test_reranking_metrics_by_hand():
    rows = [
        RerankRow("q1", ["a"], ["b", "c"]),  # scores a .2, b .9, c .1: order b a c -> AP 1/2, RR 1/2
        RerankRow("q2", ["a", "b"], ["c", "d"]),  # a .9, b .1, c .5, d .3: order a c d b -> AP (1 + 2/4)/2, RR 1
        RerankRow("q3", ["a"], ["b"]),  # a tie: the negative ranks first -> AP 1/2, RR 1/2
        RerankRow("q4", ["a"], [f"n{i}" for i in range(10)]),  # positive at rank 11 -> AP 1/11, RR@10 0
    ]
    scores = [np.array([0.2, 0.9, 0.1]), np.array([0.9, 0.1, 0.5, 0.3]), np.array([0.5, 0.5]), np.array([0.0] + [1.0] * 10)]
    got = reranking_metrics(rows, scores)
    assert got["map"] == pytest.approx((1 / 2 + 0.75 + 1 / 2 + 1 / 11) / 4)
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 + 1 / 2 + 0) / 4)


def test_reranking_on_an_embedder_ranks_by_cosine():
    # Query (1, 0); cosines: p1 (1, 1) -> .71, n1 (3, 0) -> 1 (unnormalised: dot would agree), n2 (0, 1) -> 0.
    encoder = FakeEncoder({"q": [1, 0], "p1": [1, 1], "n1": [3, 0], "n2": [0, 1], "q2": [0, 2], "p2": [0, 1]})
    task = Task("t", "reranking", [RerankRow("q", ["p1"], ["n1", "n2"]), RerankRow("q2", ["p2"], ["n2", "n1"])])
    got = score_task(task, encoder, is_reranker=False, batch_size=2)
    # row 1: n1 p1 n2 -> AP 1/2, RR 1/2; row 2: p2 and n2 tie at 1, the negative first -> AP 1/2, RR 1/2
    assert got == pytest.approx({"map": 0.5, "mrr@10": 0.5})


def test_retrieval_main_score_is_pytrec_evals(tiny_embedder):
    task = load_task(str(BEIR))
    got = score_task(task, tiny_embedder, is_reranker=False, batch_size=64)
    run = RetrievalEvaluator(task.data, 64).search(tiny_embedder)
    per_query = pytrec_eval.RelevanceEvaluator(task.data.qrels, {"ndcg_cut.10"}).evaluate(run)
    assert got["ndcg@10"] == pytest.approx(np.mean([q["ndcg_cut_10"] for q in per_query.values()]), abs=1e-12)
    assert set(got) == {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map"}
    assert 0 < got["ndcg@10"] < 1


def test_sts_main_score_is_sts_spearman(tiny_embedder):
    got = score_task(load_task(str(STS)), tiny_embedder, is_reranker=False, batch_size=8)
    assert got == {"spearman": sts_spearman(tiny_embedder, read_sts(STS), batch_size=8)}


def test_averages_per_model_and_type():
    rows = [
        {"model": "a", "type": "retrieval", "main_score": 0.2},
        {"model": "a", "type": "sts", "main_score": 0.5},
        {"model": "a", "type": "retrieval", "main_score": 0.4},
        {"model": "b", "type": "retrieval", "main_score": 0.1},
    ]
    assert averages(rows) == [
        {"model": "a", "type": "retrieval", "tasks": 2, "average": pytest.approx(0.3)},
        {"model": "a", "type": "sts", "tasks": 1, "average": 0.5},
        {"model": "b", "type": "retrieval", "tasks": 1, "average": 0.1},
    ]


# --------------------------------------------------------------------------- the command


def test_cli_two_embedders_and_a_reranker_over_all_fixtures(tmp_path, capsys):
    out = tmp_path / "suite.json"
    tasks = [a for p in (BEIR, ZH, STS, RERANK) for a in ("--task", str(p))]
    models = ["--model", "tiny-bert", "--model", "tiny-bert@2", "--model", "tiny-reranker"]
    assert main(["eval", *models, *tasks, "--out", str(out), "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows, means = result["rows"], result["averages"]
    pairs = [(r["model"], r["task"]) for r in rows]
    names = ["stdlib_beir/test", "zh_beir/dev", "sts", "reranking"]
    assert pairs == [(m, t) for m in ("tiny-bert", "tiny-bert@2") for t in names] + [("tiny-reranker", "reranking")]
    for row in rows:  # every row printed with its main score
        assert any(row["task"] in line and row["model"] in line and f"{row['main_score']:.4f}" in line for line in printed.splitlines())
        main_metric = {"retrieval": "ndcg@10", "sts": "spearman", "reranking": "map"}[row["type"]]
        assert row["main_score"] == row["metrics"][main_metric]
    assert rows[0]["main_score"] != rows[4]["main_score"]  # two different models, two different scores
    assert "skipping retrieval task stdlib_beir/test" in printed and "skipping sts task sts" in printed
    assert [(m["model"], m["type"], m["tasks"]) for m in means] == [
        (m, t, n) for m in ("tiny-bert", "tiny-bert@2") for t, n in (("retrieval", 2), ("sts", 1), ("reranking", 1))
    ] + [("tiny-reranker", "reranking", 1)]
    assert means[0]["average"] == pytest.approx((rows[0]["main_score"] + rows[1]["main_score"]) / 2)
    assert "averages" in printed and f"{means[0]['average']:.4f}" in printed


def _bad_qrels(tmp_path: Path) -> Path:
    folder = tmp_path / "badqrels"
    shutil.copytree(ZH, folder)
    with (folder / "qrels" / "dev.tsv").open("a") as fh:
        fh.write("zq1\tzh99\t1\n")
    return folder


def _empty_split(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    shutil.copytree(ZH, folder)
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n")
    return folder


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "missing", "missing: no such file or directory"),
        (lambda tmp: tmp, "not an evaluation task"),
        (_bad_qrels, "qrels/dev.tsv:21: unknown corpus id 'zh99'"),
        (_empty_split, "qrels/dev.tsv: no judgements"),
    ],
    ids=["missing", "unknown-layout", "unknown-qrels-id", "empty-split"],
)
def test_cli_bad_task_exits_2_with_one_line(tmp_path, capsys, make, expected):
    task = make(tmp_path)
    out = tmp_path / "out" / "suite.json"
    assert main(["eval", "--model", "tiny-bert", "--task", str(STS), "--task", str(task), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flagops: error: ") and "\n" not in err and expected in err
    assert not out.exists()
