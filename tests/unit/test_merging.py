"""LM-Cocktail merging: the maths by hand on tiny tensors, by-layers against in-memory, the three
kinds round-tripping through their loaders, and bad input (one line, nothing written)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flagops.config import load_config
from flagops.merging import MergeError, check_weights, merge_models, mix_state_dicts, mix_tensor, softmax_weights
from flagops.merging.task_loss import (
    IGNORE,
    Completion,
    contrastive_loss,
    data_weights,
    decoder_batch,
    decoder_loss,
    encoder_loss,
    masked_lm_loss,
    read_examples,
    reranker_loss,
    sample_groups,
)
from flagops.models.reranker import resolve_reranker_source
from flagops.models.sources import resolve_model_source


def _ce0(xs: list[float]) -> float:
    """Cross-entropy with target 0: log(sum exp) - x0."""
    return math.log(sum(math.exp(x) for x in xs)) - xs[0]


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory, keyed by file/name."""
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update({f"{f.name}/{k}": v for k, v in load_file(str(f)).items()})
    for f in sorted(directory.glob("*.pt")):
        out.update({f"{f.name}/{k}": v for k, v in torch.load(str(f), weights_only=True).items()})
    return out


def _perturbed(source: Path, dest: Path, seed: int) -> Path:
    """A copy of ``source`` with noise added to every float weight: a second 'fine-tuned' ingredient."""
    shutil.copytree(source, dest)
    gen = torch.Generator().manual_seed(seed)
    for f in dest.glob("*.safetensors"):
        state = load_file(str(f))
        state = {k: v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(f), metadata={"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def berts() -> list[Path]:
    return [resolve_model_source(f"tiny-bert@{s}") for s in (0, 1, 2)]


@pytest.fixture(scope="module")
def m3s(tmp_path_factory) -> list[Path]:
    from flagops.models.m3 import M3Embedder

    root = tmp_path_factory.mktemp("m3")
    dirs = []
    for seed in (0, 1):
        M3Embedder.load(f"tiny-bert@{seed}", heads=True, seed=seed).save(root / f"m3-{seed}")
        dirs.append(root / f"m3-{seed}")
    return dirs


def _rows(n: int, negs: int = 8) -> list[dict]:
    words = ["parse", "json", "socket", "thread", "regex", "path", "date", "zip", "hash", "queue"]
    return [
        {"query": f"how to {w}", "pos": [f"the {w} module does {w}"], "neg": [f"the {v} module" for v in words if v != w][:negs]}
        for w in words[:n]
    ]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- maths by hand


def test_mix_is_the_weighted_sum_and_integers_are_copied_from_the_first():
    a = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 5.0]), "ids": torch.tensor([7, 9])}
    mixed = mix_state_dicts([a, b], [0.25, 0.75])
    assert mixed["w"].tolist() == [0.25 * 1 + 0.75 * 3, 0.25 * 2 + 0.75 * 5]  # [2.5, 4.25]
    assert mixed["ids"].tolist() == [0, 1] and mixed["ids"].dtype == torch.int64

    def lazily():  # an integer tensor never reads the other ingredients
        yield torch.tensor([4, 2])
        raise AssertionError("read a second integer tensor")

    assert mix_tensor(lazily(), [0.5, 0.5]).tolist() == [4, 2]
    half = mix_tensor([torch.tensor([1.0], dtype=torch.float16), torch.tensor([2.0], dtype=torch.float16)], [0.5, 0.5])
    assert half.dtype == torch.float16 and half.item() == 1.5


def test_softmax_weights_by_hand():
    losses, t = [1.0, 2.0, 4.0], 5.0
    z = sum(math.exp(-x / t) for x in losses)
    assert softmax_weights(losses, t) == pytest.approx([math.exp(-x / t) / z for x in losses], rel=1e-12)
    assert softmax_weights([3.0, 3.0], 5.0) == pytest.approx([0.5, 0.5])


def test_contrastive_loss_by_hand():
    # two queries, group of 3 (positive first); unit vectors in 2-D
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([[[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], [[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]])
    s0 = [0.8 / 0.05, 0.0, -1.0 / 0.05]
    s1 = [1.0 / 0.05, 0.6 / 0.05, 0.8 / 0.05]
    assert contrastive_loss(q, p).item() == pytest.approx((_ce0(s0) + _ce0(s1)) / 2, rel=1e-5)


def test_masked_lm_loss_by_hand():
    # one row of 4 tokens: the first two are the prompt (masked); position t predicts label t+1
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, 3.0], [9.0, 9.0, 9.0]]])
    labels = torch.tensor([[IGNORE, IGNORE, 2, 0]])
    # scored: position 1 -> token 2, position 2 -> token 0; the last position predicts nothing
    nll1 = math.log(math.exp(1) + 2) - 0.0
    nll2 = math.log(2 * math.exp(0.5) + math.exp(3)) - 0.5
    assert masked_lm_loss(logits, labels).item() == pytest.approx((nll1 + nll2) / 2, rel=1e-6)


def test_check_weights():
    assert check_weights([0.1] * 10, 10) == [0.1] * 10  # float rounding is not an error
    with pytest.raises(MergeError, match=r"weights \[0\.5, 0\.6\] sum to 1\.1, not 1"):
        check_weights([0.5, 0.6], 2)
    with pytest.raises(MergeError, match="2 weights for 3 models"):
        check_weights([0.5, 0.5], 3)


# --------------------------------------------------------------------------- task losses on real tiny models


def test_encoder_loss_is_the_group_ce_of_its_embeddings(berts):
    from flagops.models.embedder import Embedder

    groups = sample_groups([(f"row{i}", r) for i, r in enumerate(_rows(3, negs=5))], neg_number=3, seed=0)
    assert [len(g.passages) for g in groups] == [4, 4, 4] and groups[0].passages[0] == "the parse module does parse"
    emb = Embedder.load(berts[0], normalize=True)
    q = emb.encode([g.query for g in groups], is_query=True)
    expected = np.mean([_ce0([float(q[i] @ v) / 0.05 for v in emb.encode(list(g.passages))]) for i, g in enumerate(groups)])
    assert encoder_loss(berts[0], groups) == pytest.approx(expected, rel=1e-4)


def test_reranker_loss_is_the_grouped_ce_of_its_logits():
    from flagops.models.reranker import load_reranker

    path = resolve_reranker_source("tiny-reranker@0")
    groups = sample_groups([(f"row{i}", r) for i, r in enumerate(_rows(2, negs=4))], neg_number=2, seed=1)
    reranker = load_reranker(path)
    expected = np.mean([_ce0(reranker.score_pairs([(g.query, t) for t in g.passages]).tolist()) for g in groups])
    assert reranker_loss(path, groups) == pytest.approx(expected, rel=1e-4)


def test_decoder_loss_masks_the_prompt_and_matches_the_hf_loss():
    from flagops.models.llm_reranker import load_causal_lm

    path = resolve_reranker_source("tiny-decoder@0")
    tokenizer, model = load_causal_lm(path, "test", MergeError)
    examples = [Completion("Question: what parses json", "the json module"), Completion("Q: sockets", "socket")]
    batch = decoder_batch(tokenizer, examples)
    prompt0 = len(tokenizer(examples[0].input)["input_ids"])
    labels0 = batch["labels"][0].tolist()
    assert labels0[:prompt0] == [IGNORE] * prompt0 and labels0[prompt0] != IGNORE
    assert batch["labels"][1][batch["attention_mask"][1] == 0].eq(IGNORE).all()  # padding is never scored
    with torch.no_grad():
        hf = model(**batch).loss.item()  # transformers' shifted, ignore-index mean
    assert decoder_loss(path, examples) == pytest.approx(hf, rel=1e-5)


def test_data_weights_are_the_softmax_of_minus_the_losses(berts, tmp_path):
    rows = read_examples(_write_rows(tmp_path / "train.jsonl", _rows(6)), 5)
    weights, losses = data_weights(berts[:2], rows, temperature=5.0, neg_number=7, seed=0)
    assert len(losses) == 2 and losses[0] != losses[1]
    assert weights == pytest.approx(softmax_weights(losses, 5.0)) and sum(weights) == pytest.approx(1.0)


# --------------------------------------------------------------------------- merging models on disk


def test_by_layers_equals_in_memory_exactly(berts, tmp_path):
    w = [0.5, 0.3, 0.2]
    merge_models(berts, w, tmp_path / "mem", by_layers=False)
    merge_models(berts, w, tmp_path / "layers", by_layers=True)
    mem, layers = _tensors(tmp_path / "mem"), _tensors(tmp_path / "layers")
    assert mem.keys() == layers.keys() and all(torch.equal(mem[k], layers[k]) for k in mem)
    ins = [load_file(str(b / "model.safetensors")) for b in berts]
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(mem[f"model.safetensors/{key}"], sum(wi * s[key] for wi, s in zip(w, ins, strict=True)), atol=1e-6)


def test_m3_heads_are_merged_and_the_result_loads(m3s, tmp_path):
    from flagops.serving.m3_model import load_m3

    summary = merge_models(m3s, [0.7, 0.3], tmp_path / "merged", labels=["candidate", "base"], record={"method": "layers"})
    merged = load_m3(str(tmp_path / "merged"))
    for stem in ("colbert_linear", "sparse_linear"):
        heads = [torch.load(str(m / f"{stem}.pt"), weights_only=True) for m in m3s]
        for name in ("weight", "bias"):
            want = 0.7 * heads[0][name] + 0.3 * heads[1][name]
            assert torch.allclose(getattr(merged, stem).state_dict()[name], want, atol=1e-6)
            assert torch.equal(load_file(str(tmp_path / "merged" / f"{stem}.safetensors"))[name], getattr(merged, stem).state_dict()[name])
    assert merged.encode_m3(["merged text"], modes=("dense", "sparse", "colbert")).dense.shape == (1, 64)
    saved = json.loads((tmp_path / "merged" / "merge.json").read_text())
    assert saved == summary and saved["ingredients"] == [{"source": "candidate", "weight": 0.7}, {"source": "base", "weight": 0.3}]
    assert saved["kind"] == "encoder" and saved["method"] == "layers"
    assert (tmp_path / "merged" / "modules.json").is_file() and (tmp_path / "merged" / "flagops_embedder.json").is_file()


def test_a_cross_encoder_merges_and_loads(tmp_path):
    from flagops.models.reranker import CrossEncoderReranker, load_reranker

    paths = [resolve_reranker_source(f"tiny-reranker@{s}") for s in (0, 2)]
    merge_models(paths, [0.5, 0.5], tmp_path / "merged")
    merged = load_reranker(tmp_path / "merged")
    assert isinstance(merged, CrossEncoderReranker)
    ins = [load_file(str(p / "model.safetensors")) for p in paths]
    assert torch.allclose(merged.model.classifier.weight, 0.5 * ins[0]["classifier.weight"] + 0.5 * ins[1]["classifier.weight"])
    assert np.isfinite(merged.score_pairs([("q", "p")])).all()


def test_a_decoder_merges_and_loads_as_an_llm_reranker(tmp_path):
    from flagops.models.llm_reranker import LLMReranker
    from flagops.models.reranker import load_reranker

    base = resolve_reranker_source("tiny-decoder@0")
    tuned = _perturbed(base, tmp_path / "tuned", seed=3)
    (tuned / "adapter").mkdir()  # a LoRA adapter does not fit the merged weights: it is not copied
    merge_models([tuned, base], [0.6, 0.4], tmp_path / "merged", by_layers=True)
    assert not (tmp_path / "merged" / "adapter").exists()
    merged = load_reranker(tmp_path / "merged")
    assert isinstance(merged, LLMReranker)
    key = "model.layers.0.mlp.up_proj.weight"
    want = 0.6 * load_file(str(tuned / "model.safetensors"))[key] + 0.4 * load_file(str(base / "model.safetensors"))[key]
    assert torch.allclose(merged.model.state_dict()[key], want, atol=1e-6)
    assert np.isfinite(merged.score_pairs([("q", "p")])).all()


# --------------------------------------------------------------------------- the step


def test_the_step_merges_candidate_and_base_by_data(berts, tmp_path, capsys):
    from flagops.steps import merge_models as step

    cfg = load_config("tiny", [f"model.base={berts[1]}", "merge.enabled=true", "merge.method=data"])
    train = _write_rows(tmp_path / "train.jsonl", _rows(5))
    out = tmp_path / "merged"
    step.run(cfg, {"model": berts[0], "train_data": train}, {"merged_model": out})
    saved = json.loads((out / "merge.json").read_text())
    assert [i["source"] for i in saved["ingredients"]] == [str(berts[0]), str(berts[1])]
    assert saved["method"] == "data" and len(saved["losses"]) == 2
    assert [i["weight"] for i in saved["ingredients"]] == pytest.approx(softmax_weights(saved["losses"], 5.0))
    assert "merge_models: encoder by data, weights" in capsys.readouterr().out
    from flagops.models.embedder import Embedder

    assert Embedder.load(out).encode(["text"]).shape == (1, 64)


# --------------------------------------------------------------------------- bad input: one line, nothing written


def test_shapes_that_differ_name_the_tensor_and_both_shapes(berts, tmp_path):
    from transformers import BertModel

    from flagops.models.tiny import tiny_bert_config

    config = tiny_bert_config(30522)
    config.intermediate_size = 96
    BertModel(config).save_pretrained(str(tmp_path / "other"))
    want = r"tensor 'encoder\.layer\.0\.intermediate\.dense\.bias': shape \[128\] in .* but \[96\] in "
    with pytest.raises(MergeError, match=want) as err:
        merge_models([berts[0], tmp_path / "other"], [0.5, 0.5], tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


def test_an_integer_buffer_only_one_checkpoint_holds_is_no_mismatch(berts, tmp_path):
    """An older checkpoint (the MiniLM package's) stores the int64 buffer ``embeddings.position_ids``
    that transformers 5 no longer saves: integers are copied from the first model, so it merges,
    in either order, and a float tensor missing from one model is still refused."""
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(berts[1], old)
    state = load_file(str(old / "model.safetensors"))
    state["embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    merge_models([berts[0], old], [0.5, 0.5], tmp_path / "new-first")
    merge_models([old, berts[0]], [0.5, 0.5], tmp_path / "old-first")
    assert "embeddings.position_ids" not in load_file(str(tmp_path / "new-first" / "model.safetensors"))
    assert torch.equal(load_file(str(tmp_path / "old-first" / "model.safetensors"))["embeddings.position_ids"], torch.arange(64)[None])
    del state["embeddings.position_ids"], state["pooler.dense.bias"]
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MergeError, match=r"tensor 'pooler\.dense\.bias': in .* but not in "):
        merge_models([berts[0], old], [0.5, 0.5], tmp_path / "out")


def test_architectures_that_differ_are_refused(berts, tmp_path):
    with pytest.raises(MergeError, match=r"architecture bert \['BertForSequenceClassification'\] differs"):
        merge_models([berts[0], resolve_reranker_source("tiny-reranker@0")], [0.5, 0.5], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_weights_not_summing_to_one_write_nothing(berts, tmp_path):
    with pytest.raises(MergeError, match=r"weights \[0\.5, 0\.4\] sum to 0\.9"):
        merge_models(berts[:2], [0.5, 0.4], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match=r"weights \[0\.5, 0\.4\] sum to 0\.9"):
        load_config("tiny", ["merge.weights=[0.5,0.4]"])


def test_too_few_examples_or_negatives(berts, tmp_path):
    train = _write_rows(tmp_path / "train.jsonl", _rows(3))
    with pytest.raises(MergeError, match=r"train\.jsonl: 3 examples, but merge\.examples=5 needs 5"):
        read_examples(train, 5)
    rows = read_examples(_write_rows(tmp_path / "few.jsonl", _rows(2, negs=4)), 2)
    with pytest.raises(MergeError, match=r"few\.jsonl:1: 4 negatives, but merge\.neg_number=7"):
        data_weights(berts[:2], rows, temperature=5.0, neg_number=7, seed=0)


def test_a_missing_model_is_named_and_nothing_is_written(berts, tmp_path):
    from flagops.steps import merge_models as step

    cfg = load_config("tiny", ["merge.enabled=true", "merge.method=fixed", f"merge.models=[candidate,{tmp_path / 'gone'}]"])
    with pytest.raises(MergeError, match=r"merge\.models: .*gone.*no such directory"):
        step.run(cfg, {"model": berts[0]}, {"merged_model": tmp_path / "out"})
    with pytest.raises(MergeError, match=r"base: no model at"):
        merge_models([berts[0], tmp_path / "gone"], [0.5, 0.5], tmp_path / "out", labels=["candidate", "base"])
    assert not (tmp_path / "out").exists()
