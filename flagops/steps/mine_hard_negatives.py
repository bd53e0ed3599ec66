"""mine_hard_negatives: sample negatives from a teacher's rank window (FlagEmbedding's method)."""

from flagops.data.formats import read_train_jsonl, write_train_jsonl
from flagops.mining.hard_negatives import mine
from flagops.models.embedder import Embedder
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    m = cfg.mining
    examples = list(read_train_jsonl(inputs["train_pairs"]))
    teacher = Embedder.from_config(cfg.model, source=m.teacher, inference=True)
    mined = mine(
        examples,
        teacher,
        range_start=m.range_start,
        range_end=m.range_end,
        negative_number=m.negative_number,
        batch_size=m.batch_size,
        seed=m.seed,
    )
    n = write_train_jsonl(outputs["train_data"], mined)
    print(f"mine_hard_negatives: {n} queries x {m.negative_number} negatives from ranks {m.range_start}-{m.range_end}")
    tracking.log_metrics({"queries": n, "negatives_per_query": m.negative_number})
    return outputs
