"""The MLflow pyfuncs a registered version is: their classes, signatures and requirements.

An embedder version's one artifact, ``embedder`` (``models.layout.ARTIFACT``), is the HF /
sentence-transformers directory ``Embedder.save`` wrote; its python_model is
``EmbedderPyfunc``. A reranker version's, ``reranker``, is train_reranker's directory
(``RerankerPyfunc``: query/passage pairs in, scores out). Both are pickled by reference. flagops is not on PyPI, so rather than list it
in ``pip_requirements`` the version carries a copy of the flagops package (``code_paths``,
~0.3 MB): the pyfunc then loads anywhere the pinned torch/transformers/numpy/mlflow are
installed (``mlflow models serve``, a bare venv). MLflow puts that copy on ``sys.path`` at
load time; a process that has already imported flagops keeps its own, so the flagops
image and the project venv run their installed code. This needs ``flagops/__init__.py``:
in a namespace package the copy would merge with the installed one.
"""

from __future__ import annotations

import logging
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from flagops.models.layout import ARTIFACT, RERANKER_ARTIFACT
from flagops.registry.lineage import PACKAGE_DIR

INPUT_EXAMPLE = ["what does a bge embedder do?", "BGE maps a text to one dense vector for retrieval."]
PAIR_EXAMPLE = {"query": ["what does a reranker do?"], "passage": ["A cross-encoder reads the query and a passage together."]}
RUNTIME_DISTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "mlflow")


# The class is pickled by reference on purpose (flagops travels in code_paths): drop
# MLflow's generic notice about pickled python_model objects, and nothing else.


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Passing a Python object as `python_model`" not in record.getMessage()


logging.getLogger("mlflow.pyfunc").addFilter(_DropNotice())


class EmbedderPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(list[str], params={"is_query": bool}) -> float32 (n, dim)`` via ``Embedder.encode``."""

    def load_context(self, context) -> None:
        from flagops.models.device import inference_placement, place
        from flagops.models.embedder import Embedder  # torch + transformers: only when loaded

        self.embedder = place(Embedder.load(context.artifacts[ARTIFACT]), inference_placement())  # auto: CUDA in fp16 when present

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        is_query = bool((params or {}).get("is_query", False))
        return self.embedder.encode(_as_texts(model_input), is_query=is_query)


def _as_texts(model_input) -> list[str]:
    """A string column arrives as a DataFrame (schema enforcement), a list or an array."""
    if hasattr(model_input, "iloc") and getattr(model_input, "ndim", 1) == 2:  # DataFrame
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, str):
        model_input = [model_input]
    texts = list(np.asarray(model_input, dtype=object).ravel())
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"expected strings to embed, got {bad[0]}")
    return texts


class RerankerPyfunc(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame[query, passage], params={"normalize": bool}) -> float32 (n,)`` via ``score_pairs``."""

    def load_context(self, context) -> None:
        from flagops.models.device import inference_placement, place
        from flagops.models.reranker import load_reranker

        self.reranker = place(load_reranker(context.artifacts[RERANKER_ARTIFACT]), inference_placement())

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        from flagops.models.pair_scoring import sigmoid

        rows = model_input.to_dict("list") if hasattr(model_input, "to_dict") else dict(model_input)
        missing = {"query", "passage"} - set(rows)
        if missing:
            raise TypeError(f"expected columns query and passage, missing {sorted(missing)}")
        scores = self.reranker.score_pairs(list(zip(rows["query"], rows["passage"], strict=True)))
        return sigmoid(scores) if (params or {}).get("normalize", False) else scores


def embedder_signature(dim: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema([ParamSpec("is_query", DataType.boolean, False)]),
    )


def reranker_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "query"), ColSpec(DataType.string, "passage")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]),
        params=ParamSchema([ParamSpec("normalize", DataType.boolean, False)]),
    )


def pip_requirements() -> list[str]:
    """Exact pins of what the pyfunc imports; local tags like ``+cpu`` are dropped."""
    return [f"{d}=={dist_version(d).split('+')[0]}" for d in RUNTIME_DISTS]


def log_embedder(model_dir: Path, dim: int) -> ModelInfo:
    """Log ``model_dir`` to the active run as the pyfunc ``model``, with a copy of flagops beside it."""
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=EmbedderPyfunc(),
        artifacts={ARTIFACT: str(model_dir)},
        signature=embedder_signature(dim),
        input_example=INPUT_EXAMPLE,
        pip_requirements=pip_requirements(),
        code_paths=[str(PACKAGE_DIR)],
    )


def log_reranker(model_dir: Path) -> ModelInfo:
    """Log a reranker directory to the active run as the pyfunc ``model`` (``RerankerPyfunc``)."""
    import pandas as pd

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=RerankerPyfunc(),
        artifacts={RERANKER_ARTIFACT: str(model_dir)},
        signature=reranker_signature(),
        input_example=pd.DataFrame(PAIR_EXAMPLE),
        pip_requirements=pip_requirements(),  # an LLM reranker loads its merged weights: no peft needed
        code_paths=[str(PACKAGE_DIR)],
    )
