# Merge benchmark (not a test): flagops' LM-Cocktail against FlagEmbedding's LM_Cocktail package
# (installed into the FlagEmbedding peer venv once); see benchmarks/README.md.
#   make bench-merge                                     3 random BERTs of 317 MiB, 4 merges (~2 min)
MERGE_ARGS ?=
MERGE_PEER_STAMP := .venv-flagembedding/.lm-cocktail-installed

.PHONY: bench-merge

$(MERGE_PEER_STAMP):
	$(MAKE) --no-print-directory bench-peer-venv
	.venv-flagembedding/bin/pip install -q LM_Cocktail==0.0.4
	touch $(MERGE_PEER_STAMP)

bench-merge: install $(MERGE_PEER_STAMP)
	$(BIN)/python benchmarks/merge_speed.py $(MERGE_ARGS)
