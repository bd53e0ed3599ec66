"""train_m3: BGE-M3 unified fine-tuning (dense + sparse + ColBERT, self-distillation)."""

from flagops.config import ConfigError
from flagops.data.formats import read_train_jsonl
from flagops.registry import tracking
from flagops.training.common import describe_loss, with_base_model
from flagops.training.m3 import train


def run(cfg, inputs, outputs):
    if cfg.model.kind != "m3":
        raise ConfigError(
            f"train_m3 trains M3 models but model.kind is {cfg.model.kind!r}; use profile tiny_m3/demo_m3 or set model.kind=m3"
        )
    cfg = with_base_model(cfg, inputs)
    examples = list(read_train_jsonl(inputs["train_data"]))
    summary = train(cfg.model, cfg.m3, cfg.train, examples, outputs["model"], outputs.get("loss_curve"))
    tracking.log_metrics(summary)
    print(f"train_m3: {describe_loss(summary)} -> {outputs['model']}")
    return outputs
