"""evaluate_llara: held-out nDCG@10 / Recall@10 of the LLaRA retriever fine-tuned from the
EBAE/EBAR-pretrained LM against the one fine-tuned from the plain base LM, and of the pretrained
LM before any fine-tuning; ``metrics/research_llara.json`` and MLflow."""

from flagops.data.formats import read_beir, write_json
from flagops.evaluation import RetrievalEvaluator
from flagops.registry import tracking
from flagops.research.llara import LlaraEncoder

SYSTEMS = {"llara": "llara_model", "plain": "llara_plain_model", "pretrain_only": "llara_pretrained_lm"}
REPORTED = {"llara": ("ndcg@10", "recall@10", "mrr@10"), "plain": ("ndcg@10", "recall@10", "mrr@10"), "pretrain_only": ("ndcg@10",)}


def run(cfg, inputs, outputs):
    c = cfg.llara
    eval_set = read_beir(inputs["eval_set"])
    evaluator = RetrievalEvaluator(eval_set, c.eval_batch_size)
    metrics = {}
    for system, name in SYSTEMS.items():
        found = evaluator(LlaraEncoder(inputs[name], c.query_max_len, c.passage_max_len), prefix=system)
        metrics |= {f"{system}/{m}": round(found[f"{system}/{m}"], 6) for m in REPORTED[system]}
    metrics["ndcg@10_gain"] = round(metrics["llara/ndcg@10"] - metrics["plain/ndcg@10"], 6)
    write_json(outputs["research_llara"], metrics)
    tracking.log_metrics(metrics)
    print(
        f"evaluate_llara: nDCG@10 fine-tuned after EBAE/EBAR {metrics['llara/ndcg@10']:.4f} vs without "
        f"{metrics['plain/ndcg@10']:.4f} ({metrics['ndcg@10_gain']:+.4f}); EBAE/EBAR alone {metrics['pretrain_only/ndcg@10']:.4f} "
        f"({len(eval_set.queries)} queries, {len(eval_set.corpus)} passages)"
    )
    return outputs
