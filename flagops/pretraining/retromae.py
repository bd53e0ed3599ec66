"""RetroMAE pretraining, FlagEmbedding's recipe. Read top to bottom:
masking -> data -> model and loss -> recipe (setup, train with checkpoints and resume, save).

The encoder is a masked LM that reads a text with whole words masked at
``encoder_mlm_probability`` and must compress it into its final [CLS] vector. A one-layer
decoder then rebuilds every token of the *unmasked* text from that vector alone plus a few
other tokens: its query stream is the [CLS] vector repeated at every position (plus the
position embeddings), its keys and values are [CLS] followed by the text's own embeddings,
and each query row attends through a mask of its own (enhanced decoding) drawn from a pool
of whole-word masks at ``decoder_mlm_probability``, never seeing its own token. The decoder
is weak on purpose, so the encoder's [CLS] has to carry the text. The loss is the decoder's
cross-entropy plus the encoder's MLM loss, with equal weights; only the encoder is kept.

Masks are drawn per text from a generator seeded by (seed, epoch, index), so a resumed
run sees the same masks as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import AutoModelForMaskedLM, AutoTokenizer, Trainer
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput

from flagops.data.formats import DataError, atomic_path, iter_jsonl
from flagops.models.sources import resolve_model_source
from flagops.training import common

MASK_POOL = 128  # masks drawn per text for the decoder's rows (FlagEmbedding: min(length, 128))
IGNORE = -100  # label of a position no loss is taken on

# --------------------------------------------------------------------------- masking


def word_ids(tokens: Sequence[str], special: Sequence[bool]) -> torch.Tensor:
    """The word each WordPiece token belongs to, (tokens,): a "##" piece continues the word
    before it; special tokens ([CLS], [SEP]) are -1 and are never masked."""
    out, word = [], -1
    for token, is_special in zip(tokens, special, strict=True):
        if is_special:
            out.append(-1)
            continue
        if not (token.startswith("##") and word >= 0 and out[-1] >= 0):
            word += 1
        out.append(word)
    return torch.tensor(out, dtype=torch.long)


def whole_word_masks(words: torch.Tensor, rate: float, n_masks: int, generator: torch.Generator) -> torch.Tensor:
    """``n_masks`` independent whole-word masks over one text, (n_masks, tokens) bool.

    Each mask takes words in a random order for as long as the masked pieces stay within
    ``max(1, round(rate * pieces))``, so every piece of a chosen word is masked and the rate
    holds in pieces, not words. Special tokens (word -1) are never masked.
    """
    real = words >= 0
    n_words = int(words.max()) + 1 if real.any() else 0
    if n_words == 0:
        return torch.zeros(n_masks, words.numel(), dtype=torch.bool)
    sizes = torch.bincount(words[real], minlength=n_words)  # (words,) pieces per word
    budget = max(1, round(rate * int(sizes.sum())))
    order = torch.rand(n_masks, n_words, generator=generator).argsort(dim=1)  # (n_masks, words)
    within = sizes[order].cumsum(dim=1) <= budget  # (n_masks, words), in the drawn order
    chosen = torch.zeros(n_masks, n_words, dtype=torch.bool).scatter_(1, order, within)  # by word id
    return chosen[:, words.clamp(min=0)] & real  # (n_masks, tokens)


def corrupt(ids: torch.Tensor, masked: torch.Tensor, mask_id: int, vocab: int, generator: torch.Generator):
    """BERT's corruption of the masked positions: 80% [MASK], 10% a random token, 10% kept.
    Returns (corrupted ids, labels): labels hold the original id where masked, else IGNORE."""
    labels = torch.where(masked, ids, IGNORE)
    u = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab, ids.shape, generator=generator)
    out = torch.where(masked & (u < 0.8), mask_id, ids)
    out = torch.where(masked & (u >= 0.8) & (u < 0.9), random_ids, out)
    return out, labels


def decoder_visibility(pool: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Enhanced decoding's attention pattern, (tokens, tokens) bool, True = row may attend to
    column: row i takes a random mask of ``pool`` (n_masks, tokens) and sees what it leaves
    unmasked, except itself (a token is rebuilt from the others, never copied)."""
    n = pool.shape[1]
    pick = torch.randint(pool.shape[0], (n,), generator=generator)  # (tokens,)
    visible = ~pool[pick]  # (tokens, tokens)
    visible.fill_diagonal_(False)
    return visible


# --------------------------------------------------------------------------- data


def read_texts(path: Path) -> list[str]:
    """A pretraining JSONL, one {"text": ...} per line; an error names ``path:line``."""
    texts = []
    for lineno, obj in iter_jsonl(path):
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f'{path}:{lineno}: expected a non-empty string in "text", one {{"text": ...}} object per line')
        texts.append(text)
    return texts


class RetroMAEDataset(Dataset):
    """Item i -> one text tokenised and masked for both streams, seeded by (seed, epoch, i)."""

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int, encoder_rate: float, decoder_rate: float, seed: int):
        self.texts = list(texts)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.encoder_rate = encoder_rate
        self.decoder_rate = decoder_rate
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(self.texts[i], truncation=True, max_length=self.max_length, return_special_tokens_mask=True)
        ids = torch.tensor(enc["input_ids"])  # (tokens,)
        special = [bool(s) for s in enc["special_tokens_mask"]]
        words = word_ids(self.tokenizer.convert_ids_to_tokens(enc["input_ids"]), special)
        g = torch.Generator().manual_seed(int(hashlib.sha256(f"{self.seed}:{self.epoch}:{i}".encode()).hexdigest()[:15], 16))
        encoder_mask = whole_word_masks(words, self.encoder_rate, 1, g)[0]
        encoder_ids, encoder_labels = corrupt(ids, encoder_mask, self.tokenizer.mask_token_id, len(self.tokenizer), g)
        pool = whole_word_masks(words, self.decoder_rate, min(len(ids), MASK_POOL), g)
        return {
            "input_ids": ids,
            "encoder_input_ids": encoder_ids,
            "encoder_labels": encoder_labels,
            "decoder_labels": torch.where(torch.tensor(special), IGNORE, ids),  # every real token is rebuilt
            "decoder_visible": decoder_visibility(pool, g),
        }


@dataclass
class RetroMAECollator:
    """Pads a list of ``RetroMAEDataset`` items to the longest; padding is never seen or scored."""

    pad_id: int

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        n = max(len(it["input_ids"]) for it in items)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.stack([F.pad(it[key], (0, n - len(it[key])), value=value) for it in items])  # (batch, n)

        visible = torch.zeros(len(items), n, n, dtype=torch.bool)  # (batch, n, n)
        for b, it in enumerate(items):
            k = len(it["input_ids"])
            visible[b, :k, :k] = it["decoder_visible"]
        return {
            "input_ids": pad("input_ids", self.pad_id),
            "attention_mask": torch.stack(
                [F.pad(torch.ones(len(it["input_ids"]), dtype=torch.long), (0, n - len(it["input_ids"]))) for it in items]
            ),
            "encoder_input_ids": pad("encoder_input_ids", self.pad_id),
            "encoder_labels": pad("encoder_labels", IGNORE),
            "decoder_labels": pad("decoder_labels", IGNORE),
            "decoder_visible": visible,
        }


# --------------------------------------------------------------------------- model and loss


def retromae_loss(encoder_logits, encoder_labels, decoder_logits, decoder_labels) -> torch.Tensor:
    """Decoder cross-entropy + encoder MLM cross-entropy, each a mean over its labelled positions."""
    vocab = encoder_logits.shape[-1]
    encoder = F.cross_entropy(encoder_logits.reshape(-1, vocab), encoder_labels.reshape(-1), ignore_index=IGNORE)
    decoder = F.cross_entropy(decoder_logits.reshape(-1, vocab), decoder_labels.reshape(-1), ignore_index=IGNORE)
    return decoder + encoder


class EnhancedDecoderLayer(nn.Module):
    """One BERT layer whose queries and keys/values are separate streams, with a (batch, n, n)
    visibility mask: attention (residual on the query stream), then the feed-forward block."""

    def __init__(self, config):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.attention_output = BertSelfOutput(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        b, n, d = query.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (batch, heads, n, head_dim)

        # A large negative rather than -inf: a padded row sees nothing, and must not turn NaN.
        bias = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(~visible, torch.finfo(query.dtype).min)
        context = F.scaled_dot_product_attention(
            split(self.query(query)),
            split(self.key(keys)),
            split(self.value(keys)),
            attn_mask=bias[:, None],  # (batch, 1, n, n)
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        attended = self.attention_output(context.transpose(1, 2).reshape(b, n, d), query)  # (batch, n, dim)
        return self.output(self.intermediate(attended), attended)


class RetroMAEForPretraining(nn.Module):
    """A masked LM (the encoder, kept) + a fresh decoder layer that shares the encoder's
    embeddings and MLM head, as FlagEmbedding does; returns {"loss"} as the Trainer expects."""

    def __init__(self, lm: nn.Module, tokenizer):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.decoder = EnhancedDecoderLayer(lm.config)
        self.decoder.apply(lm._init_weights)

    @property
    def embeddings(self) -> nn.Module:
        """The encoder's embedding module (a property, so the shared weights have one name)."""
        return self.lm.base_model.embeddings

    @property
    def head(self) -> nn.Module:
        """The encoder's MLM head: ``cls`` in BERT, ``lm_head`` in RoBERTa-likes."""
        return self.lm.cls if hasattr(self.lm, "cls") else self.lm.lm_head

    def decode(self, cls: torch.Tensor, input_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Decoder logits (batch, n, vocab) from the encoder's [CLS] state (batch, 1, dim)."""
        n = input_ids.shape[1]
        keys = torch.cat([cls, self.embeddings(input_ids=input_ids)[:, 1:]], dim=1)  # (batch, n, dim)
        query = self.embeddings(inputs_embeds=cls.expand(-1, n, -1))  # (batch, n, dim): [CLS] + positions
        return self.head(self.decoder(query, keys, visible))

    def forward(self, input_ids, attention_mask, encoder_input_ids, encoder_labels, decoder_labels, decoder_visible):
        out = self.lm(input_ids=encoder_input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
        cls = out.hidden_states[-1][:, :1]  # (batch, 1, dim)
        decoder_logits = self.decode(cls, input_ids, decoder_visible)
        return {"loss": retromae_loss(out.logits, encoder_labels, decoder_logits, decoder_labels)}

    def state_dict(self, *args, **kwargs):
        """As ``nn.Module``'s, the tied MLM head (the word embedding matrix) as its own copy (``common.untied``)."""
        return common.untied(super().state_dict(*args, **kwargs))

    def save(self, dest: Path) -> None:
        """The encoder alone (its MLM head included) and the tokenizer: an HF directory that
        AutoModel, AutoModelForMaskedLM and flagops's Embedder load; the decoder is dropped."""
        with atomic_path(dest, is_dir=True) as tmp:
            self.lm.save_pretrained(str(tmp), safe_serialization=True)
            self.tokenizer.save_pretrained(str(tmp))


# --------------------------------------------------------------------------- recipe


def fingerprint(cfg, base: str, texts: Sequence[str]) -> str:
    """A hash of the section, the base and the texts: another run's checkpoints never resume."""
    h = hashlib.sha256(json.dumps([cfg.model_dump(mode="json"), base]).encode())
    for text in texts:
        h.update(text.encode() + b"\0")
    return h.hexdigest()


def train(cfg, base: str, texts: Sequence[str], output: Path) -> dict[str, float]:
    """Pretrain ``base`` on ``texts`` with the ``pretrain`` section ``cfg``; the encoder goes to ``output``."""
    # ---- setup
    torch.manual_seed(cfg.seed)  # the fresh decoder (and a fresh MLM head) start the same on every run
    path = resolve_model_source(base)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = RetroMAEForPretraining(AutoModelForMaskedLM.from_pretrained(str(path)), tokenizer)
    limit = getattr(model.lm.config, "max_position_embeddings", cfg.max_length)
    dataset = RetroMAEDataset(
        texts, tokenizer, min(cfg.max_length, limit), cfg.encoder_mlm_probability, cfg.decoder_mlm_probability, cfg.seed
    )

    args = common.training_arguments(cfg, output, cfg.batch_size)  # joins the process group under torchrun
    world = common.world_size()
    steps_per_epoch = len(dataset) // cfg.batch_size // world
    if steps_per_epoch == 0:
        raise DataError(f"{len(dataset)} texts make no full step of {cfg.batch_size} texts x {world} device(s); lower pretrain.batch_size")
    total = cfg.max_steps if cfg.max_steps > 0 else int(steps_per_epoch * cfg.epochs)
    ckpt, resume = common.prepare_checkpoints(output, fingerprint(cfg, base, texts), cfg.resume_from_checkpoint)
    print(
        f"pretrain_retromae: {base} | {len(dataset)} texts | batch {cfg.batch_size} x {world} device(s) = "
        f"{cfg.batch_size * world} texts/step | {steps_per_epoch} steps/epoch, {total} steps | tokens/step/device <= "
        f"{cfg.batch_size * dataset.max_length} | masking: encoder {cfg.encoder_mlm_probability:g}, decoder "
        f"{cfg.decoder_mlm_probability:g}" + (f" | resuming from {Path(resume).name}" if resume else "")
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=RetroMAECollator(tokenizer.pad_token_id),
        callbacks=[common.MlflowThroughputCallback(cfg.batch_size * world), common.EpochSeedCallback(dataset)],
    )

    # ---- train
    result = common.train(trainer, resume)

    # ---- save (rank 0 only: the encoder) and cleanup
    common.save_and_clean_up(trainer, model, output, ckpt)
    return common.loss_summary(trainer, result)
