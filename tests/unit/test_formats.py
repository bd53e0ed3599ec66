"""Every malformed input gets a DataError naming path:line and the problem."""

import json

import pytest

from flagops.data.formats import (
    DataError,
    EvalSet,
    Passage,
    atomic_path,
    read_beir,
    read_corpus,
    read_sts,
    read_train_jsonl,
    write_beir,
    write_jsonl,
)


def _write(path, text: str | bytes):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


GOOD = {"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps(GOOD), "{not json"], r"train.jsonl:2: invalid JSON"),
        ([json.dumps({"pos": ["p"]})], r"train.jsonl:1: missing field 'query'"),
        ([json.dumps({"query": "q"})], r"train.jsonl:1: missing field 'pos'"),
        ([json.dumps({"query": "q", "pos": []})], r"train.jsonl:1: field 'pos' is empty"),
        ([json.dumps({"query": "q", "pos": ["p", 3]})], r"train.jsonl:1: pos\[1\] must be a string"),
        ([json.dumps({"query": "q", "pos": ["p"], "neg": [None]})], r"train.jsonl:1: neg\[0\] must be a string"),
        ([json.dumps({"query": "q", "pos": ["p"], "pos_scores": [1, 2]})], r"has 2 scores for 1 passages"),
        (["[1, 2]"], r"train.jsonl:1: expected a JSON object"),
    ],
)
def test_train_jsonl_errors(tmp_path, lines, message):
    path = _write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        list(read_train_jsonl(path))


def test_empty_file(tmp_path):
    path = _write(tmp_path / "train.jsonl", "\n\n")
    with pytest.raises(DataError, match=r"train.jsonl: empty file"):
        list(read_train_jsonl(path))


def test_not_utf8(tmp_path):
    path = _write(tmp_path / "train.jsonl", json.dumps(GOOD).encode() + b"\n" + '{"query": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match=r"train.jsonl:2: not UTF-8"):
        list(read_train_jsonl(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        list(read_train_jsonl(tmp_path / "nope.jsonl"))


def test_train_roundtrip_keeps_optional_fields(tmp_path):
    row = {**GOOD, "pos_scores": [0.9], "neg_scores": [0.1, 0.2], "prompt": "Given a query", "type": "normal"}
    path = _write(tmp_path / "t.jsonl", json.dumps(row) + "\n")
    (ex,) = read_train_jsonl(path)
    assert ex.to_json() == row


def test_flagembedding_example_files_load(shared_examples):
    for rel in (
        "embedder/nq.jsonl",
        "embedder/msmarco.jsonl",
        "reranker/examples.jsonl",
        "reranker/prompt_based_examples.jsonl",
        "llm_reranker/toy_finetune_data.jsonl",
    ):
        examples = list(read_train_jsonl(shared_examples / rel))
        assert examples and all(ex.pos for ex in examples), rel


def _beir(tmp_path, corpus_rows, query_rows, qrels_text):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    _write(d / "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in corpus_rows))
    _write(d / "queries.jsonl", "".join(json.dumps(r) + "\n" for r in query_rows))
    _write(d / "qrels" / "test.tsv", qrels_text)
    return d


CORPUS = [{"_id": "d1", "title": "", "text": "a"}, {"_id": "d2", "title": "t", "text": "b"}]
QUERIES = [{"_id": "q1", "text": "x"}]


def test_beir_roundtrip(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td2\t1\n")
    es = read_beir(d)
    assert es.qrels == {"q1": {"d2": 1}} and [p.id for p in es.corpus] == ["d1", "d2"]
    write_beir(tmp_path / "copy", es)
    assert read_beir(tmp_path / "copy") == es


def test_qrels_unknown_doc(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:2: unknown corpus id 'd9'"):
        read_beir(d)


def test_qrels_unknown_query(tmp_path):
    d = _beir(tmp_path, CORPUS, QUERIES, "query-id\tcorpus-id\tscore\nq7\td1\t1\n")
    with pytest.raises(DataError, match=r"test.tsv:2: unknown query id 'q7'"):
        read_beir(d)


def test_duplicate_ids(tmp_path):
    d = _beir(tmp_path, [*CORPUS, {"_id": "d1", "text": "again"}], QUERIES, "q1\td1\t1\n")
    with pytest.raises(DataError, match=r"corpus.jsonl:3: duplicate _id 'd1'"):
        read_beir(d)
    q = _write(tmp_path / "q.jsonl", '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    from flagops.data.formats import read_queries

    with pytest.raises(DataError, match=r"q.jsonl:2: duplicate _id 'q1'"):
        read_queries(q)


def test_corpus_missing_text(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", '{"_id": "d1", "title": "x"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:1: missing field 'text'"):
        read_corpus(path)


def test_sts_jsonl_and_tsv(tmp_path):
    j = _write(tmp_path / "sts.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 3.5}\n')
    t = _write(tmp_path / "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t2\n")
    assert read_sts(j)[0].score == 3.5 and read_sts(t)[0].score == 2.0
    bad = _write(tmp_path / "bad.jsonl", '{"sentence1": "a", "sentence2": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: missing field 'score'"):
        read_sts(bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out.jsonl"

    def rows():
        yield {"a": 1}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(dest, rows())
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole(tmp_path):
    es = EvalSet([Passage("d", "", "t")], {"q": "x"}, {"q": {"d": 1}})
    write_beir(tmp_path / "e", es)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "e", is_dir=True) as tmp:
        (tmp / "partial").write_text("half")
        raise RuntimeError("crash")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["corpus.jsonl", "qrels", "queries.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["e"]
