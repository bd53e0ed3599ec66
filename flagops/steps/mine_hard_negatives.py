"""mine_hard_negatives: sample negatives from a teacher's rank window (FlagEmbedding's method),
optionally dropping the window's false negatives first (``mining.false_negatives``)."""

from flagops.data.formats import read_train_jsonl, write_train_jsonl
from flagops.evaluation.index import IndexSettings, index_settings
from flagops.mining.hard_negatives import candidate_pool, mine_with_stats
from flagops.mining.teacher import mining_teacher
from flagops.models.device import backend_name
from flagops.models.quantize import as_metrics
from flagops.registry import tracking

INDEX_KEYS = ("ivf_above", "ivf_min_queries", "nprobe", "hnsw_m", "ef_search")  # mining.* keys IndexSettings shares


def run(cfg, inputs, outputs):
    m = cfg.mining
    examples = list(read_train_jsonl(inputs["train_pairs"]))
    teacher = mining_teacher(cfg.model, m.teacher, examples, candidate_pool(examples), batch_size=m.batch_size, seed=m.seed)
    if teacher.check is not None:
        print(f"mine_hard_negatives: teacher check, {teacher.check.summary()}")
    print(f"mine_hard_negatives: the teacher encodes with {backend_name(teacher.encoder.model)}")
    search = IndexSettings(method=m.index, **{key: getattr(m, key) for key in INDEX_KEYS})
    with index_settings(search):
        mined = mine_with_stats(
            examples,
            teacher.encoder,
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
    for key, recall in mined.search.items():  # ivf_recall@10 or hnsw_recall@10
        print(f"mine_hard_negatives: {key.split('_')[0].upper()} search, recall@10 against exact search {recall:.4f}")
    checked = {f"mining/{k}": v for k, v in as_metrics(teacher.check).items()} if teacher.check else {}
    tracking.log_metrics({"queries": n, "negatives_per_query": m.negative_number, **s.metrics(), **mined.search, **checked})
    return outputs
