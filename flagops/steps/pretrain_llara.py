"""pretrain_llara: LLaRA's EBAE/EBAR pretraining of the base LM (its whole weights) on consecutive
corpus passages, beside the LM loss; the LM with its sixteen special tokens and the loss curves."""

from flagops.data.formats import read_corpus, write_json
from flagops.longctx.needle import split_passages
from flagops.registry import tracking
from flagops.research.llara import pretrain


def run(cfg, inputs, outputs):
    train, _ = split_passages(read_corpus(inputs["corpus"]), cfg.longctx.held_out_fraction)  # the passages train_base_lm read
    summary, log = pretrain(cfg.llara, inputs["base_lm"], train, outputs["llara_pretrained_lm"])
    if "llara_pretrain_loss_curve" in outputs:
        write_json(outputs["llara_pretrain_loss_curve"], log)
    tracking.log_metrics({f"pretrain/{k}": v for k, v in summary.items()})
    print(
        "pretrain_llara: ar {ar_start:.3f} -> {ar_end:.3f}, EBAE {ebae_start:.3f} -> {ebae_end:.3f}, "
        "EBAR {ebar_start:.3f} -> {ebar_end:.3f} (means of the first and last fifth of the steps)".format(**summary)
    )
    return outputs
