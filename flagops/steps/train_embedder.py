"""train_embedder: the BGE contrastive recipe (InfoNCE, in-batch negatives, optional KD)."""

from flagops.data.formats import read_train_jsonl
from flagops.registry import tracking
from flagops.training.common import describe_loss, with_base_model
from flagops.training.embedder import train


def run(cfg, inputs, outputs):
    cfg = with_base_model(cfg, inputs)
    examples = list(read_train_jsonl(inputs["train_data"]))
    summary = train(cfg.model, cfg.train, examples, outputs["model"], outputs.get("loss_curve"))
    tracking.log_metrics(summary)
    print(f"train_embedder: {describe_loss(summary)} -> {outputs['model']}")
    return outputs
