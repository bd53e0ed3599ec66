"""The LM's reward for a key: how likely the causal LM finds the answer once it has read the key.

FlagEmbedding's qa template, ``Knowledge: {key}\\n\\nQuestion: {query}\\n\\nAnswer: {answer}``, is
scored with only the answer's tokens labelled; the reward is ``-mean NLL`` over them (higher: the
key helped more). The same pass gives an exact match: the LM's greedy choice at every answer
position is the answer's token, which is what greedy decoding of the answer would produce.

**The answer at this scale.** FlagEmbedding's qa data comes with gold answers; the stdlib corpus has
none. Its queries are a docstring's first line and the positive is the documented object's name,
a newline, then the rest of the docstring. The answer is that name (``json.dumps``): "which object
does this?" is a real question, the name is a span of the positive key (an LM that reads the key
can copy it, as the base LM learnt to copy needles) and negatives from the same module share a
prefix of it, so the reward grades keys rather than splitting them into right and wrong.

**The window.** The tiny LM has a short window (``max_position_embeddings``); a prompt is cut to
fit: the answer keeps up to a quarter of the window, the question up to a quarter, the key the rest
(its beginning, where the name is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from flagops.data.formats import DataError, TrainExample
from flagops.research.llm_embedder.data import RewardedExample

KNOWLEDGE = "Knowledge: {key}"
QUESTION = "\n\nQuestion: {query}"
ANSWER_CUE = "\n\nAnswer:"
ANSWER = " {answer}"  # the space after "Answer:" belongs to the answer's first token (byte-level BPE)
IGNORE = -100
TASK = "qa"  # the template above is FlagEmbedding's qa one: the rows it scores are qa rows


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    answer_start: int  # index of the answer's first token in input_ids


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_prompt(tokenizer, key: str, query: str, answer: str, window: int) -> Prompt:
    """bos + the qa template for (key, query, answer), cut to ``window`` tokens as the module says."""
    answer_ids = _ids(tokenizer, ANSWER.format(answer=answer))[: window // 4]
    question = _ids(tokenizer, QUESTION.format(query=query))[: window // 4]
    cue = _ids(tokenizer, ANSWER_CUE)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = window - len(bos) - len(question) - len(cue) - len(answer_ids)
    knowledge = _ids(tokenizer, KNOWLEDGE.format(key=key))[: max(room, 0)]
    head = bos + knowledge + question + cue
    return Prompt(head + answer_ids, len(head))


def load_lm(path: str | Path):
    """(tokenizer, model in eval mode, its window) of a causal LM directory (train_base_lm's output)."""
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return tokenizer, model, int(model.config.max_position_embeddings)


@torch.no_grad()
def answer_scores(model, prompts: Sequence[Prompt], pad_id: int, batch_size: int = 16) -> tuple[list[float], list[bool]]:
    """(mean NLL of each prompt's answer tokens, whether the greedy choice matched every one of them)."""
    nll: list[float] = []
    exact: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p.input_ids) for p in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (batch, seq), right-padded
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE)
        for i, p in enumerate(chunk):
            n = len(p.input_ids)
            input_ids[i, :n] = torch.tensor(p.input_ids)
            mask[i, :n] = 1
            labels[i, p.answer_start : n] = input_ids[i, p.answer_start : n]
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float()[:, :-1]  # position t predicts token t + 1
        targets = labels[:, 1:]  # (batch, seq - 1)
        token_nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # (batch, seq - 1)
        labelled = targets != IGNORE
        hits = (logits.argmax(-1) == targets) | ~labelled
        counts = labelled.sum(1).clamp(min=1)
        nll += (token_nll.sum(1) / counts).tolist()
        exact += hits.all(1).tolist()
    return nll, exact


def answer_of(example: TrainExample, where: str) -> str:
    """The answer to ``example``'s query: its first positive's first line (the documented object's name)."""
    name, newline, _ = example.pos[0].partition("\n")
    if not newline or not name.strip():
        raise DataError(f"{where}: the first positive has no title line (name, newline, text) to take the answer from; give keys a title")
    return name.strip()


def reward(
    lm, tokenizer, window: int, examples: Sequence[TrainExample], batch_size: int = 16, where: str = "train data"
) -> list[RewardedExample]:
    """Each example with every key of ``pos + neg`` scored by the LM: ``-mean NLL`` of the answer."""
    prompts, spans = [], []
    rows = []
    for i, ex in enumerate(examples):
        answer = answer_of(ex, f"{where}:{i + 1}")
        keys = ex.pos + ex.neg
        spans.append((len(prompts), len(keys), answer))
        prompts += [build_prompt(tokenizer, key, ex.query, answer, window) for key in keys]
    nll, _ = answer_scores(lm, prompts, tokenizer.pad_token_id, batch_size)
    for ex, (start, n, answer) in zip(examples, spans, strict=True):
        scores = [-x for x in nll[start : start + n]]
        rows.append(RewardedExample(ex.query, ex.pos, ex.neg, scores, [answer], TASK))
    return rows
