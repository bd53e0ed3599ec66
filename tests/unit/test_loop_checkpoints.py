"""Checkpoints of the hand-written training loops: saved every N steps beside the output, the
newest resumed to the same weights and losses as an uninterrupted run, another config's wiped,
all removed once the model is saved. The research loops' own resume tests sit with their tests."""

from __future__ import annotations

import random

import pytest
import torch
from pydantic import BaseModel

from flagops.training import common
from flagops.training.common import stamp
from flagops.training.loop_checkpoints import LoopCheckpoints, files_digest
from tests.loop_kill import killed_after


class Section(BaseModel):
    steps: int = 6
    save_steps: int = 2


def loop(output, cfg: Section) -> tuple[dict, list]:
    """A tiny loop with a frozen layer, dropout and a seeded batch draw, as the research loops have."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3), torch.nn.Linear(4, 1))
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    rng = random.Random(0)
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    checkpoints = LoopCheckpoints("loop", output, stamp(cfg, data=["x"]), cfg.save_steps)
    done, log, extra = checkpoints.restore(model, optimizer)
    if extra is not None:
        rng.setstate(extra["rng"])
    for step in range(done + 1, cfg.steps + 1):
        batch = data[rng.sample(range(32), 8)]
        loss = model(batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        log.append(loss.item())
        checkpoints.save(step, model, optimizer, log=log, extra={"rng": rng.getstate()})
    output.mkdir()
    checkpoints.finish()
    return {k: v.clone() for k, v in model.state_dict().items()}, log


def test_a_loop_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights_and_losses(tmp_path, capsys):
    weights, losses = loop(tmp_path / "a" / "out", Section())
    with killed_after(4):
        loop(tmp_path / "b" / "out", Section())
    ckpt = common.checkpoint_dir(tmp_path / "b" / "out")
    assert sorted(p.name for p in ckpt.glob("checkpoint-*")) == ["checkpoint-4"]  # checkpoint-2 went when 4 landed
    assert common.checkpoint_complete(ckpt / "checkpoint-4")
    resumed_weights, resumed_losses = loop(tmp_path / "b" / "out", Section())
    assert "loop: resuming from checkpoint-4 (its steps 1-4 are not run again)" in capsys.readouterr().out  # the kill harness reads it
    assert resumed_losses == losses  # steps 1-4 from the checkpoint's log, 5-6 drawn and computed as before
    assert all(torch.equal(resumed_weights[k], weights[k]) for k in weights)
    assert not ckpt.exists()  # removed once the model is saved


def test_a_checkpoint_of_another_config_is_wiped_not_resumed(tmp_path, capsys):
    with killed_after(2):
        loop(tmp_path / "out", Section())
    fresh_weights, fresh_losses = loop(tmp_path / "fresh" / "out", Section(save_steps=3))
    weights, losses = loop(tmp_path / "out", Section(save_steps=3))  # another stamp: starts over
    assert "resuming from" not in capsys.readouterr().out
    assert losses == fresh_losses and all(torch.equal(weights[k], fresh_weights[k]) for k in weights)


def test_resume_off_starts_over_and_a_model_whose_parameters_differ_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    checkpoints = LoopCheckpoints("loop", tmp_path / "out", "s", every=1)
    checkpoints.save(1, model, optimizer)
    assert LoopCheckpoints("loop", tmp_path / "out", "s", every=1, resume=False).restore(model, optimizer) == (0, [], None)
    other = torch.nn.Linear(2, 2, bias=False)
    with pytest.raises(RuntimeError, match=r"not this model's trainable ones; delete .*\.out\.checkpoints"):
        LoopCheckpoints("loop", tmp_path / "out", "s", every=1).restore(other, torch.optim.AdamW(other.parameters()))


def test_files_digest_follows_names_and_sizes(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12")
    first = files_digest(tmp_path)
    assert files_digest(tmp_path) == first
    (tmp_path / "a.bin").write_bytes(b"123")
    assert files_digest(tmp_path) != first


def test_the_cuda_rng_state_travels_with_a_checkpoint_where_cuda_is_present(tmp_path, monkeypatch):
    """No GPU here: torch.cuda's availability and RNG calls are stand-ins, recording what a resume sets."""
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    LoopCheckpoints("loop", tmp_path / "out", "s", every=1).save(1, model, optimizer)
    assert LoopCheckpoints("loop", tmp_path / "out", "s", every=1).restore(model, optimizer)[0] == 1
    assert len(restored) == 1 and torch.equal(restored[0][0], states[0])
