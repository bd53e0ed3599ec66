"""The catalog is the single source: each config resolves to a DAG, and bad shapes stop with one line."""

from dataclasses import replace

import pytest

from flagops import catalog
from flagops.config import FlagopsConfig, load_config, shipped_profiles
from flagops.dvc import code_deps, render, render_text
from tests.dag_fixtures import DIAMOND, EDGES, PRETRAIN_EDGES, config


def test_committed_dvc_yaml_matches_the_demo_profile(repo_root):
    committed = (repo_root / "dvc.yaml").read_text()
    assert committed == render_text(load_config("demo")), "dvc.yaml is stale: run `make dvc-yaml`"


@pytest.mark.parametrize("profile", shipped_profiles())
def test_dvc_stages_are_the_profiles_pipeline(profile):
    cfg = load_config(profile)
    pipe = catalog.pipeline(cfg)
    stages = render(cfg)["stages"]
    assert list(stages) == list(pipe.names)
    for t in pipe.tasks:
        st = stages[t.name]
        data_deps = [catalog.ARTIFACTS[a].path for a in t.inputs.values()]
        assert st["deps"] == data_deps + list(code_deps(t.step.module))
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots") for o in st.get(key, [])]
        assert sorted(outs) == sorted(a.path for a in t.step.outputs)
        assert st["params"] == list(t.step.sections)
        for a in t.step.outputs:
            assert f"--out {a.name}={a.path}" in st["cmd"]


def test_a_stage_depends_on_the_code_it_runs_and_not_on_the_rest():
    train = code_deps("flagops.steps.train_embedder")
    assert "flagops/losses/infonce.py" in train and "flagops/training/embedder.py" in train
    for step in ("build_corpus", "synthesize_queries", "mine_hard_negatives", "evaluate"):
        assert "flagops/losses/infonce.py" not in code_deps(f"flagops.steps.{step}"), step
    assert "flagops/serving/app.py" not in train  # training does not run the server


def test_no_code_dependency_is_an_empty_file():
    """DVC warns about every empty dependency on each run: give such a module a docstring."""
    from flagops.dvc import PACKAGE

    for step in catalog.STEPS:
        empty = [f for f in code_deps(step.module) if (PACKAGE.parent / f).stat().st_size == 0]
        assert not empty, (step.name, empty)


def test_every_step_is_importable_with_known_sections():
    for step in catalog.STEPS:
        assert callable(step.run), step.name
        assert set(step.sections) <= set(FlagopsConfig.model_fields), step.name


@pytest.mark.parametrize("profile", shipped_profiles())
def test_every_shipped_profile_resolves_to_a_dag(profile):
    pipe = catalog.pipeline(load_config(profile))
    names = list(pipe.names)
    for up, down in pipe.edges():
        assert names.index(up) < names.index(down)  # run order is a topological order


def test_each_kind_trains_with_its_own_step():
    bge, m3 = (set(catalog.pipeline(load_config(p)).names) for p in ("demo", "demo_m3"))
    assert bge ^ m3 == {"train_embedder", "train_m3"}
    edges = catalog.pipeline(load_config("demo_m3")).edges()
    assert ("train_m3", "evaluate") in edges and ("train_embedder", "evaluate") not in edges
    assert ("synthesize_queries", "evaluate") in edges


def test_the_diamond_resolves_with_and_without_its_optional_branch():
    plain, full = catalog.resolve(DIAMOND, config(False)), catalog.resolve(DIAMOND, config(True))
    assert "pretrain_base" not in plain.names and plain.edges() == EDGES
    assert plain.task("split_right").inputs == {"source": "source"}  # the optional input is left out
    assert full.edges() == PRETRAIN_EDGES
    assert full.task("split_right").inputs == {"source": "source", "base": "base"}
    # one module, two steps: each gets its own wiring and parameters
    assert full.task("register_left").inputs["model"] == "left" and full.task("register_right").inputs["model"] == "right"
    assert dict(full.task("register_right").step.params) == {"family": "right"}


def test_an_input_takes_the_first_artifact_the_pipeline_produces():
    merge = catalog.Step("merge", "m", (), ("left",), (catalog.Artifact("merged", "m"),), when=(("pipeline.pretrain", (True,)),))
    reader = catalog.Step("read", "m", (), ("model",), (), sources=(("model", ("merged", "left")),))
    steps = (*DIAMOND[:3], merge, reader)
    assert catalog.resolve(steps, config(True)).task("read").inputs == {"model": "merged"}
    assert catalog.resolve(steps, config(False)).task("read").inputs == {"model": "left"}


def test_a_dangling_input_stops_with_one_line():
    orphan = catalog.Step("orphan", "m", (), ("nonexistent",), ())
    with pytest.raises(catalog.CatalogError, match=r"^step orphan: input 'nonexistent' needs 'nonexistent', which no step"):
        catalog.resolve((*DIAMOND, orphan), config(False))


def test_two_producers_of_one_artifact_stop_with_one_line():
    twin = replace(DIAMOND[2], name="split_again")
    with pytest.raises(catalog.CatalogError, match=r"^artifact 'left' is produced by both split_left and split_again"):
        catalog.resolve((*DIAMOND, twin), config(False))


def test_a_cycle_stops_with_one_line():
    a = catalog.Step("a", "m", (), ("y",), (catalog.Artifact("x", "x"),))
    b = catalog.Step("b", "m", (), ("x",), (catalog.Artifact("y", "y"),))
    with pytest.raises(catalog.CatalogError) as err:
        catalog.resolve((a, b), config(False))
    assert str(err.value) in ("the steps form a cycle: a -> b -> a", "the steps form a cycle: b -> a -> b")
    assert "\n" not in str(err.value)


def test_check_rejects_a_step_listed_twice_and_unknown_optional_inputs():
    with pytest.raises(catalog.CatalogError, match="listed twice"):
        catalog.check((*DIAMOND, DIAMOND[0]))
    with pytest.raises(catalog.CatalogError, match="named as optional or sourced but not among its inputs"):
        catalog.check((catalog.Step("s", "m", (), ("a",), (), optional=("b",)),))


def test_a_step_outside_the_configs_pipeline_is_refused(tmp_path):
    from flagops.config import ConfigError
    from flagops.steps import execute

    with pytest.raises(ConfigError, match="step train_embedder runs when model.kind=bge, but the config has model.kind='m3'"):
        execute("train_embedder", load_config("tiny_m3"), {"train_data": tmp_path}, {"model": tmp_path / "m"}, track=False)


def test_execute_accepts_optional_inputs_and_passes_step_params(monkeypatch, tmp_path):
    import flagops.steps

    seen = {}
    step = catalog.Step("probe", "m", (), ("a", "b"), (catalog.Artifact("o", "o"),), optional=("b",), params=(("family", "x"),))
    monkeypatch.setattr(catalog, "BY_NAME", {**catalog.BY_NAME, "probe": step})
    monkeypatch.setattr(catalog.Step, "run", property(lambda s: lambda cfg, ins, outs, **kw: seen.update(ins=ins, kw=kw)))
    (tmp_path / "a").touch()
    flagops.steps.execute("probe", load_config("tiny"), {"a": tmp_path / "a"}, {"o": tmp_path / "o"}, track=False)
    assert set(seen["ins"]) == {"a"} and seen["kw"] == {"family": "x"}
    with pytest.raises(flagops.steps.DataError, match=r"inputs must be \['a'\] \(optional: \['b'\]\) \(missing: none; unknown: c\)"):
        flagops.steps.execute("probe", load_config("tiny"), {"a": tmp_path / "a", "c": tmp_path / "a"}, {"o": tmp_path}, track=False)
