import pytest
from pydantic import ValidationError

from flagops.config import ConfigError, load_config, to_yaml, validate


def test_profiles_load_and_differ():
    tiny, demo = load_config("tiny"), load_config("demo")
    assert tiny.model.base == "tiny-bert"
    assert demo.model.pooling == "mean"  # MiniLM's pooling
    assert tiny.train.temperature == demo.train.temperature == 0.02


def test_dotted_override_parses_yaml_values():
    cfg = load_config("tiny", ["train.temperature=0.05", "train.in_batch_negatives=false", "registry.guard_metrics=[map]"])
    assert cfg.train.temperature == 0.05
    assert cfg.train.in_batch_negatives is False
    assert cfg.registry.guard_metrics == ("map",)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.learning_rte=1e-5", "unknown key 'train.learning_rte'"),
        ("bogus.key=1", "unknown key 'bogus'"),
        ("train.batch_size=many", "train.batch_size"),
        ("train.temperature=-1", "train.temperature"),
        ("model.pooling=max", "model.pooling"),
        ("train.temperature", "expected section.key=value"),
    ],
)
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys here: .*learning_rate"):
        validate({"train": {"lr": 1}}, "params.yaml")


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("train:\n  batch_size: [1\n")
    with pytest.raises(ConfigError, match=r"p.yaml:\d+: invalid YAML"):
        load_config(bad)


def test_missing_file_and_profile(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_config("nope")


def test_config_is_frozen_and_roundtrips(tmp_path):
    cfg = load_config("demo")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.temperature = 1.0  # type: ignore[misc]
    path = tmp_path / "params.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_committed_params_yaml_is_the_demo_profile(repo_root):
    assert load_config(repo_root / "params.yaml") == load_config("demo")


def test_serve_overrides_round_trip_through_load_config():
    from flagops.config import ServeConfig

    odd = ServeConfig(kind="m3", max_tokens=7, truncation="reject", strict=False, max_wait_ms=2.5, pad_to_multiple_of=None)
    for serve in (ServeConfig(), odd):
        assert load_config("demo", serve.overrides()).serve == serve
        assert not any(o.startswith(("serve.host=", "serve.port=", "serve.model_name=")) for o in serve.overrides())
