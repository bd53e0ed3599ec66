"""Long-context evaluation of a base and its extension: needle-in-a-haystack, topic retrieval and
short-context retention. ``evaluate`` returns a flat ``dict[str, float]`` (keys prefixed
``base/`` and ``extended/``) and the heatmap's rows.

- **Needle:** for each (length, depth) cell, ``needle_trials`` needles with fresh codes in
  haystacks of held-out passages; the answer is decoded greedily and scored by exact match and
  ROUGE-L F1 over characters (a five-digit code is one word, so word-level ROUGE-L would
  equal exact match; on characters, 4 of 5 digits in order score 0.8).
- **Topic retrieval:** ``topic_passages`` passages from as many modules, concatenated up to
  the longest needle length; "Which module was the first passage about?". Scored as multiple
  choice: the module whose name the model gives the highest log-likelihood (chance: 1 / the
  passages). A tiny model decodes no free-form module names, but the ranking still tells.
- **Retention:** perplexity on held-out passages in windows of ``base_context`` tokens (the
  base's own length), before and after; ``short_ppl_change`` is after / before - 1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from transformers import AutoModelForCausalLM, AutoTokenizer

from flagops.data.formats import DataError, Passage, atomic_path
from flagops.longctx.needle import SEPARATOR, TokenPool, ids, needle_keys, needle_sample, random_code

TOPIC_QUESTION = "\nQuestion: Which module was the first passage about?\nAnswer:"
MAX_NEW_TOKENS = 8  # a code is a space and five digits, then eos


def rouge_l(candidate: Sequence, reference: Sequence) -> float:
    """ROUGE-L F1: the longest common subsequence's precision and recall, harmonic mean (beta 1)."""
    if not candidate or not reference:
        return 0.0
    prev = [0] * (len(reference) + 1)
    for c in candidate:  # LCS by dynamic programming, one row at a time
        row = [0]
        for j, r in enumerate(reference):
            row.append(prev[j] + 1 if c == r else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def load(path: Path):
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return tokenizer, model


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[list[int]]) -> list[str]:
    """Greedy continuations of equal-length prompts, cut at eos or a newline."""
    input_ids = torch.tensor(prompts)  # (batch, seq)
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts]


def needle_grid(model, tokenizer, passages: Sequence[Passage], cfg) -> list[dict]:
    """One row per (length, depth): mean exact match and ROUGE-L over ``needle_trials`` needles.
    The same seed gives every model the same needles."""
    rng = random.Random(cfg.seed)
    pool, keys = TokenPool(tokenizer, passages), needle_keys(passages)
    rows = []
    for length in cfg.needle_lengths:
        for depth in cfg.needle_depths:
            samples = [
                needle_sample(tokenizer, pool, length, depth, rng.choice(keys), random_code(rng), rng) for _ in range(cfg.needle_trials)
            ]
            answers = greedy_answers(model, tokenizer, [s.prompt_ids for s in samples])
            rows.append(
                {
                    "length": length,
                    "depth": depth,
                    "exact_match": float(np.mean([a == s.answer for a, s in zip(answers, samples, strict=True)])),
                    "rouge_l": float(np.mean([rouge_l(a, s.answer) for a, s in zip(answers, samples, strict=True)])),
                }
            )
    return rows


@torch.no_grad()
def continuation_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    """log p(continuation | prompt), summed over its tokens."""
    input_ids = torch.tensor([prompt + continuation])
    logprobs = torch.log_softmax(model(input_ids).logits[0, len(prompt) - 1 : -1], dim=-1)  # (len(continuation), vocab)
    return float(logprobs[torch.arange(len(continuation)), torch.tensor(continuation)].sum())


def topic_accuracy(model, tokenizer, passages: Sequence[Passage], cfg) -> float:
    """Share of questions where the first passage's module is the likeliest of the modules shown."""
    by_module: dict[str, list[Passage]] = {}
    for p in passages:
        by_module.setdefault(p.group or p.title.split(".")[0], []).append(p)
    modules = sorted(by_module)
    if len(modules) < cfg.topic_passages:
        raise DataError(
            f"topic retrieval needs passages from {cfg.topic_passages} modules, the corpus has {len(modules)}; lower longctx.topic_passages"
        )
    rng = random.Random(cfg.seed)
    question = ids(tokenizer, TOPIC_QUESTION)
    per_passage = (max(cfg.needle_lengths) - 1 - len(question) - MAX_NEW_TOKENS) // cfg.topic_passages
    hits = 0
    for _ in range(cfg.topic_samples):
        shown = rng.sample(modules, cfg.topic_passages)
        context = [tokenizer.bos_token_id]
        for module in shown:
            context += ids(tokenizer, rng.choice(by_module[module]).full_text + SEPARATOR)[:per_passage]
        prompt = context + question
        scores = [continuation_logprob(model, prompt, ids(tokenizer, f" {m}")) for m in shown]
        hits += int(np.argmax(scores) == 0)
    return hits / cfg.topic_samples


@torch.no_grad()
def perplexity(model, tokenizer, passages: Sequence[Passage], context: int) -> float:
    """exp(mean next-token NLL) over the passages' tokens in windows of ``context`` tokens (bos first)."""
    stream = [t for p in passages for t in ids(tokenizer, p.full_text + SEPARATOR)]
    nll, count = 0.0, 0
    for start in range(0, len(stream), context - 1):
        window = [tokenizer.bos_token_id] + stream[start : start + context - 1]
        if len(window) < 2:
            break
        input_ids = torch.tensor([window])
        loss = model(input_ids, labels=input_ids).loss  # mean over len(window) - 1 predictions
        nll += float(loss) * (len(window) - 1)
        count += len(window) - 1
    return math.exp(nll / count)


def evaluate_model(
    path: Path, held_out: Sequence[Passage], passages: Sequence[Passage], cfg, prefix: str
) -> tuple[dict[str, float], list[dict]]:
    tokenizer, model = load(path)
    rows = needle_grid(model, tokenizer, held_out, cfg)
    metrics = {
        f"{prefix}/needle_exact_match": float(np.mean([r["exact_match"] for r in rows])),
        f"{prefix}/needle_rouge_l": float(np.mean([r["rouge_l"] for r in rows])),
        f"{prefix}/topic_accuracy": topic_accuracy(model, tokenizer, passages, cfg),
        f"{prefix}/short_ppl": perplexity(model, tokenizer, held_out, cfg.base_context),
    }
    for r in rows:
        metrics[f"{prefix}/needle_rouge_l/len{r['length']}/depth{r['depth']:g}"] = r["rouge_l"]
    return metrics, [{"model": prefix, **r} for r in rows]


def evaluate(
    cfg, base_dir: Path, extended_dir: Path, held_out: Sequence[Passage], passages: Sequence[Passage]
) -> tuple[dict[str, float], list[dict]]:
    """(flat metrics, heatmap rows) of the base and the extended model (the ``longctx`` section ``cfg``).
    ``held_out``: passages neither model trained on (haystacks, perplexity); ``passages``: all (topics)."""
    base, base_rows = evaluate_model(base_dir, held_out, passages, cfg, "base")
    extended, extended_rows = evaluate_model(extended_dir, held_out, passages, cfg, "extended")
    metrics = base | extended
    metrics["short_ppl_change"] = extended["extended/short_ppl"] / base["base/short_ppl"] - 1.0
    metrics["topic_chance"] = 1.0 / cfg.topic_passages
    return metrics, base_rows + extended_rows


def write_heatmap(path: str | Path, rows: Sequence[Mapping], score: str = "rouge_l") -> None:
    """One panel per model: lengths (rows) x depths (columns), coloured by ``score``; written atomically."""
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    lengths = sorted({int(r["length"]) for r in rows})
    depths = sorted({float(r["depth"]) for r in rows})
    fig = Figure(figsize=(4.5 * len(models), 3.8), dpi=100, layout="constrained")  # room for labels and the colour bar
    FigureCanvasAgg(fig)  # Agg renders to memory: no display, no global pyplot state
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        grid = np.full((len(lengths), len(depths)), np.nan)
        for r in rows:
            if r["model"] == model:
                grid[lengths.index(int(r["length"])), depths.index(float(r["depth"]))] = float(r[score])
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_xlabel("needle depth")
        ax.set_title(f"{model}: needle {score.replace('_', '-')}")
    axes[0].set_ylabel("context length (tokens)")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label=score.replace("_", "-"))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no metadata: a re-run writes the same bytes
