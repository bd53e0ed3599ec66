"""One DAG, three faces: a synthetic catalog with a diamond (fan-out and fan-in), an optional
step and one module serving two steps renders with the same tasks and edges in DVC (as `dvc dag`
reads the rendered dvc.yaml), KFP (the compiled IR) and Airflow (the DagBag in its own venv); and
so does every shipped profile (the long-context and every-branch ones included).
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
from flagops.config import load_config, shipped_profiles
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


# --------------------------------------------------------------------------- every shipped profile

PROFILE_DAGS = textwrap.dedent(
    """
    # One airflow DAG per shipped profile (safe mode parses only files that say "airflow" and "dag").
    import sys
    sys.path[:0] = [{repo!r}, {dags!r}]
    from _flagops_dag import retrain_dag
    from flagops import catalog
    from flagops.config import load_config

    for profile in {profiles!r}:
        retrain_dag(f"retrain_{{profile}}", f"The {{profile}} profile's DAG.", catalog.pipeline(load_config(profile)))
    """
)


def _dvc_faces(root: Path, profiles: list[str]) -> dict[str, tuple[set, set]]:
    """(stages, edges) per profile as `dvc dag` reads them: one repo with each profile's rendered
    dvc.yaml in its own folder, so one dvc process reads them all (stages are `<profile>/dvc.yaml:<stage>`)."""
    for p in profiles:
        (root / p).mkdir()
        (root / p / "dvc.yaml").write_text(dvc.render_text(load_config(p)))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    dot = subprocess.run([sys.executable, "-m", "dvc", "dag", "--dot"], cwd=root, check=True, capture_output=True, text=True)
    faces = {p: (set(), set()) for p in profiles}
    for line in dot.stdout.splitlines():
        names = [part.strip().strip('";') for part in line.split("->")]
        if not all("/dvc.yaml:" in n for n in names):
            continue  # the digraph's braces
        profile = names[0].split("/dvc.yaml:")[0]
        stages = [n.split("/dvc.yaml:")[1] for n in names]
        if len(stages) == 1:
            faces[profile][0].add(stages[0])
        else:
            faces[profile][1].add(tuple(stages))
    return faces


def _kfp_face(profile: str) -> tuple[set, set]:
    """(tasks, edges) of the profile's committed IR (test_kfp checks it is fresh), in step names."""
    from pipelines import retrain

    tasks = yaml.safe_load(retrain.package(profile).read_text())["root"]["dag"]["tasks"]
    step = {t: t.replace("-", "_") for t in tasks}
    return set(step.values()), {(step[up], step[t]) for t, spec in tasks.items() for up in spec.get("dependentTasks", [])}


def test_every_shipped_profile_has_the_same_steps_and_edges_in_dvc_kfp_and_airflow(tmp_path):
    _require_airflow_venv()
    profiles = shipped_profiles()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "profiles.py").write_text(PROFILE_DAGS.format(repo=str(REPO), dags=str(REPO / "dags"), profiles=profiles))
    env = _env(tmp_path / "home", FLAGOPS_AIRFLOW_MODE="local", FLAGOPS_WORKDIR=str(tmp_path / "ws"))
    stdout = _run([AIRFLOW_BIN / "python", "-c", PROBE, dags], env)
    bag = json.loads(next(line for line in stdout.splitlines() if line.startswith("PROBE-JSON ")).removeprefix("PROBE-JSON "))
    assert bag["import_errors"] == {}
    (tmp_path / "dvc").mkdir()
    dvc_faces = _dvc_faces(tmp_path / "dvc", profiles)
    longctx = []
    for profile in profiles:
        pipe = catalog.pipeline(load_config(profile))
        want = (set(pipe.names), pipe.edges())
        tasks = bag["dags"][f"retrain_{profile}"]["tasks"]
        airflow = (set(tasks), {(up, name) for name, t in tasks.items() for up in t["upstream"]})
        assert airflow == want, f"{profile}: Airflow"
        assert _kfp_face(profile) == want, f"{profile}: KFP"
        assert dvc_faces[profile] == want, f"{profile}: DVC"
        if "deploy_long_context" in pipe.names:
            longctx.append(profile)
    assert {"tiny_longctx", "demo_longctx", "tiny_all"} <= set(longctx)  # the long-context branch is compared too
