# int8 inference benchmark (not a test): model.quantize=int8 against fp32, speed, cosine and the
# demo held-out nDCG@10 delta side by side; see benchmarks/README.md.
#   make bench-int8                                    needs the demo's data/eval (default /tmp/dm/data/eval; 3-5 min)
#   make bench-int8 INT8_ARGS="--eval-dir DIR/data/eval --model DIR/models/candidate --n 256"
INT8_ARGS ?=

.PHONY: bench-int8

bench-int8: install
	$(BIN)/python benchmarks/int8.py $(INT8_ARGS)
