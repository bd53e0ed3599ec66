"""evaluate_llm_embedder: the base encoder against LLM-Embedder on the held-out set: retrieval nDCG@10,
and the base LM's answer NLL and exact match with the top-k passages each retrieves
(flagops.research.llm_embedder.evaluate). Writes metrics/research_llm_embedder.json."""

from flagops.data.formats import read_beir, write_json
from flagops.registry import tracking
from flagops.research.llm_embedder.evaluate import evaluate
from flagops.research.llm_embedder.reward import load_lm
from flagops.research.llm_embedder.train import InstructedEncoder, load_embedder


def run(cfg, inputs, outputs):
    eval_set = read_beir(inputs["eval_set"])
    tokenizer, lm, window = load_lm(inputs["base_lm"])
    encoders = {
        "base": InstructedEncoder(load_embedder(cfg.model.base, cfg.model)),
        "llm_embedder": InstructedEncoder(load_embedder(inputs["llm_embedder_model"], cfg.model)),
    }
    le = cfg.llm_embedder
    metrics = evaluate(encoders, lm, tokenizer, window, eval_set, le.top_k, le.lm_batch_size)
    write_json(outputs["research_llm_embedder"], metrics)
    tracking.log_metrics(metrics)
    print(
        "evaluate_llm_embedder: nDCG@10 {:.3f} -> {:.3f}; answer NLL with top-{} {:.3f} -> {:.3f} (gold passage {:.3f}, none {:.3f}); "
        "exact match {:.2f} -> {:.2f}".format(
            metrics["base/ndcg@10"],
            metrics["llm_embedder/ndcg@10"],
            le.top_k,
            metrics["base/answer_nll"],
            metrics["llm_embedder/answer_nll"],
            metrics["oracle/answer_nll"],
            metrics["no_retrieval/answer_nll"],
            metrics["base/answer_em"],
            metrics["llm_embedder/answer_em"],
        )
    )
    return outputs
