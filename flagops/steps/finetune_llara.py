"""finetune_llara / finetune_llara_plain: LLaRA's contrastive fine-tuning (InfoNCE, LoRA) on the
mined training data, from the EBAE/EBAR-pretrained LM or from the plain base LM (the baseline);
one module, two catalog steps, told apart by the output they write."""

from flagops.data.formats import read_train_jsonl
from flagops.registry import tracking
from flagops.research.llara import finetune

STEPS = {"llara_model": "finetune_llara", "llara_plain_model": "finetune_llara_plain"}  # output -> catalog step


def run(cfg, inputs, outputs, output: str):
    examples = list(read_train_jsonl(inputs["train_data"]))
    summary, _ = finetune(cfg.llara, inputs["lm"], examples, outputs[output], label=STEPS[output])
    tracking.log_metrics({f"finetune/{k}": v for k, v in summary.items()})
    print(f"{output}: InfoNCE {summary['total_start']:.3f} -> {summary['total_end']:.3f} -> {outputs[output]}")
    return outputs
