"""Activation Beacon (Zhang et al. 2024, "Soaring from 4K to 400K"; FlagEmbedding
research/Long_LLM/activation_beacon, the paper's version) on the tiny Llama of train_base_lm.

The frozen base reads a long input in windows of ``window`` raw tokens. After a full window
(not the last one) ``window / ratio`` beacon tokens are appended to it; they run through the same
layers with beacon-only q/k/v/o projections (copies of the base's) and one beacon embedding
(a copy of eos's). When the window is done only the beacons' keys and values stay in the cache:
the raw tokens' activations are dropped, so the next window reads the past through
``window / ratio`` condensed entries per window.

Inside a window of ``n`` tokens and ``b`` beacons, with ``m`` beacons cached from earlier windows
(``window_mask``, ``window_positions``):

- a raw token sees every cached beacon and the raw tokens before it (causal);
- beacon ``i`` (step-expansion) sees every cached beacon, the first ``(i + 1) x ratio`` raw tokens
  of its window, itself and the earlier beacons of this window;
- positions restart each window: cached beacons take ``0 .. m-1``, raw tokens ``m .. m+n-1``, and
  beacon ``i`` sits next to the last token it covers, ``m + (i + 1) x ratio`` (FlagEmbedding's
  paper-era code). Keys are cached before RoPE and rotated again at their new positions.

The ratio is drawn per window from ``ratios`` in training (FlagEmbedding's "step-random"); at
evaluation it is fixed per input, the smallest ratio whose condensed input fits the base's
positions (its "adapt" mix). Only the beacon parameters train, on the next-token loss of the raw
tokens of every window; gradients flow through the cached beacons into earlier windows.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from flagops.config import ConfigError
from flagops.data.formats import DataError, Passage, atomic_path, write_json
from flagops.longctx.evaluate import MAX_NEW_TOKENS, load, rouge_l
from flagops.longctx.needle import IGNORE, TokenPool, needle_keys, needle_sample, random_code, training_samples
from flagops.training.common import stamp
from flagops.training.loop_checkpoints import LoopCheckpoints, files_digest

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
WEIGHTS_FILE = "beacon.safetensors"
SETTINGS_FILE = "beacon.json"


# --------------------------------------------------------------------------- windows, mask, positions


@dataclass(frozen=True)
class Window:
    start: int  # index of its first raw token in the input
    tokens: int  # raw tokens
    beacons: int  # beacons appended after them (0: nothing is condensed)
    ratio: int  # raw tokens per beacon


def plan_windows(length: int, window: int, ratios: Sequence[int]) -> list[Window]:
    """The windows over ``length`` tokens, ``ratios[k]`` for the k-th. Only a full window that is not
    the last gets beacons: a partial one is still being read, and the last one's would never be read."""
    starts = list(range(0, length, window))
    if len(ratios) < len(starts):
        raise ValueError(f"{len(starts)} windows need as many ratios, got {len(ratios)}")
    plan = []
    for k, start in enumerate(starts):
        tokens = min(window, length - start)
        condensed = tokens == window and k < len(starts) - 1
        plan.append(Window(start, tokens, tokens // ratios[k] if condensed else 0, ratios[k]))
    return plan


def adaptive_ratio(length: int, window: int, base_context: int, ratios: Sequence[int]) -> int:
    """The smallest ratio whose condensed input fits the base's positions: ``(base_context - window)``
    positions of beacons, each standing for ``ratio`` tokens, plus one raw window; else the largest."""
    for ratio in sorted(ratios):
        if (base_context - window) * ratio + window >= length:
            return ratio
    return max(ratios)


def window_mask(memory: int, tokens: int, beacons: int, ratio: int) -> torch.Tensor:
    """(tokens + beacons, memory + tokens + beacons) bool, True where a query row may attend.
    Columns: cached beacons, this window's raw tokens, this window's beacons."""
    mask = torch.zeros(tokens + beacons, memory + tokens + beacons, dtype=torch.bool)
    mask[:, :memory] = True
    mask[:tokens, memory : memory + tokens] = torch.ones(tokens, tokens, dtype=torch.bool).tril()
    for i in range(beacons):
        row = tokens + i
        mask[row, memory : memory + (i + 1) * ratio] = True  # step expansion: one more ratio's worth per beacon
        mask[row, memory + tokens : memory + tokens + i + 1] = True  # itself and this window's earlier beacons
    return mask


def window_positions(memory: int, tokens: int, beacons: int, ratio: int) -> torch.Tensor:
    """Position ids of (cached beacons, raw tokens, new beacons); beacon i next to the last token it covers."""
    return torch.cat([torch.arange(memory + tokens), memory + ratio * torch.arange(1, beacons + 1)])


def kv_kept(plan: Sequence[Window]) -> int:
    """Cached positions per layer once the input is read: every beacon, and the last window's raw tokens."""
    return sum(w.beacons for w in plan) + plan[-1].tokens


# --------------------------------------------------------------------------- the model


def device() -> torch.device:
    """CUDA when present (the tiny runs use the CPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE of (batch, heads, seq, head_dim) at cos/sin (batch, seq, head_dim)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class BeaconLlama(nn.Module):
    """A frozen ``LlamaForCausalLM`` plus the beacon parameters; ``forward`` reads an input by ``plan``."""

    def __init__(self, base):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        embed = base.get_input_embeddings().weight
        self.beacon_embedding = nn.Parameter(embed[base.config.eos_token_id].detach().clone())  # (hidden,)
        self.beacon_proj = nn.ModuleList(
            nn.ModuleDict({name: copy.deepcopy(getattr(layer.self_attn, name)).requires_grad_(True) for name in PROJECTIONS})
            for layer in base.model.layers
        )

    def beacon_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def _attention(self, layer, proj, hidden, past, cos, sin, mask, tokens):
        """One attention block over a window's rows; (output, keys, values), keys/values of these rows before RoPE."""
        attn = layer.self_attn

        def project(name, x):  # raw rows through the base's projection, beacon rows through the beacon copy
            out = getattr(attn, name)(x[:, :tokens])
            return torch.cat([out, proj[name](x[:, tokens:])], dim=1) if x.shape[1] > tokens else out

        batch, rows, _ = hidden.shape
        q, k, v = (project(n, hidden).view(batch, rows, -1, attn.head_dim).transpose(1, 2) for n in PROJECTIONS[:3])
        keys = k if past is None else torch.cat([past[0], k], dim=2)  # (batch, kv_heads, memory + rows, head_dim)
        values = v if past is None else torch.cat([past[1], v], dim=2)
        q = _rotate(q, cos[:, -rows:], sin[:, -rows:])
        keys_rot = repeat_kv(_rotate(keys, cos, sin), attn.num_key_value_groups)
        out = F.scaled_dot_product_attention(q, keys_rot, repeat_kv(values, attn.num_key_value_groups), attn_mask=mask, scale=attn.scaling)
        out = out.transpose(1, 2).reshape(batch, rows, -1)
        return project("o_proj", out), k, v

    def forward(self, input_ids: torch.Tensor, plan: Sequence[Window], memory: list | None = None) -> tuple[torch.Tensor, list]:
        """(logits (batch, seq, vocab) of the raw tokens, the cache after them), read window by window.
        The cache is per layer (keys before RoPE, values), the beacons' only; ``memory`` continues one."""
        llama = self.base.model
        batch = input_ids.shape[0]
        memory = list(memory) if memory is not None else [None] * len(llama.layers)
        logits = []
        for w in plan:
            hidden = llama.embed_tokens(input_ids[:, w.start : w.start + w.tokens])
            if w.beacons:
                hidden = torch.cat([hidden, self.beacon_embedding.to(hidden.dtype).expand(batch, w.beacons, -1)], dim=1)
            cached = 0 if memory[0] is None else memory[0][0].shape[2]
            positions = window_positions(cached, w.tokens, w.beacons, w.ratio).to(input_ids.device)
            cos, sin = llama.rotary_emb(hidden, positions[None].expand(batch, -1))
            mask = window_mask(cached, w.tokens, w.beacons, w.ratio).to(input_ids.device)
            for i, layer in enumerate(llama.layers):
                residual = hidden
                out, k, v = self._attention(layer, self.beacon_proj[i], layer.input_layernorm(hidden), memory[i], cos, sin, mask, w.tokens)
                hidden = residual + out
                hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
                # keep the beacons' keys/values only: the raw tokens' are dropped with the window
                new = (k[:, :, w.tokens :], v[:, :, w.tokens :])
                memory[i] = new if memory[i] is None else (torch.cat([memory[i][0], new[0]], 2), torch.cat([memory[i][1], new[1]], 2))
            logits.append(self.base.lm_head(llama.norm(hidden[:, : w.tokens])))
        return torch.cat(logits, dim=1), memory


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled raw tokens: ``logits[:, t]`` predicts ``labels[:, t + 1]``."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def load_beacon(base_dir: Path, beacon_dir: Path):
    """(tokenizer, BeaconLlama, settings) from the base LM and the trained beacon parameters."""
    weights, settings = Path(beacon_dir) / WEIGHTS_FILE, Path(beacon_dir) / SETTINGS_FILE
    if not weights.is_file() or not settings.is_file():
        raise DataError(f"{beacon_dir}: no {WEIGHTS_FILE} and {SETTINGS_FILE}; point beacon_lm at train_beacon's output")
    tokenizer, base = load(base_dir)
    model = BeaconLlama(base)
    loaded = model.load_state_dict(load_file(str(weights)), strict=False)  # the base's weights come from base_dir
    missing = [k for k in loaded.missing_keys if not k.startswith("base.")]
    if missing or loaded.unexpected_keys:
        raise DataError(
            f"{weights}: beacon weights do not fit the base LM in {base_dir} (missing {missing[:3]}, unexpected "
            f"{loaded.unexpected_keys[:3]}); retrain train_beacon on this base"
        )
    return tokenizer, model.eval(), json.loads(settings.read_text(encoding="utf-8"))


def check_window(cfg, base_context: int) -> None:
    if cfg.window > base_context:
        raise ConfigError(f"beacon.window {cfg.window} exceeds the base's context longctx.base_context={base_context}; lower beacon.window")


# --------------------------------------------------------------------------- train


def train(cfg, base_context: int, base_dir: Path, passages: Sequence[Passage], output: Path, loss_curve: Path | None = None):
    """Train the beacon parameters (the ``beacon`` section ``cfg``) on ``passages``; write them to ``output``."""
    # ---- setup
    check_window(cfg, base_context)
    tokenizer, base = load(base_dir)
    torch.manual_seed(cfg.seed)
    model = BeaconLlama(base).to(device())
    length = cfg.train_factor * base_context
    samples = training_samples(tokenizer, passages, cfg.samples, (length, length), length, cfg.short_fraction, cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    rng = random.Random(cfg.seed)
    n_windows = math.ceil(length / cfg.window)
    print(
        f"train_beacon: {len(samples)} samples of {length} tokens in {n_windows} windows of {cfg.window}, ratios {list(cfg.ratios)} | "
        f"{sum(p.numel() for p in params)} beacon parameters train, the base's {sum(p.numel() for p in base.parameters())} are frozen"
    )

    # ---- train (resumed from the newest checkpoint of the same config, data and base)
    data = [p.text for p in passages] + [str(base_context), files_digest(base_dir)]
    checkpoints = LoopCheckpoints("train_beacon", output, stamp(cfg, data=data), cfg.save_steps, cfg.resume_from_checkpoint)
    done, curve, extra = checkpoints.restore(model, optimizer)
    if extra is not None:
        rng.setstate(extra["rng"])
    for step in range(done + 1, cfg.steps + 1):
        batch = [samples[((step - 1) * cfg.batch_size + j) % len(samples)] for j in range(cfg.batch_size)]
        input_ids = torch.tensor([s["input_ids"] for s in batch], device=device())  # (batch, length)
        labels = torch.tensor([s["labels"] for s in batch], device=device())
        plan = plan_windows(length, cfg.window, [rng.choice(cfg.ratios) for _ in range(n_windows)])
        loss = lm_loss(model(input_ids, plan)[0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % cfg.logging_steps == 0 or step == 1:
            curve.append({"step": step, "loss": loss.item()})
        checkpoints.save(step, model, optimizer, log=curve, extra={"rng": rng.getstate()})

    # ---- save
    with atomic_path(output, is_dir=True) as tmp:
        save_file({k: v.contiguous() for k, v in model.beacon_state().items()}, str(tmp / WEIGHTS_FILE))
        settings = {"window": cfg.window, "ratios": list(cfg.ratios), "base_context": base_context}
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    if loss_curve is not None:
        write_json(loss_curve, curve)
    checkpoints.finish()
    losses = [c["loss"] for c in curve]
    k = max(1, len(losses) // 3)
    return {
        "loss_start": float(np.median(losses[:k])),
        "loss_end": float(np.median(losses[-k:])),
        "loss_logged": float(len(losses)),
        "steps": float(cfg.steps),
    }


# --------------------------------------------------------------------------- evaluate


@torch.no_grad()
def beacon_nll(model, input_ids: torch.Tensor, plan: Sequence[Window]) -> tuple[float, int]:
    """(summed NLL, predictions) of every token after the first, read by ``plan``."""
    logits, _ = model(input_ids, plan)
    return float(lm_loss(logits, input_ids)) * (input_ids.numel() - input_ids.shape[0]), input_ids.numel() - input_ids.shape[0]


@torch.no_grad()
def truncated_nll(base, input_ids: torch.Tensor, context: int, bos: int) -> tuple[float, int]:
    """(summed NLL, predictions) of every token after the first by the base truncated to its window: a
    strided sliding window, ``context`` tokens every ``context / 2``, each token scored once with at least
    ``context / 2 - 1`` tokens before it. Windows after the first restart from bos, as the base was trained."""
    length = input_ids.shape[1]
    stride = context // 2
    nll, count, scored, begin = 0.0, 0, 1, 0  # token 0 is never predicted
    while scored < length:
        prefix = int(begin > 0)
        end = min(begin + context - prefix, length)
        chunk = input_ids[:, begin:end]
        if prefix:
            chunk = torch.cat([torch.full((chunk.shape[0], 1), bos, device=chunk.device), chunk], dim=1)
        # chunk position p holds input token begin + p - prefix, and its logits predict the token after
        logits = base(chunk).logits[:, scored - 1 - begin + prefix : end - 1 - begin + prefix]
        targets = input_ids[:, scored:end]
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
        scored, begin = end, begin + stride
    return nll, count


@torch.no_grad()
def greedy_ids(model, prompts: list[list[int]], window: int, ratio: int) -> torch.Tensor:
    """(batch, MAX_NEW_TOKENS) greedy continuations of equal-length prompts. The full windows before the
    prompt's last are read once into the beacon cache; each new token re-reads only the raw tail after
    them (a window or two: the answer is a few tokens)."""
    input_ids = torch.tensor(prompts, device=device())  # (batch, prompt)
    tail_start = (input_ids.shape[1] - 1) // window * window  # the first token of the prompt's last window
    memory = None
    if tail_start:  # these windows are never the input's last: each is condensed into its beacons
        _, memory = model(input_ids[:, :tail_start], plan_windows(tail_start + 1, window, [ratio] * (tail_start // window + 1))[:-1])
    for _ in range(MAX_NEW_TOKENS):
        tail = input_ids[:, tail_start:]
        logits, _ = model(tail, plan_windows(tail.shape[1], window, [ratio] * math.ceil(tail.shape[1] / window)), memory)
        input_ids = torch.cat([input_ids, logits[:, -1].argmax(-1)[:, None]], dim=1)
    return input_ids[:, len(prompts[0]) :]


def decode_answers(tokenizer, ids: torch.Tensor) -> list[str]:
    """Each row cut at eos, decoded, cut at a newline (as longctx's needle evaluation)."""
    answers = []
    for row in ids.tolist():
        row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
        answers.append(tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip())
    return answers


def evaluate(cfg, base_context: int, base_dir: Path, beacon_dir: Path, held_out: Sequence[Passage]) -> tuple[dict[str, float], list[dict]]:
    """(flat metrics, per-length rows) of the beacon model vs the base truncated to its window, on held-out text
    at ``cfg.eval_factors`` x ``base_context`` tokens: perplexity, needle exact match / ROUGE-L, KV kept per token.
    ``base_beacon_window/ppl``: the base truncated to the beacons' raw window instead, what the beacons add to."""
    tokenizer, model, settings = load_beacon(base_dir, beacon_dir)
    model.to(device())
    window, ratios = settings["window"], settings["ratios"]
    pool, keys = TokenPool(tokenizer, held_out), needle_keys(held_out)
    bos = tokenizer.bos_token_id
    rows = []
    for factor in cfg.eval_factors:
        length = factor * base_context
        rng = random.Random(cfg.seed + factor)
        ratio = adaptive_ratio(length, window, base_context, ratios)
        plan = plan_windows(length, window, [ratio] * math.ceil(length / window))
        # perplexity on the same held-out texts
        texts = torch.tensor([[bos] + pool.haystack(length - 1, rng) for _ in range(cfg.eval_segments)], device=device())
        b_nll, b_n = truncated_nll(model.base, texts, base_context, bos)
        w_nll, w_n = truncated_nll(model.base, texts, window, bos)  # the base with the beacons' raw window and no memory
        a_nll, a_n = beacon_nll(model, texts, plan)
        # needles: the base reads the prompt's last window only
        base_hits, beacon_hits = [], []
        for depth in cfg.needle_depths:
            samples = [
                needle_sample(tokenizer, pool, length, depth, rng.choice(keys), random_code(rng), rng) for _ in range(cfg.needle_trials)
            ]
            keep = base_context - MAX_NEW_TOKENS - 1
            truncated = [[bos] + s.prompt_ids[-keep:] for s in samples]
            for hits, ids in (
                (base_hits, greedy_ids(model, truncated, base_context, ratio)),  # a single window: the base itself
                (beacon_hits, greedy_ids(model, [s.prompt_ids for s in samples], window, ratio)),
            ):
                answers = decode_answers(tokenizer, ids)
                hits += [(float(a == s.answer), rouge_l(a, s.answer)) for a, s in zip(answers, samples, strict=True)]
        rows.append(
            {
                "factor": factor,
                "length": length,
                "ratio": ratio,
                "base/ppl": math.exp(b_nll / b_n),
                "beacon/ppl": math.exp(a_nll / a_n),
                "base_beacon_window/ppl": math.exp(w_nll / w_n),
                "base/needle_exact_match": float(np.mean([h[0] for h in base_hits])),
                "beacon/needle_exact_match": float(np.mean([h[0] for h in beacon_hits])),
                "base/needle_rouge_l": float(np.mean([h[1] for h in base_hits])),
                "beacon/needle_rouge_l": float(np.mean([h[1] for h in beacon_hits])),
                "base/kv_per_token": min(length, base_context) / length,
                "beacon/kv_per_token": kv_kept(plan) / length,
            }
        )
    longest = rows[-1]
    metrics = {f"{m}/ppl@{r['factor']}x": r[f"{m}/ppl"] for r in rows for m in ("base", "beacon")}
    for m in ("base", "beacon"):
        metrics[f"{m}/needle_exact_match"] = float(np.mean([r[f"{m}/needle_exact_match"] for r in rows]))
        metrics[f"{m}/needle_rouge_l"] = float(np.mean([r[f"{m}/needle_rouge_l"] for r in rows]))
        metrics[f"{m}/kv_per_token@{longest['factor']}x"] = longest[f"{m}/kv_per_token"]
    metrics[f"base_beacon_window/ppl@{longest['factor']}x"] = longest["base_beacon_window/ppl"]
    return metrics, rows


def write_plot(path: str | Path, rows: Sequence[dict]) -> None:
    """Perplexity by context length: the base truncated to its window and to the beacons', and the beacons; written atomically."""
    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(len(rows))
    bars = (("base_beacon_window", "base, beacon's window"), ("base", "base, its window"), ("beacon", "beacon"))
    for k, (model, label) in enumerate(bars):
        ax.bar(x + (k - 1) * 0.27, [r[f"{model}/ppl"] for r in rows], width=0.27, label=label)
    ax.set_xticks(x, [f"{r['factor']}x ({r['length']}, ratio {r['ratio']})" for r in rows])
    ax.set_xlabel("context (x the base's window)")
    ax.set_ylabel("held-out perplexity")
    ax.set_ylim(0, 1.3 * max(r[f"{m}/ppl"] for r in rows for m, _ in bars))  # room for the legend above the bars
    ax.legend(loc="upper center", ncols=3, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
