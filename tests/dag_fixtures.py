"""A synthetic catalog for the DAG tests: a diamond (fan-out and fan-in), an optional step that
feeds an optional input, and one module used by two steps (a `family` parameter), so every face
can be checked on a shape the shipped profiles do not have yet. Pure data: the Airflow venv
imports it too.
"""

from __future__ import annotations

from types import SimpleNamespace

from flagops.catalog import Artifact, Step

M = "flagops.steps.build_corpus"  # never run: the faces only render these steps
DIAMOND = (
    Step("make_source", M, ("corpus",), (), (Artifact("source", "data/source.jsonl"),)),
    Step(
        "pretrain_base",
        M,
        ("corpus",),
        ("source",),
        (Artifact("base", "models/base", "model", True),),
        when=(("pipeline.pretrain", (True,)),),
    ),
    Step("split_left", M, ("corpus",), ("source",), (Artifact("left", "data/left.jsonl"),)),
    Step("split_right", M, ("corpus",), ("source", "base"), (Artifact("right", "data/right.jsonl"),), optional=("base",)),
    Step("join_both", M, ("corpus",), ("left", "right"), (Artifact("metrics", "metrics/eval.json", "metrics"),)),
    Step(
        "register_left",
        M,
        ("registry",),
        ("model", "metrics"),
        (Artifact("reg_left", "registry/left.json", "record"),),
        sources=(("model", ("left",)),),
        params=(("family", "left"),),
    ),
    Step(
        "register_right",
        M,
        ("registry",),
        ("model", "metrics"),
        (Artifact("reg_right", "registry/right.json", "record"),),
        sources=(("model", ("right",)),),
        params=(("family", "right"),),
    ),
)


def config(pretrain: bool) -> SimpleNamespace:
    """A stand-in for FlagopsConfig: the catalog only reads dotted attributes."""
    return SimpleNamespace(profile="diamond", pipeline=SimpleNamespace(pretrain=pretrain))


EDGES = {
    ("make_source", "split_left"),
    ("make_source", "split_right"),
    ("split_left", "join_both"),
    ("split_right", "join_both"),
    ("split_left", "register_left"),
    ("join_both", "register_left"),
    ("split_right", "register_right"),
    ("join_both", "register_right"),
}
PRETRAIN_EDGES = EDGES | {("make_source", "pretrain_base"), ("pretrain_base", "split_right")}
