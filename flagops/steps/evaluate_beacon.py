"""evaluate_beacon: the beacon model vs the base truncated to its window on held-out text at several
times the base's context: perplexity, needle accuracy, and the KV cache kept per token of context."""

from flagops.data.formats import read_corpus, write_json
from flagops.longctx.needle import split_passages
from flagops.registry import tracking
from flagops.research import beacon


def run(cfg, inputs, outputs):
    _, held_out = split_passages(read_corpus(inputs["corpus"]), cfg.longctx.held_out_fraction)
    metrics, rows = beacon.evaluate(cfg.beacon, cfg.longctx.base_context, inputs["base_lm"], inputs["beacon_lm"], held_out)
    write_json(outputs["beacon_metrics"], metrics)
    beacon.write_plot(outputs["beacon_plot"], rows)
    tracking.log_metrics(metrics)
    for r in rows:
        print(
            f"evaluate_beacon: {r['length']} tokens ({r['factor']}x, ratio {r['ratio']}): perplexity base truncated to its window "
            f"{r['base/ppl']:.2f}, to the beacons' {r['base_beacon_window/ppl']:.2f}, beacon {r['beacon/ppl']:.2f}; "
            f"needle ROUGE-L {r['base/needle_rouge_l']:.2f} vs {r['beacon/needle_rouge_l']:.2f}; "
            f"KV kept per token {r['base/kv_per_token']:.3f} vs {r['beacon/kv_per_token']:.3f}"
        )
    return outputs
