"""Evaluation suites: many tasks read from disk, scored on one or more models, C-MTEB style.

A task PATH is detected by its layout:

* retrieval, BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``;
* retrieval, MTEB/C-MTEB hub download: ``corpus``/``queries`` files (``.jsonl`` or ``.parquet``,
  by a subfolder or a file-name prefix, e.g. ``data/corpus-00000-of-00001.parquet``) and qrels
  under ``qrels/`` or in a sibling ``<folder>-qrels`` download (C-MTEB ships them apart),
  named ``<split>[-...].{tsv,jsonl,parquet}``;
* STS file (``.jsonl``/``.tsv``: sentence1, sentence2, score);
* reranking file (``.jsonl``/``.parquet`` rows: query, positive list, negative list; or
  FlagEmbedding's pos/neg).

``PATH::split`` picks a retrieval split; otherwise ``test``, else ``dev``, else the only one.
Main scores as MTEB reports them: retrieval nDCG@10, STS Spearman of cosine similarities,
reranking MAP (with MRR@10).
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flagops.data.formats import DataError, EvalSet, Passage, iter_jsonl, read_beir, read_sts
from flagops.evaluation.retrieval import RetrievalEvaluator, retrieval_metrics
from flagops.evaluation.sts import cosine_rows, sts_spearman

LAYOUTS = (
    "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), an MTEB/C-MTEB hub folder "
    "(corpus*, queries* as .jsonl/.parquet, qrels/<split>*), an STS file (sentence1, sentence2, score) "
    "or a reranking file (query, positive, negative)"
)
MAIN_METRIC = {"retrieval": "ndcg@10", "sts": "spearman", "reranking": "map"}
RERANK_MRR_CUTOFF = 10
RECORD_SUFFIXES = (".jsonl", ".parquet", ".tsv")
ROLES = ("corpus", "queries", "qrels")


@dataclass(frozen=True)
class RerankRow:
    query: str
    positive: list[str]
    negative: list[str]


@dataclass(frozen=True)
class Task:
    name: str
    type: str  # retrieval | sts | reranking
    data: Any  # EvalSet | list[StsPair] | list[RerankRow]


# --------------------------------------------------------------------------- reading records


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``path:line`` or ``path:row N``, row) for a JSONL, a TSV with a header, or a parquet file."""
    if path.suffix == ".jsonl":
        for lineno, obj in iter_jsonl(path):
            yield f"{path}:{lineno}", obj
    elif path.suffix == ".tsv":
        reader = csv.DictReader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t")
        for i, row in enumerate(reader):
            yield f"{path}:{i + 2}", row
    elif path.suffix == ".parquet":
        import pandas as pd  # only hub downloads need it

        for i, row in enumerate(pd.read_parquet(path).to_dict("records")):
            yield f"{path}:row {i + 1}", row
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl, .tsv or .parquet")


def _field(row: dict[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise DataError(f"{where}: missing field {' or '.join(map(repr, names))}")


def _text(row: dict[str, Any], names: Sequence[str], where: str) -> str:
    value = _field(row, names, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {names[0]!r} must be a string, got {type(value).__name__}")
    return value


def _id(row: dict[str, Any], names: Sequence[str], where: str) -> str:
    value = _field(row, names, where)
    return str(value.item() if hasattr(value, "item") else value)  # parquet gives numpy ints


# --------------------------------------------------------------------------- retrieval layouts


def _split_of(path: Path) -> str:
    """``dev-00000-of-00001.parquet`` -> ``dev``; ``test.tsv`` -> ``test``."""
    return path.name.split(".")[0].split("-")[0]


def _choose_split(splits: Sequence[str], wanted: str | None, where: Path) -> str:
    if wanted is not None:
        if wanted not in splits:
            raise DataError(f"{where}: no qrels for split {wanted!r}; found {', '.join(sorted(splits)) or 'none'}")
        return wanted
    for default in ("test", "dev"):
        if default in splits:
            return default
    if len(splits) == 1:
        return splits[0]
    raise DataError(f"{where}: several qrels splits ({', '.join(sorted(splits))}); pick one with {where}::SPLIT")


def _data_files(root: Path) -> list[Path]:
    """Record files under ``root``, skipping hidden folders (``huggingface-cli``'s ``.cache``)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix in RECORD_SUFFIXES and not any(s.startswith(".") for s in p.relative_to(root).parts)
    )


def _role(path: Path, root: Path) -> str | None:
    """corpus/queries/qrels from the first folder or file-name prefix that names one."""
    for part in path.relative_to(root).parts:
        head = part.split(".")[0].split("-")[0].split("_")[0]
        if head in ROLES:
            return head
    return None


def _hub_files(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {role: [] for role in ROLES}
    for path in _data_files(root):
        role = _role(path, root)
        if role:
            files[role].append(path)
    sibling = root.with_name(root.name + "-qrels")
    if not files["qrels"] and sibling.is_dir():
        files["qrels"] = _data_files(sibling)
    return files


def _read_hub(root: Path, files: dict[str, list[Path]], split: str | None) -> tuple[EvalSet, str]:
    corpus: list[Passage] = []
    doc_ids: set[str] = set()
    for path in files["corpus"]:
        for where, row in _records(path):
            did = _id(row, ("_id", "id", "corpus-id", "pid"), where)
            if did in doc_ids:
                raise DataError(f"{where}: duplicate corpus id {did!r}; ids must be unique")
            doc_ids.add(did)
            title = row.get("title") or ""
            corpus.append(Passage(did, title if isinstance(title, str) else str(title), _text(row, ("text",), where)))
    queries: dict[str, str] = {}
    for path in files["queries"]:
        for where, row in _records(path):
            qid = _id(row, ("_id", "id", "query-id", "qid"), where)
            if qid in queries:
                raise DataError(f"{where}: duplicate query id {qid!r}; ids must be unique")
            queries[qid] = _text(row, ("text",), where)
    by_split: dict[str, list[Path]] = {}
    for path in files["qrels"]:
        by_split.setdefault(_split_of(path), []).append(path)
    split = _choose_split(list(by_split), split, root)
    qrels: dict[str, dict[str, int]] = {}
    for path in by_split[split]:
        for where, row in _records(path):
            qid = _id(row, ("query-id", "qid", "query_id"), where)
            did = _id(row, ("corpus-id", "pid", "corpus_id", "doc_id"), where)
            if qid not in queries:
                raise DataError(f"{where}: unknown query id {qid!r} (not in the queries files)")
            if did not in doc_ids:
                raise DataError(f"{where}: unknown corpus id {did!r} (not in the corpus files)")
            try:
                qrels.setdefault(qid, {})[did] = int(float(_field(row, ("score",), where)))
            except (TypeError, ValueError):
                raise DataError(f"{where}: score {row['score']!r} is not a number") from None
    if not qrels:
        raise DataError(f"{root}: split {split!r} has no judgements; expected rows query-id, corpus-id, score")
    return EvalSet(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels), split


def _read_retrieval(root: Path, split: str | None) -> tuple[EvalSet, str]:
    if (root / "corpus.jsonl").is_file() and (root / "queries.jsonl").is_file() and (root / "qrels").is_dir():
        splits = [p.stem for p in sorted((root / "qrels").glob("*.tsv"))]
        split = _choose_split(splits, split, root)
        return read_beir(root, split), split
    files = _hub_files(root)
    if all(files.values()):
        return _read_hub(root, files, split)
    missing = ", ".join(role for role, found in files.items() if not found)
    raise DataError(f"{root}: not an evaluation task (no {missing} files); expected {LAYOUTS}")


# --------------------------------------------------------------------------- file tasks


def _read_reranking(path: Path) -> list[RerankRow]:
    """Rows with at least one positive and one negative; others are skipped, as MTEB skips them."""
    rows: list[RerankRow] = []
    for where, row in _records(path):
        query = _text(row, ("query",), where)
        lists = []
        for names in (("positive", "pos"), ("negative", "neg")):
            value = _field(row, names, where)
            value = list(value) if isinstance(value, list | tuple | np.ndarray) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{where}: field {names[0]!r} must be a list of strings")
            lists.append(value)
        if lists[0] and lists[1]:
            rows.append(RerankRow(query, *lists))
    if not rows:
        raise DataError(f"{path}: no reranking rows with both a positive and a negative passage")
    return rows


def _first_record(path: Path) -> dict[str, Any]:
    first = next(_records(path), None)
    if first is None:
        raise DataError(f"{path}: no rows; expected {LAYOUTS}")
    return first[1]


def load_task(spec: str) -> Task:
    """Read and validate the task at ``spec`` (``PATH`` or ``PATH::split``); its type by layout."""
    raw, _, split = spec.partition("::")
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; expected {LAYOUTS}")
    if path.is_dir():
        eval_set, split = _read_retrieval(path, split or None)
        return Task(f"{path.name}/{split}", "retrieval", eval_set)
    if split:
        raise DataError(f"{spec}: only retrieval folders have splits; drop ::{split}")
    if path.suffix not in RECORD_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; expected {LAYOUTS}")
    keys = set(_first_record(path))
    if {"sentence1", "sentence2"} <= keys:
        if path.suffix == ".parquet":
            raise DataError(f"{path}: STS is read from .jsonl or .tsv; convert the parquet file")
        return Task(path.stem, "sts", read_sts(path))
    if "query" in keys and ({"positive", "negative"} <= keys or {"pos", "neg"} <= keys):
        return Task(path.stem, "reranking", _read_reranking(path))
    raise DataError(f"{path}: columns {sorted(keys)} match no task; expected {LAYOUTS}")


def load_tasks(specs: Sequence[str]) -> list[Task]:
    tasks = [load_task(s) for s in specs]
    names = [t.name for t in tasks]
    for name in names:
        if names.count(name) > 1:
            raise DataError(f"task {name!r} is given twice; each task once")
    return tasks


# --------------------------------------------------------------------------- scoring


def reranking_metrics(rows: Sequence[RerankRow], scores: Sequence[np.ndarray]) -> dict[str, float]:
    """MAP and MRR@10 over rows; ``scores[i]`` scores row i's positives then negatives.

    Candidates rank by score, higher first; on a tie a negative ranks first, so a model that
    scores everything alike gains nothing from the positives being listed first.
    """
    aps, rrs = [], []
    for row, s in zip(rows, scores, strict=True):
        relevant = np.array([1] * len(row.positive) + [0] * len(row.negative))
        order = np.lexsort((relevant, -np.asarray(s, dtype=np.float64)))  # by score desc, then negatives first
        hits = relevant[order]
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the positives
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        rrs.append(1.0 / ranks[0] if ranks[0] <= RERANK_MRR_CUTOFF else 0.0)
    return {"map": float(np.mean(aps)), "mrr@10": float(np.mean(rrs))}


def _embedder_scores(embedder, rows: Sequence[RerankRow], batch_size: int) -> list[np.ndarray]:
    queries = embedder.encode([r.query for r in rows], is_query=True, batch_size=batch_size, progress="rerank queries")
    texts = [t for r in rows for t in (*r.positive, *r.negative)]
    passages = embedder.encode(texts, is_query=False, batch_size=batch_size, progress="rerank passages")
    out, start = [], 0
    for q, row in zip(queries, rows, strict=True):
        n = len(row.positive) + len(row.negative)
        out.append(cosine_rows(np.repeat(q[None], n, axis=0), passages[start : start + n]))
        start += n
    return out


def _reranker_scores(reranker, rows: Sequence[RerankRow], batch_size: int) -> list[np.ndarray]:
    pairs = [(r.query, t) for r in rows for t in (*r.positive, *r.negative)]
    flat = reranker.score_pairs(pairs, batch_size=batch_size)
    out, start = [], 0
    for row in rows:
        n = len(row.positive) + len(row.negative)
        out.append(flat[start : start + n])
        start += n
    return out


def score_task(task: Task, model, is_reranker: bool, batch_size: int) -> dict[str, float] | None:
    """The task's metrics for ``model``; None when a reranker cannot run the task."""
    if task.type == "reranking":
        score = _reranker_scores if is_reranker else _embedder_scores
        return reranking_metrics(task.data, score(model, task.data, batch_size))
    if is_reranker:
        return None
    if task.type == "retrieval":
        return retrieval_metrics(task.data.qrels, RetrievalEvaluator(task.data, batch_size).search(model, label=task.name))
    return {"spearman": sts_spearman(model, task.data, batch_size, progress=task.name)}


def _load_model(source: str):
    """(model, is_reranker): a reranker directory loads as one, any other source as an embedder."""
    from flagops.models.device import inference_placement, place
    from flagops.models.embedder import Embedder
    from flagops.models.reranker import NotARerankerError, load_reranker, reranker_kind, resolve_reranker_source

    if source.startswith("models:/"):
        from flagops.registry.models import fetch_model_dir

        source = str(fetch_model_dir(source))
    try:
        reranker_kind(resolve_reranker_source(source))
    except NotARerankerError:
        return place(Embedder.load(source), inference_placement()), False
    return place(load_reranker(source), inference_placement()), True


def run_suite(models: Sequence[str], tasks: Sequence[Task], batch_size: int = 64) -> list[dict[str, Any]]:
    """One row ``{model, task, type, main_score, metrics}`` per model and task it can run."""
    rows = []
    for source in models:
        model, is_reranker = _load_model(source)
        for task in tasks:
            metrics = score_task(task, model, is_reranker, batch_size)
            if metrics is None:
                print(f"eval: {source} is a reranker; skipping {task.type} task {task.name} (rerankers run reranking tasks only)")
                continue
            rows.append(
                {"model": source, "task": task.name, "type": task.type, "main_score": metrics[MAIN_METRIC[task.type]], "metrics": metrics}
            )
        del model
        gc.collect()
    return rows


def averages(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean main score per (model, task type), in first-seen order, as C-MTEB's tables give them."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["type"]), []).append(row["main_score"])
    return [{"model": m, "type": t, "tasks": len(v), "average": float(np.mean(v))} for (m, t), v in groups.items()]
