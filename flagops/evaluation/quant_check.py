"""The int8 accuracy check evaluate runs on the model it releases (``evaluate.quant_check``).

Serving and re-evaluation may run a model in int8 (torch's dynamic quantisation, applied at
load time) only where it kept to the rule: held-out nDCG@10 within 0.005 of fp32 and the
embeddings of up to 256 held-out passages within the stated cosine of their fp32 vectors
(``flagops.models.quantize``). The check
needs the held-out set, so it happens here, once, on the released model; its figures go into the
metrics as ``quant/int8/*``, and register_model saves them beside the weights as the
``QuantCheck`` record that ``quantize=auto`` reads.
"""

from __future__ import annotations

import numpy as np

from flagops.evaluation.retrieval import RetrievalEvaluator, retrieval_metrics
from flagops.models.embedder import Embedder
from flagops.models.quantize import METHOD, QuantCheck

COSINE_SAMPLE = 256  # held-out passages encoded both ways for the cosine


def check_int8(model_cfg, source: str, evaluator: RetrievalEvaluator, fp32_score: float, *, primary: str) -> QuantCheck | None:
    """Measure ``source`` in int8 against fp32 on ``evaluator``'s set; None where int8 cannot run.

    ``fp32_score`` is the model's ``primary`` metric in fp32, already measured by evaluate. No
    timing: the metrics stay the same on a re-run (benchmarks/int8.py measures the speed).
    """
    import torch

    from flagops.models.device import inference_placement
    from flagops.models.quantize import quantize_int8

    placement = inference_placement(model_cfg)
    if placement.device.type != "cpu" or placement.dtype != torch.float32:
        print(f"evaluate: no int8 check: the model runs on {placement} (int8 is a CPU fp32 path)")
        return None
    # torch's fp32 against torch's int8, whatever backend the rest of evaluate runs
    embedder = Embedder.from_config(model_cfg.model_copy(update={"quantize": "none", "backend": "torch"}), source=source, inference=True)
    texts = evaluator.doc_texts[:COSINE_SAMPLE]
    fp32_vecs = embedder.encode(texts, is_query=False, batch_size=evaluator.batch_size)
    quantize_int8(embedder)  # in place
    cosines = _row_cosines(fp32_vecs, embedder.encode(texts, is_query=False, batch_size=evaluator.batch_size))
    run = evaluator.search(embedder, label="int8")
    int8_score = retrieval_metrics(evaluator.eval_set.qrels, run)[primary]
    n_queries = len(evaluator.query_ids)
    return QuantCheck(
        method=METHOD,
        eval_set=f"held-out {primary}, {n_queries} queries, {len(evaluator.doc_ids)} passages",
        ndcg_fp32=float(fp32_score),
        ndcg_quant=float(int8_score),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
    )


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (shape (n,))."""
    dots = np.einsum("nd,nd->n", a, b)
    return dots / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
