"""build_visual_bge_data: draw the Visualized-BGE dataset with Pillow (no download): shapes with
captions and edit instructions, a training split and a held-out split of new drawings."""

from flagops.registry import tracking
from flagops.research.visual_bge import build_dataset


def run(cfg, inputs, outputs):
    counts = build_dataset(cfg.visual_bge, outputs["visual_bge_data"])
    tracking.log_metrics(counts)
    train, test, out = counts["train_images"], counts["test_images"], outputs["visual_bge_data"]
    print(f"build_visual_bge_data: {train} training and {test} held-out images -> {out}")
    return outputs
