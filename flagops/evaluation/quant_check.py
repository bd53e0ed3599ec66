"""The accuracy checks evaluate runs on the model it releases (``evaluate.quant_check``).

Serving and re-evaluation may run a model in int8 (torch's dynamic quantisation, applied at
load time), or in OpenVINO with bf16 kernels, only where that method kept to the rule: held-out nDCG@10 within 0.005 of fp32 and the
embeddings of up to 256 held-out passages within the stated cosine of their fp32 vectors
(``flagops.models.quantize``). The check
needs the held-out set, so it happens here, once, on the released model; its figures go into the
metrics as ``quant/int8/*`` and ``quant/openvino-bf16/*``, and register_model saves them beside
the weights as the ``QuantCheck`` records that ``quantize=auto`` and ``backend=auto`` read.
"""

from __future__ import annotations

import numpy as np

from flagops.evaluation.retrieval import RetrievalEvaluator, retrieval_metrics
from flagops.models.embedder import Embedder
from flagops.models.quantize import METHOD, OPENVINO_BF16, QuantCheck

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
    return _measure(METHOD, quantize_int8, model_cfg, source, evaluator, fp32_score, primary)


def check_openvino_bf16(model_cfg, source: str, evaluator: RetrievalEvaluator, fp32_score: float, *, primary: str) -> QuantCheck | None:
    """Measure ``source`` in OpenVINO bf16 against torch fp32 on ``evaluator``'s set; None where
    bf16 would not be chosen (no openvino, a CPU without bf16 units, a GPU placement)."""
    import torch

    from flagops.models.device import inference_placement
    from flagops.models.openvino_backend import bf16_ready, use_openvino

    placement = inference_placement(model_cfg)
    if placement.device.type != "cpu" or not bf16_ready():
        print("evaluate: no OpenVINO bf16 check: it runs on a CPU with bf16 units and the openvino package only")
        return None
    return _measure(OPENVINO_BF16, lambda e: use_openvino(e, source, torch.bfloat16), model_cfg, source, evaluator, fp32_score, primary)


def _measure(method: str, convert, model_cfg, source: str, evaluator: RetrievalEvaluator, fp32_score: float, primary: str) -> QuantCheck:
    """torch fp32 vectors of a passage sample, then ``convert`` (in place) and the same passages and
    the held-out search again: the record of what ``method`` costs, whatever backend evaluate runs."""
    embedder = Embedder.from_config(model_cfg.model_copy(update={"quantize": "none", "backend": "torch"}), source=source, inference=True)
    texts = evaluator.doc_texts[:COSINE_SAMPLE]
    fp32_vecs = embedder.encode(texts, is_query=False, batch_size=evaluator.batch_size)
    embedder = convert(embedder)
    cosines = row_cosines(fp32_vecs, embedder.encode(texts, is_query=False, batch_size=evaluator.batch_size))
    run = evaluator.search(embedder, label=method)
    score = retrieval_metrics(evaluator.eval_set.qrels, run)[primary]
    return QuantCheck(
        method=method,
        eval_set=f"held-out {primary}, {len(evaluator.query_ids)} queries, {len(evaluator.doc_ids)} passages",
        ndcg_fp32=float(fp32_score),
        ndcg_quant=float(score),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
    )


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (shape (n,))."""
    dots = np.einsum("nd,nd->n", a, b)
    return dots / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
