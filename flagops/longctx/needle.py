"""Synthetic long-context samples, built from corpus passages by templates.

A needle is a fact ("The secret code of json is 40213.") placed at a known depth in a
haystack of corpus passages, followed by the question; the answer is the code. Lengths are
in tokens and count the whole sequence, answer included, so a sample of ``length`` tokens
fits a window of ``length`` positions. A sample's ``depth`` d puts the needle after
``round(d x haystack tokens)`` haystack tokens: 0 is the start of the context, 1 its end
(just before the question).

Short samples are plain corpus text at the base model's context: mixed into training they
keep its short-context ability.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from flagops.data.formats import DataError, Passage

NEEDLE = "\nThe secret code of {key} is {code}.\n"
QUESTION = "\nQuestion: What is the secret code of {key}?\nAnswer:"
ANSWER = " {code}"
SEPARATOR = "\n\n"  # between passages of a haystack
IGNORE = -100  # label of a position no loss is taken on


def split_passages(passages: Sequence[Passage], held_out_fraction: float) -> tuple[list[Passage], list[Passage]]:
    """(train, held out): the held-out share chosen by the hash of each id, so it is the same on every run and machine."""
    ranked = sorted(passages, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest())
    k = max(1, round(len(ranked) * held_out_fraction))
    if len(ranked) - k < 1:
        raise DataError(f"the corpus has {len(ranked)} passages: too few to hold {k} out for perplexity and train on the rest")
    held = {p.id for p in ranked[:k]}
    return [p for p in passages if p.id not in held], [p for p in passages if p.id in held]


def needle_keys(passages: Sequence[Passage]) -> list[str]:
    """What needles are about: the corpus's modules (``group``), else passage titles."""
    keys = sorted({p.group or p.title.split(".")[0] for p in passages} - {""})
    if not keys:
        raise DataError("the corpus has no passage groups or titles to name needles after; give passages a title")
    return keys


class TokenPool:
    """The passages' tokens, drawn in random order to fill a haystack of an exact length."""

    def __init__(self, tokenizer, passages: Sequence[Passage]):
        if not passages:
            raise DataError("no passages to build haystacks from; check the corpus")
        texts = [p.full_text + SEPARATOR for p in passages]
        self.passages = tokenizer(texts, add_special_tokens=False)["input_ids"]

    def haystack(self, n: int, rng: random.Random) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            out += self.passages[rng.randrange(len(self.passages))]
        return out[:n]


@dataclass(frozen=True)
class NeedleSample:
    prompt_ids: list[int]  # bos + haystack with the needle + question
    answer_ids: list[int]  # the answer, then eos
    answer: str  # the code, as text
    needle_start: int  # index in prompt_ids of the needle's first token
    needle_len: int
    depth: float


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def needle_sample(tokenizer, pool: TokenPool, length: int, depth: float, key: str, code: str, rng: random.Random) -> NeedleSample:
    """A needle about ``key`` at ``depth`` in a sample of exactly ``length`` tokens (answer included)."""
    needle = ids(tokenizer, NEEDLE.format(key=key, code=code))
    question = ids(tokenizer, QUESTION.format(key=key))
    answer = ids(tokenizer, ANSWER.format(code=code)) + [tokenizer.eos_token_id]
    room = length - 1 - len(needle) - len(question) - len(answer)  # haystack tokens; 1 for bos
    if room < 0:
        raise DataError(f"a needle sample of {length} tokens has no room for its {length - room - 1} needle/question/answer tokens")
    hay = pool.haystack(room, rng)
    at = round(depth * room)
    prompt = [tokenizer.bos_token_id] + hay[:at] + needle + hay[at:] + question
    return NeedleSample(prompt, answer, code, 1 + at, len(needle), depth)


def random_code(rng: random.Random) -> str:
    return str(rng.randrange(10000, 100000))  # five digits


def short_sample(tokenizer, pool: TokenPool, length: int, rng: random.Random) -> dict[str, list[int]]:
    """Plain corpus text, bos + ``length - 1`` tokens, every token a target (language modelling)."""
    input_ids = [tokenizer.bos_token_id] + pool.haystack(length - 1, rng)
    return {"input_ids": input_ids, "labels": list(input_ids)}


def training_samples(
    tokenizer, passages: Sequence[Passage], n: int, lengths: tuple[int, int], short_length: int, short_fraction: float, seed: int
) -> list[dict[str, list[int]]]:
    """``n`` samples: ``short_fraction`` of them plain text of ``short_length`` tokens, the rest needle
    QA at a length drawn uniformly from ``lengths`` (min, max) and a depth drawn from [0, 1].

    A needle sample's loss is on its answer only (as an instruction-tuned model is trained on the
    reply); a short sample's on every token.
    """
    rng = random.Random(seed)
    pool, keys = TokenPool(tokenizer, passages), needle_keys(passages)
    n_short = round(n * short_fraction)
    out = [short_sample(tokenizer, pool, short_length, rng) for _ in range(n_short)]
    for _ in range(n - n_short):
        s = needle_sample(tokenizer, pool, rng.randint(*lengths), rng.random(), rng.choice(keys), random_code(rng), rng)
        out.append({"input_ids": s.prompt_ids + s.answer_ids, "labels": [IGNORE] * len(s.prompt_ids) + s.answer_ids})
    rng.shuffle(out)
    return out
