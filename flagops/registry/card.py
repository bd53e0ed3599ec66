"""The model card: a README.md rendered from the registration's facts. Pure text, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CardFacts:
    name: str
    version: str
    base_model: str
    settings: Mapping[str, Any]  # the saved flagops_embedder.json (pooling, ...) or flagops_reranker.json (kind, ...)
    metrics: Mapping[str, float]  # flat evaluator keys: candidate/ndcg@10, base/ndcg@10, ...
    primary_metric: str
    data_md5: str
    git_commit: str
    model_sha256: str
    embedder_subdir: str  # where the HF directory sits inside the downloaded pyfunc model (a reranker's too)
    profile: str = "custom"


def metrics_table(metrics: Mapping[str, float], primary: str) -> str:
    """Markdown table: one row per metric, one column per system (candidate first)."""
    systems: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        system, sep, metric = key.partition("/")
        if not sep:
            system, metric = "-", key
        if system not in systems:
            systems.append(system)
        rows.setdefault(metric, {})[system] = float(value)
    if not rows:
        return "_No metrics were recorded._"
    systems = sorted(systems, key=lambda s: s != "candidate")  # stable: others keep their order
    names = sorted(rows, key=lambda m: (m != primary, m))
    lines = ["| metric | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
    for metric in names:
        cells = [f"{rows[metric][s]:.4f}" if s in rows[metric] else "" for s in systems]
        label = f"**{metric}** (primary)" if metric == primary else metric
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_card(f: CardFacts) -> str:
    s = f.settings
    uri = f"models:/{f.name}/{f.version}"
    instruction = s.get("query_instruction") or ""
    return f"""# {f.name} v{f.version}

A BGE-style text embedder registered by flagops (profile `{f.profile}`).

| | |
|---|---|
| base model | `{f.base_model}` |
| pooling | {s.get("pooling", "?")} |
| normalized | {s.get("normalize", "?")} |
| query instruction | {f"`{instruction}`" if instruction else "(none)"} |
| max length (query / passage) | {s.get("query_max_len", "?")} / {s.get("passage_max_len", "?")} tokens |
| training data md5 | `{f.data_md5}` |
| git commit | `{f.git_commit}` |
| model sha256 | `{f.model_sha256}` |

## Evaluation

{metrics_table(f.metrics, f.primary_metric)}

## How to load

With MLflow (pyfunc; the pinned requirements suffice, a copy of flagops travels with the model):

```python
import mlflow
model = mlflow.pyfunc.load_model("{uri}")
vectors = model.predict(["a passage", "another"])  # float32 (n, dim)
queries = model.predict(["a question"], params={{"is_query": True}})
```

With flagops:

```python
from flagops.models.embedder import Embedder
from flagops.registry.models import fetch_model_dir
embedder = Embedder.load(fetch_model_dir("{uri}"))
```

With sentence-transformers (no flagops needed):

```python
import mlflow
from sentence_transformers import SentenceTransformer
root = mlflow.artifacts.download_artifacts("{uri}")
model = SentenceTransformer(root + "/{f.embedder_subdir}")
```
"""


def render_reranker_card(f: CardFacts) -> str:
    s = f.settings
    uri = f"models:/{f.name}/{f.version}"
    kind = s.get("kind", "cross_encoder")
    return f"""# {f.name} v{f.version}

A BGE-style {kind.replace("_", "-")} reranker registered by flagops (profile `{f.profile}`): it scores
(query, passage) pairs; higher is more relevant. Gated on the candidate embedder's top-k reranked by it.

| | |
|---|---|
| base model | `{f.base_model}` |
| kind | {kind} |
| max length (query / passage) | {s.get("query_max_len", "?")} / {s.get("passage_max_len", "?")} tokens |
| training data md5 | `{f.data_md5}` |
| git commit | `{f.git_commit}` |
| model sha256 | `{f.model_sha256}` |

## Evaluation

{metrics_table(f.metrics, f.primary_metric)}

## How to load

With MLflow (pyfunc):

```python
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("{uri}")
scores = model.predict(pd.DataFrame({{"query": ["a question"], "passage": ["a passage"]}}))  # float32 (n,)
```

With flagops:

```python
from flagops.models.reranker import load_reranker
from flagops.registry.models import fetch_model_dir
reranker = load_reranker(fetch_model_dir("{uri}"))
scores = reranker.score("a question", ["a passage", "another"])
```

With FlagEmbedding (a cross-encoder: `FlagReranker`; an LLM reranker's merged weights: `FlagLLMReranker`):

```python
import mlflow
from FlagEmbedding import FlagReranker
root = mlflow.artifacts.download_artifacts("{uri}")
scores = FlagReranker(root + "/{f.embedder_subdir}").compute_score([["a question", "a passage"]])
```
"""
