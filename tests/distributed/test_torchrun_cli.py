"""`torchrun -m flagops.cli step train_m3 / train_embedder`: the recipes launched as users launch
them, so the process group is joined by the recipe itself (the Trainer's arguments), never by
the test. 2 processes, gloo on CPU, the tiny_m3 profile, 2 steps. (train_embedder shares the
recipe's set-up, ``flagops.training.common``; test_ddp_equivalence runs it under torchrun.)

The recipe reads the world size for its batch-size guard, its printed plan and its
throughput metric; read before the group exists it would be 1 on every rank.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_ddp_equivalence import torchrun  # tests/distributed is on sys.path (pytest's prepend import mode)
from train_worker import examples

from flagops.data.formats import write_train_jsonl
from flagops.models.embedder import Embedder

STEP_ARGS = ["train.max_steps=2", "train.save_steps=1", "train.logging_steps=1"]


def _step(tmp_path: Path, step: str, profile: str, n_queries: int, *overrides: str, check: bool = True):
    data, out = tmp_path / "train.jsonl", tmp_path / "model"
    write_train_jsonl(data, examples(n_queries))
    argv = ["-m", "flagops.cli", "step", step, "--profile", profile, "--no-track", "--in", f"train_data={data}", "--out", f"model={out}"]
    start = time.perf_counter()
    proc = torchrun(*argv, *STEP_ARGS, *overrides, check=check)
    print(f"\ntorchrun -m flagops.cli step {step} ({n_queries} queries): rc {proc.returncode}, wall {time.perf_counter() - start:.1f} s")
    return proc, out


@pytest.fixture(scope="module", autouse=True)
def _tiny_bert():
    Embedder.load("tiny-bert")  # build the cached tiny BERT here, so the two ranks don't race to


def test_train_m3_under_torchrun_sees_two_devices(tmp_path):
    proc, out = _step(tmp_path, "train_m3", "tiny_m3", 24)
    # Each rank prints its plan once (the two ranks' lines may interleave in the captured stdout).
    assert proc.stdout.count("train_m3: 24 queries") == proc.stdout.count("4 queries x 2 device(s)/step") == 2, proc.stdout
    assert (out / "colbert_linear.pt").is_file() and not (out.parent / ".model.checkpoints").exists()


def test_train_m3_under_torchrun_refuses_data_for_one_device_only(tmp_path):
    """4 queries at batch 4 (no length buckets) make one batch: a step for 1 device, not for 2."""
    proc, out = _step(tmp_path, "train_m3", "tiny_m3", 4, "m3.length_buckets=[]", check=False)
    assert proc.returncode != 0, proc.stdout
    assert "make no full step of" in proc.stderr and "x 2 device(s)" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()
