"""LLaRA on a tiny real Llama (hidden 32, 2 layers, its BPE trained on stdlib docstrings): the
prompts' special tokens, the EBAE/EBAR and LM losses against hand computations, the joint pass's
mask and positions against two separate passes, the 8-token pooling, and the steps end to end."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from flagops.config import ConfigError, validate
from flagops.data.corpus import module_passages
from flagops.data.formats import DataError, EvalSet, Passage, TrainExample, write_beir, write_jsonl
from flagops.longctx.base import base_model, train_tokenizer
from flagops.models.llm_reranker import save_tokenizer
from flagops.research import llara
from flagops.steps import evaluate_llara, finetune_llara, pretrain_llara

MODULES = ["json", "csv", "textwrap", "shutil"]
LONGCTX = {"base_context": 96, "vocab_size": 400, "hidden_size": 32, "num_heads": 2, "num_kv_heads": 1, "needle_lengths": [64, 128]}
LLARA = {
    "enabled": True,
    "query_max_len": 56,
    "passage_max_len": 64,
    "pretrain_steps": 3,
    "pretrain_batch_size": 2,
    "finetune_steps": 2,
    "finetune_batch_size": 2,
    "train_group_size": 2,
}


def _cfg(**over):
    return validate({"longctx": LONGCTX, "llara": {**LLARA, **over}})


@pytest.fixture(scope="module")
def passages():
    return module_passages(MODULES, 120)


@pytest.fixture(scope="module")
def lm(passages):
    """(tokenizer, model) with <s1>..<s16> added."""
    tokenizer = train_tokenizer([p.full_text for p in passages], 400)
    model = base_model(_cfg().longctx, tokenizer).eval()
    llara.add_special_tokens(tokenizer, model)
    return tokenizer, model


@pytest.fixture(scope="module")
def lm_dir(passages, tmp_path_factory):
    """A plain base LM directory, as train_base_lm writes it (no special tokens yet)."""
    tokenizer = train_tokenizer([p.full_text for p in passages], 400)
    model = base_model(_cfg().longctx, tokenizer)
    path = tmp_path_factory.mktemp("lm") / "base_lm"
    path.mkdir()
    model.save_pretrained(str(path))
    save_tokenizer(tokenizer, path)
    return path


# --------------------------------------------------------------------------- prompts


def test_special_tokens_are_single_ids_added_once(lm):
    tokenizer, model = lm
    ids = tokenizer.convert_tokens_to_ids(list(llara.SPECIAL_TOKENS))
    assert len(set(ids)) == 16 and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer("ab<s1><s12>cd<s16>", add_special_tokens=False)["input_ids"][2:4] == [ids[0], ids[11]]
    assert llara.add_special_tokens(tokenizer, model) == 0  # idempotent: a pretrained LM keeps its rows


def test_prompts_are_looked_up_from_the_tokenizer(lm):
    tokenizer, _ = lm
    p = llara.Prompts.of(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(list(llara.SPECIAL_TOKENS))
    assert list(p.summarize[-8:]) == ids[:8] and list(p.predict[-8:]) == ids[8:]
    text = tokenizer("json.dumps", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(p.wrap(text, p.summarize, 80)) == (
        '<s>"json.dumps", summarize the above passage within eight words: <s1><s2><s3><s4><s5><s6><s7><s8>'
    )
    assert tokenizer.decode(p.wrap(text, p.predict, 80)).endswith(
        '", predict the following passage within eight words: ' + "".join(llara.SPECIAL_TOKENS[8:])
    )
    cut = p.wrap(list(range(100, 200)), p.summarize, 60)
    assert len(cut) == 60 and cut[-8:] == ids[:8]  # the text is cut, the prompt never
    with pytest.raises(DataError, match="no room for text"):
        p.wrap(text, p.summarize, len(p.head) + len(p.summarize))


def test_prompts_need_the_special_tokens(passages):
    with pytest.raises(DataError, match="add_special_tokens"):
        llara.Prompts.of(train_tokenizer([p.full_text for p in passages[:20]], 300))


def test_targets_drop_special_tokens(lm):
    tokenizer, _ = lm
    p = llara.Prompts.of(tokenizer)
    words = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert llara.target_ids(tokenizer, "<s>parse <s3>json</s>", p, 100) == words("parse ") + words("json")  # the specials split the text
    assert llara.target_ids(tokenizer, "parse json", p, 1) == words("parse json")[:1]


def test_pretrain_records_pair_consecutive_passages_of_a_group():
    ps = [Passage(str(i), "", f"t{i}", g) for i, g in enumerate("aaabb")]
    assert llara.pretrain_records(ps) == [
        {"input": "t0", "output_summarize": "t0", "output_predict": "t1"},
        {"input": "t1", "output_summarize": "t1", "output_predict": "t2"},
        {"input": "t3", "output_summarize": "t3", "output_predict": "t4"},
    ]
    with pytest.raises(DataError, match="consecutive"):
        llara.pretrain_records([Passage("0", "", "x", "a"), Passage("1", "", "y", "b")])


# --------------------------------------------------------------------------- losses by hand


def test_bag_of_words_loss_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, 6)  # (batch, 8 specials, vocab)
    targets = [torch.tensor([1, 4, 1, 1]), torch.tensor([], dtype=torch.long), torch.tensor([5])]  # row 1 has none: skipped
    rows = []
    for i, t in ((0, [1, 4]), (2, [5])):  # the unique ids
        pooled = [max(float(logits[i, j, v]) for j in range(8)) for v in range(6)]
        lse = math.log(sum(math.exp(x) for x in pooled))
        rows.append(sum(-(pooled[v] - lse) for v in t) / len(t))
    assert llara.bag_of_words_loss(logits, targets).item() == pytest.approx(sum(rows) / 2, rel=1e-5)
    with pytest.raises(DataError, match="no pretraining row"):
        llara.bag_of_words_loss(logits[:1], [torch.tensor([], dtype=torch.long)])


def test_max_pool_is_over_positions_not_averaged():
    logits = torch.zeros(1, 8, 3)
    logits[0, 5, 2] = 4.0  # one position alone votes for id 2
    expected = -(4.0 - math.log(2 + math.exp(4.0)))
    assert llara.bag_of_words_loss(logits, [torch.tensor([2])]).item() == pytest.approx(expected, rel=1e-5)


def test_lm_loss_and_total_by_hand():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])  # (1, 3, vocab 2)
    labels = torch.tensor([[llara.IGNORE, 1, 0]])  # position 0 predicts 1, position 1 predicts 0
    expected = (-(1.0 - math.log(1 + math.e)) - (2.0 - math.log(math.exp(2) + 1))) / 2
    assert llara.lm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert llara.total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(4.0)).item() == 4.0


# --------------------------------------------------------------------------- the joint pass


def _sample(text_start=2, text_end=5, predict_start=7, n=9):
    return llara.PretrainSample(list(range(10, 10 + n)), text_start, text_end, predict_start, [1], [2])


def test_suffix_mask_by_hand():
    # row: head 0-1, text 2-4, summarize suffix 5-6, predict suffix 7-8, one pad at 9
    got = llara.suffix_mask([9], [5], [7], 10)[0, 0].int().tolist()
    expected = [[int(k <= q and k < 9) for k in range(10)] for q in range(10)]
    for q in (7, 8, 9):  # the pad row too: it carries no loss
        for k in (5, 6):
            expected[q][k] = 0  # the predict suffix never sees the summarize suffix
    assert got == expected


def test_position_ids_and_labels():
    s = _sample()
    assert llara.position_ids(s, 11) == [0, 1, 2, 3, 4, 5, 6, 5, 6, 0, 0]
    batch = llara.collate_pretrain([s, _sample(n=9)], pad_id=0)
    assert batch["labels"][0].tolist() == [-100, -100, 12, 13, 14, -100, -100, -100, -100]  # the text only
    assert batch["summarize_at"][0].tolist() == list(range(-1, 7))  # predict_start - 8 ..: the 8 before the predict suffix
    assert batch["predict_at"][0].tolist() == list(range(1, 9))


def test_joint_pass_matches_two_separate_passes(lm, passages):
    """The mask and the shared positions make each suffix see what it would alone, padding included."""
    tokenizer, model = lm
    p = llara.Prompts.of(tokenizer)
    rows = llara.pretrain_records(passages)[:2]
    samples = [llara.pretrain_sample(tokenizer, p, r, 50 + 20 * i) for i, r in enumerate(rows)]  # two lengths: padding
    batch = llara.collate_pretrain(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        joint = model(
            input_ids=batch["input_ids"], attention_mask=llara.additive(batch["mask"], torch.float32), position_ids=batch["position_ids"]
        ).logits
        for i, s in enumerate(samples):
            for suffix, at in ((p.summarize, batch["summarize_at"]), (p.predict, batch["predict_at"])):
                alone = torch.tensor([s.input_ids[: s.text_end] + list(suffix)])
                logits = model(input_ids=alone).logits[0, -8:]
                torch.testing.assert_close(joint[i, at[i]], logits, atol=1e-4, rtol=1e-4)
            text = torch.tensor([s.input_ids[: s.text_end]])
            torch.testing.assert_close(joint[i, : s.text_end], model(input_ids=text).logits[0], atol=1e-4, rtol=1e-4)


def test_pretrain_losses_add_up(lm, passages):
    tokenizer, model = lm
    p = llara.Prompts.of(tokenizer)
    samples = [llara.pretrain_sample(tokenizer, p, r, 60) for r in llara.pretrain_records(passages)[:3]]
    with torch.no_grad():
        got = llara.pretrain_losses(model, llara.collate_pretrain(samples, tokenizer.pad_token_id))
    assert got["total"].item() == pytest.approx(got["ar"].item() + (got["ebae"].item() + got["ebar"].item()) / 2, rel=1e-6)
    assert all(3.0 < got[k].item() < 9.0 for k in ("ar", "ebae", "ebar"))  # ~ln(416) = 6.0 for a random LM


# --------------------------------------------------------------------------- embeddings


def test_special_positions_and_pooling_by_hand():
    torch.manual_seed(1)
    hidden = torch.randn(2, 11, 3)  # (batch, seq, dim)
    lengths = torch.tensor([11, 9])
    assert llara.special_positions(lengths).tolist() == [list(range(3, 11)), list(range(1, 9))]
    got = llara.pool_special(hidden, lengths)
    for row, n in enumerate((11, 9)):
        mean = [sum(float(hidden[row, j, d]) for j in range(n - 8, n)) / 8 for d in range(3)]
        norm = math.sqrt(sum(x * x for x in mean))
        assert got[row].tolist() == pytest.approx([x / norm for x in mean], rel=1e-5)


def test_embedding_ignores_padding(lm):
    tokenizer, model = lm
    p = llara.Prompts.of(tokenizer)
    short = p.wrap([40, 41], p.summarize, 64)
    long = p.wrap(list(range(40, 60)), p.summarize, 64)
    with torch.no_grad():
        together = llara.embed(model, [short, long], tokenizer.pad_token_id)
        alone = llara.embed(model, [short], tokenizer.pad_token_id)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)
    assert together.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0])


def test_training_groups_put_the_positive_first():
    rng = random.Random(0)
    ex = [TrainExample("q", ["p"], ["n1"]), TrainExample("r", ["p2"], ["a", "b", "c", "d"])]
    groups = llara.training_groups(ex, 3, rng)
    assert groups[0] == ("q", ["p", "n1", "n1"])  # too few negatives: drawn with repetition
    assert groups[1][1][0] == "p2" and len(set(groups[1][1][1:])) == 2
    with pytest.raises(DataError, match="no negatives"):
        llara.training_groups([TrainExample("q", ["p"])], 2, rng)


# --------------------------------------------------------------------------- the steps


def test_steps_pretrain_finetune_evaluate(lm_dir, passages, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [p.to_json() for p in passages])
    held = passages[-8:]
    queries = {f"q{i}": p.title or p.text[:30] for i, p in enumerate(held)}
    write_beir(tmp_path / "eval", EvalSet(held, queries, {f"q{i}": {p.id: 1} for i, p in enumerate(held)}))
    train = tmp_path / "train.jsonl"
    others = [p.text[:200] for p in passages[:20]]
    write_jsonl(
        train,
        [{"query": p.title or p.text[:30], "pos": [p.text[:200]], "neg": others[i % 7 : i % 7 + 3]} for i, p in enumerate(passages[:20])],
    )
    cfg = _cfg()
    out = {"llara_pretrained_lm": tmp_path / "pre", "llara_pretrain_loss_curve": tmp_path / "curve.json"}
    pretrain_llara.run(cfg, {"base_lm": lm_dir, "corpus": corpus}, out)
    curve = json.loads(out["llara_pretrain_loss_curve"].read_text())
    assert len(curve) == 3 and set(curve[0]) == {"step", "ar", "ebae", "ebar", "total"}
    assert len(llara.load_lm(out["llara_pretrained_lm"], cfg.llara)[0]) == 416  # the tokens were saved with it
    finetune_llara.run(cfg, {"lm": out["llara_pretrained_lm"], "train_data": train}, {"llara_model": tmp_path / "ft"}, output="llara_model")
    finetune_llara.run(cfg, {"lm": lm_dir, "train_data": train}, {"llara_plain_model": tmp_path / "plain"}, output="llara_plain_model")
    assert not any((tmp_path / "ft").glob("adapter_*"))  # merged: a plain LM directory
    metrics_path = tmp_path / "research_llara.json"
    evaluate_llara.run(
        cfg,
        {
            "llara_model": tmp_path / "ft",
            "llara_plain_model": tmp_path / "plain",
            "llara_pretrained_lm": out["llara_pretrained_lm"],
            "eval_set": tmp_path / "eval",
        },
        {"research_llara": metrics_path},
    )
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == {f"{s}/{m}" for s in ("llara", "plain") for m in ("ndcg@10", "recall@10", "mrr@10")} | {
        "pretrain_only/ndcg@10",
        "ndcg@10_gain",
    }
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "ndcg@10_gain")
    assert metrics["ndcg@10_gain"] == pytest.approx(metrics["llara/ndcg@10"] - metrics["plain/ndcg@10"], abs=1e-5)


def test_lengths_beyond_the_window_fail(lm_dir):
    with pytest.raises(ConfigError, match="exceed the LM's window of 96"):
        llara.load_lm(lm_dir, _cfg(passage_max_len=120).llara)


def test_pretraining_and_fine_tuning_killed_after_a_checkpoint_resume_to_the_same_model(lm_dir, passages, tmp_path):
    """A re-run after a kill resumes from the newest checkpoint (its LM weights, AdamW and the
    schedule, torch's RNG for dropout, the batch draws) and ends where an uninterrupted run does."""
    from safetensors.torch import load_file

    from tests.loop_kill import killed_after

    cfg = _cfg(pretrain_steps=4, finetune_steps=3, save_steps=2, lora_dropout=0.3).llara
    examples = [
        TrainExample(p.title or p.text[:30], [p.text[:200]], [q.text[:200] for q in passages[i + 1 : i + 3]])
        for i, p in enumerate(passages[:12])
    ]
    whole, whole_log = llara.pretrain(cfg, lm_dir, passages, tmp_path / "whole" / "pre")
    with killed_after(2):
        llara.pretrain(cfg, lm_dir, passages, tmp_path / "cut" / "pre")
    resumed, resumed_log = llara.pretrain(cfg, lm_dir, passages, tmp_path / "cut" / "pre")
    assert resumed_log == whole_log and resumed == whole
    weights = [load_file(tmp_path / run / "pre" / "model.safetensors") for run in ("whole", "cut")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    _, tuned_log = llara.finetune(cfg, lm_dir, examples, tmp_path / "whole" / "ft")
    with killed_after(2):
        llara.finetune(cfg, lm_dir, examples, tmp_path / "cut" / "ft")
    _, resumed_tuned_log = llara.finetune(cfg, lm_dir, examples, tmp_path / "cut" / "ft")
    assert resumed_tuned_log == tuned_log  # step 3 drew the same groups and dropout
    weights = [load_file(tmp_path / run / "ft" / "model.safetensors") for run in ("whole", "cut")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not list((tmp_path / "cut").glob(".*.checkpoints"))
