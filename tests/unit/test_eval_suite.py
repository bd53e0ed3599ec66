"""`flagops eval`: task detection, the three scorers against references, the command end to end."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytrec_eval

from flagops.cli import main
from flagops.data.formats import DataError, read_beir, read_sts
from flagops.evaluation import sts_spearman, suite
from flagops.evaluation.bm25 import bm25_scores, bm25_search, cjk_share, detect_language
from flagops.evaluation.index import corpus_search
from flagops.evaluation.retrieval import retrieval_metrics
from flagops.evaluation.suite import (
    BGE_ZH_INSTRUCTION,
    RerankRow,
    Task,
    averages,
    load_task,
    query_instruction,
    reranking_metrics,
    run_suite,
    score_bm25,
    score_task,
)

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
    run, _ = corpus_search(task.data, tiny_embedder, 64, top_k=100)  # faiss: the random model's near-ties rank as faiss sums
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


def _wrong_columns(tmp_path: Path) -> Path:
    folder = tmp_path / "columns"
    shutil.copytree(ZH, folder)
    (folder / "qrels" / "dev.tsv").write_text("qid\tdoc\tscore\nzq1\tzh1\t1\n")
    return folder


def _duplicate_id(tmp_path: Path) -> Path:
    folder = tmp_path / "dup"
    shutil.copytree(ZH, folder)
    first = (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0]
    with (folder / "corpus.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(first + "\n")
    return folder


def _sts_not_a_number(tmp_path: Path) -> Path:
    path = tmp_path / "bad_sts.tsv"
    path.write_text("sentence1\tsentence2\tscore\na cat\ta dog\t3.5\nrain\tsnow\thigh\n")
    return path


def _bad_sidecar(tmp_path: Path) -> Path:
    folder = tmp_path / "badsidecar"
    shutil.copytree(ZH, folder)
    (folder / "flagops_task.json").write_text('{"lang": "zh"}')
    return folder


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "missing", "missing: no such file or directory"),
        (lambda tmp: tmp, "not an evaluation task"),
        (_bad_qrels, "qrels/dev.tsv:21: unknown corpus id 'zh99'"),
        (_empty_split, "qrels/dev.tsv: no judgements"),
        (_bad_sidecar, "flagops_task.json: unknown key 'lang'; allowed keys: language, query_instruction"),
        (_wrong_columns, "qrels/dev.tsv:1: header 'qid doc score' is not BEIR's"),
        (_duplicate_id, "corpus.jsonl:31: duplicate"),
        (_sts_not_a_number, "bad_sts.tsv:3: field 'score' must be a number, got 'high'"),
    ],
    ids=["missing", "unknown-layout", "unknown-qrels-id", "empty-split", "sidecar-unknown-key", "tsv-columns", "duplicate-id", "sts-score"],
)
def test_cli_bad_task_exits_2_with_one_line(tmp_path, capsys, make, expected):
    task = make(tmp_path)
    out = tmp_path / "out" / "suite.json"
    assert main(["eval", "--model", "tiny-bert", "--task", str(STS), "--task", str(task), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flagops: error: ") and "\n" not in err and expected in err
    assert not out.exists()


# --------------------------------------------------------------------------- BM25 baseline, languages, instructions


def test_language_detection_by_cjk_share():
    assert cjk_share(["abc长城", "  ，。"]) == pytest.approx(2 / 5)  # letters and digits only: a, b, c, 长, 城
    assert cjk_share(["", "..."]) == 0.0
    assert detect_language(["Python 编程"], ["x"]) == "zh"  # 2 of 9 = .22, over the 0.2 line
    assert detect_language(["Python3 编程"], ["xy"]) == "en"  # 2 of 11 = .18
    assert [load_task(str(p)).language for p in (BEIR, ZH, STS, RERANK)] == ["en", "zh", "en", "en"]


def test_bm25_scores_by_hand():
    # Lucene BM25 (no (k1 + 1) factor), k1 1.5, b .75: idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)).
    # Tokens [cat, sat], [dog, ran], [cat, cat] ("the" is a stopword): avgdl 2, every dl 2.
    # idf(cat) = ln(1 + (3 - 2 + .5) / (2 + .5)); doc 1: tf 1 -> idf * 1 / 2.5; doc 3: tf 2 -> idf * 2 / 3.5.
    idf = math.log(1 + 1.5 / 2.5)
    got = bm25_scores("the cat", ["cat sat", "dog ran", "the cat cat"])
    assert got == pytest.approx([idf / 2.5, 0.0, idf * 2 / 3.5], rel=1e-6)
    assert bm25_scores("the of", ["cat sat", "dog"]).tolist() == [0.0, 0.0]  # only stopwords: matches nothing


def test_bm25_chinese_tokenises_with_jieba():
    task = load_task(str(ZH))
    jieba_ndcg = score_bm25(task)["ndcg@10"]
    regex_ndcg = score_bm25(replace(task, language="en"))["ndcg@10"]
    # Measured: jieba words 0.8927; English regex tokens (whole clauses, split only at spaces and
    # punctuation) 0.0000: no query shares a whole clause with its passage.
    assert jieba_ndcg > 0.85 and regex_ndcg < 0.05


def test_bm25_english_is_bm25_search():
    task = load_task(str(BEIR))
    expected = retrieval_metrics(task.data.qrels, bm25_search(task.data.corpus, task.data.queries, 100))
    assert score_bm25(task) == expected and expected["ndcg@10"] == pytest.approx(0.6251, abs=1e-4)
    assert score_bm25(load_task(str(STS))) is None


def test_cli_bm25_over_all_fixtures(tmp_path, capsys):
    out = tmp_path / "bm25.json"
    tasks = [a for p in (BEIR, ZH, STS, RERANK) for a in ("--task", str(p))]
    assert main(["eval", "--model", "bm25", *tasks, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    expected = [("stdlib_beir/test", "retrieval"), ("zh_beir/dev", "retrieval"), ("reranking", "reranking")]
    assert [(r["task"], r["type"]) for r in rows] == expected
    assert rows[1]["main_score"] > 0.85 and 0 < rows[2]["main_score"] < 1
    assert "bm25 on zh_beir/dev: jieba words (zh)" in printed and "skipping sts task sts" in printed


def test_report_compares_models_task_by_task_and_leaves_out_what_a_model_skips(tmp_path):
    from flagops.evaluation.suite import report_rows

    rows = [
        {"model": "a", "task": "t1", "type": "retrieval", "main_score": 0.5, "metrics": {}},
        {"model": "a", "task": "s", "type": "sts", "main_score": 0.7, "metrics": {}},
        {"model": "bm25", "task": "t1", "type": "retrieval", "main_score": 0.25, "metrics": {}},
    ]
    bars = {(b["system"], b["metric"]): b["value"] for b in report_rows(rows)}
    assert bars == {
        ("a", "t1\nndcg@10"): 0.5,
        ("a", "s\nspearman"): 0.7,
        ("bm25", "t1\nndcg@10"): 0.25,
        ("a", "retrieval\naverage"): 0.5,
        ("a", "sts\naverage"): 0.7,
        ("bm25", "retrieval\naverage"): 0.25,
    }  # no bm25 STS bar: it skips STS, which a bar at 0 would misreport
    report = tmp_path / "suite.png"
    assert main(["eval", "--model", "bm25", "--task", str(BEIR), "--task", str(STS), "--report", str(report)]) == 0
    assert report.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


class TokenizerSpy:
    """Records every batch of texts the embedder tokenises (after its instruction is prefixed)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.texts.extend(texts)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):  # pad_token_id, padding_side, ...: the real tokenizer's
        return getattr(self.tokenizer, name)


def test_instruction_per_task_reaches_the_encoder(tmp_path, tiny_embedder, monkeypatch, capsys):
    folder = tmp_path / "zh_instructed"
    shutil.copytree(ZH, folder)
    (folder / "flagops_task.json").write_text(json.dumps({"query_instruction": "查询："}, ensure_ascii=False), encoding="utf-8")
    spy = TokenizerSpy(tiny_embedder.tokenizer)
    monkeypatch.setattr(tiny_embedder, "tokenizer", spy)
    monkeypatch.setattr(suite, "_load_model", lambda source: (tiny_embedder, False))
    sidecar, plain, english = load_task(str(folder)), load_task(str(ZH)), load_task(str(BEIR))

    run_suite(["tiny-bert"], [sidecar], batch_size=64)
    assert "查询：长城有多长" in spy.texts and "长城有多长" not in spy.texts
    assert not any(t.startswith("查询：") for t in spy.texts if "长城是中国" in t)  # passages get none
    assert tiny_embedder.settings.query_instruction == ""  # restored after the task

    spy.texts.clear()
    run_suite(["tiny-bert"], [plain], batch_size=64)  # not a bge zh name: no instruction
    assert "长城有多长" in spy.texts

    spy.texts.clear()
    run_suite(["/models/bge-small-zh-v1.5"], [plain, english], batch_size=64)
    assert BGE_ZH_INSTRUCTION + "长城有多长" in spy.texts
    assert english.data.queries["q1"] in spy.texts  # the English task keeps no instruction
    printed = capsys.readouterr().out
    assert "tiny-bert on zh_instructed/dev: query instruction '查询：' (task sidecar)" in printed
    assert "tiny-bert on zh_beir/dev: query instruction '' (none)" in printed
    assert f"bge-small-zh-v1.5 on zh_beir/dev: query instruction '{BGE_ZH_INSTRUCTION}' (BGE zh default)" in printed
    assert "bge-small-zh-v1.5 on stdlib_beir/test: query instruction '' (none)" in printed


def test_instruction_precedence():
    zh = Task("t", "retrieval", None, language="zh")
    assert query_instruction(zh, "bge-base-zh", "") == (BGE_ZH_INSTRUCTION, "BGE zh default")
    assert query_instruction(zh, "bge-base-zh", "saved: ") == ("saved: ", "model")  # a saved instruction is kept
    assert query_instruction(replace(zh, query_instruction=""), "bge-base-zh", "saved: ") == ("", "task sidecar")
    assert query_instruction(zh, "/home/zhang/bge-base-en", "") == ("", "none")  # the name, not the path
    assert query_instruction(replace(zh, type="reranking"), "bge-base-zh", "") == ("", "none")  # retrieval only


def test_file_sidecar_sets_the_language(tmp_path):
    shutil.copy(RERANK, tmp_path / "rr.jsonl")
    (tmp_path / "rr.flagops_task.json").write_text('{"language": "zh"}')
    assert load_task(str(tmp_path / "rr.jsonl")).language == "zh"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"query_instruction": "a",', r"flagops_task.json:1: not valid JSON \(Expecting property name"),
        ('{"language": "zh", "instr": "a"}', r"flagops_task.json: unknown key 'instr'; allowed keys: language, query_instruction"),
        ('{"language": "fr"}', r"flagops_task.json: key 'language' is 'fr'; use one of en, zh"),
        ('{"query_instruction": 3}', r"flagops_task.json: key 'query_instruction' must be a string, got int"),
        ('["zh"]', r"flagops_task.json: expected a JSON object"),
    ],
    ids=["malformed", "unknown-key", "language", "type", "not-an-object"],
)
def test_bad_sidecar_is_one_line(tmp_path, text, expected):
    folder = tmp_path / "zh"
    shutil.copytree(ZH, folder)
    (folder / "flagops_task.json").write_text(text)
    with pytest.raises(DataError, match=expected) as err:
        load_task(str(folder))
    assert "\n" not in str(err.value) and str(folder / "flagops_task.json") in str(err.value)


def test_sts_sidecar_rejects_an_instruction(tmp_path):
    shutil.copy(STS, tmp_path / "sts.jsonl")
    (tmp_path / "sts.flagops_task.json").write_text('{"query_instruction": "q: "}')
    with pytest.raises(DataError, match=r"sts.flagops_task.json: key 'query_instruction' does not apply to an STS task"):
        load_task(str(tmp_path / "sts.jsonl"))


# --------------------------------------------------------------------------- BGE-M3 modes


def test_m3_model_is_scored_in_every_mode_as_evaluate_scores_it(tmp_path, capsys):
    """An M3 directory (heads saved beside the encoder) gets a row per mode on a retrieval
    task, each equal to evaluate's M3 evaluator on the same set; [dense] on STS and reranking."""
    from flagops.config import M3Config
    from flagops.evaluation.m3 import M3RetrievalEvaluator
    from flagops.models.m3 import M3Embedder

    m3 = M3Embedder.load("tiny-bert", pooling="cls", query_max_len=16, passage_max_len=48, colbert_dim=16, seed=3)
    m3.save(tmp_path / "m3")
    source = str(tmp_path / "m3")
    out = tmp_path / "m3.json"
    tasks = [a for p in (BEIR, STS, RERANK) for a in ("--task", str(p))]
    assert main(["eval", "--model", source, *tasks, "--batch-size", "16", "--out", str(out)]) == 0
    assert "m3 [hybrid]" in capsys.readouterr().out  # printed as text, not taken for rich markup
    rows = json.loads(out.read_text())["rows"]
    by = {(r["task"], r["model"]): r for r in rows}
    modes = ("dense", "sparse", "colbert", "hybrid")
    assert sorted(by) == sorted(
        [("stdlib_beir/test", f"{source} [{m}]") for m in modes] + [("sts", f"{source} [dense]"), ("reranking", f"{source} [dense]")]
    )
    expected = M3RetrievalEvaluator(read_beir(BEIR, "test"), M3Config(), 16)(M3Embedder.load(source))
    for mode in modes:
        row = by[("stdlib_beir/test", f"{source} [{mode}]")]
        assert row["main_score"] == pytest.approx(expected[f"m3_{mode}/ndcg@10"], abs=1e-6)
    # the modes really differ: a random tiny model's sparse and ColBERT runs are not its dense run
    assert len({round(by[("stdlib_beir/test", f"{source} [{m}]")]["main_score"], 6) for m in modes}) > 1
    # a dense-only directory stays one row, labelled by its source
    M3Embedder.load("tiny-bert", heads=False).save(tmp_path / "dense")
    (row,) = run_suite([str(tmp_path / "dense")], [load_task(str(BEIR))], batch_size=16)
    assert row["model"] == str(tmp_path / "dense")


# --------------------------------------------------------------------------- HTML report, MLflow


def test_html_report_and_mlflow_run(tmp_path, monkeypatch, capsys):
    """--report FILE.html writes the tables (best score in bold, a dash for a skipped task) with
    the chart inlined; --mlflow logs every row's metrics and both files to a real sqlite store."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out, report = tmp_path / "suite.json", tmp_path / "report.html"
    tasks = [a for p in (BEIR, STS) for a in ("--task", str(p))]
    argv = ["eval", "--model", "bm25", "--model", "tiny-bert", *tasks, "--out", str(out), "--report", str(report), "--mlflow", "suite"]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    page = report.read_text(encoding="utf-8")
    bm25, tiny = (next(r["main_score"] for r in rows if r["model"] == m and r["type"] == "retrieval") for m in ("bm25", "tiny-bert"))
    best, worst = max(bm25, tiny), min(bm25, tiny)
    assert f'<td class="num best">{best:.4f}</td>' in page and f'<td class="num">{worst:.4f}</td>' in page
    assert '<td class="none">–</td>' in page  # bm25 has no STS score
    assert 'src="data:image/png;base64,' in page and "<script" not in page

    run_id = capsys.readouterr().out.split("run ")[-1].strip()
    run = mlflow.get_run(run_id)
    assert run.data.metrics["tiny-bert/stdlib_beir/test/ndcg_at_10"] == pytest.approx(tiny)
    assert run.data.metrics["bm25/retrieval_average/main"] == pytest.approx(bm25)
    assert "tiny-bert/sts/spearman" in run.data.metrics and "bm25/sts/spearman" not in run.data.metrics
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert logged == {"suite.json", "report.html"}


def test_report_must_be_png_or_html(tmp_path, capsys):
    assert main(["eval", "--model", "bm25", "--task", str(STS), "--report", str(tmp_path / "r.pdf")]) == 2
    assert "name the file FILE.png or FILE.html" in capsys.readouterr().err
