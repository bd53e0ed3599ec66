"""FlagEmbedding-compatible formats: training JSONL and the BEIR evaluation layout.

Readers stream and validate; every error is a ``DataError`` whose message starts with
``path:line``. Writers write to a temporary sibling and rename, so a failure never leaves
a half-written file behind.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Malformed input data. The message names ``path:line`` and the fix."""


BOM = "\ufeff"  # a Windows editor's mark: json and the TSV header would read it as part of the first key
BOM_FIX = "starts with a byte-order mark (BOM); save the file as UTF-8 without BOM"


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it over ``dest``.

    With ``is_dir`` the yielded directory already exists (empty).
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the directory should be: mkdir says only "File exists"
        raise NotADirectoryError(errno.ENOTDIR, "a file stands where a directory should be", exc.filename) from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    target = tmp / dest.name
    if is_dir:
        target.mkdir()
    try:
        try:
            yield target
        except OSError as exc:
            if exc.filename is None:  # a failed write says only "File too large": name the output
                raise OSError(exc.errno, exc.strerror, str(dest)) from exc
            raise
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        elif dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(target, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def read_utf8(path: str | Path) -> str:
    """A text file's content; a byte that is not UTF-8, or a BOM, is a DataError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
    if text.startswith(BOM):
        raise DataError(f"{path}:1: {BOM_FIX}")
    return text


# --------------------------------------------------------------------------- JSONL reading


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line, validating JSON and UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    seen_any = False
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
            if lineno == 1 and line.startswith(BOM):
                raise DataError(f"{path}:1: {BOM_FIX}")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno}); each line must be one complete JSON object"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            seen_any = True
            yield lineno, obj
    if not seen_any:
        raise DataError(f"{path}: empty file; expected one JSON object per line")


def _require_str(obj: dict, key: str, where: str, *, required: bool = True) -> str | None:
    if key not in obj:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _str_list(obj: dict, key: str, where: str, *, required: bool, non_empty: bool) -> list[str]:
    if key not in obj:
        if required:
            raise DataError(f"{where}: missing field {key!r} (a list of passages)")
        return []
    value = obj[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: field {key!r} must be a list of strings, got {type(value).__name__}")
    if non_empty and not value:
        raise DataError(f"{where}: field {key!r} is empty; give at least one passage")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(f"{where}: {key}[{i}] must be a string passage, got {type(item).__name__}")
    return value


def _float_list(obj: dict, key: str, where: str, expected_len: int) -> list[float] | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise DataError(f"{where}: field {key!r} must be a list of numbers")
    if len(value) != expected_len:
        raise DataError(f"{where}: field {key!r} has {len(value)} scores for {expected_len} passages; give one score per passage, in order")
    return [float(v) for v in value]


# --------------------------------------------------------------------------- training JSONL


@dataclass(frozen=True)
class TrainExample:
    """One FlagEmbedding training line: a query, its positives and negatives."""

    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    pos_scores: list[float] | None = None
    neg_scores: list[float] | None = None
    prompt: str | None = None
    type: str | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"query": self.query, "pos": self.pos, "neg": self.neg}
        for key in ("pos_scores", "neg_scores", "prompt", "type"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row


TRAIN_KEYS = {"query", "pos", "neg", "pos_scores", "neg_scores", "prompt", "type"}


def parse_train_example(obj: dict[str, Any], where: str) -> TrainExample:
    query = _require_str(obj, "query", where)
    if not query.strip():
        raise DataError(f"{where}: field 'query' is blank")
    pos = _str_list(obj, "pos", where, required=True, non_empty=True)
    neg = _str_list(obj, "neg", where, required=False, non_empty=False)
    return TrainExample(
        query=query,
        pos=pos,
        neg=neg,
        pos_scores=_float_list(obj, "pos_scores", where, len(pos)),
        neg_scores=_float_list(obj, "neg_scores", where, len(neg)),
        prompt=_require_str(obj, "prompt", where, required=False),
        type=_require_str(obj, "type", where, required=False),
    )


def read_train_jsonl(path: str | Path) -> Iterator[TrainExample]:
    """Stream and validate FlagEmbedding training JSONL (query/pos/neg[/scores/prompt/type])."""
    for lineno, obj in iter_jsonl(path):
        yield parse_train_example(obj, f"{path}:{lineno}")


def write_train_jsonl(path: str | Path, examples: Iterable[TrainExample]) -> int:
    return write_jsonl(path, (ex.to_json() for ex in examples))


# --------------------------------------------------------------------------- BEIR layout


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str
    group: str | None = None  # optional split key (e.g. the module a docstring came from)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"_id": self.id, "title": self.title, "text": self.text}
        if self.group is not None:
            row["group"] = self.group
        return row

    @property
    def full_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


def _check_unique(seen: set[str], item_id: str, where: str) -> None:
    if item_id in seen:
        raise DataError(f"{where}: duplicate _id {item_id!r}; ids must be unique")
    seen.add(item_id)


def read_corpus(path: str | Path) -> list[Passage]:
    """Read a BEIR corpus.jsonl ({_id, title, text}); ids must be unique."""
    out: list[Passage] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        raw_id = obj.get("_id")
        if raw_id is None:
            raise DataError(f"{where}: missing field '_id'")
        if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
            raise DataError(f"{where}: field '_id' must be a string")
        item_id = str(raw_id)
        _check_unique(seen, item_id, where)
        text = _require_str(obj, "text", where)
        title = _require_str(obj, "title", where, required=False) or ""
        group = obj.get("group")
        out.append(Passage(item_id, title, text, None if group is None else str(group)))
    return out


def read_queries(path: str | Path) -> dict[str, str]:
    """Read a BEIR queries.jsonl ({_id, text}); ids must be unique."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "_id" not in obj:
            raise DataError(f"{where}: missing field '_id'")
        qid = str(obj["_id"])
        _check_unique(seen, qid, where)
        out[qid] = _require_str(obj, "text", where)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_qrels(path: str | Path, query_ids: set[str], doc_ids: set[str]) -> dict[str, dict[str, int]]:
    """Read qrels TSV (query-id, corpus-id, score) and check every id exists."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected qrels/<split>.tsv")
    qrels: dict[str, dict[str, int]] = {}
    lines = read_utf8(path).splitlines()
    rows = list(csv.reader(lines, delimiter="\t"))
    if not rows:
        raise DataError(f"{path}: empty file; expected a header 'query-id corpus-id score' and rows")
    start = 1 if rows[0] and rows[0][0] == "query-id" else 0
    if not start and len(rows[0]) == 3 and not _is_number(rows[0][2]):  # a header, but not BEIR's
        raise DataError(f"{path}:1: header {' '.join(rows[0])!r} is not BEIR's; the columns must be 'query-id corpus-id score'")
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or not "".join(row).strip():
            continue
        where = f"{path}:{lineno}"
        if len(row) != 3:
            raise DataError(f"{where}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}")
        qid, did, score = row
        if qid not in query_ids:
            raise DataError(f"{where}: unknown query id {qid!r} (not in queries.jsonl)")
        if did not in doc_ids:
            raise DataError(f"{where}: unknown corpus id {did!r} (not in corpus.jsonl)")
        try:
            qrels.setdefault(qid, {})[did] = int(float(score))
        except ValueError:
            raise DataError(f"{where}: score {score!r} is not a number") from None
    if not qrels:
        raise DataError(f"{path}: no judgements; expected rows 'query-id corpus-id score'")
    return qrels


@dataclass(frozen=True)
class EvalSet:
    corpus: list[Passage]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def read_beir(directory: str | Path, split: str = "test") -> EvalSet:
    """Read a BEIR-layout directory: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; expected a BEIR folder with corpus.jsonl")
    corpus = read_corpus(directory / "corpus.jsonl")
    queries = read_queries(directory / "queries.jsonl")
    qrels = read_qrels(directory / "qrels" / f"{split}.tsv", set(queries), {p.id for p in corpus})
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    return EvalSet(corpus, queries, qrels)


def write_beir(directory: str | Path, eval_set: EvalSet, split: str = "test") -> None:
    with atomic_path(directory, is_dir=True) as tmp:
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as fh:
            for p in eval_set.corpus:
                fh.write(json.dumps({"_id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
        with (tmp / "queries.jsonl").open("w", encoding="utf-8") as fh:
            for qid, text in eval_set.queries.items():
                fh.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
        (tmp / "qrels").mkdir()
        with (tmp / "qrels" / f"{split}.tsv").open("w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, docs in eval_set.qrels.items():
                for did, score in docs.items():
                    fh.write(f"{qid}\t{did}\t{score}\n")


# --------------------------------------------------------------------------- STS


@dataclass(frozen=True)
class StsPair:
    sentence1: str
    sentence2: str
    score: float


def read_sts(path: str | Path) -> list[StsPair]:
    """Read STS pairs from JSONL or TSV with columns sentence1, sentence2, score."""
    path = Path(path)
    pairs: list[StsPair] = []
    if path.suffix == ".tsv":
        if not path.is_file():
            raise DataError(f"{path}: file not found; check the path")
        reader = csv.DictReader(read_utf8(path).splitlines(), delimiter="\t")
        rows = ((i + 2, r) for i, r in enumerate(reader))
    else:
        rows = iter_jsonl(path)
    for lineno, obj in rows:
        where = f"{path}:{lineno}"
        s1 = _require_str(obj, "sentence1", where)
        s2 = _require_str(obj, "sentence2", where)
        if "score" not in obj or obj["score"] in (None, ""):
            raise DataError(f"{where}: missing field 'score'")
        try:
            score = float(obj["score"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: field 'score' must be a number, got {obj['score']!r}") from None
        pairs.append(StsPair(s1, s2, score))
    if not pairs:
        raise DataError(f"{path}: no STS pairs; expected sentence1, sentence2, score")
    return pairs
