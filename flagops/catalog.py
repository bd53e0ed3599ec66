"""Every pipeline step, as data.

This is the single place a step's inputs, outputs, config sections, image and resources
are spelled out. ``dvc.yaml``, the CLI (and later the KFP components and Airflow DAGs)
are thin adapters over ``STEPS``; tests check each agrees with it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

ArtifactKind = Literal["dataset", "model", "metrics", "plot", "record"]

DEFAULT_IMAGE = "ghcr.io/flagops/flagops:0.1.0"


def image() -> str:
    """The container image steps run in on a cluster (``FLAGOPS_IMAGE`` overrides)."""
    return os.environ.get("FLAGOPS_IMAGE", DEFAULT_IMAGE)


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str  # workspace-relative default (the DVC out / dep)
    kind: ArtifactKind = "dataset"
    is_dir: bool = False


@dataclass(frozen=True)
class Resources:
    cpu: str = "1"
    memory: str = "4Gi"
    gpus: int = 0


# model.kind picks the training step: `bge` (train_embedder) or `m3` (train_m3); each kind's
# pipeline is STEPS filtered by kind, and every face renders the pipeline of a kind.
KINDS = ("bge", "m3")


@dataclass(frozen=True)
class Step:
    name: str  # snake_case verb phrase, the same in every face
    module: str  # flagops.steps.<name>, which defines run(cfg, inputs, outputs)
    sections: tuple[str, ...]  # config sections it reads (its typed config; DVC params)
    inputs: tuple[str, ...]  # artifact names produced by earlier steps
    outputs: tuple[Artifact, ...]
    resources: Resources = field(default_factory=Resources)
    summary: str = ""
    kinds: tuple[str, ...] = KINDS  # the model kinds (model.kind) whose pipeline includes it

    @property
    def run(self) -> Callable:
        return importlib.import_module(self.module).run

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.outputs)


def _step(name: str, sections, inputs, outputs, resources=Resources(), summary="", kinds=None) -> Step:
    module = f"flagops.steps.{name}"
    return Step(name, module, tuple(sections), tuple(inputs), tuple(outputs), resources, summary, kinds or KINDS)


GPU = Resources(cpu="8", memory="32Gi", gpus=1)

STEPS: tuple[Step, ...] = (
    _step(
        "build_corpus",
        ["corpus"],
        [],
        [Artifact("corpus", "data/corpus.jsonl")],
        summary="Collect passages: Python stdlib docstrings, a user JSONL or a BEIR folder.",
    ),
    _step(
        "synthesize_queries",
        ["synthesis"],
        ["corpus"],
        [Artifact("train_pairs", "data/train_pairs.jsonl"), Artifact("eval_set", "data/eval", is_dir=True)],
        summary="Generate a query per passage; split train/test by group (module).",
    ),
    _step(
        "mine_hard_negatives",
        ["model", "mining"],
        ["train_pairs"],
        [Artifact("train_data", "data/train.jsonl")],
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="Sample negatives from ranks 10-210 of a teacher's faiss search.",
    ),
    _step(
        "train_embedder",
        ["model", "train"],
        ["train_data"],
        [Artifact("model", "models/candidate", kind="model", is_dir=True)],
        GPU,
        summary="Fine-tune contrastively (InfoNCE, in-batch negatives, optional distillation).",
        kinds=("bge",),
    ),
    _step(
        "train_m3",
        ["model", "m3", "train"],
        ["train_data"],
        [Artifact("model", "models/candidate", kind="model", is_dir=True)],
        GPU,
        summary="Fine-tune BGE-M3 heads: dense + sparse + ColBERT with self-distillation.",
        kinds=("m3",),
    ),
    _step(
        "evaluate",
        ["model", "evaluate"],
        ["model", "eval_set"],
        [
            Artifact("metrics", "metrics/eval.json", kind="metrics"),
            Artifact("chart", "plots/eval_comparison.png", kind="plot"),
            Artifact("chart_data", "plots/eval_comparison.json", kind="plot"),
        ],
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="nDCG@10 / MRR@10 / Recall / MAP for BM25, the base model and the candidate.",
    ),
    _step(
        "register_model",
        ["model", "registry"],
        ["model", "metrics", "train_data"],
        [Artifact("registration", "registry/registration.json", kind="record")],
        summary="Log the candidate to MLflow with signature, lineage tags and a model card.",
    ),
    _step(
        "promote_model",
        ["registry"],
        ["registration"],
        [Artifact("promotion", "registry/promotion.json", kind="record")],
        summary="Give the `champion` alias only if the candidate beats the current champion.",
    ),
    _step(
        "deploy_model",
        ["registry", "deploy"],
        ["promotion"],
        [
            Artifact("inference_service", "deploy/inferenceservice.yaml", kind="record"),
            Artifact("deployment", "registry/deployment.json", kind="record"),
        ],
        summary="Render (and apply) the champion's KServe InferenceService; a new champion starts as a canary.",
    ),
)

BY_NAME = {s.name: s for s in STEPS}
ARTIFACTS = {a.name: a for s in STEPS for a in s.outputs}  # variants of a step write the same artifact


def pipeline(kind: str = "bge") -> tuple[Step, ...]:
    """The DAG for model kind ``kind``, in run order."""
    if kind not in KINDS:
        raise KeyError(f"unknown model kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return tuple(s for s in STEPS if kind in s.kinds)


def get(name: str) -> Step:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; steps are: {', '.join(BY_NAME)}") from None


def edges(kind: str = "bge") -> set[tuple[str, str]]:
    """(upstream, downstream) pairs of kind's pipeline, derived from inputs and outputs."""
    steps = pipeline(kind)
    producer = {a.name: s.name for s in steps for a in s.outputs}
    return {(producer[i], s.name) for s in steps for i in s.inputs}


def check() -> None:
    """Raise if, in any kind's pipeline, an input has no producer, an artifact is produced
    twice, a step is listed twice, or steps are out of order."""
    for kind in KINDS:
        _check(pipeline(kind))
    for s in STEPS:
        for a in s.outputs:
            if ARTIFACTS[a.name] != a:
                raise ValueError(f"step {s.name}: artifact {a.name!r} differs from another step's {a.name!r}")


def _check(steps: tuple[Step, ...]) -> None:
    seen: set[str] = set()
    produced: set[str] = set()
    for s in steps:
        for i in s.inputs:
            if i not in produced:
                raise ValueError(f"step {s.name}: input {i!r} is not produced by an earlier step")
        for a in s.outputs:
            if a.name in produced:
                raise ValueError(f"artifact {a.name!r} is produced twice")
            produced.add(a.name)
        if s.name in seen:
            raise ValueError(f"step {s.name!r} listed twice")
        seen.add(s.name)


check()
