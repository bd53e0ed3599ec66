"""train_reranker: FlagEmbedding's reranker recipe (grouped CE, optional teacher KD) for
cross-encoder, LLM and layerwise rerankers."""

from pathlib import Path

from flagops.data.formats import DataError, TrainExample, iter_jsonl, parse_train_example
from flagops.registry import tracking
from flagops.training.common import describe_loss
from flagops.training.reranker import train


def read_reranker_rows(path: Path, distill: bool) -> list[TrainExample]:
    """FlagEmbedding's reranker JSONL, checked before any model loads: every row needs
    negatives, and with distillation teacher scores; an error names ``path:line`` and the fix."""
    rows = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        ex = parse_train_example(obj, where)  # also: pos_scores/neg_scores of the wrong length
        if not ex.neg:
            raise DataError(
                f"{where}: no 'neg' passages; a reranker learns from 1 positive + negatives per query: "
                "run mine_hard_negatives on this data first"
            )
        if distill and (ex.pos_scores is None or ex.neg_scores is None):
            raise DataError(
                f"{where}: reranker.train.distill=true needs 'pos_scores' and 'neg_scores'; add them with score_with_teacher "
                "(set teacher.source) or set reranker.train.distill=false"
            )
        rows.append(ex)
    return rows


def run(cfg, inputs, outputs):
    examples = read_reranker_rows(inputs["train_data"], cfg.reranker.train.distill)
    summary = train(cfg.reranker, examples, outputs["reranker_model"], outputs.get("reranker_loss_curve"))
    tracking.log_metrics(summary)
    print(f"train_reranker: {describe_loss(summary)} -> {outputs['reranker_model']}")
    return outputs
