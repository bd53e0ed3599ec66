"""BGE-M3 on a tiny real model: training, checkpoints (ours and FlagEmbedding's layout),
clear errors for bad head files, MCLS, and evaluate_m3."""

from __future__ import annotations

import math
import random
import shutil

import numpy as np
import pytest
import torch

from flagops.config import ConfigError, load_config
from flagops.data.formats import EvalSet, Passage, TrainExample, write_train_jsonl
from flagops.evaluation.m3 import M3RetrievalEvaluator, evaluate_m3
from flagops.evaluation.retrieval import RETRIEVAL_METRICS
from flagops.models.embedder import Embedder
from flagops.models.m3 import M3CheckpointError, M3Embedder, M3Encoded

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud light".split()
TEXTS = ["alpha beta beta", "a much longer passage about the river, the stone and the cloud in the light"]


def _examples(n: int = 24, seed: int = 0) -> list[TrainExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.sample(WORDS, 3)
        out.append(
            TrainExample(" ".join(topic), [" ".join(topic + rng.sample(WORDS, 4))], [" ".join(rng.sample(WORDS, 7)) for _ in range(3)])
        )
    return out


def _cfg(*overrides):
    base = [
        "train.logging_steps=1",
        "train.learning_rate=5e-4",
        "train.warmup_ratio=0",
        "train.batch_size=4",
        "train.train_group_size=3",
        "train.temperature=0.05",
    ]
    return load_config("tiny_m3", [*base, *overrides])


@pytest.fixture(scope="module")
def m3_model():
    return M3Embedder.load("tiny-bert", pooling="cls", query_max_len=16, passage_max_len=48, colbert_dim=32, seed=1)


def _same_outputs(a: M3Encoded, b: M3Encoded):
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-6)
    np.testing.assert_allclose(a.sparse.toarray(), b.sparse.toarray(), atol=1e-6)
    for x, y in zip(a.colbert, b.colbert, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


# --------------------------------------------------------------------------- training


def test_train_m3_step_lowers_the_loss_and_writes_an_m3_checkpoint(tmp_path, capsys):
    from flagops.steps import train_m3

    data = tmp_path / "train.jsonl"
    write_train_jsonl(data, _examples())
    cfg = _cfg("train.max_steps=16")  # length buckets and sub-batches from the profile, self-distillation on
    train_m3.run(cfg, {"train_data": data}, {"model": tmp_path / "model"})
    printed = capsys.readouterr().out
    assert "modes dense+sparse+colbert + self-distillation" in printed and "length-grouped, sub-batches of 8" in printed
    start, end = (float(x) for x in printed.split("train_m3: loss ")[1].split(" (median")[0].split(" -> "))
    assert end < start * 0.85, (start, end)
    out = tmp_path / "model"
    for name in ("colbert_linear.pt", "sparse_linear.pt", "colbert_linear.safetensors", "sparse_linear.safetensors", "model.safetensors"):
        assert (out / name).is_file(), name
    m3 = M3Embedder.load(out, require_heads=True)
    assert m3.m3_settings.colbert_dim == 32 and m3.modes == ("dense", "sparse", "colbert")
    np.testing.assert_allclose(Embedder.load(out).encode(TEXTS), m3.encode(TEXTS), atol=1e-6)  # still a dense Embedder


def test_dense_only_heads_only_and_head_learning_rate(tmp_path, monkeypatch):
    from transformers import Trainer

    from flagops.training.m3 import train

    cfg = _cfg("train.max_steps=2", "m3.unified_finetuning=false", "m3.length_buckets=[]")
    summary = train(cfg.model, cfg.m3, cfg.train, _examples(), tmp_path / "dense")
    assert set(k for k in summary if k.startswith("loss_") and k.endswith("_last")) == {"loss_dense_last"}
    assert not (tmp_path / "dense" / "colbert_linear.pt").exists()  # a base without heads stays without
    assert M3Embedder.load(tmp_path / "dense", heads=False).modes == ("dense",)

    cfg = _cfg("train.max_steps=2", "m3.fix_encoder=true", "m3.modes=[sparse,colbert]")
    before = M3Embedder.from_config(cfg.model, cfg.m3, seed=cfg.train.seed)
    train(cfg.model, cfg.m3, cfg.train, _examples(), tmp_path / "heads")
    after = M3Embedder.load(tmp_path / "heads")
    np.testing.assert_allclose(after.encode(TEXTS), before.encode(TEXTS), atol=1e-6)  # encoder frozen
    assert not torch.equal(after.sparse_linear.weight, before.sparse_linear.weight)  # heads trained
    cfg = _cfg("train.max_steps=1", "m3.head_learning_rate=1e-2", "train.learning_rate=1e-4")
    groups = {}
    real = Trainer.create_optimizer

    def spy(self, model=None):
        opt = real(self, model)
        groups.update({id(p): g["lr"] for g in opt.param_groups for p in g["params"]})
        return opt

    monkeypatch.setattr(Trainer, "create_optimizer", spy)
    train(cfg.model, cfg.m3, cfg.train, _examples(), tmp_path / "head_lr")
    assert list(groups.values()).count(1e-2) == 4 and set(groups.values()) == {1e-4, 1e-2}  # 2 heads x (weight, bias)
    with pytest.raises(ConfigError, match="fix_encoder trains only"):
        _cfg("m3.fix_encoder=true", "m3.unified_finetuning=false")


def test_train_m3_refuses_a_bge_profile(tmp_path):
    from flagops.steps import train_m3

    with pytest.raises(ConfigError, match="model.kind is 'bge'"):
        train_m3.run(load_config("tiny"), {"train_data": tmp_path / "x.jsonl"}, {"model": tmp_path / "m"})


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_gives_identical_outputs(m3_model, tmp_path):
    m3_model.save(tmp_path / "m")
    again = M3Embedder.load(tmp_path / "m", require_heads=True)
    for is_query in (True, False):
        _same_outputs(m3_model.encode_m3(TEXTS, is_query=is_query), again.encode_m3(TEXTS, is_query=is_query))
    assert again.m3_settings.colbert_dim == 32 and again.settings == m3_model.settings


def test_loads_heads_written_in_flagembeddings_layout(m3_model, tmp_path):
    d = tmp_path / "fe"
    m3_model.embedder.save_to(d)  # an HF model dir, then the heads as FlagEmbedding writes them
    torch.save(m3_model.colbert_linear.state_dict(), d / "colbert_linear.pt")
    torch.save(m3_model.sparse_linear.state_dict(), d / "sparse_linear.pt")
    loaded = M3Embedder.load(d, require_heads=True)
    _same_outputs(m3_model.encode_m3(TEXTS), loaded.encode_m3(TEXTS))


def test_fresh_heads_are_seeded():
    a, b, c = (M3Embedder.load("tiny-bert", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.colbert_linear.weight, b.colbert_linear.weight)
    assert not torch.equal(a.colbert_linear.weight, c.colbert_linear.weight)
    assert a.m3_settings.colbert_dim == 64  # -1: the hidden size


def test_bad_head_files_are_one_line_errors_naming_file_and_fix(m3_model, tmp_path):
    good = tmp_path / "good"
    m3_model.save(good)

    wrong = tmp_path / "wrong_shape"
    shutil.copytree(good, wrong)
    (wrong / "sparse_linear.safetensors").unlink()
    torch.save({"weight": torch.zeros(2, 64), "bias": torch.zeros(2)}, wrong / "sparse_linear.pt")
    with pytest.raises(M3CheckpointError, match=r"sparse_linear\.pt: weight \(2, 64\).*delete both head files") as err:
        M3Embedder.load(wrong)
    assert "\n" not in str(err.value)

    missing = tmp_path / "missing"
    shutil.copytree(good, missing)
    (missing / "colbert_linear.pt").unlink()
    (missing / "colbert_linear.safetensors").unlink()
    with pytest.raises(M3CheckpointError, match=r"colbert_linear\.pt: missing but sparse_linear\.pt is there; restore it"):
        M3Embedder.load(missing)
    assert M3Embedder.load(missing, heads=False).modes == ("dense",)  # unified_finetuning off: dense only, no error
    (missing / "sparse_linear.pt").unlink()
    (missing / "sparse_linear.safetensors").unlink()
    with pytest.raises(M3CheckpointError, match="flagops_m3.json says the model has heads"):
        M3Embedder.load(missing)  # unified_finetuning on (heads=True) and an M3 checkpoint without heads
    with pytest.raises(M3CheckpointError, match="this model has no M3 heads; .*train_m3"):
        M3Embedder.load("tiny-bert", require_heads=True)

    with pytest.raises(M3CheckpointError, match=r"ColBERT head has dim 32 but m3.colbert_dim=16; set m3.colbert_dim=32"):
        M3Embedder.load(good, colbert_dim=16)

    pickled = tmp_path / "pickled"
    shutil.copytree(good, pickled)
    (pickled / "colbert_linear.safetensors").unlink()
    torch.save(torch.nn.Linear(64, 32), pickled / "colbert_linear.pt")  # a pickled module, not a state dict
    with pytest.raises(M3CheckpointError, match=r"colbert_linear\.pt: not a readable state dict"):
        M3Embedder.load(pickled)


# --------------------------------------------------------------------------- MCLS


def test_mcls_equals_cls_for_short_texts_and_averages_one_cls_per_interval(m3_model, tmp_path):
    m3_model.save(tmp_path / "m")
    mcls = M3Embedder.load(tmp_path / "m", mcls=True, mcls_interval=8)
    short = ["alpha beta gamma"]  # 3 tokens < 8
    np.testing.assert_allclose(mcls.encode(short), m3_model.encode(short), atol=1e-6)

    long_text = " ".join(WORDS[:13])  # 13 words -> 2 CLS at interval 8
    enc, cls_pos = mcls.tokenize_mcls([long_text], is_query=False)
    n_content = len(m3_model.tokenizer(long_text, add_special_tokens=False)["input_ids"])
    assert int(cls_pos.sum()) == math.ceil(n_content / 8) == 2
    ids = enc["input_ids"][0].tolist()
    assert ids[0] == ids[9] == m3_model.tokenizer.cls_token_id and ids[-1] == m3_model.tokenizer.sep_token_id
    with torch.no_grad():
        hidden = m3_model.embedder.model(**enc).last_hidden_state[0]
    want = torch.nn.functional.normalize((hidden[0] + hidden[9]) / 2, dim=-1).numpy()
    got = mcls.encode([long_text])[0]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, m3_model.encode([long_text])[0], atol=1e-3)  # differs from one CLS
    mean = M3Embedder.load(tmp_path / "m", mcls=True, pooling="mean")
    with pytest.raises(ValueError, match="MCLS averages CLS states"):
        mean.encode(short)


# --------------------------------------------------------------------------- evaluation


def _eval_set() -> EvalSet:
    corpus = [Passage(f"d{i}", "", " ".join(WORDS[i : i + 4])) for i in range(12)]
    queries = {f"q{i}": " ".join(WORDS[i : i + 2]) for i in range(0, 12, 3)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(0, 12, 3)}
    return EvalSet(corpus, queries, qrels)


def _keys(prefix, modes):
    return {f"{prefix}/m3_{m}/{metric}" for m in modes for metric in RETRIEVAL_METRICS}


def test_evaluate_m3_reports_every_mode_and_metric_in_unit_range(m3_model):
    cfg = load_config("tiny_m3")
    metrics = evaluate_m3(m3_model, _eval_set(), cfg)
    assert set(metrics) == _keys("candidate", ("dense", "sparse", "colbert", "hybrid"))
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    rerank = evaluate_m3(
        m3_model, _eval_set(), load_config("tiny_m3", ["m3.colbert_exhaustive_max_docs=0", "m3.rerank_top_k=12"]), prefix=""
    )
    assert set(rerank) == {k.split("/", 1)[1] for k in metrics}  # prefix "": bare m3_<mode>/<metric>
    assert rerank["m3_colbert/ndcg@10"] == pytest.approx(metrics["candidate/m3_colbert/ndcg@10"])  # k = corpus: same ranking
    dense_only = M3Embedder.load("tiny-bert", heads=False)
    assert set(evaluate_m3(dense_only, _eval_set(), cfg, prefix="base")) == _keys("base", ("dense",))


class _OneHotM3:
    """Query i's relevant doc is doc i. Dense points every query at the wrong doc; sparse and
    ColBERT at the right one; hybrid (0.4 / 0.2 / 0.4) must follow sparse + ColBERT."""

    def encode_m3(self, texts, *, is_query, batch_size, progress=None):
        import scipy.sparse as sp

        n = len(texts)
        eye = np.eye(n, dtype=np.float32)
        dense = np.roll(eye, 1, axis=1) if is_query else eye  # query i -> doc i+1
        colbert = [eye[i : i + 1] for i in range(n)]
        return M3Encoded(dense, sp.csr_matrix(eye), colbert)


def test_hybrid_combines_modes_with_the_configured_weights():
    corpus = [Passage(f"d{i}", "", f"t{i}") for i in range(5)]
    eval_set = EvalSet(corpus, {f"q{i}": f"t{i}" for i in range(5)}, {f"q{i}": {f"d{i}": 1} for i in range(5)})
    metrics = M3RetrievalEvaluator(eval_set, load_config("tiny_m3").m3)(_OneHotM3())
    assert metrics["m3_sparse/mrr@10"] == metrics["m3_colbert/mrr@10"] == metrics["m3_hybrid/mrr@10"] == 1.0
    assert metrics["m3_dense/mrr@10"] < 1.0
    # hybrid: right doc 0.4*0 + 0.2*1 + 0.4*1 = 0.6 beats the dense pick 0.4*1 = 0.4; with dense weighted up it flips
    flipped = M3RetrievalEvaluator(eval_set, load_config("tiny_m3", ["m3.hybrid_weights=[0.8,0.1,0.1]"]).m3)(_OneHotM3())
    assert flipped["m3_hybrid/mrr@10"] < 1.0


def test_resume_after_interruption_continues_from_the_checkpoint(tmp_path, monkeypatch, capsys):
    from flagops.training import m3 as recipe
    from flagops.training.common import checkpoint_dir

    cfg = _cfg("train.max_steps=4", "train.save_steps=2", "m3.self_distill_start_step=3")
    steps_seen, crashed = [], []
    real = recipe.StepCallback.on_step_begin

    def crash_at_3(self, args, state, control, **kw):
        if state.global_step == 3 and not crashed:
            crashed.append(True)
            raise KeyboardInterrupt("simulated crash after checkpoint-2")
        real(self, args, state, control, **kw)
        steps_seen.append((state.global_step, self.model.global_step))

    monkeypatch.setattr(recipe.StepCallback, "on_step_begin", crash_at_3)
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        recipe.train(cfg.model, cfg.m3, cfg.train, _examples(), out)
    assert (checkpoint_dir(out) / "checkpoint-2").is_dir() and not out.exists()
    summary = recipe.train(cfg.model, cfg.m3, cfg.train, _examples(), out)
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert summary["steps"] == 4 and (out / "colbert_linear.pt").is_file()
    assert steps_seen[-2:] == [(2, 2), (3, 3)]  # the model's step (self-distillation switch) follows the Trainer's
    assert "loss_self_distill_last" in summary  # on from step 3
