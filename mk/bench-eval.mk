# Evaluation benchmark (not a test): `flagops eval` against FlagEmbedding's own evaluation runner
# on the same BEIR folders and model; see benchmarks/README.md.
#   make bench-eval                                   the stdlib fixture and a 1,200-docstring folder (3-5 min)
#   make bench-eval EVAL_ARGS="--task DIR --stdlib-passages 0 --repeats 2"
# FlagEmbedding's evaluator imports faiss and pytrec_eval, which FlagEmbedding does not declare:
# they go into the peer venv once, at the versions flagops' venv has (torch pinned as there).
EVAL_ARGS ?=
EVAL_PEER_VENV := .venv-flagembedding
EVAL_PEER_STAMP := $(EVAL_PEER_VENV)/.eval-installed

.PHONY: bench-eval

$(EVAL_PEER_STAMP): mk/bench-eval.mk | bench-peer-venv
	$(EVAL_PEER_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 faiss-cpu==1.15.1 pytrec_eval-terrier==0.5.11
	touch $(EVAL_PEER_STAMP)

bench-eval: install $(EVAL_PEER_STAMP)
	$(BIN)/python benchmarks/eval_suite.py $(EVAL_ARGS)
