"""evaluate_long_context: the base and the extended LM side by side: needle-in-a-haystack over
lengths x depths (heatmap), topic retrieval, and short-context perplexity before and after."""

from flagops.data.formats import read_corpus, write_json
from flagops.longctx.evaluate import evaluate, write_heatmap
from flagops.longctx.needle import split_passages
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    passages = read_corpus(inputs["corpus"])
    _, held_out = split_passages(passages, cfg.longctx.held_out_fraction)
    metrics, rows = evaluate(cfg.longctx, inputs["base_lm"], inputs["extended_lm"], held_out, passages)
    write_heatmap(outputs["needle_heatmap"], rows)
    write_json(outputs["longctx_metrics"], metrics)
    tracking.log_metrics(metrics)
    print(
        "evaluate_long_context: needle ROUGE-L {:.3f} -> {:.3f}, exact match {:.3f} -> {:.3f}, topic {:.2f} -> {:.2f} "
        "(chance {:.2f}), short ppl {:.1f} -> {:.1f} ({:+.1%})".format(
            metrics["base/needle_rouge_l"],
            metrics["extended/needle_rouge_l"],
            metrics["base/needle_exact_match"],
            metrics["extended/needle_exact_match"],
            metrics["base/topic_accuracy"],
            metrics["extended/topic_accuracy"],
            metrics["topic_chance"],
            metrics["base/short_ppl"],
            metrics["extended/short_ppl"],
            metrics["short_ppl_change"],
        )
    )
    return outputs
