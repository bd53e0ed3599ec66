"""FlagEmbedding's LLM-Embedder training format, the six tasks' instructions, and one-task batches.

A row is ``{query, pos, neg, teacher_scores, answers, task}``: ``teacher_scores`` gives one score per
key in the order ``pos + neg`` (the LM's reward), ``task`` one of ``INSTRUCTIONS``. Each task has
its own instruction before queries and before keys (FlagEmbedding's task config), so one model
serves all six; a batch holds one task's rows only (FlagEmbedding samples each batch from one
task's file), so in-batch keys are of the same kind as the query's own.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from flagops.data.formats import DataError, TrainExample, iter_jsonl, parse_train_example, write_jsonl

# task -> (query instruction, key instruction): FlagEmbedding's llm_embedder task config.
INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "qa": ("Represent this query for retrieving relevant documents: ", "Represent this document for retrieval: "),
    "convsearch": ("Encode this query and context for searching relevant passages: ", "Encode this passage for retrieval: "),
    "chat": ("Embed this dialogue to find useful historical dialogues: ", "Embed this historical dialogue for retrieval: "),
    "lrlm": ("Embed this text chunk for finding useful historical chunks: ", "Embed this historical text chunk for retrieval: "),
    "icl": ("Convert this example into vector to look for useful examples: ", "Convert this example into vector for retrieval: "),
    "tool": ("Transform this user request for fetching helpful tool descriptions: ", "Transform this tool description for retrieval: "),
}


def with_instruction(texts: Sequence[str], task: str, *, is_query: bool) -> list[str]:
    """``texts`` behind ``task``'s query (or key) instruction."""
    prefix = INSTRUCTIONS[task][0 if is_query else 1]
    return [prefix + t for t in texts]


@dataclass(frozen=True)
class RewardedExample:
    """One training row: the keys ``pos + neg`` each with the LM's score."""

    query: str
    pos: list[str]
    neg: list[str]
    teacher_scores: list[float]
    answers: list[str]
    task: str

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "pos": self.pos,
            "neg": self.neg,
            "teacher_scores": self.teacher_scores,
            "answers": self.answers,
            "task": self.task,
        }

    def as_train_example(self) -> TrainExample:
        """The same row as flagops' training example (scores split into pos_scores / neg_scores)."""
        n = len(self.pos)
        return TrainExample(self.query, self.pos, self.neg, self.teacher_scores[:n], self.teacher_scores[n:])


def read_rewarded(path: str | Path) -> list[RewardedExample]:
    """Read and check LLM-Embedder training JSONL; a bad row is a DataError naming path:line."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        ex = parse_train_example(obj, where)
        task = obj.get("task")
        if task not in INSTRUCTIONS:
            raise DataError(f"{where}: field 'task' is {task!r}; use one of {', '.join(INSTRUCTIONS)}")
        scores = obj.get("teacher_scores")
        n = len(ex.pos) + len(ex.neg)
        if not isinstance(scores, list) or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
            raise DataError(f"{where}: field 'teacher_scores' must be a list of numbers, one per key of pos + neg; run score_with_lm")
        if len(scores) != n:
            raise DataError(f"{where}: 'teacher_scores' has {len(scores)} scores for {n} keys (pos + neg); give one per key, in order")
        answers = obj.get("answers", [])
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{where}: field 'answers' must be a list of strings")
        rows.append(RewardedExample(ex.query, ex.pos, ex.neg, [float(s) for s in scores], answers, task))
    return rows


def write_rewarded(path: str | Path, rows: Iterable[RewardedExample]) -> int:
    return write_jsonl(path, (r.to_json() for r in rows))


def one_task_batches(tasks: Sequence[str], batch_size: int, seed: str) -> list[list[int]]:
    """Row indices cut into batches of ``batch_size`` rows of one task each, in a seeded random order.

    Each task's rows are shuffled and cut; a task's last partial batch is dropped (in-batch
    negatives want full batches), then the batches of all tasks are shuffled together.
    """
    rng = random.Random(seed)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(tasks):
        by_task.setdefault(task, []).append(i)
    batches = []
    for task in sorted(by_task):
        rows = by_task[task]
        rng.shuffle(rows)
        batches += [rows[s : s + batch_size] for s in range(0, len(rows) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches


class OneTaskBatches(Dataset):
    """Item i -> the i-th batch of this epoch: (task, [(query, keys, teacher scores), ...]).

    ``groups`` samples each row's keys (``GroupDataset``: the positive and group - 1 negatives,
    scores alongside); setting ``epoch`` re-draws the keys and re-cuts the batches. Give the
    Trainer a per-device batch size of 1 and ``batching.unwrap_batch`` around the collator.
    """

    def __init__(self, groups: Dataset, tasks: Sequence[str], batch_size: int, seed: int):
        self.groups = groups
        self.tasks = list(tasks)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = value
        self.groups.epoch = value
        self.batches = one_task_batches(self.tasks, self.batch_size, f"{self.seed}:{value}")

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[str, list]:
        rows = self.batches[i]
        return self.tasks[rows[0]], [self.groups[j] for j in rows]
