"""train_visual_bge: Visualized-BGE's stage 2: the ViT and projection learn to place images (alone,
or with an edit instruction) where the frozen text encoder places their descriptions."""

from flagops.registry import tracking
from flagops.research.visual_bge import read_dataset, train


def run(cfg, inputs, outputs):
    summary = train(cfg.visual_bge, cfg.model, read_dataset(inputs["visual_bge_data"]), outputs["visual_bge_model"])
    tracking.log_metrics(summary)
    print(
        "train_visual_bge: text->image loss {t2i_loss_first:.3f} -> {t2i_loss_last:.3f}, composed loss {edit_loss_first:.3f} -> "
        "{edit_loss_last:.3f} -> {out}".format(**summary, out=outputs["visual_bge_model"])
    )
    return outputs
