"""synthesize_queries: one query per passage, train/test split by group (no leakage).

``synthesis.generator: llm`` asks an OpenAI-compatible endpoint instead of the heuristic and
keeps only the queries whose passage the base model ranks in its top-k (round trip)."""

from pathlib import Path

from flagops.data.formats import read_corpus, write_beir, write_train_jsonl
from flagops.data.synthesis import GENERATORS, split_pairs, synthesize
from flagops.registry import tracking


def run(cfg, inputs, outputs):
    s = cfg.synthesis
    passages = read_corpus(inputs["corpus"])
    if s.generator == "llm":
        result = llm_synthesize(cfg, passages)
    else:
        result = synthesize(passages, GENERATORS[s.generator], s.test_fraction, s.seed)
    n_train = write_train_jsonl(outputs["train_pairs"], result.train)
    write_beir(outputs["eval_set"], result.eval_set)
    n_test = len(result.eval_set.queries)
    print(
        f"synthesize_queries: {n_train} train queries, {n_test} test queries over "
        f"{len(result.eval_set.corpus)} passages; {len(result.test_groups)} groups held out"
    )
    tracking.log_metrics({"train_queries": n_train, "test_queries": n_test, "corpus_passages": len(result.eval_set.corpus)})
    return outputs


def llm_synthesize(cfg, passages):
    from flagops.data.llm_synthesis import generate_queries, round_trip_keep
    from flagops.models.cache import cache_dir

    llm = cfg.synthesis.llm
    made, usage = generate_queries(passages, llm, Path(llm.cache_dir) if llm.cache_dir else cache_dir() / "llm-synthesis")
    metrics = usage.metrics(llm.price_per_1k_prompt, llm.price_per_1k_completion)
    tokens = f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
    print(f"synthesize_queries: {usage.calls} LLM calls, {usage.cache_hits} cache hits, {tokens}")
    if llm.filter_top_k is not None:
        from flagops.models.embedder import Embedder

        embedder = Embedder.from_config(cfg.model, inference=True)
        keep = round_trip_keep(made, lambda texts, is_query: embedder.encode(texts, is_query=is_query), llm.filter_top_k)
        made = [g for g, k in zip(made, keep, strict=True) if k]
        rule = f"own passage in {cfg.model.base}'s top {llm.filter_top_k}"
        print(f"synthesize_queries: round-trip filter kept {len(made)}/{len(keep)} queries ({rule})")
        metrics |= {"round_trip_kept": len(made), "round_trip_generated": len(keep)}
    tracking.log_metrics(metrics)
    negatives = {g.passage.id: g.negatives for g in made}
    return split_pairs([(g.query, g.passage) for g in made], cfg.synthesis.test_fraction, cfg.synthesis.seed, negatives)
