"""build_corpus: collect passages (stdlib docstrings, a user JSONL or a BEIR folder)."""

from flagops.data import corpus
from flagops.data.formats import write_jsonl
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    c = cfg.corpus
    passages = corpus.build(c.source, c.min_chars, c.max_passages)
    n = write_jsonl(outputs["corpus"], (p.to_json() for p in passages))
    groups = len({p.group for p in passages})
    print(f"build_corpus: {n} passages from {c.source!r} in {groups} groups -> {outputs['corpus']}")
    tracking.log_metrics({"passages": n, "groups": groups})
    return outputs
