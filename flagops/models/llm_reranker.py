"""LLM rerankers: a causal LM reads a (query, passage) pair and its "Yes" logit is the score.

The input is FlagEmbedding's (``finetune/reranker/decoder_only``, ``FlagLLMReranker``), each
piece tokenized on its own without special tokens::

    [bos] "A: " + query  "\\n"  "B: " + passage  "\\n"  prompt

with the query cut to ``query_max_len`` tokens and the passage to ``passage_max_len``. Rows
are left padded, so the score is read at the last position. ``[bos]`` is there when the
tokenizer has one that is not its pad token (FlagEmbedding's rule).

``LayerwiseReranker`` adds one score head per decoder layer from ``start_layer`` to the
last (``decoder_only/layerwise``): head k reads the final norm of the hidden state after
k layers, and starts as the "Yes" row of ``lm_head``, so at the start the last layer's
head scores exactly as the plain LLM reranker does. Scoring at a cutoff layer runs only
that many layers (the speed/quality trade-off).

A saved reranker is a merged causal LM directory (what ``FlagLLMReranker`` loads), its
LoRA adapter under ``adapter/``, ``flagops_reranker.json`` (kind, prompt, lengths, the
"Yes" id, the layers) and, for layerwise, the heads in ``layerwise_heads.safetensors``.

``tiny-decoder[@seed]`` is a random 4-layer Llama (hidden 64) for tests, built once into
the flagops cache with a byte-level BPE tokenizer trained offline on MiniLM's vocabulary
words: like a real LLM tokenizer, "\\n" is a token, "Yes" is one token and bos is added.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from flagops.config import DEFAULT_RERANK_PROMPT, ConfigError
from flagops.data.formats import atomic_path
from flagops.models.cache import cache_dir
from flagops.models.layout import RERANKER_FILE
from flagops.models.lora import stable_adapter_config
from flagops.models.pair_scoring import PairScoring
from flagops.models.sources import ModelSourceError, resolve_model_source

log = logging.getLogger(__name__)

TINY_DECODER = "tiny-decoder"
KINDS = ("llm", "layerwise")
QUERY_PREFIX, PASSAGE_PREFIX, SEP = "A: ", "B: ", "\n"
ADAPTER_DIR = "adapter"  # the LoRA adapter inside a saved reranker
HEADS_FILE = "layerwise_heads.safetensors"


# ---------------------------------------------------------------- sources


def resolve_decoder_source(source: str) -> Path:
    """A local directory for ``source``: ``tiny-decoder[@seed]`` or any model source."""
    name, _, seed = source.partition("@")
    if name != TINY_DECODER:
        return resolve_model_source(source)
    if not (seed or "0").isdigit():
        raise ModelSourceError(f"model source {source!r}: expected {TINY_DECODER}@<integer seed>")
    return ensure_tiny_decoder(int(seed or "0"))


def ensure_tiny_decoder(seed: int = 0) -> Path:
    """Build (once) a random tiny Llama causal LM with a byte-level BPE tokenizer; return its directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = cache_dir() / f"tiny-decoder-seed{seed}"
    if (dest / "model.safetensors").is_file():
        return dest
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with atomic_path(dest, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        save_tokenizer(tokenizer, tmp)
    return dest


def tiny_tokenizer():
    """A GPT-2 style byte-level BPE (4096 tokens) trained here, offline and deterministically.

    Its corpus is MiniLM's WordPiece vocabulary (whole English words, lower-case and
    capitalised) plus the reranker template, so "Yes" and "No" become single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from flagops.models.tiny import TOKENIZER_SOURCE

    vocab = (resolve_model_source(TOKENIZER_SOURCE) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab if w.isascii() and w.isalpha()]

    def corpus() -> Iterator[str]:
        for i in range(0, len(words), 16):
            yield " ".join(words[i : i + 16])
            yield " ".join(w.capitalize() for w in words[i : i + 16])
        for _ in range(50):
            yield f"{QUERY_PREFIX}Yes{SEP}{PASSAGE_PREFIX}No{SEP}{DEFAULT_RERANK_PROMPT}"

    specials = ["<pad>", "<s>", "</s>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(corpus(), trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    if len(bpe.encode("Yes", add_special_tokens=False).ids) != 1:
        raise RuntimeError("the tiny decoder's tokenizer split 'Yes'; the reranker reads one 'Yes' token")
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left")


def save_tokenizer(tokenizer, directory: Path) -> None:
    """``save_pretrained``, readable by transformers 4.x too (FlagEmbedding's venv): transformers 5
    names a plain fast tokenizer's class ``TokenizersBackend``, which 4.x lacks; both read
    ``PreTrainedTokenizerFast``."""
    tokenizer.save_pretrained(str(directory))
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def yes_id(tokenizer) -> int:
    """The id whose logit is the score: FlagLLMReranker's ``tokenizer('Yes', add_special_tokens=False)[0]``.

    FlagEmbedding's trainer takes ``tokenizer('Yes').input_ids[-1]`` instead; the two agree
    for tokenizers that add only a bos (Llama, Gemma, tiny-decoder); inference is what a
    saved model is scored with, so it wins where they differ.
    """
    return tokenizer("Yes", add_special_tokens=False)["input_ids"][0]


def load_causal_lm(path: Path, where: str, error: type[Exception]):
    """(tokenizer, float32 causal LM) from a model directory; ``error`` naming ``where`` if it is no causal LM."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    arch = config.get("architectures") or []
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch):
        raise error(
            f"{where}: {path} is not a causal LM (architectures {arch or 'unknown'}); llm and layerwise rerankers "
            f"need a decoder such as a *ForCausalLM directory or {TINY_DECODER}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:  # as FlagEmbedding: unk, else eos; rows are padded on the left
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return tokenizer, model


def add_lora(model: nn.Module, cfg):
    """Wrap ``model`` in peft LoRA (rank, alpha, dropout, target modules from ``cfg``).

    Targets that the model does not have are dropped; when none is left, peft's default
    targets for the architecture are used (GPT-2's ``c_attn`` instead of q/k/v/o), and a
    model peft knows no default for is a ConfigError.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS

    names = {name.rpartition(".")[2] for name, _ in model.named_modules()}
    targets = [t for t in cfg.lora_target_modules if t in names]
    if not targets:
        targets = DEFAULT_TARGETS.get(model.config.model_type)
        if not targets:
            raise ConfigError(
                f"reranker.lora_target_modules={list(cfg.lora_target_modules)}: none is a module of {model.config.model_type}; "
                "name its attention projections, or set reranker.lora=false"
            )
        log.warning("reranker.lora_target_modules %s not in %s; using %s", list(cfg.lora_target_modules), model.config.model_type, targets)
    lora = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets),
    )
    return get_peft_model(model, lora)


def clamp_start_layer(start_layer: int, n_layers: int) -> int:
    """``start_layer`` if the model has that many layers, else half its depth (4 layers: heads on 2..4)."""
    if start_layer <= n_layers:
        return start_layer
    clamped = max(1, n_layers // 2)
    log.warning(
        "reranker.start_layer=%d but the model has %d layers; score heads on layers %d..%d", start_layer, n_layers, clamped, n_layers
    )
    return clamped


# ---------------------------------------------------------------- the rerankers


class LLMReranker(PairScoring, nn.Module):
    """Causal LM + tokenizer; ``forward`` gives the differentiable "Yes" logit per pair, (batch,)."""

    kind = "llm"

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        prompt: str = DEFAULT_RERANK_PROMPT,
        query_max_len: int = 32,
        passage_max_len: int = 128,
        max_length: int = 512,
        yes_token_id: int | None = None,
    ):
        super().__init__()
        self.model = model  # a causal LM, or a peft model around one
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.query_max_len = query_max_len
        self.passage_max_len = passage_max_len
        self.max_length = max_length  # tokens of "[bos] A: query \n B: passage"; the "\n prompt" tail comes on top
        self.yes_token_id = yes_id(tokenizer) if yes_token_id is None else yes_token_id
        self.pad_to_multiple_of: int | None = None  # as the cross-encoder's: the server sets it
        bos = tokenizer.bos_token_id
        self._bos = [bos] if bos is not None and bos != tokenizer.pad_token_id else []
        self._sep = self._ids([SEP], None)[0]
        self._prompts: dict[str, list[int]] = {}

    # -- input

    def _ids(self, texts: list[str], limit: int | None) -> list[list[int]]:
        enc = self.tokenizer(
            texts, add_special_tokens=False, truncation=limit is not None, max_length=limit, return_attention_mask=False, verbose=False
        )
        return enc["input_ids"]

    def _prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompts:
            self._prompts[prompt] = self._ids([prompt], None)[0]
        return self._prompts[prompt]

    def _layout(self, query: list[int], passage: list[int], prompt: list[int], limit: int) -> list[int]:
        # The pair part is capped at `limit` and at FlagLLMReranker's own cap on it (passage
        # length + sep + prompt), so that FlagLLMReranker scores a saved model as we do.
        room = min(limit, self.passage_max_len + len(self._sep) + len(prompt)) - len(self._bos) - len(self._sep)
        query = query[: max(0, room)]  # only when `limit` is smaller than a query
        head = self._bos + query + self._sep
        return head + passage[: max(0, room - len(query))] + self._sep + prompt

    def tokenize(
        self, pairs: Sequence[tuple[str, str]], prompts: Sequence[str | None] | None = None, max_length: int | None = None
    ) -> dict:
        """Left-padded ``input_ids`` / ``attention_mask`` (batch, seq); ``prompts[i]`` overrides the prompt of row i."""
        limit = max_length or self.max_length
        queries = self._ids([QUERY_PREFIX + q for q, _ in pairs], self.query_max_len)
        passages = self._ids([PASSAGE_PREFIX + p for _, p in pairs], self.passage_max_len)
        rows = [
            self._layout(q, p, self._prompt_ids((prompts[i] if prompts else None) or self.prompt), limit)
            for i, (q, p) in enumerate(zip(queries, passages, strict=True))
        ]
        width = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def token_lengths(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Untruncated tokens of each pair's ``[bos] A: query \\n B: passage`` (what ``max_length`` caps)."""
        if not pairs:
            return []
        queries = self._ids([QUERY_PREFIX + q for q, _ in pairs], None)
        passages = self._ids([PASSAGE_PREFIX + p for _, p in pairs], None)
        return [len(self._bos) + len(q) + len(self._sep) + len(p) for q, p in zip(queries, passages, strict=True)]

    # -- model

    def causal_lm(self) -> nn.Module:
        """The HF causal LM (inside the peft wrapper when there is one; its LoRA layers are live in it)."""
        return self.model.get_base_model() if hasattr(self.model, "peft_config") else self.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), logits_to_keep=1)
        return out.logits[:, -1, self.yes_token_id]  # (batch,)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """The HF Trainer's hook: checkpoint the LM's layers (LoRA also needs grads on the embeddings' output)."""
        self.causal_lm().gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        if hasattr(self.model, "peft_config"):
            self.model.enable_input_require_grads()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- scoring

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """Raw "Yes" logits, float32 (n,)."""
        return self._scores(pairs, batch_size, max_length, self.forward)

    # -- saving

    def settings(self) -> dict:
        """What ``flagops_reranker.json`` records, so ``load_reranker(dir)`` needs no config."""
        return {
            "kind": self.kind,
            "prompt": self.prompt,
            "query_max_len": self.query_max_len,
            "passage_max_len": self.passage_max_len,
            "yes_token_id": self.yes_token_id,
        }

    def save(self, dest: str | Path) -> None:
        """Write the merged model + tokenizer, the LoRA adapter under ``adapter/`` and the settings, atomically.

        The merge runs on a copy, so training can go on with the adapter after a save.
        """
        lora = hasattr(self.model, "peft_config")
        with atomic_path(dest, is_dir=True) as tmp:
            merged = copy.deepcopy(self.model).merge_and_unload() if lora else self.model
            merged.save_pretrained(str(tmp), safe_serialization=True)
            save_tokenizer(self.tokenizer, tmp)
            if lora:
                self.model.save_pretrained(str(tmp / ADAPTER_DIR))
                stable_adapter_config(tmp / ADAPTER_DIR)
            self._save_extra(tmp)
            (tmp / RERANKER_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n", encoding="utf-8")

    def _save_extra(self, directory: Path) -> None:
        """Files beyond the merged model (the layerwise heads)."""


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, so left padding shifts nothing."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@contextmanager
def first_layers(decoder: nn.Module, k: int):
    """Run ``decoder`` on its first ``k`` layers only (it still applies its final norm)."""
    full = decoder.layers
    decoder.layers = nn.ModuleList(list(full)[:k])
    try:
        yield
    finally:
        decoder.layers = full


class LayerwiseReranker(LLMReranker):
    """An LLM reranker with a score head on each layer ``start_layer..last`` (1-based layer numbers).

    ``forward`` gives every head's score, (n_layers, batch), for training; scoring uses one
    layer: ``cutoff_layer`` (default the first of ``cutoff_layers``, else the last layer).
    """

    kind = "layerwise"

    def __init__(self, model: nn.Module, tokenizer, *, heads: nn.ModuleList, start_layer: int, cutoff_layers: Sequence[int] = (), **common):
        super().__init__(model, tokenizer, **common)
        decoder = self.causal_lm().get_decoder()
        if not (hasattr(decoder, "layers") and hasattr(decoder, "norm")):
            raise ConfigError(f"reranker.kind=layerwise needs a Llama-style decoder (.layers, .norm); {type(decoder).__name__} has not")
        self.layers = list(range(start_layer, len(decoder.layers) + 1))
        if len(heads) != len(self.layers):
            raise ValueError(f"{len(heads)} score heads for layers {self.layers[0]}..{self.layers[-1]}")
        self.heads = heads
        for layer in cutoff_layers:
            self.check_layer(layer)
        self.cutoff_layer = cutoff_layers[0] if cutoff_layers else self.layers[-1]

    @staticmethod
    def new_heads(model: nn.Module, yes_token_id: int, start_layer: int) -> nn.ModuleList:
        """One Linear(hidden, 1) per layer ``start_layer..last``, each a copy of ``lm_head``'s "Yes" row."""
        lm_head = model.get_output_embeddings()
        n = model.config.num_hidden_layers - start_layer + 1
        heads = nn.ModuleList(nn.Linear(lm_head.in_features, 1, bias=lm_head.bias is not None) for _ in range(n))
        with torch.no_grad():
            for head in heads:
                head.weight.copy_(lm_head.weight[yes_token_id : yes_token_id + 1])
                if lm_head.bias is not None:
                    head.bias.copy_(lm_head.bias[yes_token_id : yes_token_id + 1])
        return heads

    def check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise ConfigError(f"cutoff layer {layer}: this layerwise reranker scores layers {self.layers[0]}..{self.layers[-1]}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        decoder = self.causal_lm().get_decoder()
        out = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask), output_hidden_states=True
        )
        last = [decoder.norm(out.hidden_states[k][:, -1:]) for k in self.layers[:-1]] + [out.last_hidden_state[:, -1:]]
        return torch.stack([head(h[:, -1])[:, 0] for head, h in zip(self.heads, last, strict=True)])  # (n_layers, batch)

    def layer_score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, layer: int) -> torch.Tensor:
        """Layer ``layer``'s score, (batch,), running only the first ``layer`` decoder layers."""
        decoder = self.causal_lm().get_decoder()
        with first_layers(decoder, layer):
            out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
        return self.heads[layer - self.layers[0]](out.last_hidden_state[:, -1])[:, 0]

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32, max_length: int | None = None, cutoff_layer: int | None = None
    ) -> np.ndarray:
        """Raw scores of one layer (``cutoff_layer``, default the configured one), float32 (n,)."""
        layer = cutoff_layer or self.cutoff_layer
        self.check_layer(layer)
        return self._scores(pairs, batch_size, max_length, lambda **enc: self.layer_score(**enc, layer=layer))

    def settings(self) -> dict:
        return {**super().settings(), "start_layer": self.layers[0], "layers": self.layers}

    def _save_extra(self, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}, str(directory / HEADS_FILE))


# ---------------------------------------------------------------- building and loading


def build(cfg) -> LLMReranker:
    """A trainable reranker from ``cfg.base`` (a ``RerankerConfig``), LoRA applied when ``cfg.lora``."""
    if cfg.kind not in KINDS:
        raise ConfigError(f"reranker.kind={cfg.kind!r}: llm_reranker builds {' or '.join(KINDS)} rerankers")
    try:
        path = resolve_decoder_source(cfg.base)
    except ModelSourceError as exc:
        raise ConfigError(f"reranker.base: {exc}") from None
    tokenizer, model = load_causal_lm(path, f"reranker.base={cfg.base!r}", ConfigError)
    common = {
        "prompt": cfg.prompt,
        "query_max_len": cfg.query_max_len,
        "passage_max_len": cfg.passage_max_len,
        "max_length": getattr(model.config, "max_position_embeddings", 512),
    }
    heads = None
    if cfg.kind == "layerwise":
        start = clamp_start_layer(cfg.start_layer, model.config.num_hidden_layers)
        heads = LayerwiseReranker.new_heads(model, yes_id(tokenizer), start)  # from lm_head before LoRA wraps it
    if cfg.lora:
        model = add_lora(model, cfg)
    if heads is None:
        return LLMReranker(model, tokenizer, **common)
    return LayerwiseReranker(model, tokenizer, heads=heads, start_layer=start, cutoff_layers=cfg.cutoff_layers, **common)


def load(
    path: str | Path,
    kind: str,
    *,
    max_length: int = 512,
    prompt: str | None = None,
    cutoff_layers: Sequence[int] = (),
    query_max_len: int | None = None,
    passage_max_len: int | None = None,
) -> LLMReranker:
    """A saved reranker (or any causal LM directory, for ``llm``) ready to score.

    Settings come from the arguments, else ``flagops_reranker.json``, else FlagLLMReranker's
    defaults (query 3/4 of ``max_length``, passage ``max_length``, its prompt).
    ``cutoff_layers`` is read by ``layerwise`` only.
    """
    path = Path(path)
    meta_file = path / RERANKER_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    tokenizer, model = load_causal_lm(path, f"{kind} reranker", ModelSourceError)
    common = {
        "prompt": prompt or meta.get("prompt", DEFAULT_RERANK_PROMPT),
        "query_max_len": query_max_len or meta.get("query_max_len", max_length * 3 // 4),
        "passage_max_len": passage_max_len or meta.get("passage_max_len", max_length),
        "max_length": min(max_length, getattr(model.config, "max_position_embeddings", max_length)),
        "yes_token_id": meta.get("yes_token_id"),
    }
    if kind == "llm":
        return LLMReranker(model, tokenizer, **common)
    if kind != "layerwise":
        raise ValueError(f"unknown LLM reranker kind {kind!r}; use {' or '.join(KINDS)}")
    if not (path / HEADS_FILE).is_file() or "start_layer" not in meta:
        raise ModelSourceError(f"{path}: not a layerwise reranker (no {HEADS_FILE} or start_layer); pass a train_reranker output")
    from safetensors.torch import load_file

    heads = LayerwiseReranker.new_heads(model, 0, meta["start_layer"])  # shapes; the weights come from the file
    heads.load_state_dict(load_file(str(path / HEADS_FILE)))
    return LayerwiseReranker(model, tokenizer, heads=heads, start_layer=meta["start_layer"], cutoff_layers=cutoff_layers, **common)
