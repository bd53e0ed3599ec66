# Embedder training benchmark (not a test): flagops' train_embedder against FlagEmbedding 1.4.2's
# embedder trainer (in the peer venv) at issue 13's settings; see benchmarks/README.md.
#   make bench-train                                            30 steps, each side twice, alternating (~10-20 min on 2 busy cores)
#   make bench-train TRAIN_ARGS="--max-steps 8 --repeats 1"     a quick check
#   make bench-train TRAIN_ARGS="--flagops-set train.length_chunk=null"   flagops without length-sorted chunks
#   make bench-checkpoint-chunks                                train.checkpoint_chunks off/on: peak memory, CPU, equal losses (~2 min)
TRAIN_ARGS ?=

.PHONY: bench-train bench-checkpoint-chunks

bench-train: install bench-peer-venv
	$(BIN)/python benchmarks/train_embedder_fe.py $(TRAIN_ARGS)

bench-checkpoint-chunks: install
	$(BIN)/python benchmarks/checkpoint_chunks.py
