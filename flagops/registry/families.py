"""Model families: the embedder and the reranker go through the same register, promote and
deploy steps (one module each, a ``family`` parameter per catalog step instance).

A family differs in four things only: the registered model's name, the metric keys its gate
compares, the pyfunc it is logged as and the service it is deployed to. ``project`` turns the
pipeline's config into the family's view of it, so the registry and deploy code below reads
``cfg.registry`` / ``cfg.deploy`` / ``cfg.serve`` whichever family it handles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FamilyName = Literal["embedder", "reranker"]


@dataclass(frozen=True)
class Family:
    name: FamilyName
    prefix: str  # the evaluator's key prefix the gate compares: candidate/ndcg@10, reranked/ndcg@10
    output_prefix: str  # the family's catalog artifacts: registration, reranker_registration


EMBEDDER = Family("embedder", "candidate/", "")
RERANKER = Family("reranker", "reranked/", "reranker_")
FAMILIES = {f.name: f for f in (EMBEDDER, RERANKER)}


def get(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; families are: {', '.join(FAMILIES)}") from None


def artifact(family: str, name: str) -> str:
    """The catalog artifact ``name`` of ``family``'s step: ``registration`` -> ``reranker_registration``."""
    return get(family).output_prefix + name


def step(family: str, verb: str) -> str:
    """The catalog step of ``verb`` for ``family``: register_model, register_reranker, ..."""
    return f"{verb}_model" if get(family) is EMBEDDER else f"{verb}_{family}"


def project(cfg, family: str):
    """``cfg`` as ``family``'s steps read it: the reranker's model name, service and served kind."""
    if get(family) is EMBEDDER:
        return cfg
    r = cfg.reranker
    return cfg.model_copy(
        update={
            "registry": cfg.registry.model_copy(update={"model_name": r.model_name}),
            "deploy": cfg.deploy.model_copy(update={"service_name": r.service_name}),
            "serve": cfg.serve.model_copy(update={"model_name": "reranker", "kind": "reranker"}),
        }
    )
