"""pretrain_retromae: RetroMAE pretraining of the embedder's base on unlabelled text
(FlagEmbedding's recipe); writes the encoder as a plain HF checkpoint with its tokenizer."""

from pathlib import Path

from flagops.data.corpus import stdlib_extra_texts
from flagops.data.formats import read_corpus
from flagops.pretraining.retromae import read_texts, train
from flagops.registry import tracking
from flagops.training.common import describe_loss


def pretraining_texts(cfg, corpus: Path) -> list[str]:
    """``pretrain.texts`` when given; else the corpus's texts, then every stdlib docstring not among them."""
    if cfg.pretrain.texts:
        return read_texts(Path(cfg.pretrain.texts))
    texts = [p.text for p in read_corpus(corpus)]
    extra = stdlib_extra_texts(set(texts))
    print(f"pretrain_retromae: {len(texts)} corpus passages + {len(extra)} further stdlib docstrings")
    return texts + extra


def run(cfg, inputs, outputs):
    texts = pretraining_texts(cfg, inputs["corpus"])
    summary = train(cfg.pretrain, cfg.pretrain.base or cfg.model.base, texts, outputs["pretrained_model"])
    tracking.log_metrics(summary)
    print(f"pretrain_retromae: {describe_loss(summary)} -> {outputs['pretrained_model']}")
    return outputs
