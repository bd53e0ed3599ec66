"""Kill -9 and resume (issue 15, item 2): SIGKILL a real ``flagops pipeline`` run (its whole
process group: the pipeline, ``dvc repro`` and the step) at a seeded point inside a step, run
it again, and check the outputs against an uninterrupted run. See kill_resume.py for what each
outcome means; ``python -m tests.reliability.kill_resume --profile tiny`` prints the table.

`make test` runs the bge DAG (profile tiny) up to train_embedder, killing synthesize_queries
mid-step and train_embedder after its first checkpoint: one reference run and one chain of
the whole DAG would not fit its budget. Every step of every tiny profile is behind ``-m long``.
"""

from __future__ import annotations

import json

import pytest

from tests.reliability import kill_resume


def _check(outcomes, summary, tmp_path):
    (tmp_path / "kill_resume.json").write_text(json.dumps(summary | {"outcomes": [o.__dict__ for o in outcomes]}, indent=2))
    print("\n" + kill_resume.table(outcomes))
    assert all(o.killed for o in outcomes), "a step ended before its kill: the kill point is not inside the step"
    for o in outcomes:
        assert o.lock_clean, f"{o.step}: dvc.lock records a stage that was killed"
        assert not o.partial, f"{o.step}: a partial output sits at the output's path: {o.partial}"
        assert o.ok, f"{o.step}: {o.result}"


@pytest.mark.slow
def test_tiny_dag_resumes_after_kills_in_synthesis_and_training(tmp_path_factory, tmp_path):
    """Training is killed after its first checkpoint and must resume from a checkpoint to the
    same weights; synthesis is killed mid-step and must leave nothing at its outputs' paths."""
    root = tmp_path_factory.mktemp("kill_resume")
    steps = ["synthesize_queries", "train_embedder"]
    outcomes, summary = kill_resume.kill_chain("tiny", root, seed=0, steps=steps, target="train_embedder")
    _check(outcomes, summary, tmp_path)
    train = next(o for o in outcomes if o.step == "train_embedder")
    if kill_resume.resumable_at_kill(train.kill):  # else the kill landed after the model was saved
        assert train.resumed_from.startswith("checkpoint-"), "the re-run of train_embedder started over instead of resuming"


# Between them these profiles hold every catalog step (tiny_merge, tiny_pretrain and tiny_reranker are parts of tiny_all).
EVERY_STEP = [
    "tiny",
    "tiny_m3",
    "tiny_all",
    "tiny_longctx",
    "tiny_layerwise",
    "tiny_llm_embedder",
    "tiny_beacon",
    "tiny_llara",
    "tiny_visual_bge",
]


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("profile", EVERY_STEP)
def test_every_step_resumes_after_a_kill(profile, tmp_path_factory, tmp_path):
    outcomes, summary = kill_resume.kill_chain(profile, tmp_path_factory.mktemp(f"kill_resume_{profile}"), seed=0)
    _check(outcomes, summary, tmp_path)


def test_a_checkpoint_cut_short_by_a_kill_is_never_resumed(tmp_path):
    """The Trainer writes checkpoint-N in place, trainer_state.json last: a kill while saving
    leaves checkpoint-N without it. get_last_checkpoint would pick it and the Trainer's resume
    then fails on the missing state, on every re-run (found by the kill chain; fixed in
    prepare_checkpoints). The newest complete checkpoint is resumed and the cut one removed."""
    from flagops.training import common

    output = tmp_path / "models" / "candidate"
    ckpt = common.checkpoint_dir(output)
    complete = ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    for step, files in {3: complete, 6: ["model.safetensors"], 9: ["trainer_state.json"]}.items():
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
        for name in files:  # checkpoint-9's state is cut short mid-write
            text = f'{{"global_step": {step}}}' if name == "trainer_state.json" and step == 3 else '{"global_st'
            (ckpt / f"checkpoint-{step}" / name).write_text(text)
    (ckpt / common.FINGERPRINT).write_text("stamp")

    found, resume = common.prepare_checkpoints(output, "stamp", resume=True)
    assert found == ckpt and resume == str(ckpt / "checkpoint-3")
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-3"]


def test_the_long_kill_chain_profiles_hold_every_catalog_step():
    from flagops import catalog
    from flagops.config import load_config

    covered = set().union(*(catalog.pipeline(load_config(profile)).names for profile in EVERY_STEP))
    # score_with_teacher runs only with teacher.mode: external (a user's teacher model), in no shipped profile
    assert covered == {step.name for step in catalog.STEPS} - {"score_with_teacher"}


@pytest.mark.parametrize(
    "kill, resumable",
    [
        ("checkpoint-3 +0.0s (on disk: checkpoint-3 (cut short))", False),  # session 8's CI: nothing whole to resume
        ("checkpoint-3 +0.0s (on disk: checkpoint-3)", True),
        ("checkpoint-3 +1.2s (on disk: checkpoint-3,checkpoint-6 (cut short))", True),
        ("checkpoint-3 +4.0s (on disk: none, model saved)", False),
        ("t+1.0s", False),
    ],
)
def test_a_resume_is_demanded_only_where_a_complete_checkpoint_was_left(kill, resumable):
    assert kill_resume.resumable_at_kill(kill) is resumable
