# Mining benchmarks (not tests); see benchmarks/README.md. Uses EVAL_PEER_STAMP from mk/bench-eval.mk.
#   make bench-mine          the mine_hard_negatives step vs FlagEmbedding's hn_mine method on the demo's pairs (3-6 min)
#   make bench-mine MINE_ARGS="--repeats 1 --warm"
#   make bench-mine MINE_ARGS="--threads 1 --backend openvino-bf16"   flagops' encoder in OpenVINO bf16 (CPU time is the figure)
#   make bench-mine-scale    search at 10^4..10^6 synthetic passages, flat vs IVF vs HNSW, recall; encode rate extrapolated (5-10 min)
MINE_ARGS ?=
MINE_SCALE_ARGS ?=

.PHONY: bench-mine bench-mine-scale

bench-mine: install $(EVAL_PEER_STAMP)  # the peer side needs faiss in the peer venv, which bench-eval.mk installs
	$(BIN)/python benchmarks/mine.py $(MINE_ARGS)

bench-mine-scale: install
	$(BIN)/python benchmarks/mine_scale.py $(MINE_SCALE_ARGS)
