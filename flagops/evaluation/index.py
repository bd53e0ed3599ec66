"""Retrieval over large corpora: passages encoded once in chunks, cached on disk, searched with faiss.

``corpus_search`` is the retrieval path of ``flagops eval`` and of the ``evaluate`` step's suite:

* **Cache.** Passage embeddings go to ``<cache>/<model hash>-<corpus hash>.npy`` (default
  ``$FLAGOPS_CACHE/embeddings``), so a model scored again on the same task (the base model in
  every pipeline run) is not re-encoded. The model hash is a content hash (sha256) of every
  file in the model directory (config, weights, tokenizer, flagops settings) plus the dtype
  and device kind it runs in: hashing the weights costs about a second per GB, little next to
  encoding, and unlike sizes and mtimes it cannot be fooled by a copy or a re-save. It is
  computed once per directory state in a process. The corpus hash covers each passage's text
  as encoded (title + newline + text) and the settings that shape a passage vector: pooling,
  normalisation and the passage length (an ``Embedder`` puts no instruction before passages).
  The batch size and chunking are left out: they change the vectors only by padding noise
  (about 1e-7). A model with no directory on disk is encoded each time.
* **Streaming.** The corpus is encoded ``chunk`` passages at a time into a float32 ``.npy``
  memmap, so memory holds one chunk's tensors and vectors plus the faiss index. The file is
  written under a temporary name and renamed when complete: a partial file is never read.
* **Search.** ``method`` ``auto``: exact ``IndexFlatIP`` up to ``ivf_above`` passages; above it
  ``IndexIVFFlat`` with ``nlist = 4 * sqrt(N)`` lists, ``nprobe`` of them searched, when there
  are at least ``ivf_min_queries`` queries. IVF's k-means build and an exact search both cost in
  proportion to N, so whether IVF pays depends on the query count alone: on the 2-core dev box
  its build cost what exact search of about 10,000-13,000 queries costs, at 10^5 and at 10^6
  passages (benchmarks/README.md, "Mining's scaling curve"). An evaluation set of a few thousand
  queries over a million passages is searched exactly, and sooner; mining, with a query per
  passage, gets IVF. ``flat``,
  ``ivf`` or ``hnsw`` force one; ``hnsw`` is ``IndexHNSWFlat`` (``hnsw_m`` links per node,
  ``efSearch`` the larger of ``ef_search`` and k): no training pass, the slowest build, the
  fastest search. An approximate index's loss is measured on up to 100 queries (recall@10
  against an exact search of the memmap) and returned as the metric ``ivf_recall@10`` or
  ``hnsw_recall@10``.

The settings come from ``index_settings`` (the CLI's ``--cache-dir``, ``--no-cache``,
``--ivf-above``, ``--nprobe``), a context variable rather than a parameter, so the suite's
call chain keeps its signatures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from flagops import __version__
from flagops.data.formats import EvalSet, Passage, atomic_path
from flagops.evaluation.retrieval import Run, TextEncoder
from flagops.models.cache import cache_dir

CHUNK = 10_000  # passages encoded per call: bounds token tensors and vectors held at once
IVF_ABOVE = 200_000  # a flat index of 200k x 1024 float32 is 0.8 GB and searches in seconds
IVF_MIN_QUERIES = 10_000  # below this many queries, IVF's build costs more than the exact search it saves
NPROBE = 32
RECALL_QUERIES = 100
RECALL_K = 10
TRAIN_PER_LIST = 64  # k-means points per list: faiss asks for 39 or more; a sample, not the corpus, in memory


def default_cache_dir() -> Path:
    """``$FLAGOPS_EMBEDDING_CACHE`` (the tests point it at a fresh folder), else ``$FLAGOPS_CACHE/embeddings``."""
    return Path(os.environ.get("FLAGOPS_EMBEDDING_CACHE") or cache_dir() / "embeddings")


HNSW_M = 32  # links per node: faiss's usual 32 keeps recall high at a 1M-passage scale
EF_SEARCH = 128  # candidates kept while searching; raised to k when k is larger
INDEX_METHODS = ("auto", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexSettings:
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no cache
    ivf_above: int = IVF_ABOVE
    nprobe: int = NPROBE
    chunk: int = CHUNK
    method: str = "auto"  # auto: flat up to ivf_above (or under ivf_min_queries queries), IVF above; or flat, ivf, hnsw
    ivf_min_queries: int = IVF_MIN_QUERIES
    hnsw_m: int = HNSW_M
    ef_search: int = EF_SEARCH

    def __post_init__(self) -> None:
        if self.method not in INDEX_METHODS:
            raise ValueError(f"unknown index method {self.method!r}; use one of {', '.join(INDEX_METHODS)}")

    def method_for(self, n: int, n_queries: int) -> str:
        """The index ``build_index`` makes for ``n`` passages searched by ``n_queries`` queries."""
        if self.method != "auto":
            return self.method
        return "ivf" if n > self.ivf_above and n_queries >= self.ivf_min_queries else "flat"


_SETTINGS: ContextVar[IndexSettings | None] = ContextVar("flagops_index_settings", default=None)


@contextmanager
def index_settings(settings: IndexSettings) -> Iterator[None]:
    """``corpus_search`` uses ``settings`` inside this block (default: ``IndexSettings()``)."""
    token = _SETTINGS.set(settings)
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def current_settings() -> IndexSettings:
    """The settings of the enclosing ``index_settings`` block, else the defaults."""
    return _SETTINGS.get() or IndexSettings()


# --------------------------------------------------------------------------- cache keys


@lru_cache(maxsize=16)
def _files_digest(directory: Path, state: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 over the files' names and contents; ``state`` (name, size, mtime) keys the memo."""
    h = hashlib.sha256()
    for name, _, _ in state:
        h.update(name.encode() + b"\0")
        with (directory / name).open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def model_hash(encoder: TextEncoder) -> str | None:
    """Content hash of the encoder's model directory, numerics (dtype or int8) and device kind; None when it has no directory."""
    model = getattr(encoder, "model", None)
    name = getattr(model, "name_or_path", "")
    if not name or not Path(name).is_dir():
        return None
    directory = Path(name).resolve()
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(directory).parts))
    state = tuple((str(p.relative_to(directory)), (st := p.stat()).st_size, st.st_mtime_ns) for p in files)
    param = next(model.parameters())
    # int8 Linears keep no float weight among the parameters, so dtype alone cannot tell an int8
    # model from its fp32 one: their vectors differ and must not share a cache entry.
    from flagops.models.quantize import is_quantized  # torch's quantisation modules, only where a cache is used

    numerics = getattr(model, "numerics", None) or ("int8-dynamic" if is_quantized(model) else str(param.dtype))  # OpenVINOModel: its own
    return hashlib.sha256(f"{_files_digest(directory, state)} {numerics} {param.device.type}".encode()).hexdigest()


def corpus_hash(corpus: Sequence[Passage], encoder: TextEncoder) -> str:
    """sha256 of the passages as encoded and of the settings that shape their vectors."""
    s = encoder.settings
    shape = {"encoder": type(encoder).__name__, "pooling": s.pooling, "normalize": s.normalize, "max_length": s.passage_max_len}
    shape["flagops"] = __version__  # a release may encode differently: its vectors are not reused
    shape["m3"] = repr(getattr(encoder, "m3_settings", None))  # M3's dense vector depends on MCLS
    h = hashlib.sha256(json.dumps(shape).encode())
    for passage in corpus:
        text = passage.full_text.encode()
        h.update(len(text).to_bytes(8, "little") + text)
    return h.hexdigest()


# --------------------------------------------------------------------------- encoding


def encode_to_file(path: Path, corpus: Sequence[Passage], encoder: TextEncoder, batch_size: int, chunk: int, label: str) -> None:
    """Encode ``corpus`` ``chunk`` passages at a time into a float32 (n, dim) ``.npy`` at ``path``."""
    out = None
    n_chunks = math.ceil(len(corpus) / chunk)
    for i, start in enumerate(range(0, len(corpus), chunk)):
        texts = [p.full_text for p in corpus[start : start + chunk]]
        progress = f"{label}passages" + (f" {i + 1}/{n_chunks}" if n_chunks > 1 else "")
        emb = encoder.encode(texts, is_query=False, batch_size=batch_size, progress=progress)  # (chunk, dim)
        if out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(corpus), emb.shape[1]))
        out[start : start + len(texts)] = emb
    out.flush()
    del out


def passage_embeddings(
    corpus: Sequence[Passage], encoder: TextEncoder, batch_size: int, settings: IndexSettings, scratch: Path, label: str
) -> np.ndarray:
    """The corpus's embeddings as a read-only memmap: from the cache, or encoded (into the cache, else into ``scratch``)."""
    key = model_hash(encoder) if settings.cache_dir is not None else None
    if key is None:
        path = scratch / "passages.npy"
        encode_to_file(path, corpus, encoder, batch_size, settings.chunk, label)
        return np.load(path, mmap_mode="r")
    path = settings.cache_dir / f"{key[:32]}-{corpus_hash(corpus, encoder)[:32]}.npy"
    if path.is_file():
        print(f"eval: {label}passages: {len(corpus)} embeddings from the cache {path}")
        return np.load(path, mmap_mode="r")
    with atomic_path(path) as tmp:
        encode_to_file(tmp, corpus, encoder, batch_size, settings.chunk, label)
    print(f"eval: {label}passages: cached {len(corpus)} embeddings at {path}")
    return np.load(path, mmap_mode="r")


# --------------------------------------------------------------------------- search


def build_index(emb: np.ndarray, settings: IndexSettings, label: str, n_queries: int) -> faiss.Index:
    """The index ``settings.method_for(rows, n_queries)`` names, filled chunk by chunk from ``emb``."""
    n, dim = emb.shape
    method = settings.method_for(n, n_queries)
    if method == "flat":
        index = faiss.IndexFlatIP(dim)
        print(f"eval: {label}exact search (faiss IndexFlatIP) over {n} passages")
    elif method == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings.ef_search
        print(f"eval: {label}HNSW search (faiss IndexHNSWFlat) over {n} passages: M {settings.hnsw_m}, efSearch >= {settings.ef_search}")
    else:
        nlist = max(1, round(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(0).choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False))
        index.train(np.ascontiguousarray(emb[sample], dtype=np.float32))
        index.nprobe = min(settings.nprobe, nlist)
        print(f"eval: {label}IVF search (faiss IndexIVFFlat) over {n} passages: nlist {nlist}, nprobe {index.nprobe}")
    starts = range(0, n, settings.chunk)
    for start in tqdm(starts, desc=f"{label}index", unit="chunk", leave=False, disable=len(starts) < 2):
        index.add(np.ascontiguousarray(emb[start : start + settings.chunk], dtype=np.float32))
    return index


def approximate_method(index: faiss.Index) -> str | None:
    """``ivf`` or ``hnsw`` for an approximate index, None for an exact one."""
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "hnsw" if isinstance(index, faiss.IndexHNSW) else None


def search_index(
    index: faiss.Index, queries: np.ndarray, emb: np.ndarray, k: int, settings: IndexSettings, label: str
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """(scores, ids, extra): each query's top ``k``, best first (id -1 where an approximate index found fewer).

    For an approximate index, ``extra`` is ``{"<method>_recall@10": r}``: recall@10 against exact
    search of ``emb`` on up to ``RECALL_QUERIES`` queries.
    """
    method = approximate_method(index)
    if method == "hnsw":
        index.hnsw.efSearch = max(settings.ef_search, k)  # HNSW returns at most efSearch candidates
    scores, ids = index.search(queries, k)  # (n_queries, k)
    if method is None:
        return scores, ids, {}
    sample = np.sort(np.random.default_rng(0).choice(len(queries), min(len(queries), RECALL_QUERIES), replace=False))
    kk = min(RECALL_K, k)
    exact_scores = exact_top_k(queries[sample], emb, kk, settings.chunk)
    found = np.where(ids[sample, :kk] >= 0, scores[sample, :kk], -np.inf)  # both indexes score with exact inner products
    recall = recall_at_k(found, exact_scores)
    print(f"eval: {label}{method.upper()} recall@10 against exact search on {len(sample)} queries: {recall:.4f}")
    return scores, ids, {f"{method}_recall@10": recall}


def exact_top_k(queries: np.ndarray, emb: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Each query's ``k`` highest inner products over ``emb`` (m, k), best first, reading ``emb`` chunk by chunk."""
    best = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    for start in range(0, emb.shape[0], chunk):
        scores = queries @ np.asarray(emb[start : start + chunk], dtype=np.float32).T  # (m, chunk)
        best = -np.sort(-np.concatenate([best, scores], axis=1), axis=1)[:, :k]  # (m, <=k)
    return best


def recall_at_k(found_scores: np.ndarray, exact_scores: np.ndarray) -> float:
    """Mean share of the exact top-k that the approximate search found, each query's lists best first.

    A found passage counts when it scores at least the exact k-th best (within float noise), so a
    passage tied with the k-th best one is no loss; with distinct scores this is the usual
    ``|found & exact| / k``. ``found_scores`` (m, k) is -inf where IVF found fewer than k.
    """
    kth = exact_scores[:, -1:]  # (m, 1)
    hits = found_scores >= kth - 1e-6 * np.maximum(1.0, np.abs(kth))  # (m, k)
    return float(np.mean(hits.sum(axis=1) / exact_scores.shape[1]))


def corpus_search(eval_set: EvalSet, encoder: TextEncoder, batch_size: int, *, top_k: int, label: str = "") -> tuple[Run, dict[str, float]]:
    """(run, extra metrics): each query's ``top_k`` passages; ``{"ivf_recall@10": r}`` when IVF searched (``hnsw_`` for HNSW)."""
    settings = current_settings()
    tag = f"{label} " if label else ""
    corpus = eval_set.corpus
    query_ids = list(eval_set.queries)
    queries = encoder.encode([eval_set.queries[q] for q in query_ids], is_query=True, batch_size=batch_size, progress=f"{tag}queries")
    queries = np.ascontiguousarray(queries, dtype=np.float32)  # (n_queries, dim)
    with tempfile.TemporaryDirectory(prefix="flagops-passages-") as scratch:
        emb = passage_embeddings(corpus, encoder, batch_size, settings, Path(scratch), tag)  # (n_docs, dim) memmap
        index = build_index(emb, settings, tag, len(queries))
        scores, ids, extra = search_index(index, queries, emb, min(top_k, len(corpus)), settings, tag)
        del emb  # the memmap, before its scratch file goes
    run: Run = {
        qid: {corpus[j].id: float(s) for s, j in zip(row_scores, row_ids, strict=True) if j >= 0}
        for qid, row_scores, row_ids in zip(query_ids, scores, ids, strict=True)
    }
    return run, extra
