"""LLM and layerwise rerankers on the random tiny decoder (4-layer Llama, byte-level BPE)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from flagops.config import DEFAULT_RERANK_PROMPT, ConfigError, RerankerConfig
from flagops.models import llm_reranker
from flagops.models.layout import RERANKER_FILE
from flagops.models.llm_reranker import LayerwiseReranker, LLMReranker, build, yes_id
from flagops.models.reranker import load_reranker

PAIRS = [
    ("what does open return", "Open file and return a stream. Raise OSError upon failure."),
    ("sort a list in place", "Sort the list in ascending order and return None."),
    ("length of a sequence", "Return the number of items in a container."),
    ("join strings", "Concatenate any number of strings, with the separator between them."),
]


def config(kind: str, **overrides) -> RerankerConfig:
    return RerankerConfig(kind=kind, base="tiny-decoder", query_max_len=8, passage_max_len=16, **overrides)


@pytest.fixture(scope="module")
def llm() -> LLMReranker:
    return build(config("llm"))


@pytest.fixture(scope="module")
def layerwise() -> LayerwiseReranker:
    return build(config("layerwise"))


def perturb_lora(model: LLMReranker) -> None:
    """LoRA starts as a no-op (B = 0); make it change the scores, as training would."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)


def test_input_is_flagembeddings_layout_left_padded(llm):
    tok = llm.tokenizer

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    long_query = "how do I open a file for reading and writing in binary mode"
    pairs = [(long_query, "Open file and return a stream."), ("len", "Return the length.")]
    enc = llm.tokenize(pairs, prompts=[None, "Relevant?"])

    query_ids = ids("A: " + long_query)
    assert len(query_ids) > 8  # so the query is really cut to query_max_len
    first = [
        tok.bos_token_id,
        *query_ids[:8],
        *ids("\n"),
        *ids("B: Open file and return a stream."),
        *ids("\n"),
        *ids(DEFAULT_RERANK_PROMPT),
    ]
    second = [tok.bos_token_id, *ids("A: len"), *ids("\n"), *ids("B: Return the length."), *ids("\n"), *ids("Relevant?")]
    width = len(first)
    assert enc["input_ids"][0].tolist() == first
    assert enc["input_ids"][1].tolist() == [tok.pad_token_id] * (width - len(second)) + second
    assert enc["attention_mask"][1].tolist() == [0] * (width - len(second)) + [1] * len(second)
    assert ids("\n") != [] and tok.bos_token_id != tok.pad_token_id
    assert tok.decode(second) == "<s>A: len\nB: Return the length.\nRelevant?"
    # The passage is cut to passage_max_len tokens.
    long_passage = " ".join(["word"] * 40)
    row = llm.tokenize([("q", long_passage)])["input_ids"][0].tolist()
    assert row == [tok.bos_token_id, *ids("A: q"), *ids("\n"), *ids("B: " + long_passage)[:16], *ids("\n"), *ids(DEFAULT_RERANK_PROMPT)]
    # FlagLLMReranker's cap: [bos] query \n passage fits passage_max_len + len(\n) + len(prompt) tokens,
    # which bites when the prompt is shorter than the query.
    row = llm.tokenize([(long_query, long_passage)], prompts=["Relevant?"])["input_ids"][0].tolist()
    room = 16 + len(ids("\n")) + len(ids("Relevant?")) - 1 - 8 - len(ids("\n"))
    assert room < 16
    assert row == [tok.bos_token_id, *query_ids[:8], *ids("\n"), *ids("B: " + long_passage)[:room], *ids("\n"), *ids("Relevant?")]
    # max_length caps the same part; token_lengths counts it untruncated.
    assert len(llm.tokenize([(long_query, long_passage)], max_length=12)["input_ids"][0]) == 12 + len(ids("\n" + DEFAULT_RERANK_PROMPT))
    assert llm.token_lengths([("q", long_passage)]) == [1 + len(ids("A: q")) + len(ids("\n")) + len(ids("B: " + long_passage))]


def test_yes_token_is_what_inference_reads(llm):
    tok = llm.tokenizer
    assert llm.yes_token_id == yes_id(tok) == tok("Yes", add_special_tokens=False)["input_ids"][0]
    assert tok("Yes")["input_ids"] == [tok.bos_token_id, llm.yes_token_id]  # so the trainer's [-1] agrees
    assert tok.convert_ids_to_tokens(llm.yes_token_id) == "Yes"
    enc = llm.tokenize(PAIRS[:2])
    with torch.no_grad():
        full = llm.model(**enc).logits  # (batch, seq, vocab), every position
        assert torch.allclose(llm(**enc), full[:, -1, llm.yes_token_id], atol=1e-6)


@pytest.mark.parametrize("kind", ["llm", "layerwise"])
def test_left_padding_does_not_change_a_score(kind, llm, layerwise):
    model = llm if kind == "llm" else layerwise
    batch = model.score_pairs(PAIRS, batch_size=4)
    single = np.array([model.score_pairs([pair], batch_size=1)[0] for pair in PAIRS])
    assert np.abs(batch - single).max() < 1e-5
    assert len(set(model.tokenize(PAIRS)["attention_mask"].sum(1).tolist())) > 1  # the batch really was padded


def test_layerwise_heads_start_as_the_yes_row_and_cutoff_layers_exit_early(llm, layerwise):
    assert layerwise.layers == [2, 3, 4]  # start_layer 8 on 4 layers: half the depth
    lm_head = layerwise.causal_lm().get_output_embeddings()
    for head in layerwise.heads:
        assert torch.equal(head.weight[0], lm_head.weight[layerwise.yes_token_id])
    enc = layerwise.tokenize(PAIRS)
    with torch.no_grad():
        all_layers = layerwise(**enc)  # (n_layers, batch)
        assert all_layers.shape == (3, len(PAIRS))
        assert torch.allclose(all_layers[-1], llm(**enc), atol=1e-5)  # same base weights (LoRA B = 0)
        for i, layer in enumerate(layerwise.layers):
            assert torch.allclose(layerwise.layer_score(**enc, layer=layer), all_layers[i], atol=1e-5)
    assert not np.allclose(layerwise.score_pairs(PAIRS, cutoff_layer=2), layerwise.score_pairs(PAIRS))
    with pytest.raises(ConfigError, match="cutoff layer 1: .* layers 2..4"):
        layerwise.score_pairs(PAIRS, cutoff_layer=1)


@pytest.mark.parametrize("kind", ["llm", "layerwise"])
def test_lora_save_writes_merged_model_and_adapter_that_reload_to_the_same_scores(kind, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = build(config(kind))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    extra = [n for n in trainable if "lora_" not in n]
    assert trainable and extra == ([] if kind == "llm" else [f"heads.{i}.weight" for i in range(3)])
    perturb_lora(model)
    expected = model.score_pairs(PAIRS)

    model.save(tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    targets = json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets)  # peft writes a set: sorted, the same bytes in every process (a re-run hashes alike)
    meta = json.loads((out / RERANKER_FILE).read_text())
    assert meta["kind"] == kind and meta["yes_token_id"] == model.yes_token_id
    assert (meta["query_max_len"], meta["passage_max_len"], meta["prompt"]) == (8, 16, DEFAULT_RERANK_PROMPT)
    with safe_open(str(out / "model.safetensors"), "pt") as weights:
        assert not any("lora" in k for k in weights.keys())  # a plain, merged model

    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # transformers 4.x reads it too
    assert tokenizer_config["padding_side"] == "left"

    reloaded = load_reranker(out)
    assert type(reloaded) is (LLMReranker if kind == "llm" else LayerwiseReranker)
    assert np.abs(reloaded.score_pairs(PAIRS) - expected).max() < 1e-5
    assert np.allclose(reloaded.score(PAIRS[0][0], [PAIRS[0][1]], normalize=True), 1 / (1 + np.exp(-expected[:1])))
    if kind == "llm":  # the adapter on the base model scores the same too
        base = AutoModelForCausalLM.from_pretrained(str(llm_reranker.resolve_decoder_source("tiny-decoder")))
        with_adapter = LLMReranker(
            PeftModel.from_pretrained(base, str(out / "adapter")), reloaded.tokenizer, query_max_len=8, passage_max_len=16
        )
        assert np.abs(with_adapter.score_pairs(PAIRS) - expected).max() < 1e-5


@pytest.mark.parametrize("kind", ["llm", "layerwise"])
def test_one_optimiser_step_lowers_the_grouped_cross_entropy(kind):
    model = build(config(kind)).eval()  # eval: no LoRA dropout, so the two losses compare
    enc = model.tokenize(PAIRS)  # one group: the positive first, then 3 negatives

    def loss() -> torch.Tensor:
        scores = model(**enc).reshape(-1, 1, len(PAIRS))  # (layers, groups, group size)
        target = torch.zeros(scores.shape[1], dtype=torch.long)
        return sum(F.cross_entropy(s, target) for s in scores)  # summed over layers, as layerwise trains

    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = loss()
    before.backward()
    optimiser.step()
    with torch.no_grad():
        assert loss().item() < before.item() - 1e-4


def test_load_reranker_reads_a_plain_causal_lm_with_flagllmrerankers_defaults(llm):
    plain = load_reranker("tiny-decoder", max_length=64)
    assert type(plain) is LLMReranker and (plain.query_max_len, plain.passage_max_len, plain.prompt) == (48, 64, DEFAULT_RERANK_PROMPT)
    same_lengths = load_reranker("tiny-decoder", query_max_len=8, passage_max_len=16)
    assert np.abs(same_lengths.score_pairs(PAIRS) - llm.score_pairs(PAIRS)).max() < 1e-5  # untrained LoRA: the base's scores


def test_lora_targets_fall_back_to_pefts_defaults_when_none_exists():
    model = build(config("llm", lora_target_modules=("c_attn",)))
    assert any("q_proj.lora_A" in n for n, _ in model.named_parameters())


def test_a_base_that_is_not_a_causal_lm_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        build(RerankerConfig(kind="llm", base="tiny-bert"))  # a BertModel, an encoder
    message = str(err.value)
    assert "reranker.base='tiny-bert'" in message and "not a causal LM" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"^reranker.base: .*no such directory"):
        build(RerankerConfig(kind="layerwise", base=str(tmp_path / "missing")))
