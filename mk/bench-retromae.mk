# RetroMAE pretraining benchmark (not a test): flagops' recipe against FlagEmbedding 1.2.11's,
# the last FlagEmbedding with RetroMAE code, in its own venv; see benchmarks/README.md.
#   make bench-retromae                                   MiniLM, 20 timed steps x 8 texts, 2 runs a side (~4-8 min)
#   make bench-retromae RETROMAE_ARGS="--model tiny-bert --repeats 1"
RETROMAE_ARGS ?= --repeats 2
RETROMAE_PEER_VENV := .venv-flagembedding-retromae
RETROMAE_PEER_STAMP := $(RETROMAE_PEER_VENV)/.installed

.PHONY: bench-retromae-venv bench-retromae

$(RETROMAE_PEER_STAMP): benchmarks/setup_retromae_peer_venv.sh benchmarks/_peer_venv.sh
	bash benchmarks/setup_retromae_peer_venv.sh $(RETROMAE_PEER_VENV)
	touch $(RETROMAE_PEER_STAMP)

bench-retromae-venv: $(RETROMAE_PEER_STAMP)

bench-retromae: install $(RETROMAE_PEER_STAMP)
	$(BIN)/python benchmarks/retromae_speed.py $(RETROMAE_ARGS)
