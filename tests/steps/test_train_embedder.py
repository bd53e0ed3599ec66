"""Training on a tiny real model: the loss goes down, checkpoints resume, outputs load elsewhere."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch

from flagops.config import load_config
from flagops.data.formats import TrainExample, write_train_jsonl
from flagops.models.embedder import Embedder
from flagops.training import common
from flagops.training import embedder as recipe

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud light".split()


def _examples(n: int = 24, seed: int = 0) -> list[TrainExample]:
    rng = random.Random(seed)
    out = []
    for _i in range(n):
        topic = rng.sample(WORDS, 3)
        out.append(
            TrainExample(
                query=" ".join(topic),
                pos=[" ".join(topic + rng.sample(WORDS, 4))],
                neg=[" ".join(rng.sample(WORDS, 7)) for _ in range(3)],
                pos_scores=[0.9],
                neg_scores=[0.3, 0.2, 0.1],
            )
        )
    return out


def _cfg(*overrides):
    return load_config("tiny", ["train.logging_steps=1", "train.learning_rate=5e-4", "train.warmup_ratio=0", *overrides])


def test_loss_goes_down_and_model_saves(tmp_path):
    # Mean pooling: a random tiny BERT's CLS vector barely varies with the input, so cls learns slowly.
    cfg = _cfg("train.max_steps=18", "train.batch_size=4", "train.train_group_size=3", "train.temperature=0.05", "model.pooling=mean")
    out = tmp_path / "model"
    summary = recipe.train(cfg.model, cfg.train, _examples(), out)
    assert summary["steps"] == 18
    assert summary["loss_end"] < summary["loss_start"] * 0.8, summary
    assert (out / "model.safetensors").is_file() and not common.checkpoint_dir(out).exists()


def _hand_loss(q: torch.Tensor, p: torch.Tensor, teacher: torch.Tensor, temperature: float, weight: float) -> float:
    """InfoNCE with in-batch negatives + weight * KL(softmax(teacher) || softmax(student)), term by term."""
    batch, group = teacher.shape
    q, p = q.double().tolist(), p.double().tolist()
    dot = [[sum(a * b for a, b in zip(qi, pj, strict=True)) / temperature for pj in p] for qi in q]  # (batch, batch * group)
    contrastive = kl = 0.0
    for i in range(batch):
        row = dot[i]
        contrastive += math.log(sum(math.exp(x) for x in row)) - row[i * group]  # positive: column i * group
        own = row[i * group : (i + 1) * group]  # this query's group, positive first
        log_z = math.log(sum(math.exp(x) for x in own))
        t = [math.exp(x) for x in teacher[i].tolist()]
        t = [x / sum(t) for x in t]
        kl += sum(ti * (math.log(ti) - (si - log_z)) for ti, si in zip(t, own, strict=True))
    return contrastive / batch + weight * kl / batch


def test_distillation_loss_matches_a_hand_computation():
    """The loss the Trainer gets (dataset -> collator -> model) is InfoNCE + distill_weight * KL."""
    cfg = _cfg("train.distill=true", "train.distill_weight=0.7", "train.temperature=0.05", "train.train_group_size=3")
    train = cfg.train
    torch.manual_seed(0)
    embedder = Embedder.from_config(cfg.model)
    model = recipe.BiEncoderForTraining(embedder, train.temperature, train.in_batch_negatives, train.distill_weight).eval()  # no dropout
    # Teachers that rank a negative first, so the KL term is far from 0.
    examples = [dataclasses.replace(ex, pos_scores=[0.2 * i], neg_scores=[1.5, -0.5 * i, 0.3]) for i, ex in enumerate(_examples(4))]
    dataset = common.GroupDataset(examples, train.train_group_size, train.seed, distill=True)
    batch = common.GroupCollator(embedder)([dataset[i] for i in range(4)])
    assert batch["teacher_scores"].shape == (4, 3)
    with torch.no_grad():
        loss = model(**batch)["loss"].item()
        q = embedder(batch["q_input_ids"], batch["q_attention_mask"])  # (4, dim)
        p = embedder(batch["p_input_ids"], batch["p_attention_mask"])  # (12, dim)
        contrastive_only = model(**{k: v for k, v in batch.items() if k != "teacher_scores"})["loss"].item()
    expected = _hand_loss(q, p, batch["teacher_scores"], train.temperature, train.distill_weight)
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert loss - contrastive_only > 0.05  # the KL term is there and not negligible
    assert contrastive_only == pytest.approx(_hand_loss(q, p, batch["teacher_scores"], train.temperature, 0.0), rel=1e-5)


def test_length_sorted_chunks_leave_the_training_loss_unchanged():
    """train.length_chunk only changes how the step's texts are padded: the loss (InfoNCE + KL) is the same."""
    cfg = _cfg("train.distill=true", "train.train_group_size=3")
    train = cfg.train
    embedder = Embedder.from_config(cfg.model).eval()  # no dropout
    dataset = common.GroupDataset(_examples(4), train.train_group_size, train.seed, distill=True)
    batch = common.GroupCollator(embedder)([dataset[i] for i in range(4)])
    losses = []
    for chunk in (None, 3):
        model = recipe.BiEncoderForTraining(embedder, train.temperature, True, train.distill_weight, length_chunk=chunk)
        with torch.no_grad():
            losses.append(model(**batch)["loss"].item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)


def test_distillation_trains_and_needs_teacher_scores(tmp_path):
    cfg = _cfg("train.max_steps=2", "train.distill=true", "train.batch_size=4")
    summary = recipe.train(cfg.model, cfg.train, _examples(), tmp_path / "m")
    assert np.isfinite(summary["train_loss"])
    with pytest.raises(Exception, match="no pos_scores/neg_scores"):
        common.GroupDataset([TrainExample("q", ["p"], ["n"])], 2, 0, distill=True)


def test_group_without_negatives_is_a_clear_error():
    with pytest.raises(Exception, match="has no negatives; run mine_hard_negatives"):
        common.GroupDataset([TrainExample("q", ["p"])], 4, 0, distill=False)


def test_negatives_resampled_with_repetition_when_too_few():
    ds = common.GroupDataset([TrainExample("q", ["p"], ["n1", "n2"])], 6, 0, distill=False)
    _, passages, _ = ds[0]
    assert passages[0] == "p" and len(passages) == 6 and set(passages[1:]) == {"n1", "n2"}


def test_resume_after_interruption(tmp_path, crash_training_at, capsys):
    cfg = _cfg("train.max_steps=4", "train.save_steps=2", "train.batch_size=4", "train.logging_steps=1")
    out = tmp_path / "model"
    crash_training_at(3)  # after checkpoint-2
    with pytest.raises(KeyboardInterrupt):
        recipe.train(cfg.model, cfg.train, _examples(), out)
    assert (common.checkpoint_dir(out) / "checkpoint-2").is_dir() and not out.exists()

    crash_training_at(None)
    summary = recipe.train(cfg.model, cfg.train, _examples(), out, loss_curve=tmp_path / "plots" / "loss.json")
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert summary["steps"] == 4 and out.is_dir()
    # the dvc plots loss curve is whole: the steps before the crash came back with the checkpoint
    curve = json.loads((tmp_path / "plots" / "loss.json").read_text())
    assert [row["step"] for row in curve] == [1, 2, 3, 4] and all(row["loss"] > 0 for row in curve)


def test_stale_checkpoints_of_another_config_are_not_resumed(tmp_path, capsys):
    out = tmp_path / "model"
    ckpt = common.checkpoint_dir(out) / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (common.checkpoint_dir(out) / common.FINGERPRINT).write_text("another run")
    cfg = _cfg("train.max_steps=1", "train.batch_size=4")
    recipe.train(cfg.model, cfg.train, _examples(), out)
    assert "resuming" not in capsys.readouterr().out


def test_saved_model_loads_in_transformers_and_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    cfg = _cfg("train.max_steps=2", "train.batch_size=4", "model.pooling=mean")
    out = tmp_path / "model"
    recipe.train(cfg.model, cfg.train, _examples(), out)
    texts = ["alpha beta", "a much longer passage about river stone cloud light and more"]
    ours = Embedder.load(out).encode(texts)
    st = SentenceTransformer(str(out), device="cpu")
    assert "mean" in str(st[1]).lower()
    np.testing.assert_allclose(st.encode(texts), ours, atol=1e-5)
    hf = AutoModel.from_pretrained(str(out))
    assert hf.config.hidden_size == 64
    for pooling in ("cls", "last_token"):
        e = Embedder.load(out, pooling=pooling)
        e.save(tmp_path / pooling)
        st = SentenceTransformer(str(tmp_path / pooling), device="cpu")
        np.testing.assert_allclose(st.encode(texts), e.encode(texts), atol=1e-5)


def test_train_step_via_execute(tmp_path):
    from flagops.steps import execute

    data = tmp_path / "train.jsonl"
    write_train_jsonl(data, _examples())
    cfg = _cfg("train.max_steps=2")
    execute("train_embedder", cfg, {"train_data": data}, {"model": tmp_path / "m", "loss_curve": tmp_path / "loss.json"}, track=False)
    assert Embedder.load(tmp_path / "m").settings.pooling == cfg.model.pooling
    torch.manual_seed(0)


def test_resume_from_the_final_checkpoint_trains_no_further(tmp_path, monkeypatch, capsys):
    """Killed after its last checkpoint but before the model was saved, a re-run loads that
    checkpoint and ends: the HF Trainer alone would run one more batch (a step 5 of 4 on the
    loss curve). The model equals the uninterrupted run's, and so does the curve."""
    cfg = _cfg("train.max_steps=4", "train.save_steps=2", "train.batch_size=2", "train.logging_steps=1")
    assert len(_examples()) // 2 > 4  # more batches in an epoch than steps: where the Trainer oversteps
    clean = recipe.train(cfg.model, cfg.train, _examples(), tmp_path / "clean", loss_curve=tmp_path / "clean.json")

    out, curve = tmp_path / "model", tmp_path / "curve.json"
    real = common.save_and_clean_up

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed after the final checkpoint")

    monkeypatch.setattr(common, "save_and_clean_up", killed)
    with pytest.raises(KeyboardInterrupt):
        recipe.train(cfg.model, cfg.train, _examples(), out)
    assert (common.checkpoint_dir(out) / "checkpoint-4").is_dir() and not out.exists()
    monkeypatch.setattr(common, "save_and_clean_up", real)
    summary = recipe.train(cfg.model, cfg.train, _examples(), out, loss_curve=curve)
    assert "resuming from checkpoint-4" in capsys.readouterr().out
    assert summary["steps"] == clean["steps"] == 4
    assert json.loads(curve.read_text()) == json.loads((tmp_path / "clean.json").read_text())
    assert [row["step"] for row in json.loads(curve.read_text())] == [1, 2, 3, 4]
    for name in ("model.safetensors",):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
