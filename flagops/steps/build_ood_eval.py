"""build_ood_eval: an out-of-domain BEIR set from installed packages' docstrings; every query is a test query.

The stdlib corpus feeds training; numpy's and scipy's documentation is real text of another
domain that no step trains on. Queries come from the same synthesis as the training data.
"""

from flagops.data import corpus
from flagops.data.formats import DataError, atomic_path, write_beir, write_json
from flagops.data.synthesis import heuristic_generator, synthesize
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    o = cfg.ood_eval
    passages = corpus.evenly_spaced(corpus.module_passages(o.modules, o.min_chars), o.max_passages)
    # test_fraction 1: every group (module) is held out, so every query is a test query. Always the
    # heuristic generator: the yardstick stays fixed (and free) whichever generator trains the model.
    eval_set = synthesize(passages, heuristic_generator, test_fraction=1.0, seed=cfg.synthesis.seed).eval_set
    if not eval_set.queries:
        raise DataError(f"ood_eval.modules: no queries from {list(o.modules)} (min_chars={o.min_chars}); lower ood_eval.min_chars")
    versions = corpus.package_versions(o.modules)
    source = {"modules": list(o.modules), "min_chars": o.min_chars, "max_passages": o.max_passages, "versions": versions}
    with atomic_path(outputs["ood_eval_set"], is_dir=True) as tmp:
        write_beir(tmp, eval_set)
        write_json(tmp / "source.json", source)  # the same versions give byte-identical files
    n_queries, n_passages = len(eval_set.queries), len(eval_set.corpus)
    print(f"build_ood_eval: {n_queries} queries over {n_passages} passages from {len(o.modules)} modules -> {outputs['ood_eval_set']}")
    tracking.log_metrics({"ood_queries": n_queries, "ood_passages": n_passages, "ood_modules": len(o.modules)})
    return outputs
