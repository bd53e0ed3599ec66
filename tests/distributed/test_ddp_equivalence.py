"""Cross-device negatives: 2-process gloo DDP on CPU equals one process on the whole batch.

The gather is also checked by hand: world size 1 is the identity, and with 2 ranks each
rank receives every rank's rows but gradient only for its own.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flagops.losses import distributed
from flagops.losses.infonce import InBatchContrastiveLoss, compute_loss_from_embeddings
from flagops.models.embedder import Embedder

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOL = 1e-5  # float32: the loss differs by ~1e-7, gradients by ~2e-6 where the largest is ~1.5


def _worker_module():
    spec = importlib.util.spec_from_file_location("ddp_worker", HERE / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(*argv: str | Path, nproc: int = 2, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --standalone ARGV` on this venv's Python, 1 thread per rank; fails the test on error unless not ``check``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


# --------------------------------------------------------------------------- by hand, one process


def test_world_size_one_is_identity():
    assert distributed.world_size() == 1
    t = torch.randn(3, 4, requires_grad=True)
    assert distributed.gather_with_grad(t) is t
    assert distributed.scale_grad(t, 1) is t
    q, p = torch.randn(2, 4), torch.randn(6, 4)
    expected = compute_loss_from_embeddings(q, p, 0.05, True)
    assert torch.equal(InBatchContrastiveLoss(0.05, True, cross_device=True)(q, p), expected)


def test_scale_grad_keeps_value_and_scales_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = distributed.scale_grad(x, 3.0)
    assert torch.equal(y, x)
    (y * torch.tensor([5.0, 7.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([15.0, 21.0]))  # d/dx = 3 * [5, 7]


def test_gather_as_rank_1_of_2_by_hand(monkeypatch):
    """Fake a 2-rank group: rank 0's rows arrive as copies; only our rows carry gradient."""
    remote = torch.tensor([[10.0, 20.0]])

    def all_gather(slots, t):
        slots[0].copy_(remote)
        slots[1].copy_(t)

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    local = torch.tensor([[1.0, 2.0]], requires_grad=True)
    g = distributed.gather_with_grad(local)  # (2, 2): [rank 0's row, our row]
    assert torch.equal(g, torch.tensor([[10.0, 20.0], [1.0, 2.0]]))
    (g * torch.tensor([[3.0, 4.0], [5.0, 6.0]])).sum().backward()
    assert torch.equal(local.grad, torch.tensor([[5.0, 6.0]]))  # our slot's weights, nothing from rank 0's


def test_cross_device_needs_in_batch_negatives():
    with pytest.raises(ValueError, match="need in-batch negatives"):
        InBatchContrastiveLoss(0.05, in_batch=False, cross_device=True)


# --------------------------------------------------------------------------- torchrun, 2 processes


def _single_process_reference(worker, distill: bool):
    module = worker.model(cross_device=False)  # no process group here: plain in-batch loss
    return worker.loss_and_grads(module, module, worker.BATCH, distill)


def _max_grad_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_ddp_with_cross_device_negatives_matches_one_process(tmp_path):
    worker = _worker_module()
    Embedder.load("tiny-bert")  # build the cached tiny BERT here, so the two ranks don't race to
    start = time.perf_counter()
    torchrun(HERE / "ddp_worker.py", str(tmp_path))
    wall = time.perf_counter() - start
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    # The real gather on tiny tensors: both ranks' rows in rank order; gradient = own slot's weights.
    for r, res in enumerate(ranks):
        g = res["gather"]
        assert torch.equal(g["gathered"], torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
        assert torch.equal(g["grad"], g["weights"][2 * r : 2 * r + 2])

    report = []
    for case, distill in (("cross", False), ("cross_distill", True)):
        ref_loss, ref_grads = _single_process_reference(worker, distill)
        # The contrastive term is the same full loss on every rank; the KL term is each rank's
        # own queries, so the mean over ranks is what one process reports (as the Trainer logs).
        loss = sum(res[case][0] for res in ranks) / len(ranks)
        loss_diff = abs(loss - ref_loss)
        grad_diff = max(_max_grad_diff(res[case][1], ref_grads) for res in ranks)
        scale = max(g.abs().max().item() for g in ref_grads.values())
        report.append(
            f"{case}: loss {ref_loss:.6f} |d loss| {loss_diff:.1e}, "
            f"max |d grad| {grad_diff:.1e} (max |grad| {scale:.2f}, {len(ref_grads)} tensors)"
        )
        assert loss_diff < TOL and grad_diff < TOL * max(1.0, scale), report[-1]
    assert abs(ranks[0]["cross"][0] - ranks[1]["cross"][0]) < TOL  # same full loss on each rank

    # Control: without the gather each rank sees only its own passages, a different (easier) loss.
    local_loss = sum(res["local"][0] for res in ranks) / 2
    assert local_loss < _single_process_reference(worker, False)[0] - 0.01
    print(f"\nDDP equivalence (2 x gloo, tiny BERT): {'; '.join(report)}; torchrun wall {wall:.1f} s")


def test_train_recipe_under_torchrun_with_cross_device_negatives(tmp_path):
    """The full HF Trainer recipe, 2 processes, 2 steps: it joins the group, rank 0 saves."""
    Embedder.load("tiny-bert")
    out = tmp_path / "model"
    start = time.perf_counter()
    proc = torchrun(HERE / "train_worker.py", str(out))
    wall = time.perf_counter() - start
    assert proc.stdout.count("x 2 device(s) = 8 queries/step") == 2, proc.stdout
    assert "in-batch negatives from all devices" in proc.stdout
    assert (out / "model.safetensors").is_file()
    assert not (tmp_path / ".model.checkpoints").exists()
    Embedder.load(out)
    print(f"\ntrain() under torchrun (2 x gloo, 2 steps): wall {wall:.1f} s")
