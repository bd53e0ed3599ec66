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

A task may carry a sidecar ``flagops_task.json`` (inside a folder; ``NAME.flagops_task.json``
beside a file ``NAME.jsonl``) with ``query_instruction`` (for embedders, this task only) and
``language`` (``zh`` or ``en``; detected from the text otherwise). The model source ``bm25`` is
the lexical baseline: jieba words for Chinese tasks, English word tokens otherwise.
"""

from __future__ import annotations

import csv
import gc
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from flagops.data.formats import DataError, EvalSet, Passage, iter_jsonl, read_beir, read_sts, read_utf8
from flagops.evaluation.bm25 import bm25_scores, bm25_search, detect_language
from flagops.evaluation.index import corpus_search
from flagops.evaluation.retrieval import retrieval_metrics
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
RETRIEVAL_TOP_K = 100
SIDECAR = "flagops_task.json"
SIDECAR_KEYS = ("language", "query_instruction")
LANGUAGES = ("en", "zh")
BM25_SOURCE = "bm25"
# BGE's Chinese query instruction (bge-*-zh model cards); the default for Chinese retrieval tasks
# only when the model source's name says bge and zh, and the model saved no instruction of its own.
BGE_ZH_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


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
    language: str = "en"  # en | zh: how bm25 tokenises, whether the BGE zh instruction applies
    query_instruction: str | None = None  # the sidecar's; None: the model's own


# --------------------------------------------------------------------------- reading records


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``path:line`` or ``path:row N``, row) for a JSONL, a TSV with a header, or a parquet file."""
    if path.suffix == ".jsonl":
        for lineno, obj in iter_jsonl(path):
            yield f"{path}:{lineno}", obj
    elif path.suffix == ".tsv":
        reader = csv.DictReader(read_utf8(path).splitlines(), delimiter="\t")
        for i, row in enumerate(reader):
            yield f"{path}:{i + 2}", row
    elif path.suffix == ".parquet":
        import pandas as pd  # only hub downloads need it

        try:
            frame = pd.read_parquet(path)
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0][:120]}); download or write it again") from None
        for i, row in enumerate(frame.to_dict("records")):
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


def _read_task(path: Path, split: str) -> Task:
    """The task at ``path`` by layout, before its sidecar."""
    if path.is_dir():
        eval_set, split = _read_retrieval(path, split or None)
        return Task(f"{path.name}/{split}", "retrieval", eval_set)
    if split:
        raise DataError(f"{path}::{split}: only retrieval folders have splits; drop ::{split}")
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


def sidecar_path(path: Path) -> Path:
    """``FOLDER/flagops_task.json`` for a folder, ``NAME.flagops_task.json`` beside a file ``NAME.ext``."""
    return path / SIDECAR if path.is_dir() else path.with_name(f"{path.stem}.{SIDECAR}")


def read_sidecar(path: Path, task_type: str) -> dict[str, str]:
    """The sidecar's settings, checked: only known keys, strings, a known language."""
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(settings, dict):
        raise DataError(f'{path}: expected a JSON object such as {{"query_instruction": "...", "language": "zh"}}')
    for key, value in settings.items():
        if key not in SIDECAR_KEYS:
            raise DataError(f"{path}: unknown key {key!r}; allowed keys: {', '.join(SIDECAR_KEYS)}")
        if not isinstance(value, str):
            raise DataError(f"{path}: key {key!r} must be a string, got {type(value).__name__}")
    if settings.get("language", "en") not in LANGUAGES:
        raise DataError(f"{path}: key 'language' is {settings['language']!r}; use one of {', '.join(LANGUAGES)}")
    if "query_instruction" in settings and task_type == "sts":
        raise DataError(f"{path}: key 'query_instruction' does not apply to an STS task (it encodes no queries); drop it")
    return settings


def _text_sets(task: Task) -> tuple[list[str], list[str]]:
    """The task's two kinds of text (passages and queries, or the two sentences), for language detection."""
    if task.type == "retrieval":
        return [p.full_text for p in task.data.corpus], list(task.data.queries.values())
    if task.type == "reranking":
        return [t for r in task.data for t in (*r.positive, *r.negative)], [r.query for r in task.data]
    return [p.sentence1 for p in task.data], [p.sentence2 for p in task.data]


def load_task(spec: str) -> Task:
    """Read and validate the task at ``spec`` (``PATH`` or ``PATH::split``); its type by layout, then its sidecar."""
    raw, _, split = spec.partition("::")
    path = Path(raw).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; expected {LAYOUTS}")
    task = _read_task(path, split)
    settings = read_sidecar(sidecar_path(path), task.type)
    language = settings.get("language") or detect_language(*_text_sets(task))
    return replace(task, language=language, query_instruction=settings.get("query_instruction"))


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
        run, search_metrics = corpus_search(task.data, model, batch_size, top_k=RETRIEVAL_TOP_K, label=task.name)
        return retrieval_metrics(task.data.qrels, run) | search_metrics  # search_metrics: ivf_ or hnsw_recall@10 when approximate
    return {"spearman": sts_spearman(model, task.data, batch_size, progress=task.name)}


def score_bm25(task: Task) -> dict[str, float] | None:
    """The BM25 baseline's metrics in the task's language; None for STS (BM25 gives no similarity scale)."""
    if task.type == "retrieval":
        data = task.data
        return retrieval_metrics(data.qrels, bm25_search(data.corpus, data.queries, RETRIEVAL_TOP_K, language=task.language))
    if task.type == "reranking":
        # Each row's candidates are the whole index: IDF over them, as a first-stage ranker never sees them.
        return reranking_metrics(task.data, [bm25_scores(r.query, [*r.positive, *r.negative], task.language) for r in task.data])
    return None


def query_instruction(task: Task, source: str, saved: str) -> tuple[str, str]:
    """(instruction, where it comes from) for an embedder loaded from ``source`` whose own is ``saved``.

    The task's sidecar wins, then the model's saved instruction; a model that saved none gets
    BGE's Chinese instruction on Chinese retrieval tasks only when its name has both "bge" and
    "zh" (``bge-small-zh-v1.5``), the models that were trained with it.
    """
    if task.query_instruction is not None:
        return task.query_instruction, "task sidecar"
    if saved:
        return saved, "model"
    name = Path(source).name.lower()
    if task.type == "retrieval" and task.language == "zh" and "bge" in name and "zh" in name:
        return BGE_ZH_INSTRUCTION, "BGE zh default"
    return "", "none"


@contextmanager
def with_instruction(embedder, instruction: str):
    """The embedder's query instruction set to ``instruction`` for one task, then restored."""
    saved = embedder.settings
    embedder.settings = replace(saved, query_instruction=instruction)
    try:
        yield
    finally:
        embedder.settings = saved


def _load_model(source: str):
    """(model, is_reranker): a reranker directory loads as one, a directory with BGE-M3 heads
    as an ``M3Embedder`` (every mode it has), any other source as an embedder."""
    from flagops.models.device import inference_placement, place
    from flagops.models.embedder import Embedder
    from flagops.models.m3 import M3Embedder, head_files
    from flagops.models.reranker import NotARerankerError, load_reranker, reranker_kind, resolve_reranker_source
    from flagops.models.sources import resolve_model_source

    if source.startswith("models:/"):
        from flagops.registry.models import fetch_model_dir

        source = str(fetch_model_dir(source))
    try:
        reranker_kind(resolve_reranker_source(source))
    except NotARerankerError:
        path = resolve_model_source(source)
        if head_files(Path(path)):
            return place(M3Embedder.load(path, heads=False), inference_placement()), False
        return place(Embedder.load(source), inference_placement()), False
    return place(load_reranker(source), inference_placement()), True


def _m3_modes(task: Task, model, batch_size: int) -> dict[str, dict[str, float]]:
    """An M3 model's metrics per mode (dense, sparse, ColBERT, hybrid) on a retrieval task,
    at the ``m3`` section's defaults (hybrid weights, exhaustive ColBERT up to its size)."""
    from flagops.config import M3Config
    from flagops.evaluation.m3 import M3RetrievalEvaluator

    runs = M3RetrievalEvaluator(task.data, M3Config(), batch_size).search(model, label=task.name)
    return {mode: retrieval_metrics(task.data.qrels, run) for mode, run in runs.items()}


def _score(task: Task, source: str, model, is_reranker: bool, batch_size: int) -> dict[str, dict[str, float]]:
    """The task's metrics by system label, printing what it skips and which instruction or
    tokens it uses: ``{source: metrics}``; an M3 model with heads gives ``{"source [mode]": ...}``,
    one per mode on retrieval tasks and ``[dense]`` on the others; ``{}`` for a skipped task."""
    if source == BM25_SOURCE:
        if task.type == "sts":
            print(f"eval: bm25 scores no sentence similarity; skipping sts task {task.name}")
            return {}
        print(f"eval: bm25 on {task.name}: {'jieba words' if task.language == 'zh' else 'English word tokens'} ({task.language})")
        return {source: score_bm25(task)}
    if is_reranker:
        if task.type != "reranking":
            print(f"eval: {source} is a reranker; skipping {task.type} task {task.name} (rerankers run reranking tasks only)")
            return {}
        return {source: score_task(task, model, is_reranker, batch_size)}
    m3 = len(getattr(model, "modes", ())) > 1  # an M3Embedder with its sparse and ColBERT heads
    if task.type == "sts":  # no queries, no instruction
        return {f"{source} [dense]" if m3 else source: score_task(task, model, is_reranker, batch_size)}
    instruction, origin = query_instruction(task, source, model.settings.query_instruction)
    print(f"eval: {source} on {task.name}: query instruction {instruction!r} ({origin})")
    with with_instruction(model.embedder if m3 else model, instruction):
        if m3 and task.type == "retrieval":
            return {f"{source} [{mode}]": metrics for mode, metrics in _m3_modes(task, model, batch_size).items()}
        return {f"{source} [dense]" if m3 else source: score_task(task, model, is_reranker, batch_size)}


def run_suite(models: Sequence[str], tasks: Sequence[Task], batch_size: int = 64) -> list[dict[str, Any]]:
    """One row ``{model, task, type, main_score, metrics}`` per model and task it can run (per
    mode for an M3 model); ``bm25`` is the lexical baseline."""
    rows = []
    for source in models:
        model, is_reranker = (None, False) if source == BM25_SOURCE else _load_model(source)
        rows += run_tasks(model, source, tasks, batch_size, is_reranker=is_reranker)
        del model
        gc.collect()
    return rows


def run_tasks(model, source: str, tasks: Sequence[Task], batch_size: int = 64, *, is_reranker: bool = False) -> list[dict[str, Any]]:
    """``run_suite``'s rows for one model already loaded (``evaluate`` loads its own, from the config)."""
    rows = []
    for task in tasks:
        for label, metrics in _score(task, source, model, is_reranker, batch_size).items():
            main = metrics[MAIN_METRIC[task.type]]
            rows.append({"model": label, "task": task.name, "type": task.type, "main_score": main, "metrics": metrics})
    return rows


def flat_metrics(rows: Sequence[dict[str, Any]], system: str) -> dict[str, float]:
    """One model's rows as ``evaluate``'s flat keys: ``<system>/suite/<task>/<metric>``, the
    per-type ``<system>/suite/<type>_average`` and ``<system>/suite/average``, the mean main
    score over every task (what ``registry.primary_metric: suite/average`` gates on)."""
    out = {f"{system}/suite/{row['task']}/{name}": value for row in rows for name, value in row["metrics"].items()}
    out |= {f"{system}/suite/{avg['type']}_average": avg["average"] for avg in averages(rows)}
    if rows:
        out[f"{system}/suite/average"] = float(np.mean([row["main_score"] for row in rows]))
    return out


def averages(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean main score per (model, task type), in first-seen order, as C-MTEB's tables give them."""
    groups: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["type"]), []).append(row["main_score"])
    return [{"model": m, "type": t, "tasks": len(v), "average": float(np.mean(v))} for (m, t), v in groups.items()]


def report_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The comparison chart's rows (``evaluation.plots``): one bar per model, one group per
    task (its main score), then one group per task type (the average)."""
    bars = [
        {
            "system": r["model"],
            "metric": f"{r['task']}\n{MAIN_METRIC[r['type']]}",
            "label": f"{r['task']} {r['model']}",
            "value": r["main_score"],
        }
        for r in rows
    ]
    bars += [
        {"system": m["model"], "metric": f"{m['type']}\naverage", "label": f"{m['type']} average {m['model']}", "value": m["average"]}
        for m in averages(rows)
    ]
    return bars
