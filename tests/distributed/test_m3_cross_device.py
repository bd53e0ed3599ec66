"""BGE-M3 with cross-device negatives: 2-process gloo DDP on CPU equals one process.

Only L_dense is gathered, so one process on the whole batch is not the reference. It is
L_dense over the concatenated batch plus the mean over the two shards of every other term
(sparse, ColBERT, ensemble, self-distillation), each shard's terms on its own scores. That
is the mean over shards of ``compute_loss_from_scores(shard's scores, dense_global=...)``,
whose split into global and local terms ``tests/unit/test_m3_losses.py`` checks by hand.
"""

from __future__ import annotations

import time
from pathlib import Path

import m3_ddp_worker as worker  # tests/distributed is on sys.path (pytest's prepend import mode)
import pytest
import torch
from test_ddp_equivalence import _max_grad_diff, torchrun

from flagops.config import ConfigError, load_config
from flagops.losses.m3 import CrossDeviceDense, compute_loss_from_scores
from flagops.models.embedder import Embedder
from flagops.models.m3 import M3Output, inner_scores
from flagops.training.m3 import train

HERE = Path(__file__).resolve().parent
WORLD = 2
TOL = 1e-5  # float32: the loss differs by ~6e-8, gradients by ~1e-6 where the largest is ~3.6


def _rows(out: M3Output, rows: slice) -> M3Output:
    return M3Output(*(None if t is None else t[rows] for t in out))


def _single_process_reference(teacher: bool) -> tuple[float, dict[str, torch.Tensor]]:
    """L_dense over all W*B queries and W*B*G passages + the mean over shards of the local terms."""
    module = worker.model(cross_device=False)  # no process group here
    batch = worker.collate(module, worker.BATCH, teacher)
    q = module.encode(batch["q_input_ids"], batch["q_attention_mask"])  # (W*B, ...)
    p = module.encode(batch["p_input_ids"], batch["p_attention_mask"])  # (W*B*G, ...)
    t = worker.TEMPERATURE
    teachers = batch.get("teacher_scores")  # (W*B, G) or None
    dense_global = CrossDeviceDense(inner_scores(q.dense, p.dense) / t, teachers)  # (W*B, W*B*G)
    b, group = len(worker.BATCH) // WORLD, p.dense.shape[0] // q.dense.shape[0]
    losses = []
    for r in range(WORLD):
        shard_q, shard_p = _rows(q, slice(r * b, (r + 1) * b)), _rows(p, slice(r * b * group, (r + 1) * b * group))
        scores = {m: s / t for m, s in module.similarities(shard_q, shard_p).items()}  # (B, B*G) each
        shard_teacher = None if teachers is None else teachers[r * b : (r + 1) * b]
        out = compute_loss_from_scores(scores, group, teacher=shard_teacher, self_distill=True, dense_global=dense_global)
        losses.append(out.loss)
    loss = sum(losses) / WORLD
    loss.backward()
    return loss.item(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def test_m3_ddp_with_cross_device_dense_negatives_matches_one_process(tmp_path):
    Embedder.load("tiny-bert")  # build the cached tiny BERT here, so the two ranks don't race to
    start = time.perf_counter()
    proc = torchrun(HERE / "m3_ddp_worker.py", str(tmp_path))
    wall = time.perf_counter() - start
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    report = []
    for case, teacher in (("plain", False), ("teacher", True)):
        ref_loss, ref_grads = _single_process_reference(teacher)
        loss = sum(res[case][0] for res in ranks) / WORLD  # what the Trainer logs: the mean over ranks
        loss_diff = abs(loss - ref_loss)
        grad_diff = max(_max_grad_diff(res[case][2], ref_grads) for res in ranks)
        scale = max(g.abs().max().item() for g in ref_grads.values())
        report.append(f"{case}: loss {ref_loss:.6f} |d loss| {loss_diff:.1e}, max |d grad| {grad_diff:.1e} (max |grad| {scale:.2f})")
        assert loss_diff < TOL and grad_diff < TOL, report[-1]
        # L_dense is the same global loss on both ranks; the local terms are not.
        dense, ens = ([res[case][1][k] for res in ranks] for k in ("dense", "ensemble"))
        assert dense[0] == pytest.approx(dense[1], abs=TOL) and abs(ens[0] - ens[1]) > 1e-3

    # Control: without multiplying L_dense's gradient by W, DDP's mean misses the reference.
    _, ref_grads = _single_process_reference(teacher=False)
    unscaled = max(_max_grad_diff(res["unscaled"][2], ref_grads) for res in ranks)
    report.append(f"unscaled control: max |d grad| {unscaled:.1e}")
    assert unscaled > 100 * TOL, report[-1]
    print(f"\nM3 DDP equivalence (2 x gloo, tiny M3, 3 modes + self-distillation): {'; '.join(report)}; torchrun wall {wall:.1f} s")

    # The same torchrun then ran the train_m3 recipe (tiny_m3, 2 steps) with cross-device negatives.
    assert proc.stdout.count("dense negatives across 2 devices") == 2, proc.stdout
    assert proc.stdout.count("needs one batch size: drop m3.bucket_batch_sizes") == 2, proc.stdout
    assert (tmp_path / "model" / "colbert_linear.pt").is_file()


def test_train_m3_cross_device_needs_the_dense_mode_and_in_batch_negatives(tmp_path):
    cfg = load_config("tiny_m3", ["train.cross_device_negatives=true", "m3.modes=[sparse,colbert]"])
    with pytest.raises(ConfigError, match="dense mode"):
        train(cfg.model, cfg.m3, cfg.train, [], tmp_path)
    cfg = load_config("tiny_m3", ["train.cross_device_negatives=true", "train.in_batch_negatives=false"])
    with pytest.raises(ConfigError, match="in_batch_negatives=true"):
        train(cfg.model, cfg.m3, cfg.train, [], tmp_path)
