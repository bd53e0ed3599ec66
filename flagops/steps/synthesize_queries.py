"""synthesize_queries: one query per passage, train/test split by group (no leakage)."""

from flagops.data.formats import read_corpus, write_beir, write_train_jsonl
from flagops.data.synthesis import GENERATORS, synthesize
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    s = cfg.synthesis
    result = synthesize(read_corpus(inputs["corpus"]), GENERATORS[s.generator], s.test_fraction, s.seed)
    n_train = write_train_jsonl(outputs["train_pairs"], result.train)
    write_beir(outputs["eval_set"], result.eval_set)
    n_test = len(result.eval_set.queries)
    print(
        f"synthesize_queries: {n_train} train queries, {n_test} test queries over "
        f"{len(result.eval_set.corpus)} passages; {len(result.test_groups)} groups held out"
    )
    tracking.log_metrics({"train_queries": n_train, "test_queries": n_test, "corpus_passages": len(result.eval_set.corpus)})
    return outputs
