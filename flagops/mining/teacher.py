"""Mining's teacher, in OpenVINO bf16 by default where that keeps to the accuracy rule.

``model.backend=auto`` runs a model in OpenVINO bf16 where it carries a passing
``openvino-bf16`` record (evaluate measures it on a released model). Mining's teacher is most
often the base model, which has no record: it was never released by flagops. So mining measures
the record itself, on its own training pairs, before it commits to bf16:

* a sample of ``CHECK_QUERIES`` training queries and a mini pool of ``CHECK_PASSAGES`` pool
  passages that holds their positives (topped up with other pool passages), encoded in torch
  fp32 and in OpenVINO bf16;
* nDCG@10 of the positives over the mini pool, each way, and the cosine of each passage's bf16
  vector to its fp32 one;
* the rule every lossy path keeps (``flagops.models.quantize``): nDCG@10 within 0.005 of fp32,
  cosine at or above the floor. Pass: the pool and the queries are encoded in bf16. Fail: fp32.

The record is kept beside the converted model it describes, in OpenVINO's IR cache
(``CHECK_FILE``, keyed as the IR is: the model directory's content and OpenVINO's version), so a
model is checked once, on the first mining sample that needs it, as a released model is checked
once by evaluate and carries the record from then on; a scheduled run on new pairs with the same
base model reads it. The check encodes about ``CHECK_PASSAGES`` passages and
``CHECK_QUERIES`` queries in fp32 (2 s on the 2-core dev box for MiniLM), which is what bf16 saves
on a few hundred passages (it encodes about 4x faster here), so a pool under ``MIN_POOL``
passages is mined in fp32 with no check. Where bf16 would not run (no openvino package, a CPU
without bf16 units, a GPU, ``dtype`` or ``quantize`` set by hand, an M3 model), ``from_config``
decides as for any other step.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from flagops.evaluation.quant_check import row_cosines
from flagops.evaluation.retrieval import retrieval_metrics
from flagops.models.embedder import Embedder
from flagops.models.quantize import OPENVINO_BF16, QuantCheck

CHECK_FILE = "flagops_mining_check.json"
CHECK_QUERIES = 128  # one top-1 swap moves nDCG@10 by at most 0.0029 here, under the rule's 0.005
CHECK_PASSAGES = 128
MIN_POOL = 512


@dataclass(frozen=True)
class Teacher:
    encoder: Embedder
    check: QuantCheck | None  # mining's own openvino-bf16 record, where it measured one


def wants_bf16_check(model_cfg, source: str, pool_size: int) -> bool:
    """Would ``backend=auto`` run this teacher in bf16, had it a passing record? And is the pool big enough to pay for the check?"""
    from flagops.models.device import inference_placement
    from flagops.models.openvino_backend import bf16_ready
    from flagops.models.sources import resolve_model_source

    if model_cfg.backend != "auto" or model_cfg.kind != "bge" or model_cfg.dtype != "auto" or model_cfg.quantize != "auto":
        return False
    if pool_size < MIN_POOL or inference_placement(model_cfg).device.type != "cpu":
        return False
    if QuantCheck.load(resolve_model_source(source), OPENVINO_BF16) is not None:
        return False  # a record it carries decides, in from_config
    return bf16_ready()


def check_sample(examples, pool: Sequence[str], seed: int) -> tuple[list[str], list[str], list[set[int]]]:
    """(queries, mini pool, each query's positives as mini-pool indices): a seeded sample of the training pairs."""
    rng = random.Random(seed)
    picked = rng.sample(list(examples), min(CHECK_QUERIES, len(examples)))
    mini = list(dict.fromkeys(p for ex in picked for p in ex.pos))[:CHECK_PASSAGES]
    others = [t for t in rng.sample(list(pool), min(len(pool), CHECK_PASSAGES + len(mini))) if t not in set(mini)]
    mini += others[: CHECK_PASSAGES - len(mini)]
    where = {t: i for i, t in enumerate(mini)}
    kept = [(ex.query, {where[p] for p in ex.pos if p in where}) for ex in picked]
    kept = [(q, rel) for q, rel in kept if rel]
    return [q for q, _ in kept], mini, [rel for _, rel in kept]


def sample_ndcg(queries: np.ndarray, passages: np.ndarray, relevant: list[set[int]]) -> float:
    """nDCG@10 of the positives (pytrec_eval's, as evaluate scores) when the mini pool is ranked by inner product."""
    scores = queries @ passages.T  # (n_queries, n_passages)
    run = {str(q): {str(j): float(s) for j, s in enumerate(row)} for q, row in enumerate(scores)}
    qrels = {str(q): {str(j): 1 for j in rel} for q, rel in enumerate(relevant)}
    return retrieval_metrics(qrels, run)["ndcg@10"]


def measure_bf16(model_cfg, source: str, examples, pool: Sequence[str], batch_size: int, seed: int) -> tuple[Embedder, QuantCheck]:
    """Encode the check sample in torch fp32, convert the same embedder to OpenVINO bf16, encode it again: (bf16 embedder, record).

    A record kept beside the model's converted IR is read instead, and nothing is measured (nor
    converted, where it failed).
    """
    import torch

    from flagops.data.formats import atomic_path
    from flagops.models.openvino_backend import ir_dir, use_openvino
    from flagops.models.sources import resolve_model_source

    model_dir = resolve_model_source(source)
    exact = model_cfg.model_copy(update={"backend": "torch", "quantize": "none"})
    embedder = Embedder.from_config(exact, source=source, inference=True)
    record = ir_dir(embedder, model_dir)[0] / CHECK_FILE
    if record.is_file():
        check = QuantCheck(**json.loads(record.read_text()))
        return (use_openvino(embedder, model_dir, torch.bfloat16) if check.passed else embedder), check
    queries, mini, relevant = check_sample(examples, pool, seed)

    def encode(label: str) -> tuple[np.ndarray, np.ndarray]:
        q = embedder.encode(queries, is_query=True, batch_size=batch_size, progress=f"mining: check queries ({label})")
        p = embedder.encode(mini, is_query=False, batch_size=batch_size, progress=f"mining: check passages ({label})")
        return q, p

    q32, p32 = encode("fp32")
    embedder = use_openvino(embedder, model_dir, torch.bfloat16)
    q16, p16 = encode("bf16")
    cosines = row_cosines(np.concatenate([q32, p32]), np.concatenate([q16, p16]))
    check = QuantCheck(
        method=OPENVINO_BF16,
        eval_set=f"mining sample: nDCG@10, {len(queries)} training queries over {len(mini)} pool passages",
        ndcg_fp32=sample_ndcg(q32, p32, relevant),
        ndcg_quant=sample_ndcg(q16, p16, relevant),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
    )
    with atomic_path(record) as tmp:  # the IR's directory exists now: use_openvino converted into it
        tmp.write_text(json.dumps(asdict(check)) + "\n")
    return embedder, check


def mining_teacher(model_cfg, source: str | None, examples, pool: Sequence[str], *, batch_size: int, seed: int) -> Teacher:
    """The teacher mining encodes with: OpenVINO bf16 where its own check passed, else as ``from_config`` loads it."""
    source = str(source or model_cfg.base)
    if wants_bf16_check(model_cfg, source, len(pool)):
        embedder, check = measure_bf16(model_cfg, source, examples, pool, batch_size, seed)
        if check.passed:
            return Teacher(embedder, check)
        exact = model_cfg.model_copy(update={"backend": "torch"})
        return Teacher(Embedder.from_config(exact, source=source, inference=True), check)
    return Teacher(Embedder.from_config(model_cfg, source=source, inference=True), None)
