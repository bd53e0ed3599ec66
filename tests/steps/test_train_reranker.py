"""train_reranker on tiny real models: the loss goes down and the ranking improves, a plain
encoder gets a fresh head, checkpoints resume, the teacher's KD term is in the loss, a
decoder kind plugs in through ``build_reranker``, and bad rows fail before anything is written."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from flagops.config import load_config
from flagops.data.formats import DataError, TrainExample, write_jsonl, write_train_jsonl
from flagops.models.layout import RERANKER_FILE
from flagops.models.reranker import CrossEncoderReranker, NotARerankerError, load_reranker, reranker_kind
from flagops.steps import train_reranker as step
from flagops.training import common
from flagops.training import reranker as recipe

WORDS = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud light".split()


def _examples(n: int = 16, negatives: int = 3, seed: int = 0) -> list[TrainExample]:
    """Positives repeat the query's three words; negatives are random words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.sample(WORDS, 3)
        out.append(
            TrainExample(
                query=" ".join(topic),
                pos=[" ".join(topic + rng.sample(WORDS, 3))],
                neg=[" ".join(rng.sample(WORDS, 6)) for _ in range(negatives)],
                pos_scores=[2.0],
                neg_scores=[0.5 * j for j in range(negatives)],
            )
        )
    return out


def _cfg(*overrides):
    return load_config(
        "tiny",
        [
            "reranker.enabled=true",
            "reranker.train.logging_steps=1",
            "reranker.train.warmup_ratio=0",
            "reranker.train.batch_size=4",
            "reranker.train.train_group_size=4",
            *overrides,
        ],
    )


def _margin(reranker, examples) -> float:
    """Mean over queries of score(positive) - mean score(negatives)."""
    pairs = [(ex.query, p) for ex in examples for p in ex.pos + ex.neg]
    scores = reranker.score_pairs(pairs, batch_size=len(pairs)).reshape(len(examples), -1)  # (queries, 1 + negatives)
    return float((scores[:, 0] - scores[:, 1:].mean(axis=1)).mean())


def test_loss_goes_down_and_trained_reranker_ranks_positives_higher(tmp_path):
    # A random tiny BERT's [CLS] barely varies with the input: it needs a high rate to move in 20 steps.
    cfg = _cfg("reranker.train.max_steps=20", "reranker.train.learning_rate=1e-2")
    examples, out = _examples(), tmp_path / "reranker"
    summary = recipe.train(cfg.reranker, examples, out)
    assert summary["steps"] == 20
    assert summary["loss_end"] < summary["loss_start"] * 0.9, summary  # log 4 = 1.39 at chance
    assert not common.checkpoint_dir(out).exists()
    assert json.loads((out / RERANKER_FILE).read_text()) == {"kind": "cross_encoder", "query_max_len": 32, "passage_max_len": 128}
    assert reranker_kind(out) == "cross_encoder"
    trained, base = load_reranker(out), load_reranker("tiny-reranker")
    assert isinstance(trained, CrossEncoderReranker)
    before, after = _margin(base, examples), _margin(trained, examples)
    assert abs(before) < 0.1 and after > 0.5, (before, after)


def test_plain_encoder_gets_a_fresh_one_logit_head(tmp_path, capsys):
    from transformers import AutoModel

    from flagops.models.sources import resolve_model_source

    cfg = _cfg("reranker.base=tiny-bert", "reranker.train.max_steps=1")
    reranker = recipe.build_reranker(cfg.reranker)
    assert "fresh one-logit relevance head" in capsys.readouterr().out
    assert reranker.model.config.num_labels == 1 and reranker.max_length == 160
    encoder = AutoModel.from_pretrained(str(resolve_model_source("tiny-bert")))
    assert torch.equal(reranker.model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)

    out = tmp_path / "reranker"
    recipe.train(cfg.reranker, _examples(), out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    assert load_reranker(out).score("alpha beta", ["alpha beta gamma", "river"]).shape == (2,)


def test_a_multi_label_classifier_is_not_a_cross_encoder_base(tmp_path):
    from transformers import BertForSequenceClassification

    from flagops.models.tiny import tiny_bert_config

    config = tiny_bert_config(100)
    config.num_labels = 2
    BertForSequenceClassification(config).save_pretrained(str(tmp_path / "clf"))
    (tmp_path / "clf" / "vocab.txt").write_text("[PAD]\n[UNK]\n")  # a tokenizer: only the head is wrong
    with pytest.raises(NotARerankerError, match="classifier with 2 labels"):
        recipe.build_reranker(_cfg(f"reranker.base={tmp_path / 'clf'}").reranker)


def test_pairs_truncate_the_passage_only_with_flagembedding_budgets():
    cfg = _cfg("reranker.query_max_len=8", "reranker.passage_max_len=16")
    tokenizer = recipe.build_reranker(cfg.reranker).tokenizer
    long_query, long_passage = " ".join(["river"] * 40), " ".join(["stone"] * 40)
    enc = recipe.cross_encoder_pairs(tokenizer, [(long_query, long_passage), ("cloud", long_passage)], 8, 16)
    assert enc["input_ids"].shape == (2, 24)  # query_max_len + passage_max_len
    # [CLS] query [SEP] is segment 0: the query keeps 8 + 16 // 4 = 12 tokens, the passage the rest
    assert enc["token_type_ids"][0].eq(0).sum() == 1 + 12 + 1
    # a short query leaves the passage its own cap, 16 + 8 // 2 = 20 tokens: 3 + 1 + 20 = 24
    assert enc["attention_mask"][1].sum() == 24 and enc["token_type_ids"][1].eq(0).sum() == 3


def test_training_loss_is_grouped_ce_plus_teacher_kd_in_group_order():
    """What the Trainer gets (dataset -> collator -> model) is CE(target 0) + KD, teacher scores in passage order."""
    cfg = _cfg("reranker.train.distill=true", "reranker.train.train_group_size=3")
    torch.manual_seed(0)
    reranker = recipe.build_reranker(cfg.reranker)
    model = recipe.RerankerForTraining(reranker, cfg.reranker).eval()  # no dropout
    # Each negative's text carries its score, so the teacher row can be checked against the passages.
    examples = [
        TrainExample(f"query {i}", [f"positive {i}"], [f"negative {s}" for s in (1.5, -0.5, 0.25)], [0.2 * i], [1.5, -0.5, 0.25])
        for i in range(4)
    ]
    dataset = recipe.PairGroupDataset(examples, 3, 0, distill=True)
    items = [dataset[i] for i in range(4)]
    batch = recipe.PairCollator(recipe.pair_encoder(cfg.reranker, reranker))(items)
    teacher = batch["teacher_scores"].tolist()  # (4, 3)
    for i, (_, passages, _, _) in enumerate(items):
        assert teacher[i] == pytest.approx([0.2 * i] + [float(p.split()[1]) for p in passages[1:]])
    with torch.no_grad():
        loss = model(**batch)["loss"].item()
        ce_only = model(pair=batch["pair"])["loss"].item()
        scores = reranker(**batch["pair"]).tolist()  # (12,)

    def log_softmax(xs):
        log_z = math.log(sum(math.exp(x) for x in xs))
        return [x - log_z for x in xs]

    ce = kd = 0.0
    for i in range(4):
        s = scores[3 * i : 3 * i + 3]
        ce -= log_softmax(s)[0] / 4
        kd -= sum(math.exp(t) * x for t, x in zip(log_softmax(teacher[i]), log_softmax(s), strict=True)) / 4
    assert ce_only == pytest.approx(ce, rel=1e-5)
    assert loss == pytest.approx(ce + kd, rel=1e-5)
    assert loss - ce_only > 0.5  # the KD term is there: random scores are far from the teacher's


def test_resume_after_interruption(tmp_path, crash_training_at, capsys):
    cfg = _cfg("reranker.train.max_steps=4", "reranker.train.save_steps=2", "reranker.train.learning_rate=1e-3")
    out = tmp_path / "reranker"
    crash_training_at(3)  # after checkpoint-2
    with pytest.raises(KeyboardInterrupt):
        recipe.train(cfg.reranker, _examples(), out)
    assert (common.checkpoint_dir(out) / "checkpoint-2").is_dir() and not out.exists()

    crash_training_at(None)
    summary = recipe.train(cfg.reranker, _examples(), out)
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert summary["steps"] == 4 and out.is_dir() and not common.checkpoint_dir(out).exists()
    # The resumed run ends where an uninterrupted one does (weights, RNG and data order all restored).
    recipe.train(cfg.reranker, _examples(), tmp_path / "uninterrupted")
    ex = _examples()[0]
    resumed, uninterrupted = (load_reranker(p).score(ex.query, ex.pos + ex.neg) for p in (out, tmp_path / "uninterrupted"))
    np.testing.assert_allclose(resumed, uninterrupted, atol=1e-6)
    assert not np.allclose(resumed, load_reranker("tiny-reranker").score(ex.query, ex.pos + ex.neg), atol=1e-4)  # it did train

    # Another config's checkpoints are never resumed.
    ckpt = common.checkpoint_dir(out) / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (common.checkpoint_dir(out) / common.FINGERPRINT).write_text("another run")
    recipe.train(_cfg("reranker.train.max_steps=1").reranker, _examples(), out)
    assert "resuming" not in capsys.readouterr().out


def test_step_distills_and_fills_short_groups_by_repetition_logging_once(tmp_path, caplog):
    data, out = tmp_path / "train.jsonl", tmp_path / "reranker"
    examples = _examples(4, negatives=2) + _examples(4, negatives=5, seed=1)
    write_train_jsonl(data, examples)
    cfg = _cfg("reranker.train.distill=true", "reranker.train.train_group_size=6", "reranker.train.max_steps=2")
    with caplog.at_level(logging.WARNING, logger="flagops.training.reranker"):
        step.run(cfg, {"train_data": data}, {"reranker_model": out})
    short = [r.getMessage() for r in caplog.records if "sampled with repetition" in r.getMessage()]
    assert short == [
        "train_reranker: 4 of 8 rows have fewer than 5 negatives (train_group_size 6); their negatives are sampled with repetition"
    ]
    assert reranker_kind(out) == "cross_encoder"
    negatives = recipe.PairGroupDataset(examples, 6, 0, distill=True)[0][1][1:]
    assert len(negatives) == 5 and set(negatives) == set(examples[0].neg)


def _rows(tmp_path, rows):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize(
    ("row", "overrides", "message"),
    [
        ({"query": "q", "pos": ["p"]}, (), r"train.jsonl:2: no 'neg' passages; .* run mine_hard_negatives"),
        ({"query": "q", "pos": ["p"], "neg": []}, (), r"train.jsonl:2: no 'neg' passages"),
        ({"query": "q", "pos": ["p"], "neg": ["n"], "pos_scores": [1.0, 2.0]}, (), r"train.jsonl:2: field 'pos_scores' has 2 scores"),
        (
            {"query": "q", "pos": ["p"], "neg": ["n"]},
            ("reranker.train.distill=true",),
            r"train.jsonl:2: reranker.train.distill=true needs 'pos_scores' and 'neg_scores'; add them with score_with_teacher",
        ),
    ],
)
def test_bad_rows_name_the_line_and_write_nothing(tmp_path, row, overrides, message):
    good = {"query": "a", "pos": ["b"], "neg": ["c"], "pos_scores": [1.0], "neg_scores": [0.0]}
    data, out = _rows(tmp_path, [good, row]), tmp_path / "reranker"
    with pytest.raises(DataError, match=message):
        step.run(_cfg(*overrides), {"train_data": data}, {"reranker_model": out})
    assert not out.exists() and not common.checkpoint_dir(out).exists()


# --------------------------------------------------------------------------- the decoder kinds' plug


class LayerScorer(nn.Module):
    """Stands in for flagops.models.llm_reranker's layerwise reranker (not on this branch): a tiny
    BERT scored from each layer's [CLS] by one shared head, so scores come as (layers, pairs).
    Like many decoders (gemma, Qwen) it carries an LM head tied to its embedding matrix."""

    def __init__(self):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        from flagops.models.sources import resolve_model_source

        path = str(resolve_model_source("tiny-bert"))
        self.model, self.tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
        self.head = nn.Linear(64, 1)
        embeddings = self.model.embeddings.word_embeddings
        self.lm_head = nn.Linear(64, embeddings.num_embeddings, bias=False)
        self.lm_head.weight = embeddings.weight  # two names, one tensor
        self.prompts_seen: list = []

    def tokenize(self, pairs, prompts=None, max_length=None):
        self.prompts_seen.extend(prompts)
        return self.tokenizer(
            [q for q, _ in pairs], [p for _, p in pairs], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )

    def forward(self, **enc):
        states = self.model(**enc, output_hidden_states=True).hidden_states[1:]  # one per layer
        return torch.stack([self.head(h[:, 0]).squeeze(-1) for h in states])  # (layers, pairs)

    def save(self, dest):
        dest.mkdir(exist_ok=True)
        self.model.save_pretrained(str(dest))
        (dest / RERANKER_FILE).write_text(json.dumps({"kind": "layerwise", "layers": [1, 2]}))


def test_decoder_kinds_plug_in_through_build(tmp_path, monkeypatch):
    import flagops.models

    scorers = []

    def build(reranker_cfg):
        assert reranker_cfg.kind == "layerwise"
        scorers.append(LayerScorer())
        return scorers[-1]

    fake = types.ModuleType("flagops.models.llm_reranker")
    fake.build = build
    monkeypatch.setitem(sys.modules, "flagops.models.llm_reranker", fake)
    monkeypatch.setattr(flagops.models, "llm_reranker", fake, raising=False)
    cfg = _cfg("reranker.kind=layerwise", "reranker.train.max_steps=2", "reranker.train.save_steps=1", "reranker.train.train_group_size=3")
    prompt = "Is B an answer to A?"
    examples = [dataclasses.replace(ex, prompt=prompt if i % 2 else None) for i, ex in enumerate(_examples(8))]
    out = tmp_path / "reranker"
    summary = recipe.train(cfg.reranker, examples, out)
    assert len(scorers) == 1 and np.isfinite(summary["train_loss"])
    # the row's prompt reaches tokenize once per pair (None: the kind's default prompt)
    assert set(scorers[0].prompts_seen) == {None, prompt} and len(scorers[0].prompts_seen) == 2 * 4 * 3
    # (layers, pairs) scores take the layerwise loss: 2 layers x CE + KD, each about log 3 at random scores
    assert summary["loss_start"] > 2.5 * math.log(3), summary
    meta = json.loads((out / RERANKER_FILE).read_text())
    assert meta == {"kind": "layerwise", "layers": [1, 2], "query_max_len": 32, "passage_max_len": 128}
