"""Visualized-BGE's model: a small ViT's patch tokens read by a BGE text encoder as extra tokens.

The mechanism (FlagEmbedding ``research/visual_bge``): the ViT encodes an image into patch
tokens; its own CLS is dropped; ``Linear(d_vit, d_text)`` projects the patches into the text
encoder's embedding space, where they get the text model's position embeddings for positions
1..N and its embedding LayerNorm (no token-type embedding: they are no words). The encoder
then reads ``[CLS] + image tokens + text tokens`` with the text's positions following the
image's (CLS keeps position 0), and the embedding is the CLS output, L2-normalised.

An image alone is read with an empty text (``[CLS] img [SEP]``); a text alone is exactly the
plain BGE embedding (no image tokens, positions 0..T-1). The model lives here, below
``flagops.serving``, so the server can load it; training and evaluation are in
``flagops.research.visual_bge``.

A saved directory is the text encoder's own (transformers loads it as the plain BGE it is, and
every model-source check applies) plus ``flagops_visual_bge.json`` (the settings; it also tells
the server the kind), ``vision/`` (the ``ViTModel``) and ``visual_proj.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, ViTConfig, ViTModel

from flagops.data.formats import atomic_path
from flagops.models.sources import resolve_model_source, weights_fit

SETTINGS_FILE = "flagops_visual_bge.json"
PROJ_FILE = "visual_proj.safetensors"


@dataclass(frozen=True)
class VisualSettings:
    image_size: int = 32  # pixels per side the ViT reads (images are resized to it)
    patch_size: int = 8
    vit_hidden_size: int = 64
    vit_layers: int = 2
    vit_heads: int = 2
    text_max_len: int = 32  # text tokens, [CLS] and [SEP] included

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def vit_config(self) -> ViTConfig:
        return ViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=3,
            hidden_size=self.vit_hidden_size,
            num_hidden_layers=self.vit_layers,
            num_attention_heads=self.vit_heads,
            intermediate_size=4 * self.vit_hidden_size,
        )


def to_pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """RGB images as the ViT reads them: (n, 3, size, size), resized, scaled to [-1, 1]."""
    arrays = [np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) for img in images]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (n, 3, size, size)
    return pixels / 127.5 - 1.0


class VisualBGE(nn.Module):
    """The text encoder (frozen in stage 2), the ViT and the projection. ``forward`` is differentiable."""

    def __init__(self, text: nn.Module, tokenizer, vision: ViTModel, proj: nn.Linear, settings: VisualSettings):
        super().__init__()
        self.text = text
        self.tokenizer = tokenizer
        self.vision = vision
        self.proj = proj
        self.settings = settings

    # ------------------------------------------------------------------ building and saving

    @classmethod
    def create(cls, text_source: str, settings: VisualSettings, seed: int) -> VisualBGE:
        """The text encoder at ``text_source`` beside a random ViT and projection drawn from ``seed``."""
        path = resolve_model_source(text_source)
        with weights_fit(path):
            text = AutoModel.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        torch.manual_seed(seed)
        vision = ViTModel(settings.vit_config(), add_pooling_layer=False)
        proj = nn.Linear(settings.vit_hidden_size, text.config.hidden_size)
        return cls(text, tokenizer, vision, proj, settings)

    @classmethod
    def load(cls, directory: str | Path) -> VisualBGE:
        directory = Path(directory)
        settings = VisualSettings(**json.loads((directory / SETTINGS_FILE).read_text()))
        with weights_fit(directory):
            text = AutoModel.from_pretrained(str(directory))
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        vision = ViTModel.from_pretrained(str(directory / "vision"), add_pooling_layer=False)
        proj = nn.Linear(settings.vit_hidden_size, text.config.hidden_size)
        proj.load_state_dict(load_file(str(directory / PROJ_FILE)))
        return cls(text, tokenizer, vision, proj, settings).eval()

    def save(self, directory: str | Path) -> None:
        with atomic_path(directory, is_dir=True) as tmp:
            self.text.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))
            self.vision.save_pretrained(str(tmp / "vision"), safe_serialization=True)
            save_file({k: v.contiguous() for k, v in self.proj.state_dict().items()}, str(tmp / PROJ_FILE))
            (tmp / SETTINGS_FILE).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    def freeze_text(self) -> list[nn.Parameter]:
        """Stage 2: the text encoder is fixed; returns the parameters that train (ViT and projection)."""
        self.text.requires_grad_(False)
        return [*self.vision.parameters(), *self.proj.parameters()]

    @property
    def dim(self) -> int:
        return self.text.config.hidden_size

    # ------------------------------------------------------------------ the sequence

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.settings.text_max_len,
            return_tensors="pt",
            return_token_type_ids=False,
        )

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, N, d_text): the ViT's patch tokens (its CLS dropped), projected, at positions 1..N, LayerNorm'ed."""
        patches = self.vision(pixel_values=pixels).last_hidden_state[:, 1:]  # (n, N, d_vit)
        tokens = self.proj(patches)  # (n, N, d_text)
        emb = self.text.embeddings
        positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)  # (N,)
        return emb.LayerNorm(tokens + emb.position_embeddings(positions))

    def assemble(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixels: torch.Tensor | None = None):
        """The encoder's input ``(embeddings (n, 1+N+T-1, d), attention mask)``: [CLS], the image's N
        tokens (none without an image), then the text after its [CLS] at positions N+1.."""
        n, length = input_ids.shape
        image = None if pixels is None else self.image_tokens(pixels)  # (n, N, d)
        offset = 0 if image is None else image.shape[1]
        positions = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(offset + 1, offset + length)]).to(input_ids.device)
        words = self.text.embeddings(
            input_ids=input_ids,
            position_ids=positions.expand(n, -1),
            token_type_ids=torch.zeros_like(input_ids),
        )  # (n, T, d)
        if image is None:
            return words, attention_mask
        seq = torch.cat([words[:, :1], image, words[:, 1:]], dim=1)
        ones = torch.ones(n, offset, dtype=attention_mask.dtype, device=attention_mask.device)
        return seq, torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-length CLS outputs (n, d_text) of the assembled sequences."""
        seq, mask = self.assemble(input_ids, attention_mask, pixels)
        additive = (1.0 - mask[:, None, None, :].to(seq.dtype)) * torch.finfo(seq.dtype).min  # (n, 1, 1, L)
        hidden = self.text.encoder(seq, attention_mask=additive).last_hidden_state  # (n, L, d)
        return F.normalize(hidden[:, 0], dim=-1)

    def encode(self, texts: Sequence[str], images: Sequence[Image.Image] | None = None, max_length: int | None = None) -> torch.Tensor:
        """Embeddings of texts (``""`` for an image alone), each with its image when ``images`` is given."""
        weight = self.proj.weight  # where the model is, and in which dtype
        enc = {k: v.to(weight.device) for k, v in self.tokenize(texts, max_length).items()}
        pixels = None if images is None else to_pixels(images, self.settings.image_size).to(weight.device, weight.dtype)
        return self(enc["input_ids"], enc["attention_mask"], pixels)

    @torch.no_grad()
    def embed(
        self, texts: Sequence[str], images: Sequence[Image.Image] | None = None, batch_size: int = 64, max_length: int | None = None
    ) -> np.ndarray:
        """``encode`` in batches, without gradients: float32 (n, d_text)."""
        was_training = self.training
        self.eval()
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = None if images is None else images[start : start + batch_size]
            out.append(self.encode(texts[start : start + batch_size], chunk, max_length).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)
