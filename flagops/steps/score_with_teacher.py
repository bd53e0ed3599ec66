"""score_with_teacher: add a reranker's pos_scores/neg_scores to the training data.

``teacher="config"`` scores with ``teacher.source`` (any reranker source) into
``scored_data``; ``teacher="trained"`` scores with this pipeline's ``reranker_model`` into
``reranker_scored_data``, for the embedder's distillation.
"""

import time

from flagops.config import ConfigError
from flagops.data.formats import read_train_jsonl, write_train_jsonl
from flagops.mining.teacher_scores import score_examples, unique_pairs
from flagops.models.device import inference_placement, place
from flagops.models.reranker import NotARerankerError, load_reranker
from flagops.registry import tracking


def run(cfg, inputs, outputs, teacher="config"):
    t = cfg.teacher
    if teacher == "config":
        if t.mode != "external":
            raise ConfigError(
                f"teacher.source={t.source!r}: score_with_teacher needs a reranker source here "
                "(a directory, pkg:... or tiny-reranker); `reranker` scores with the trained one (teacher=trained)"
            )
        source, kind, key, output = t.source, t.kind, "teacher.source", "scored_data"
    elif teacher == "trained":
        source, kind, key, output = str(inputs["reranker_model"]), "auto", "input reranker_model", "reranker_scored_data"
    else:
        raise ValueError(f"score_with_teacher: teacher={teacher!r}; use config or trained")
    try:
        reranker = load_reranker(source, kind, max_length=t.max_length)
    except NotARerankerError as exc:
        raise NotARerankerError(f"{key}={source}: {exc}") from None
    reranker = place(reranker, inference_placement(cfg.model))
    examples = list(read_train_jsonl(inputs["train_data"]))
    start = time.perf_counter()
    scored = score_examples(examples, reranker, t.batch_size)
    seconds = time.perf_counter() - start
    pairs = len(unique_pairs(examples))
    n = write_train_jsonl(outputs[output], scored)
    print(f"score_with_teacher: {n} queries, {pairs} pairs scored by {source} in {seconds:.1f}s ({pairs / seconds:.0f} pairs/s)")
    tracking.log_metrics({"scored_queries": n, "scored_pairs": pairs, "teacher_seconds": seconds})
    return outputs
