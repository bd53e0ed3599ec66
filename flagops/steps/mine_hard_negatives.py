"""mine_hard_negatives: sample negatives from a teacher's rank window (FlagEmbedding's method),
optionally dropping the window's false negatives first (``mining.false_negatives``)."""

from flagops.data.formats import read_train_jsonl, write_train_jsonl
from flagops.mining.hard_negatives import mine_with_stats
from flagops.models.embedder import Embedder
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    m = cfg.mining
    examples = list(read_train_jsonl(inputs["train_pairs"]))
    teacher = Embedder.from_config(cfg.model, source=m.teacher, inference=True)
    mined = mine_with_stats(
        examples,
        teacher,
        range_start=m.range_start,
        range_end=m.range_end,
        negative_number=m.negative_number,
        batch_size=m.batch_size,
        seed=m.seed,
        false_negatives=m.false_negatives,
        fn_threshold=m.fn_threshold,
        fn_margin=m.fn_margin,
    )
    n = write_train_jsonl(outputs["train_data"], mined.examples)
    print(f"mine_hard_negatives: {n} queries x {m.negative_number} negatives from ranks {m.range_start}-{m.range_end}")
    s = mined.stats
    if m.false_negatives != "keep":
        rule = f"score > {m.fn_threshold}" if m.false_negatives == "absolute" else f"score > {m.fn_margin} x the positive's"
        print(
            f"mine_hard_negatives: false negatives ({m.false_negatives}, {rule}): dropped {s.false_negatives_dropped} "
            f"window candidates in {s.queries_with_false_negatives} queries; {s.queries_topped_up} queries topped up at random"
        )
    if mined.search:
        print(f"mine_hard_negatives: IVF search, recall@10 against exact search {mined.search['ivf_recall@10']:.4f}")
    tracking.log_metrics({"queries": n, "negatives_per_query": m.negative_number, **s.metrics(), **mined.search})
    return outputs
