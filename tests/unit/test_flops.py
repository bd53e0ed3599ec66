"""benchmarks/_flops.py: the encoder FLOP formula against a hand computation and against torch's own count."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_flops.py"
_spec = importlib.util.spec_from_file_location("bench_flops", _PATH)
flops = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = flops  # dataclasses look their module up there
_spec.loader.exec_module(flops)


def test_encoder_flops_by_hand():
    dims = flops.EncoderDims(hidden=4, intermediate=8, layers=2)
    # Linear, per token per layer: 2 * (4*16 + 2*4*8) = 2 * (64 + 64) = 256; x 2 layers = 512; x 8 tokens = 4096.
    # Attention, per layer: 4 * 4 * (3^2 + 5^2) = 16 * 34 = 544; x 2 layers = 1088.
    assert dims.linear_flops_per_token == 512
    assert flops.encoder_flops(dims, [3, 5]) == 4096 + 1088


def test_minilm_is_about_21_mflop_per_token():
    dims = flops.EncoderDims(hidden=384, intermediate=1536, layers=6)  # all-MiniLM-L6-v2's config
    assert dims.linear_flops_per_token == 6 * 2 * (4 * 384 * 384 + 2 * 384 * 1536) == 21_233_664


def test_formula_matches_torch_flop_counter_on_a_real_bert():
    """torch counts every matmul a random BERT runs (linears, and attention's two products); no padding here."""
    config = BertConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    config._attn_implementation = "eager"  # explicit matmuls: torch does not count the fused CPU attention kernel
    model = BertModel(config, add_pooling_layer=False).eval()
    batch, seq = 3, 7
    ids = torch.randint(0, 100, (batch, seq))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    dims = flops.EncoderDims.from_config(config)
    assert counter.get_total_flops() == flops.encoder_flops(dims, [seq] * batch)
    assert counter.get_total_flops() != dims.linear_flops_per_token * seq * batch  # the attention term counts here


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_gemm_peak_reports_a_rate_and_how(dtype):
    gflops, how = flops.gemm_peak(dtype, size=64, repeats=1)
    assert gflops > 0
    assert ("_int_mm" in how) == (dtype == "int8")
