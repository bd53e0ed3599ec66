"""BGE-M3: one encoder, three retrieval modes, FlagEmbedding's checkpoint layout.

* **dense**: the pooled first-token (CLS) state, L2-normalised; ``q @ p``.
* **sparse** (lexical): each token gets ``ReLU(sparse_linear(h_t))``; a text maps each token
  id to the *largest* weight that id gets in it; CLS/EOS/PAD/UNK get 0. Score: the sum over
  shared ids of ``w_q(id) * w_p(id)``.
* **ColBERT** (multi-vector): ``colbert_linear`` on every token state but the first, masked,
  L2-normalised per token. Score: the mean over query tokens of the best dot product with
  any passage token.

A checkpoint is an HF model directory (written by ``Embedder.save_to``, so it still loads as
a dense ``Embedder``) plus ``colbert_linear.pt`` and ``sparse_linear.pt`` (state dicts of
``Linear(hidden, colbert_dim)`` and ``Linear(hidden, 1)``, what FlagEmbedding writes and
reads), safetensors copies of both, and ``flagops_m3.json``. Head files are read with
``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from flagops.data.formats import atomic_path
from flagops.models.device import inference_placement, place
from flagops.models.embedder import Embedder, pool
from flagops.models.sources import ModelSourceError, resolve_model_source

MODES: tuple[str, ...] = ("dense", "sparse", "colbert")
HEADS: tuple[str, ...] = ("colbert_linear", "sparse_linear")  # FlagEmbedding's file stems
M3_SETTINGS_FILE = "flagops_m3.json"


class M3CheckpointError(ModelSourceError):
    """An M3 head file that is missing, malformed or does not fit the model. One line: file + fix."""


@dataclass(frozen=True)
class M3Settings:
    colbert_dim: int | None = None  # None: no sparse/ColBERT heads (dense only)
    mcls: bool = False  # inference only: multiple CLS tokens for long texts (dense)
    mcls_interval: int = 256


class M3Output(NamedTuple):
    dense: torch.Tensor  # (batch, dim)
    token_weights: torch.Tensor | None  # (batch, seq): ReLU(sparse_linear(h)), 0 on padding
    colbert: torch.Tensor | None  # (batch, seq - 1, colbert_dim): tokens after the first, 0 on padding
    colbert_mask: torch.Tensor  # (batch, seq - 1)
    input_ids: torch.Tensor  # (batch, seq): what sparse pooling groups the token weights by


@dataclass
class M3Encoded:
    """What ``encode_m3`` returns; a mode not asked for is None."""

    dense: np.ndarray | None  # (n, dim) float32
    sparse: sp.csr_matrix | None  # (n, vocab) float32: each id's max weight, positive entries only
    colbert: list[np.ndarray] | None  # n arrays (tokens - 1, colbert_dim): real tokens but the first


# --------------------------------------------------------------------------- score maths (pure)


def special_token_ids(tokenizer) -> list[int]:
    """Ids whose lexical weight is zeroed: the CLS, EOS, PAD and UNK tokens the tokenizer defines.

    This is FlagEmbedding's set. A BERT tokenizer defines no EOS, so its [SEP] keeps a weight,
    exactly as in FlagEmbedding's ``BGEM3FlagModel`` (XLM-R's </s> is EOS and is zeroed).
    """
    ids = (getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "eos", "pad", "unk"))
    return sorted({i for i in ids if i is not None})


def sparse_embedding(token_weights: torch.Tensor, input_ids: torch.Tensor, vocab_size: int, special_ids: Sequence[int]) -> torch.Tensor:
    """Token weights (batch, seq) -> one weight per vocabulary id (batch, vocab): the max over
    the positions holding that id; special ids 0. Differentiable (amax splits ties' gradient)."""
    out = token_weights.new_zeros(token_weights.shape[0], vocab_size)
    out = out.scatter_reduce(1, input_ids, token_weights, reduce="amax", include_self=True)  # (batch, vocab); weights >= 0
    keep = torch.ones(vocab_size, dtype=out.dtype, device=out.device)
    keep[list(special_ids)] = 0
    return out * keep  # out of place: autograd needs `out` as it was


def inner_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(nq, d) x (np, d) -> (nq, np) inner products: the dense score, and the sparse one on
    (batch, vocab) lexical weights, where it is the sum over shared ids of w_q(id) * w_p(id)."""
    return q @ p.T


def colbert_scores(q: torch.Tensor, q_mask: torch.Tensor, p: torch.Tensor, p_mask: torch.Tensor) -> torch.Tensor:
    """Late interaction: for every query token its best passage token, averaged over query tokens.

    q: (nq, lq, d), q_mask: (nq, lq); p: (np, lp, d), p_mask: (np, lp). Returns (nq, np).
    Padded passage tokens never win the max (FlagEmbedding's training score lets their zero
    vectors in, which floors every token's best match at 0; its inference does not).
    """
    tokens = torch.einsum("qin,pjn->qipj", q, p)  # (nq, lq, np, lp)
    tokens = tokens.masked_fill(~p_mask.bool()[None, None], torch.finfo(tokens.dtype).min)
    best = tokens.max(-1).values * q_mask[:, :, None].to(tokens.dtype)  # (nq, lq, np)
    return best.sum(1) / q_mask.sum(1, keepdim=True).clamp(min=1).to(tokens.dtype)  # (nq, np)


def mcls_ids(content: Sequence[int], cls_id: int, sep_id: int, interval: int) -> tuple[list[int], list[int]]:
    """[CLS] c_1..c_I [CLS] c_I+1..c_2I ... [SEP]: one CLS opens every ``interval`` content tokens.

    Returns the ids and a 0/1 list marking the CLS positions. A text of n <= interval
    tokens is exactly ``[CLS] c_1..c_n [SEP]``, the plain encoding.
    """
    ids, is_cls = [], []
    for start in range(0, max(len(content), 1), interval):
        chunk = list(content[start : start + interval])
        ids += [cls_id, *chunk]
        is_cls += [1] + [0] * len(chunk)
    return ids + [sep_id], is_cls + [0]


def mcls_content_budget(max_length: int, interval: int) -> int:
    """The most content tokens n with n + ceil(n / interval) CLS + 1 SEP <= max_length."""
    n = max_length - 2
    while n > 0 and n + max(1, math.ceil(n / interval)) + 1 > max_length:
        n -= 1
    return n


# --------------------------------------------------------------------------- heads on disk


def new_heads(hidden: int, colbert_dim: int, seed: int) -> dict[str, nn.Linear]:
    """Fresh heads, nn.Linear's default init, reproducible from ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {"colbert_linear": nn.Linear(hidden, colbert_dim), "sparse_linear": nn.Linear(hidden, 1)}


def head_files(directory: Path) -> dict[str, Path]:
    """Each head's file: FlagEmbedding's ``.pt`` when present (what it reads too), else our ``.safetensors``."""
    found = {}
    for stem in HEADS:
        for suffix in (".pt", ".safetensors"):
            if (directory / f"{stem}{suffix}").is_file():
                found[stem] = directory / f"{stem}{suffix}"
                break
    return found


def read_head(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise M3CheckpointError(
            f"{path}: not a readable state dict ({type(exc).__name__}); re-save it with torch.save(linear.state_dict(), path)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise M3CheckpointError(
            f"{path}: expected a state dict of tensors (weight, bias), got {type(state).__name__}; save linear.state_dict()"
        )
    return state


def load_heads(directory: Path, hidden: int, colbert_dim: int, *, required: bool, strict: bool = True) -> dict[str, nn.Linear] | None:
    """Read and check both heads; None when the directory has neither and none is required.

    ``colbert_dim`` -1 takes the checkpoint's; any other value must match it. With
    ``strict`` (heads wanted), a lone head file, or an M3 checkpoint without its head
    files, is an error; without it (dense only) such a directory just gives no heads.
    """
    files = head_files(directory)
    saved = directory / M3_SETTINGS_FILE
    is_m3 = saved.is_file() and json.loads(saved.read_text()).get("colbert_dim") is not None
    if len(files) < len(HEADS) and not (strict or required):
        return None
    if len(files) < len(HEADS) and (files or is_m3 or required):
        missing = next(s for s in HEADS if s not in files)
        if files:
            why = f"but {files[next(iter(files))].name} is there"
        elif is_m3:
            why = f"but {M3_SETTINGS_FILE} says the model has heads"
        else:
            why = "and this model has no M3 heads"
        raise M3CheckpointError(
            f"{directory / (missing + '.pt')}: missing {why}; restore it from the M3 checkpoint, "
            f"or train heads with train_m3 (or set m3.unified_finetuning=false for dense only)"
        )
    if not files:
        return None
    heads = {}
    for stem, path in files.items():
        state = read_head(path)
        weight, bias = state.get("weight"), state.get("bias")
        if weight is None or bias is None or set(state) != {"weight", "bias"}:
            raise M3CheckpointError(f"{path}: expected keys weight and bias, got {sorted(state)}; save nn.Linear(...).state_dict()")
        out_dim = weight.shape[0] if weight.ndim == 2 else -1
        want_out = 1 if stem == "sparse_linear" else out_dim
        if weight.ndim != 2 or weight.shape[1] != hidden or out_dim != want_out or tuple(bias.shape) != (out_dim,):
            want = f"({want_out if stem == 'sparse_linear' else 'colbert_dim'}, {hidden})"
            raise M3CheckpointError(
                f"{path}: weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not fit Linear(hidden={hidden}) -> "
                f"weight {want}; the head belongs to another model: use that model's heads or delete both head files for fresh ones"
            )
        if stem == "colbert_linear" and colbert_dim not in (-1, out_dim):
            raise M3CheckpointError(
                f"{path}: the checkpoint's ColBERT head has dim {out_dim} but m3.colbert_dim={colbert_dim}; "
                f"set m3.colbert_dim={out_dim} (or -1 to take the checkpoint's)"
            )
        linear = nn.Linear(hidden, out_dim)
        linear.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        heads[stem] = linear
    return heads


def save_heads(directory: Path, heads: dict[str, nn.Linear]) -> None:
    for stem, linear in heads.items():
        state = {k: v.detach().clone().cpu().contiguous() for k, v in linear.state_dict().items()}
        torch.save(state, directory / f"{stem}.pt")  # FlagEmbedding's layout
        save_file(state, str(directory / f"{stem}.safetensors"))


# --------------------------------------------------------------------------- the model


class M3Embedder(nn.Module):
    """An ``Embedder`` (encoder, tokenizer, dense settings) plus the sparse and ColBERT heads."""

    def __init__(self, embedder: Embedder, heads: dict[str, nn.Linear] | None, settings: M3Settings):
        super().__init__()
        self.embedder = embedder
        self.colbert_linear = heads["colbert_linear"] if heads else None
        self.sparse_linear = heads["sparse_linear"] if heads else None
        self.m3_settings = replace(settings, colbert_dim=self.colbert_linear.out_features if heads else None)
        self.special_ids = special_token_ids(embedder.tokenizer)
        self.vocab_size = embedder.model.config.vocab_size

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_embedder(
        cls,
        embedder: Embedder,
        directory: Path,
        *,
        colbert_dim: int = -1,
        heads: bool = True,
        require_heads: bool = False,
        seed: int = 0,
        mcls: bool = False,
        mcls_interval: int = 256,
    ) -> M3Embedder:
        """Attach the heads found in ``directory``; fresh seeded ones when it has none and
        ``heads`` is on (a base model such as MiniLM), none when ``heads`` is off."""
        hidden = embedder.model.config.hidden_size
        found = load_heads(directory, hidden, colbert_dim, required=require_heads, strict=heads)
        if found is None and heads:
            found = new_heads(hidden, hidden if colbert_dim == -1 else colbert_dim, seed)
        return cls(embedder, found, M3Settings(mcls=mcls, mcls_interval=mcls_interval))

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        colbert_dim: int = -1,
        heads: bool = True,
        require_heads: bool = False,
        seed: int = 0,
        mcls: bool = False,
        mcls_interval: int = 256,
        **overrides,
    ) -> M3Embedder:
        """Load a model source; ``overrides`` go to ``Embedder.load`` (pooling, lengths, ...)."""
        path = resolve_model_source(str(source))
        return cls.from_embedder(
            Embedder.load(path, **overrides),
            path,
            colbert_dim=colbert_dim,
            heads=heads,
            require_heads=require_heads,
            seed=seed,
            mcls=mcls,
            mcls_interval=mcls_interval,
        )

    @classmethod
    def from_config(
        cls,
        model_cfg,
        m3_cfg,
        source: str | Path | None = None,
        *,
        seed: int = 0,
        heads: bool | None = None,
        require_heads: bool = False,
        inference: bool = False,
    ) -> M3Embedder:
        """``Embedder.from_config`` (saved settings win over the profile) plus the heads.

        A base without heads gets fresh ones when ``heads`` (default: ``m3.unified_finetuning``)
        is on; ``heads=False`` keeps it dense-only (a base model's evaluation). Evaluating a
        trained candidate passes ``require_heads=True``: a head-less directory is an error.
        ``inference`` places encoder and heads as ``Embedder.from_config`` does.
        """
        path = resolve_model_source(str(source or model_cfg.base))
        m3 = cls.from_embedder(
            Embedder.from_config(model_cfg, source),
            path,
            colbert_dim=m3_cfg.colbert_dim,
            heads=m3_cfg.unified_finetuning if heads is None else heads,
            require_heads=require_heads,
            seed=seed,
            mcls=m3_cfg.mcls,
            mcls_interval=m3_cfg.mcls_interval,
        )
        return place(m3, inference_placement(model_cfg)) if inference else m3

    @property
    def tokenizer(self):
        return self.embedder.tokenizer

    @property
    def settings(self):
        return self.embedder.settings

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.colbert_linear is not None else ("dense",)

    @property
    def device(self) -> torch.device:
        return self.embedder.device

    def heads(self) -> dict[str, nn.Linear]:
        return {"colbert_linear": self.colbert_linear, "sparse_linear": self.sparse_linear} if self.colbert_linear is not None else {}

    # ------------------------------------------------------------------ forward

    def tokenize(self, texts: Sequence[str], *, is_query: bool, max_length: int | None = None) -> dict:
        return self.embedder.tokenize(texts, is_query=is_query, max_length=max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, modes: Sequence[str] = MODES, **extra) -> M3Output:
        hidden = self.embedder.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state  # (batch, seq, h)
        s = self.settings
        dense = pool(hidden, attention_mask, s.pooling)  # (batch, h)
        dense = F.normalize(dense, dim=-1) if s.normalize else dense
        mask = attention_mask.to(hidden.dtype)  # (batch, seq)
        weights = colbert = None
        if "sparse" in modes:
            weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1) * mask  # (batch, seq)
        if "colbert" in modes:
            colbert = self.colbert_linear(hidden[:, 1:]) * mask[:, 1:, None]  # (batch, seq - 1, colbert_dim)
            colbert = F.normalize(colbert, dim=-1) if s.normalize else colbert  # zero rows stay zero
        return M3Output(dense, weights, colbert, attention_mask[:, 1:], input_ids)

    def sparse_vectors(self, out: M3Output) -> torch.Tensor:
        """(batch, vocab) lexical weights of a forward's token weights."""
        return sparse_embedding(out.token_weights, out.input_ids, self.vocab_size, self.special_ids)

    # ------------------------------------------------------------------ MCLS

    def tokenize_mcls(self, texts: Sequence[str], *, is_query: bool, max_length: int | None = None) -> tuple[dict, torch.Tensor]:
        """Token ids with a CLS every ``mcls_interval`` tokens, padded; and the CLS positions (batch, seq)."""
        s, interval = self.settings, self.m3_settings.mcls_interval
        if is_query and s.query_instruction:
            texts = [s.query_instruction + t for t in texts]
        limit = max_length or (s.query_max_len if is_query else s.passage_max_len)
        tok = self.tokenizer
        content = tok(list(texts), add_special_tokens=False, truncation=True, max_length=mcls_content_budget(limit, interval))["input_ids"]
        sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        rows = [mcls_ids(ids, tok.cls_token_id, sep, interval) for ids in content]
        width = max(len(ids) for ids, _ in rows)
        pad = tok.pad_token_id
        side_right = tok.padding_side == "right"
        ids = [(r + [pad] * (width - len(r))) if side_right else ([pad] * (width - len(r)) + r) for r, _ in rows]
        cls_pos = [(c + [0] * (width - len(c))) if side_right else ([0] * (width - len(c)) + c) for _, c in rows]
        att = [([1] * len(r) + [0] * (width - len(r))) if side_right else ([0] * (width - len(r)) + [1] * len(r)) for r, _ in rows]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(att)}, torch.tensor(cls_pos)

    def mcls_dense(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_positions: torch.Tensor) -> torch.Tensor:
        """The mean of the final states of every CLS token, L2-normalised as dense is: (batch, h)."""
        if self.settings.pooling != "cls":
            raise ValueError(
                f"MCLS averages CLS states, but model.pooling is {self.settings.pooling!r}; set model.pooling=cls or m3.mcls=false"
            )
        hidden = self.embedder.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (batch, seq, h)
        w = cls_positions.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
        dense = (hidden * w).sum(1) / w.sum(1).clamp(min=1)
        return F.normalize(dense, dim=-1) if self.settings.normalize else dense

    # ------------------------------------------------------------------ encoding

    @torch.inference_mode()
    def encode_m3(
        self,
        texts: Sequence[str],
        *,
        is_query: bool = False,
        batch_size: int = 32,
        modes: Sequence[str] | None = None,
        max_length: int | None = None,
        progress: str | None = None,
    ) -> M3Encoded:
        """Encode with every mode the model has (or ``modes``), in batches of similar token counts."""
        if isinstance(texts, str):
            raise TypeError("encode_m3 expects a list of strings, not a single string")
        modes = tuple(modes or self.modes)
        unknown = set(modes) - set(self.modes)
        if unknown:
            raise ValueError(f"this model has no {'/'.join(sorted(unknown))} head; it has {', '.join(self.modes)}")
        self.eval()
        dense, sparse, colbert, positions = [], [], [], []
        mcls = self.m3_settings.mcls and "dense" in modes
        token_modes = tuple(m for m in modes if not (mcls and m == "dense"))  # MCLS has its own forward
        batches = self.embedder.sorted_batches(texts, is_query=is_query, batch_size=batch_size, max_length=max_length, progress=progress)
        for idx, enc in batches:
            positions.append(idx)
            if token_modes:
                out = self(**{k: v.to(self.device) for k, v in enc.items()}, modes=token_modes)
                if "dense" in token_modes:
                    dense.append(out.dense.float().cpu().numpy())
                if "sparse" in token_modes:
                    sparse.append(sp.csr_matrix(self.sparse_vectors(out).float().cpu().numpy()))  # keeps the nonzeros
                if "colbert" in token_modes:
                    vecs, masks = out.colbert.float().cpu().numpy(), out.colbert_mask.bool().cpu().numpy()
                    colbert += [v[m] for v, m in zip(vecs, masks, strict=True)]  # drop padding rows
            if mcls:
                enc, cls_pos = self.tokenize_mcls([texts[i] for i in idx], is_query=is_query, max_length=max_length)
                enc = {k: v.to(self.device) for k, v in enc.items()}
                dense.append(self.mcls_dense(enc["input_ids"], enc["attention_mask"], cls_pos.to(self.device)).float().cpu().numpy())
        order = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        inverse = np.argsort(order, kind="stable")  # back to the caller's order
        result = M3Encoded(None, None, None)
        if "dense" in modes:
            dim = self.embedder.model.config.hidden_size
            result.dense = np.concatenate(dense)[inverse] if dense else np.zeros((0, dim), np.float32)
        if "sparse" in modes:
            result.sparse = sp.vstack(sparse).tocsr()[inverse] if sparse else sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        if "colbert" in modes:
            result.colbert = [colbert[i] for i in inverse]
        return result

    def encode(
        self,
        texts: Sequence[str],
        *,
        is_query: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        progress: str | None = None,
    ) -> np.ndarray:
        """Dense vectors only (n, dim): the ``TextEncoder`` the dense evaluators take."""
        return self.encode_m3(
            texts, is_query=is_query, batch_size=batch_size, modes=("dense",), max_length=max_length, progress=progress
        ).dense

    # ------------------------------------------------------------------ saving

    def save(self, dest: str | Path) -> None:
        """Write an HF + sentence-transformers (dense) + FlagEmbedding M3 directory atomically."""
        with atomic_path(dest, is_dir=True) as tmp:
            self.save_to(tmp)

    def save_to(self, directory: Path) -> None:
        self.embedder.save_to(directory)
        save_heads(directory, self.heads())
        # MCLS is an inference option of the profile (m3.mcls), not part of the model.
        (directory / M3_SETTINGS_FILE).write_text(json.dumps({"colbert_dim": self.m3_settings.colbert_dim}, indent=2) + "\n")


def lexical_weights(row: sp.csr_matrix) -> dict[str, float]:
    """One text's sparse row as FlagEmbedding's ``lexical_weights`` dict ({"token id": weight})."""
    row = row.tocsr()
    return {str(int(i)): float(w) for i, w in zip(row.indices, row.data, strict=True)}


__all__ = [
    "HEADS",
    "M3_SETTINGS_FILE",
    "MODES",
    "M3CheckpointError",
    "M3Embedder",
    "M3Encoded",
    "M3Output",
    "M3Settings",
    "colbert_scores",
    "inner_scores",
    "lexical_weights",
    "mcls_ids",
    "sparse_embedding",
    "special_token_ids",
]
