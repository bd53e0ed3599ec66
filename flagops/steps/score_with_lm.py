"""score_with_lm: LLM-Embedder's reward. Every key (pos + neg) of the mined training data scored by
the base LM: ``-mean NLL`` of the answer in the qa template, written in FlagEmbedding's format
``{query, pos, neg, teacher_scores, answers, task}`` (flagops.research.llm_embedder.reward)."""

from flagops.data.formats import read_train_jsonl
from flagops.registry import tracking
from flagops.research.llm_embedder.data import write_rewarded
from flagops.research.llm_embedder.reward import load_lm, reward


def run(cfg, inputs, outputs):
    examples = list(read_train_jsonl(inputs["train_data"]))
    tokenizer, lm, window = load_lm(inputs["base_lm"])
    rows = reward(lm, tokenizer, window, examples, cfg.llm_embedder.lm_batch_size, where=str(inputs["train_data"]))
    write_rewarded(outputs["llm_embedder_data"], rows)
    # How often the LM ranks the positive first: whether its feedback agrees with the labels at all.
    pos_top1 = sum(r.teacher_scores[0] >= max(r.teacher_scores) for r in rows) / len(rows)
    keys = sum(len(r.teacher_scores) for r in rows)
    tracking.log_metrics({"teacher/pos_top1": pos_top1, "teacher/keys": float(keys)})
    print(f"score_with_lm: {len(rows)} queries, {keys} keys scored by the LM (window {window}); positive ranked first for {pos_top1:.0%}")
    return outputs
