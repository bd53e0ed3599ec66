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
    assert list(stages) == [s.name for s in catalog.pipeline("bge")]  # the root pipeline is the demo's kind
    for step in catalog.pipeline("bge"):
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


def test_each_kind_trains_with_its_own_step():
    bge, m3 = (set(s.name for s in catalog.pipeline(k)) for k in ("bge", "m3"))
    assert bge ^ m3 == {"train_embedder", "train_m3"}
    assert ("train_m3", "evaluate") in catalog.edges("m3") and ("train_embedder", "evaluate") not in catalog.edges("m3")
    from flagops.dvc import render

    assert "train_m3" in render("m3")["stages"] and "train_embedder" not in render("m3")["stages"]


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


def test_a_step_of_another_kind_is_refused(tmp_path):
    import pytest

    from flagops.config import ConfigError, load_config
    from flagops.steps import execute

    with pytest.raises(ConfigError, match="train_embedder is in the pipeline of model.kind bge"):
        execute("train_embedder", load_config("tiny_m3"), {"train_data": tmp_path}, {"model": tmp_path / "m"}, track=False)
