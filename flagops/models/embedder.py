"""A BGE-style bi-encoder: an HF AutoModel plus pooling and L2 normalisation.

``Embedder.save`` writes a directory that loads unchanged in transformers (safetensors),
in sentence-transformers (``modules.json`` with the right pooling, not the mean-pooling
fallback FlagEmbedding checkpoints get) and in FlagEmbedding's ``FlagModel``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer

from flagops.data.formats import atomic_path
from flagops.models.device import inference_placement, place
from flagops.models.layout import SETTINGS_FILE
from flagops.models.sources import resolve_model_source, weights_fit

ST_POOLING_MODES = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "last_token": "pooling_mode_lasttoken"}


@dataclass(frozen=True)
class EmbedderSettings:
    pooling: str = "cls"
    normalize: bool = True
    query_instruction: str = ""
    query_max_len: int = 32
    passage_max_len: int = 128


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool token states (batch, seq, dim) into one vector per text (batch, dim)."""
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if method == "last_token":
        # Works for left and right padding: the last attended position of each row.
        last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)  # (batch,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {method!r}; use cls, mean or last_token")


def padding_multiple(limit: int, multiple: int | None) -> int | None:
    """``multiple`` if padding the longest text up to it cannot pass ``limit`` tokens, else None."""
    return multiple if multiple and limit % multiple == 0 else None


def pad_rows(tokenizer, enc, rows: np.ndarray, lengths: np.ndarray, multiple: int | None) -> dict[str, torch.Tensor]:
    """Pad the unpadded token lists ``enc[key][row]`` of ``rows`` into tensors, as the tokenizer's own
    ``padding=True`` would: to the longest row (rounded up to ``multiple``), on its padding side."""
    width = int(lengths[rows].max())
    if multiple:
        width = -(-width // multiple) * multiple
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before encoding batches")
    fill = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
    out = {key: np.full((len(rows), width), value, dtype=np.int64) for key, value in fill.items() if key in enc}
    out["attention_mask"] = np.zeros((len(rows), width), dtype=np.int64)
    left = tokenizer.padding_side == "left"
    for r, i in enumerate(rows):
        span = slice(width - lengths[i], width) if left else slice(0, lengths[i])
        for key in fill.keys() & enc.keys():
            out[key][r, span] = enc[key][i]
        out["attention_mask"][r, span] = 1
    return {key: torch.from_numpy(value) for key, value in out.items()}


class Embedder(nn.Module):
    """Encoder + pooling. ``forward`` gives differentiable embeddings for training.

    ``pad_to_multiple_of`` (None: pad to the longest text only) rounds each batch's padded
    length up; the server sets it, so that far fewer distinct tensor shapes reach torch
    (``serve.pad_to_multiple_of``). Pooling reads the attention mask, so outputs agree.
    """

    def __init__(self, model: nn.Module, tokenizer, settings: EmbedderSettings):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.pad_to_multiple_of: int | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, source: str | Path, **overrides) -> Embedder:
        """Load a model directory (or `pkg:`/`tiny-bert` source); saved settings win over defaults."""
        path = resolve_model_source(str(source))
        settings = EmbedderSettings()
        saved = path / SETTINGS_FILE
        if saved.is_file():
            settings = EmbedderSettings(**json.loads(saved.read_text()))
        elif (path / "1_Pooling" / "config.json").is_file():  # a sentence-transformers model
            st = json.loads((path / "1_Pooling" / "config.json").read_text())
            pooling = next((p for p, key in ST_POOLING_MODES.items() if st.get(key)), settings.pooling)
            settings = replace(settings, pooling=pooling)
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        with weights_fit(path):
            model = AutoModel.from_pretrained(str(path))
        return cls(model, tokenizer, settings)

    @classmethod
    def from_config(cls, model_cfg, source: str | Path | None = None, *, inference: bool = False) -> Embedder:
        """Load ``source`` (default ``model_cfg.base``).

        A model flagops saved carries its own pooling, instruction and lengths, and those
        win; any other model (a base checkpoint) takes them from the profile. ``inference``
        places it on ``model.device`` in ``model.dtype`` (float16 on CUDA); training leaves
        that to the Trainer, and there ``model.quantize`` makes its Linears int8 (int8: always; auto:
        where the directory carries a passing int8 check). ``model.backend=openvino`` runs the
        transformer in OpenVINO instead (``flagops.models.openvino_backend``); ``auto`` does so in
        bf16 where the directory carries a passing openvino-bf16 check and the CPU has bf16 units.
        """
        path = resolve_model_source(str(source or model_cfg.base))
        if (path / SETTINGS_FILE).is_file():
            embedder = cls.load(path)
        else:
            embedder = cls.load(
                source or model_cfg.base,
                pooling=model_cfg.pooling,
                normalize=model_cfg.normalize,
                query_instruction=model_cfg.query_instruction,
                query_max_len=model_cfg.query_max_len,
                passage_max_len=model_cfg.passage_max_len,
            )
        if not inference:
            return embedder
        placement = inference_placement(model_cfg)
        from flagops.models import openvino_backend  # openvino itself loads only where it is used

        settings = {"kind": model_cfg.kind, "dtype": model_cfg.dtype, "quantize": model_cfg.quantize, "device": placement.device.type}
        if model_cfg.backend == "auto" and openvino_backend.auto_openvino(path, **settings):
            return openvino_backend.use_openvino(embedder, path, torch.bfloat16)
        if model_cfg.backend == "openvino":
            return openvino_backend.openvino_on_cpu(embedder, path, placement)
        embedder = place(embedder, placement)
        if model_cfg.quantize == "none" or model_cfg.kind != "bge":
            return embedder
        from flagops.models.quantize import auto_int8, quantize_int8  # torch's quantisation modules only when asked

        if model_cfg.quantize == "int8":
            return quantize_int8(embedder)
        return auto_int8(embedder, path)

    # ------------------------------------------------------------------ encoding

    def _texts_and_limit(self, texts: Sequence[str], is_query: bool, max_length: int | None) -> tuple[list[str], int]:
        s = self.settings
        if is_query and s.query_instruction:
            texts = [s.query_instruction + t for t in texts]
        return list(texts), max_length or (s.query_max_len if is_query else s.passage_max_len)

    def tokenize(self, texts: Sequence[str], *, is_query: bool, max_length: int | None = None) -> dict:
        texts, limit = self._texts_and_limit(texts, is_query, max_length)
        return self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
            pad_to_multiple_of=padding_multiple(limit, self.pad_to_multiple_of),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        emb = pool(out.last_hidden_state, attention_mask, self.settings.pooling)  # (batch, dim)
        return F.normalize(emb, dim=-1) if self.settings.normalize else emb

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        *,
        is_query: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        progress: str | None = None,
    ) -> np.ndarray:
        """Embed texts as float32 (n, dim), in batches of similar token counts (see ``sorted_batches``)."""
        if isinstance(texts, str):
            raise TypeError("encode expects a list of strings, not a single string")
        self.eval()
        chunks, positions = [], []
        for idx, enc in self.sorted_batches(texts, is_query=is_query, batch_size=batch_size, max_length=max_length, progress=progress):
            chunks.append(self(**{k: v.to(self.device) for k, v in enc.items()}).float().cpu().numpy())
            positions.append(idx)
        dim = self.model.config.hidden_size
        if not chunks:
            return np.zeros((0, dim), dtype=np.float32)
        out = np.empty((len(texts), dim), dtype=np.float32)
        out[np.concatenate(positions)] = np.concatenate(chunks)
        return out

    def sorted_batches(
        self, texts: Sequence[str], *, is_query: bool, batch_size: int, max_length: int | None = None, progress: str | None = None
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield (positions in ``texts``, model inputs) batch by batch, longest texts first.

        All texts are tokenized in one call and sorted by token count, so each batch pads
        only to its own longest text. Sorting by characters instead (as before) put texts of
        very different token counts together: 1.5x the padded tokens on short queries.
        """
        texts, limit = self._texts_and_limit(texts, is_query, max_length)
        if not texts:  # the tokenizer rejects an empty list
            return
        enc = self.tokenizer(texts, truncation=True, max_length=limit, return_attention_mask=False)
        lengths = np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=progress, unit="batch", leave=False)
        multiple = padding_multiple(limit, self.pad_to_multiple_of)
        for start in starts:
            idx = order[start : start + batch_size]
            yield idx, pad_rows(self.tokenizer, enc, idx, lengths, multiple)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ saving

    def save(self, dest: str | Path) -> None:
        """Write an HF + sentence-transformers + FlagEmbedding-loadable directory atomically."""
        with atomic_path(dest, is_dir=True) as tmp:
            self.save_to(tmp)

    def save_to(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))
        s = self.settings
        (directory / SETTINGS_FILE).write_text(json.dumps(asdict(s), indent=2) + "\n")
        write_sentence_transformers_config(directory, s, self.model.config.hidden_size)


def write_sentence_transformers_config(directory: Path, s: EmbedderSettings, dim: int) -> None:
    """The files sentence-transformers reads to rebuild Transformer -> Pooling [-> Normalize]."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if s.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    pooling = {"word_embedding_dimension": dim, **{mode: False for mode in ST_POOLING_MODES.values()}}
    pooling[ST_POOLING_MODES[s.pooling]] = True
    pooling["include_prompt"] = True
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": s.passage_max_len, "do_lower_case": False}, indent=2) + "\n"
    )
    prompts = {"query": s.query_instruction, "document": ""} if s.query_instruction else {}
    st_cfg = {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_cfg, indent=2) + "\n")
