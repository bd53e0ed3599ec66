"""The pretraining and merging branches of the DAG: how a config wires them, which model
evaluate puts up for release, which directory register_model then logs, and the merge lineage."""

from __future__ import annotations

import json

import pytest

from flagops import catalog
from flagops.config import ConfigError, load_config
from flagops.data.formats import DataError
from flagops.registry.lineage import merge_tags
from flagops.steps.evaluate import select_release
from flagops.steps.register_model import release_dir
from flagops.training.common import with_base_model

# --------------------------------------------------------------------------- wiring


def test_pretraining_feeds_the_trainer_and_evaluate():
    pipe = catalog.pipeline(load_config("tiny_pretrain"))
    assert ("build_corpus", "pretrain_retromae") in pipe.edges()
    assert pipe.task("train_embedder").inputs == {"train_data": "train_data", "base_model": "pretrained_model"}
    assert pipe.task("evaluate").inputs["pretrained_model"] == "pretrained_model"
    m3 = catalog.pipeline(load_config("tiny_m3", ["pretrain.enabled=true"]))
    assert m3.task("train_m3").inputs["base_model"] == "pretrained_model"


def test_without_the_branches_nothing_changes():
    pipe = catalog.pipeline(load_config("tiny"))
    assert "pretrain_retromae" not in pipe.names and "merge_models" not in pipe.names
    assert pipe.task("train_embedder").inputs == {"train_data": "train_data"}
    assert set(pipe.task("evaluate").inputs) == {"model", "eval_set"}


def test_merging_sits_between_training_and_evaluate_and_feeds_registration():
    pipe = catalog.pipeline(load_config("tiny", ["merge.enabled=true"]))
    assert {("train_embedder", "merge_models"), ("merge_models", "evaluate"), ("merge_models", "register_model")} <= pipe.edges()
    assert pipe.task("merge_models").inputs == {"model": "model", "train_data": "train_data"}


def test_trainer_starts_from_the_pretrained_base_only_when_handed_one(tmp_path):
    cfg = load_config("tiny")
    assert with_base_model(cfg, {"train_data": tmp_path}) is cfg
    moved = with_base_model(cfg, {"train_data": tmp_path, "base_model": tmp_path / "pretrained"})
    assert moved.model.base == str(tmp_path / "pretrained") and cfg.model.base == "tiny-bert"
    assert moved.train == cfg.train


# --------------------------------------------------------------------------- the release candidate


def _metrics(fine: tuple[float, float], merged: tuple[float, float]) -> dict[str, float]:
    return {
        "fine_tuned/ndcg@10": fine[0],
        "fine_tuned/ood/ndcg@10": fine[1],
        "fine_tuned/mrr@10": 0.5,
        "merged/ndcg@10": merged[0],
        "merged/ood/ndcg@10": merged[1],
        "merged/mrr@10": 0.4,
        "base/ndcg@10": 0.1,
    }


BOTH = ("ndcg@10", "ood/ndcg@10")


def test_best_picks_the_higher_mean_over_both_domains():
    # merged loses 0.02 on the target and gains 0.10 on the second domain: mean 0.54 vs 0.50
    picked = select_release("best", BOTH, _metrics(fine=(0.60, 0.40), merged=(0.58, 0.50)))
    assert picked == {"candidate/ndcg@10": 0.58, "candidate/ood/ndcg@10": 0.50, "candidate/mrr@10": 0.4, "candidate/merged": 1.0}
    # merged loses 0.10 on the target for 0.02 elsewhere: mean 0.46 vs 0.50, the fine-tuned one stays
    picked = select_release("best", BOTH, _metrics(fine=(0.60, 0.40), merged=(0.50, 0.42)))
    assert picked["candidate/ndcg@10"] == 0.60 and picked["candidate/merged"] == 0.0 and "candidate/base" not in str(picked)


def test_select_merged_always_takes_it_and_select_on_one_domain_ignores_the_other():
    assert select_release("merged", BOTH, _metrics(fine=(0.9, 0.9), merged=(0.1, 0.1)))["candidate/merged"] == 1.0
    assert select_release("best", ("ndcg@10",), _metrics(fine=(0.60, 0.10), merged=(0.59, 0.90)))["candidate/merged"] == 0.0


def test_select_on_a_metric_evaluate_did_not_write_names_it():
    metrics = {k: v for k, v in _metrics((0.6, 0.4), (0.5, 0.5)).items() if "/ood/" not in k}
    with pytest.raises(ConfigError, match=r"merge.select_on: no 'ood/ndcg@10' in evaluate's metrics \(ood/\.\.\. needs ood_eval"):
        select_release("best", BOTH, metrics)
    with pytest.raises(ConfigError, match=r"merge.select_on names ood/ndcg@10, .* set ood_eval.enabled=true or drop it"):
        load_config("tiny", ["merge.enabled=true", "merge.select_on=[ndcg@10, ood/ndcg@10]"])


def test_register_logs_the_directory_the_candidate_keys_describe(tmp_path):
    inputs = {"model": tmp_path / "candidate", "merged_model": tmp_path / "merged", "metrics": tmp_path / "eval.json"}
    assert release_dir(inputs, {"candidate/merged": 1.0}) == tmp_path / "merged"
    assert release_dir(inputs, {"candidate/merged": 0.0}) == tmp_path / "candidate"
    assert release_dir({"model": tmp_path / "candidate"}, {"candidate/ndcg@10": 0.5}) == tmp_path / "candidate"
    with pytest.raises(DataError, match="evaluate chose the merged model; pass merge_models' output as merged_model"):
        release_dir({"model": tmp_path / "c", "metrics": tmp_path / "eval.json"}, {"candidate/merged": 1.0})


def test_merge_lineage_tags_name_each_ingredient_and_weight(tmp_path):
    assert merge_tags(tmp_path) == {}
    record = {
        "method": "data",
        "ingredients": [{"source": "models/candidate", "weight": 0.5213}, {"source": "tiny-bert", "weight": 0.4787}],
    }
    (tmp_path / "merge.json").write_text(json.dumps(record))
    tags = merge_tags(tmp_path)
    assert tags["flagops.merge.method"] == "data"
    assert json.loads(tags["flagops.merge.ingredients"]) == record["ingredients"]


def test_the_second_domain_feeds_evaluate_only():
    pipe = catalog.pipeline(load_config("tiny_merge"))
    assert {(a, b) for a, b in pipe.edges() if a == "build_ood_eval"} == {("build_ood_eval", "evaluate")}
    assert pipe.task("evaluate").inputs["ood_eval_set"] == "ood_eval_set"
