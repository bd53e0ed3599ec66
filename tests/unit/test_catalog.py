"""The catalog is the single source: dvc.yaml and the CLI must agree with it."""

import yaml

from flagops import catalog
from flagops.config import FlagopsConfig
from flagops.dvc import render_text


def test_committed_dvc_yaml_matches_catalog(repo_root):
    committed = (repo_root / "dvc.yaml").read_text()
    assert committed == render_text(), "dvc.yaml is stale: run `flagops dvc-yaml > dvc.yaml`"


def test_dvc_stages_have_catalog_deps_and_outs(repo_root):
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [s.name for s in catalog.STEPS]
    for step in catalog.STEPS:
        st = stages[step.name]
        assert st.get("deps", []) == [catalog.ARTIFACTS[i].path for i in step.inputs]
        outs = [next(iter(o)) if isinstance(o, dict) else o for key in ("outs", "metrics", "plots") for o in st.get(key, [])]
        assert sorted(outs) == sorted(a.path for a in step.outputs)
        assert st["params"] == list(step.sections)
        for a in step.outputs:
            assert f"--out {a.name}={a.path}" in st["cmd"]


def test_every_step_is_importable_with_known_sections():
    for step in catalog.STEPS:
        assert callable(step.run), step.name
        assert set(step.sections) <= set(FlagopsConfig.model_fields), step.name


def test_edges_follow_artifacts():
    assert ("train_embedder", "evaluate") in catalog.edges()
    assert ("synthesize_queries", "evaluate") in catalog.edges()
    assert all(a != b for a, b in catalog.edges())


def test_catalog_check_rejects_a_dangling_input(monkeypatch):
    import pytest

    bad = catalog.Step("orphan", "flagops.steps.evaluate", ("model",), ("nonexistent",), ())
    monkeypatch.setattr(catalog, "STEPS", (*catalog.STEPS, bad))
    with pytest.raises(ValueError, match="not produced by an earlier step"):
        catalog.check()
