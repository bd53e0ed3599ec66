"""evaluate_visual_bge: Recall@1/5 on the held-out images, text->image and composed (image +
instruction)->image, for the trained model, its random init and a caption-only text search."""

from flagops.data.formats import write_json
from flagops.registry import tracking
from flagops.research.visual_bge import evaluate, read_dataset


def run(cfg, inputs, outputs):
    metrics = evaluate(cfg.visual_bge, cfg.model, read_dataset(inputs["visual_bge_data"]), inputs["visual_bge_model"])
    write_json(outputs["visual_bge_metrics"], metrics)
    tracking.log_metrics(metrics)
    print(
        "evaluate_visual_bge: text->image R@1 {:.3f} (random init {:.3f}, caption search {:.3f}); composed R@1 {:.3f} "
        "(random init {:.3f}, caption search {:.3f})".format(
            metrics["visual_bge/t2i_recall@1"],
            metrics["random_init/t2i_recall@1"],
            metrics["caption_search/t2i_recall@1"],
            metrics["visual_bge/composed_recall@1"],
            metrics["random_init/composed_recall@1"],
            metrics["caption_search/composed_recall@1"],
        )
    )
    return outputs
