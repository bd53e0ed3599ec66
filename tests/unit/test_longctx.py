"""The long-context branch on tiny real models: a Llama (hidden 32, 2 layers) trained from
scratch at 64 tokens on stdlib docstrings, extended 4x to 256 with LoRA; the steps run end to end."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
import torch
from safetensors.torch import load_file

from flagops.config import ConfigError, validate
from flagops.data.corpus import module_passages
from flagops.data.formats import write_jsonl
from flagops.longctx import extend
from flagops.longctx.base import train_tokenizer
from flagops.longctx.evaluate import continuation_logprob, load, perplexity, rouge_l
from flagops.longctx.needle import ANSWER, IGNORE, NEEDLE, QUESTION, TokenPool, ids, needle_sample, split_passages, training_samples
from flagops.steps import evaluate_long_context, extend_context, train_base_lm
from flagops.training import common

MODULES = ["json", "csv", "textwrap", "shutil", "pathlib", "argparse"]
TINY = {
    "base_context": 64,
    "vocab_size": 400,
    "hidden_size": 32,
    "num_heads": 2,
    "num_kv_heads": 1,
    "samples": 64,
    "base_train": {"learning_rate": 3e-3, "max_steps": 12, "batch_size": 8, "logging_steps": 2, "save_steps": 100},
    "extend_train": {"learning_rate": 2e-3, "max_steps": 4, "batch_size": 4, "logging_steps": 1, "save_steps": 100},
    "needle_lengths": [64, 256],
    "needle_depths": [0.0, 1.0],
    "needle_trials": 1,
    "topic_samples": 2,
    "topic_passages": 2,
}


def _cfg(**longctx):
    return validate({"longctx": {**TINY, **longctx}})


@pytest.fixture(scope="module")
def passages():
    return module_passages(MODULES, 150)


@pytest.fixture(scope="module")
def corpus(passages, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_jsonl(path, [p.to_json() for p in passages])
    return path


@pytest.fixture(scope="module")
def tokenizer(passages):
    return train_tokenizer([p.full_text for p in passages], 400)


@pytest.fixture(scope="module")
def base_lm(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base_lm"
    curve = out.parent / "loss.json"
    train_base_lm.run(_cfg(), {"corpus": corpus}, {"base_lm": out, "base_lm_loss_curve": curve})
    return out, json.loads(curve.read_text())


@pytest.fixture(scope="module")
def extended_lm(base_lm, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("extended") / "extended_lm"
    extend_context.run(_cfg(), {"base_lm": base_lm[0], "corpus": corpus}, {"extended_lm": out})
    return out


# ---------------------------------------------------------------- metrics by hand


def test_rouge_l_matches_a_hand_computation():
    # LCS of "the cat sat on the mat" and "the cat is on the mat" is "the cat on the mat": 5 of 6 words each way.
    assert rouge_l("the cat sat on the mat".split(), "the cat is on the mat".split()) == pytest.approx(5 / 6)
    # Characters: "40231" vs "40213" share "4021" (or "4023"): P = R = 4/5.
    assert rouge_l("40231", "40213") == pytest.approx(0.8)
    # Unequal lengths: LCS("ab", "abcd") = 2, P = 1, R = 1/2, F = 2 * 1 * 0.5 / 1.5.
    assert rouge_l("ab", "abcd") == pytest.approx(2 / 3)
    assert rouge_l("", "abc") == 0.0 and rouge_l("xyz", "abc") == 0.0 and rouge_l("abc", "abc") == 1.0


def test_perplexity_is_exp_of_the_mean_token_nll(base_lm, passages):
    tok, model = load(base_lm[0])
    passage = passages[0]
    tokens = ids(tok, passage.full_text + "\n\n")
    # One window holds the whole passage: exp(-log p(tokens | bos) / their count).
    want = math.exp(-continuation_logprob(model, [tok.bos_token_id], tokens) / len(tokens))
    assert perplexity(model, tok, [passage], context=len(tokens) + 1) == pytest.approx(want, rel=1e-4)
    # Windows of 9 tokens (bos + 8): each window's predictions start again after a bos.
    windows = [tokens[i : i + 8] for i in range(0, len(tokens), 8)]
    nll = -sum(continuation_logprob(model, [tok.bos_token_id], w) for w in windows)
    assert perplexity(model, tok, [passage], context=9) == pytest.approx(math.exp(nll / len(tokens)), rel=1e-4)


# ---------------------------------------------------------------- samples


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 1.0])
def test_needle_sits_at_its_depth_and_the_sample_has_its_length(tokenizer, passages, depth):
    rng = random.Random(0)
    s = needle_sample(tokenizer, TokenPool(tokenizer, passages), 200, depth, "json", "40213", rng)
    needle = ids(tokenizer, NEEDLE.format(key="json", code="40213"))
    question = ids(tokenizer, QUESTION.format(key="json"))
    assert len(s.prompt_ids) + len(s.answer_ids) == 200
    assert s.prompt_ids[0] == tokenizer.bos_token_id and s.answer_ids[-1] == tokenizer.eos_token_id
    assert s.prompt_ids[s.needle_start : s.needle_start + len(needle)] == needle and s.needle_len == len(needle)
    room = 200 - 1 - len(needle) - len(question) - len(s.answer_ids)  # haystack tokens
    assert s.needle_start == 1 + round(depth * room)
    assert s.prompt_ids[-len(question) :] == question
    assert tokenizer.decode(s.answer_ids, skip_special_tokens=True) == ANSWER.format(code="40213")
    assert len(ids(tokenizer, " 40213")) == 6  # digits one token each: a code is copied digit by digit


def test_training_mix_short_fraction_and_labels(tokenizer, passages):
    samples = training_samples(tokenizer, passages, 40, (64, 128), 32, 0.25, seed=1)
    short = [s for s in samples if IGNORE not in s["labels"]]
    needles = [s for s in samples if IGNORE in s["labels"]]
    assert len(short) == 10 and all(len(s["input_ids"]) == 32 and s["labels"] == s["input_ids"] for s in short)
    for s in needles:
        assert 64 <= len(s["input_ids"]) <= 128
        answer = [t for t in s["labels"] if t != IGNORE]
        assert answer[-1] == tokenizer.eos_token_id and s["input_ids"][-len(answer) :] == answer  # loss on the answer only


def test_split_is_stable_and_disjoint(passages):
    train, held = split_passages(passages, 0.1)
    assert len(held) == round(len(passages) * 0.1) and not {p.id for p in train} & {p.id for p in held}
    assert split_passages(list(reversed(passages)), 0.1)[1] == sorted(held, key=lambda p: -passages.index(p))


# ---------------------------------------------------------------- config, RoPE, LoRA, QLoRA


def test_config_refuses_needles_longer_than_the_extended_window():
    with pytest.raises(ConfigError, match="needle_lengths"):
        _cfg(needle_lengths=[64, 512])  # 64 x 4 = 256


@pytest.mark.parametrize("scaling", ["theta", "linear", "dynamic", "yarn"])
def test_extended_config_raises_theta_or_scales_positions(base_lm, scaling):
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(str(base_lm[0]))
    cfg = _cfg(rope_scaling=scaling).longctx
    new = extend.extended_config(base, cfg)
    assert base.max_position_embeddings == 64 and new.max_position_embeddings == 256
    assert base.rope_parameters["rope_theta"] == 10000.0  # the base is untouched
    if scaling == "theta":
        assert new.rope_parameters == {"rope_type": "default", "rope_theta": 160000.0}
    else:
        assert new.rope_parameters["rope_type"] == scaling and new.rope_parameters["factor"] == 4.0
        assert new.rope_parameters["rope_theta"] == 10000.0
    if scaling == "yarn":
        assert new.rope_parameters["original_max_position_embeddings"] == 64


def test_lora_at_flagembedding_settings():
    lora = extend.lora_config(_cfg().longctx)
    assert (lora.r, lora.lora_alpha) == (32, 16.0)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"} and not lora.modules_to_save
    assert extend.lora_config(_cfg(train_embeddings=True).longctx).modules_to_save == ["embed_tokens"]


def test_qlora_config_only_with_cuda(monkeypatch):
    """No GPU and no bitsandbytes here: the 4-bit config is built with CUDA mocked, never loaded or run."""
    cfg = _cfg().longctx
    assert extend.quantization_config(cfg) is None  # CPU: plain fp32 LoRA
    assert "bitsandbytes" not in sys.modules
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    q = extend.quantization_config(cfg)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert extend.quantization_config(_cfg(qlora=False).longctx) is None


# ---------------------------------------------------------------- training


def test_base_trains_from_scratch_and_its_loss_falls(base_lm):
    from transformers import AutoConfig, AutoTokenizer

    out, curve = base_lm
    losses = [row["loss"] for row in curve]
    assert len(losses) == 6 and sum(losses[-2:]) < sum(losses[:2]) - 0.5  # ln(400) ~ 6.0 at the start
    config = AutoConfig.from_pretrained(str(out))
    assert config.max_position_embeddings == 64 and config.rope_parameters["rope_theta"] == 10000.0
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("x")["input_ids"][0] == tok.bos_token_id and tok.pad_token == "<pad>" and tok.eos_token == "</s>"
    assert not common.checkpoint_dir(out).exists()


def test_extension_saves_merged_model_adapter_and_rope_settings(base_lm, extended_lm):
    from peft import PeftModel

    settings = json.loads((extended_lm / extend.SETTINGS_FILE).read_text())
    assert settings["factor"] == 4 and settings["max_position_embeddings"] == 256
    assert settings["rope_parameters"]["rope_theta"] == 160000.0 and settings["original_rope_parameters"]["rope_theta"] == 10000.0
    adapter = json.loads((extended_lm / extend.ADAPTER_DIR / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (32, 16.0)
    assert adapter["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]  # sorted: the same bytes in every process
    # The merged weights compute what base + adapter compute.
    cfg = _cfg().longctx
    _, base = extend.load_extended(base_lm[0], cfg)
    with_adapter = PeftModel.from_pretrained(base, str(extended_lm / extend.ADAPTER_DIR)).eval()
    _, merged = load(extended_lm)
    x = torch.randint(3, 400, (1, 100))
    torch.testing.assert_close(merged(x).logits, with_adapter(x).logits, atol=1e-4, rtol=1e-4)
    base_q = load_file(str(base_lm[0] / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(load_file(str(extended_lm / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"], base_q)


def test_extension_resumes_after_a_crash(base_lm, passages, tmp_path, crash_training_at, capsys):
    cfg = _cfg(extend_train={**TINY["extend_train"], "save_steps": 2}, lora_dropout=0.0).longctx
    train, _ = split_passages(passages, cfg.held_out_fraction)
    out = tmp_path / "extended"
    crash_training_at(3)  # after checkpoint-2
    with pytest.raises(KeyboardInterrupt):
        extend.extend_context(cfg, base_lm[0], train, out)
    assert (common.checkpoint_dir(out) / "checkpoint-2").is_dir() and not out.exists()
    crash_training_at(None)
    summary = extend.extend_context(cfg, base_lm[0], train, out)
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert summary["steps"] == 4 and not common.checkpoint_dir(out).exists()
    extend.extend_context(cfg, base_lm[0], train, tmp_path / "uninterrupted")
    resumed = load_file(str(out / extend.ADAPTER_DIR / "adapter_model.safetensors"))
    uninterrupted = load_file(str(tmp_path / "uninterrupted" / extend.ADAPTER_DIR / "adapter_model.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], uninterrupted[key], atol=1e-6, rtol=0, msg=key)


# ---------------------------------------------------------------- evaluation


def test_evaluation_writes_metrics_and_heatmap(base_lm, extended_lm, corpus, tmp_path):
    from PIL import Image

    outputs = {"longctx_metrics": tmp_path / "metrics.json", "needle_heatmap": tmp_path / "needle.png"}
    evaluate_long_context.run(_cfg(), {"base_lm": base_lm[0], "extended_lm": extended_lm, "corpus": corpus}, outputs)
    metrics = json.loads(outputs["longctx_metrics"].read_text())
    for model in ("base", "extended"):
        for key in ("needle_exact_match", "needle_rouge_l", "topic_accuracy"):
            assert 0.0 <= metrics[f"{model}/{key}"] <= 1.0
        assert 1.0 < metrics[f"{model}/short_ppl"] < 400 * 2  # a trained model beats ~uniform over 400 tokens, give or take
        for length in (64, 256):
            for depth in ("0", "1"):
                assert f"{model}/needle_rouge_l/len{length}/depth{depth}" in metrics
    assert metrics["short_ppl_change"] == pytest.approx(metrics["extended/short_ppl"] / metrics["base/short_ppl"] - 1)
    assert metrics["topic_chance"] == 0.5
    with Image.open(outputs["needle_heatmap"]) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side


def test_answer_loss_equals_hf_loss_and_gradient():
    """AnswerLossTrainer's loss (logits at the labelled positions only) equals HF's full-logits loss
    and gradient on a tiny random Llama, with a prompt masked out and rows of different lengths."""
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from flagops.longctx.base import AnswerLossTrainer, predicting_positions

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64
    )
    model = LlamaForCausalLM(config)
    input_ids = torch.randint(3, 50, (2, 12))
    labels = torch.full((2, 12), IGNORE)
    labels[0, 8:11] = input_ids[0, 8:11]  # a 3-token answer after an 8-token prompt
    labels[1, 5:7] = input_ids[1, 5:7]
    mask = torch.ones_like(input_ids)
    mask[0, 11:] = 0  # row 0 is padded at the end
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    assert predicting_positions(labels).tolist() == [4, 5, 7, 8, 9]

    expected = model(**batch).loss
    (want,) = torch.autograd.grad(expected, model.model.layers[0].self_attn.q_proj.weight)
    trainer = AnswerLossTrainer(model=model, args=TrainingArguments(output_dir="/tmp/unused", report_to=[], use_cpu=True))
    got = trainer.compute_loss(model, batch)
    (have,) = torch.autograd.grad(got, model.model.layers[0].self_attn.q_proj.weight)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-7)
    # by hand: the mean NLL of the five labelled tokens under the full logits
    logp = torch.log_softmax(model(input_ids, attention_mask=mask).logits, dim=-1)
    nll = [-logp[r, i - 1, input_ids[r, i]] for r, cols in ((0, range(8, 11)), (1, range(5, 7))) for i in cols]
    assert got.item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-5)
