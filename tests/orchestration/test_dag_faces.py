"""One DAG, three faces: a synthetic catalog with a diamond (fan-out and fan-in), an optional
step and one module serving two steps renders with the same tasks and edges in DVC (as `dvc dag`
reads the rendered dvc.yaml), KFP (the compiled IR) and Airflow (the DagBag in its own venv).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from flagops import catalog, dvc
from tests.dag_fixtures import DIAMOND, EDGES, PRETRAIN_EDGES, config
from tests.orchestration.test_airflow import AIRFLOW_BIN, PROBE, _env, _require_airflow_venv, _run

REPO = Path(__file__).resolve().parents[2]
CASES = {"plain": (False, EDGES), "pretrain": (True, PRETRAIN_EDGES)}


def pipe(pretrain: bool) -> catalog.Pipeline:
    return catalog.resolve(DIAMOND, config(pretrain))


@pytest.mark.parametrize("case", CASES)
def test_dvc_reads_the_rendered_diamond_as_the_catalogs_dag(tmp_path, case):
    pretrain, edges = CASES[case]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc.render_pipeline(pipe(pretrain)), sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    dot = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=tmp_path, check=True, capture_output=True, text=True)
    # dvc dag --dot prints `"a" -> "b"` per edge, stage names quoted
    found = {tuple(part.strip().strip('";') for part in line.split("->")) for line in dot.stdout.splitlines() if "->" in line}
    assert found == edges


def _components(tmp_path: Path, steps) -> dict:
    """A lightweight KFP component per synthetic step, with the catalog's artifact names and types
    (optional inputs last, defaulting to None), written to a file because KFP reads its source."""
    import components

    lines = ["from typing import Optional", "from kfp import dsl", "from kfp.dsl import Input, Output, Artifact, Dataset, Metrics, Model"]
    for s in steps:
        kind = {a.name: a.kind for st in DIAMOND for a in st.outputs}
        types = {n: components.ARTIFACT_TYPES[kind[s.feeds(n)[0]]].__name__ for n in s.inputs}
        args = ["params: str", "tracking_uri: str", "pipeline_key: str"]
        args += [f"{n}: Input[{types[n]}]" for n in s.required]
        args += [f"{a.name}: Output[{components.ARTIFACT_TYPES[a.kind].__name__}]" for a in s.outputs]
        args += [f"{n}: Optional[Input[{types[n]}]] = None" for n in s.optional]
        lines += [
            "",
            "@dsl.component(base_image='flagops:test', install_kfp_package=False)",
            f"def {s.name}({', '.join(args)}):",
            "    pass",
        ]
    path = tmp_path / "diamond_components.py"
    path.write_text("\n".join(lines) + "\n")
    spec = importlib.util.spec_from_file_location("diamond_components", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {s.name: getattr(module, s.name) for s in steps}


@pytest.mark.parametrize("case", CASES)
def test_kfp_compiles_the_diamond_to_the_catalogs_dag(tmp_path, case):
    from kfp import compiler

    from pipelines import retrain

    pretrain, edges = CASES[case]
    p = pipe(pretrain)
    built = _components(tmp_path, p.steps)
    compiler.Compiler().compile(retrain.build(p, "diamond", "{}", built=built), str(tmp_path / "ir.yaml"))
    tasks = yaml.safe_load((tmp_path / "ir.yaml").read_text())["root"]["dag"]["tasks"]
    name = {s.name.replace("_", "-"): s.name for s in p.steps}
    assert set(tasks) == set(name)
    assert {(name[up], name[t]) for t, spec in tasks.items() for up in spec.get("dependentTasks", [])} == edges
    wired = tasks["split-right"]["inputs"].get("artifacts", {})
    assert set(wired) == ({"source", "base"} if pretrain else {"source"})


DIAMOND_DAGS = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{repo!r}, {dags!r}]
    from airflow.sdk import DAG
    from _flagops_dag import add_tasks, dag_kwargs
    from flagops import catalog
    from tests.dag_fixtures import DIAMOND, config

    for pretrain in (False, True):
        with DAG(f"diamond_{{pretrain}}".lower(), **dag_kwargs(schedule=None)):
            add_tasks(catalog.resolve(DIAMOND, config(pretrain)))
    """
)


def test_airflow_builds_the_diamond_as_the_catalogs_dag(tmp_path):
    _require_airflow_venv()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "diamond.py").write_text(DIAMOND_DAGS.format(repo=str(REPO), dags=str(REPO / "dags")))
    env = _env(tmp_path / "home", FLAGOPS_AIRFLOW_MODE="local", FLAGOPS_WORKDIR=str(tmp_path / "ws"))
    stdout = _run([AIRFLOW_BIN / "python", "-c", PROBE, dags], env)
    bag = json.loads(next(line for line in stdout.splitlines() if line.startswith("PROBE-JSON ")).removeprefix("PROBE-JSON "))
    assert bag["import_errors"] == {}
    for case, (pretrain, edges) in CASES.items():
        tasks = bag["dags"][f"diamond_{pretrain}".lower()]["tasks"]
        assert list(tasks) == list(pipe(pretrain).names)
        assert {(up, name) for name, t in tasks.items() for up in t["upstream"]} == edges, case
        assert ("--in base=models/base" in tasks["split_right"]["bash_command"]) is pretrain
