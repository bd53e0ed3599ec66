"""The measure: does the LM answer better with the keys LLM-Embedder retrieves than with the base's?

On the held-out BEIR set each embedder (the base encoder and LLM-Embedder, both with CLS pooling and
the qa instructions, so training is the only difference) retrieves for every query; nDCG@10 scores
the ranking, and the LM reads the top ``top_k`` passages as its knowledge (the qa template) and is
scored on the answer: mean answer NLL (lower is better) and exact match. Two bounds frame them:
the gold passage as knowledge (``oracle``) and an empty one (``no_retrieval``).

An eval query's answer is the title of its relevant passage (the documented object's name), as in
``reward``.
"""

from __future__ import annotations

import statistics

from flagops.data.formats import DataError, EvalSet
from flagops.evaluation import RetrievalEvaluator, retrieval_metrics
from flagops.evaluation.retrieval import Run
from flagops.research.llm_embedder.reward import answer_scores, build_prompt

KNOWLEDGE_SEPARATOR = "\n\n"  # between the top-k passages the LM reads


def gold(eval_set: EvalSet) -> dict[str, str]:
    """query id -> the id of its (first, best-graded) relevant passage."""
    out = {}
    for qid, docs in eval_set.qrels.items():
        relevant = sorted((d for d, rel in docs.items() if rel >= 1), key=lambda d: -docs[d])
        if relevant and qid in eval_set.queries:
            out[qid] = relevant[0]
    return out


def answers(eval_set: EvalSet) -> dict[str, str]:
    """query id -> the answer: the title of its gold passage; a passage without one is a DataError."""
    titles = {p.id: p.title for p in eval_set.corpus}
    out = {}
    for qid, did in gold(eval_set).items():
        if not titles[did].strip():
            raise DataError(f"eval passage {did!r} has no title, which is the answer to its query {qid!r}; give eval passages titles")
        out[qid] = titles[did]
    return out


def top_ids(run: Run, qid: str, k: int) -> list[str]:
    """The ``k`` best documents of ``qid`` in ``run``, ties to the larger id (as ``cut_run``)."""
    return [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda d: (d[1], d[0]), reverse=True)[:k]]


def answer_quality(lm, tokenizer, window: int, eval_set: EvalSet, knowledge: dict[str, str], batch_size: int) -> tuple[float, float]:
    """(mean answer NLL, exact match) of the LM over the queries with ``knowledge`` (query id -> text)."""
    truth = answers(eval_set)
    qids = sorted(truth)
    prompts = [build_prompt(tokenizer, knowledge.get(q, ""), eval_set.queries[q], truth[q], window) for q in qids]
    nll, exact = answer_scores(lm, prompts, tokenizer.pad_token_id, batch_size)
    return statistics.fmean(nll), sum(exact) / len(exact)


def evaluate(encoders: dict, lm, tokenizer, window: int, eval_set: EvalSet, top_k: int, batch_size: int) -> dict[str, float]:
    """Flat metrics: ``<system>/ndcg@10``, ``<system>/answer_nll``, ``<system>/answer_em`` for each of
    ``encoders`` (name -> TextEncoder), and ``oracle/answer_nll``, ``no_retrieval/answer_nll``."""
    texts = {p.id: p.full_text for p in eval_set.corpus}
    evaluator = RetrievalEvaluator(eval_set, batch_size, top_k=max(top_k, 10))
    metrics: dict[str, float] = {}
    for name, encoder in encoders.items():
        run = evaluator.search(encoder, label=name)
        metrics[f"{name}/ndcg@10"] = retrieval_metrics(eval_set.qrels, run)["ndcg@10"]
        knowledge = {q: KNOWLEDGE_SEPARATOR.join(texts[d] for d in top_ids(run, q, top_k)) for q in eval_set.queries}
        metrics[f"{name}/answer_nll"], metrics[f"{name}/answer_em"] = answer_quality(lm, tokenizer, window, eval_set, knowledge, batch_size)
    oracle = {q: texts[d] for q, d in gold(eval_set).items()}
    metrics["oracle/answer_nll"], _ = answer_quality(lm, tokenizer, window, eval_set, oracle, batch_size)
    metrics["no_retrieval/answer_nll"], _ = answer_quality(lm, tokenizer, window, eval_set, {}, batch_size)
    return {k: round(float(v), 6) for k, v in metrics.items()}
