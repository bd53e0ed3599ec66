# Encode benchmark (not a test): flagops' Embedder.encode against FlagEmbedding 1.4.2's FlagModel
# (in the peer venv) on the same MiniLM directory and stdlib texts; see benchmarks/README.md.
#   make bench-encode-fe                                   passages and queries, best of 3 (~3-6 min)
#   make bench-encode-fe ENCODE_FE_ARGS="--kind queries --repeats 2"
ENCODE_FE_ARGS ?=

.PHONY: bench-encode-fe

bench-encode-fe: install bench-peer-venv
	$(BIN)/python benchmarks/encode_fe.py $(ENCODE_FE_ARGS)
