"""Activation Beacon on a tiny real Llama (hidden 32, 2 layers, trained from scratch at 64 tokens):
the step-expansion mask, positions and KV policy by hand, the loss by hand, the gradients, the
no-beacon equivalence with the base, and both steps end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from flagops.config import ConfigError, validate
from flagops.data.corpus import module_passages
from flagops.data.formats import DataError, write_jsonl
from flagops.longctx.evaluate import load
from flagops.longctx.needle import IGNORE
from flagops.research import beacon
from flagops.research.beacon import BeaconLlama, Window, adaptive_ratio, kv_kept, lm_loss, plan_windows, window_mask, window_positions
from flagops.steps import evaluate_beacon, train_base_lm, train_beacon

MODULES = ["json", "csv", "textwrap", "shutil", "pathlib", "argparse"]
LONGCTX = {
    "base_context": 64,
    "vocab_size": 400,
    "hidden_size": 32,
    "num_heads": 2,
    "num_kv_heads": 1,
    "samples": 32,
    "base_train": {"learning_rate": 3e-3, "max_steps": 8, "batch_size": 8, "logging_steps": 2, "save_steps": 100},
    "needle_lengths": [64],
}
BEACON = {
    "enabled": True,
    "window": 16,
    "ratios": [2, 4, 8],
    "train_factor": 2,
    "samples": 8,
    "steps": 3,
    "batch_size": 2,
    "logging_steps": 1,
    "eval_factors": [2, 4],
    "eval_segments": 1,
    "needle_depths": [0.5],
    "needle_trials": 1,
}


def _cfg(**beacon_overrides):
    return validate({"longctx": LONGCTX, "beacon": {**BEACON, **beacon_overrides}})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    write_jsonl(path, [p.to_json() for p in module_passages(MODULES, 150)])
    return path


@pytest.fixture(scope="module")
def base_lm(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base_lm"
    train_base_lm.run(_cfg(), {"corpus": corpus}, {"base_lm": out})
    return out


@pytest.fixture(scope="module")
def beacon_lm(base_lm, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("beacon") / "beacon_lm"
    curve = out.parent / "loss.json"
    train_beacon.run(_cfg(), {"base_lm": base_lm, "corpus": corpus}, {"beacon_lm": out, "beacon_loss_curve": curve})
    return out, json.loads(curve.read_text())


# ---------------------------------------------------------------- the mechanism by hand


def test_step_expansion_mask_written_out():
    """2 cached beacons, a window of 4 raw tokens, ratio 2 -> 2 beacons. Columns: m0 m1 | t0 t1 t2 t3 | b0 b1."""
    expected = torch.tensor(
        [
            # m0 m1 t0 t1 t2 t3 b0 b1
            [1, 1, 1, 0, 0, 0, 0, 0],  # t0
            [1, 1, 1, 1, 0, 0, 0, 0],  # t1
            [1, 1, 1, 1, 1, 0, 0, 0],  # t2
            [1, 1, 1, 1, 1, 1, 0, 0],  # t3
            [1, 1, 1, 1, 0, 0, 1, 0],  # b0: the first 2 tokens, itself
            [1, 1, 1, 1, 1, 1, 1, 1],  # b1: the first 4 tokens, b0, itself
        ],
        dtype=torch.bool,
    )
    assert torch.equal(window_mask(2, 4, 2, 2), expected)
    # the first window: nothing cached; ratio 4 over 8 tokens -> b0 sees t0..t3, b1 all eight
    first = window_mask(0, 8, 2, 4)
    assert first[8].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    assert first[9].tolist() == [1] * 10


def test_beacon_positions_sit_next_to_the_last_token_they_cover():
    # 3 cached beacons at 0..2, raw tokens at 3..10, beacons after tokens 2x(i+1) of the window: 3 + 2, 3 + 4, ...
    assert window_positions(3, 8, 4, 2).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 5, 7, 9, 11]
    assert window_positions(0, 8, 1, 8).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_windows_condense_only_full_windows_before_the_last_and_the_kv_kept():
    plan = plan_windows(40, 16, [2, 8, 4])
    assert plan == [Window(0, 16, 8, 2), Window(16, 16, 2, 8), Window(32, 8, 0, 4)]
    assert kv_kept(plan) == 8 + 2 + 8  # beacons of the first two windows + the last window's raw tokens
    assert plan_windows(32, 16, [2, 2])[-1].beacons == 0  # a full last window: nothing would read its beacons
    assert plan_windows(10, 16, [4]) == [Window(0, 10, 0, 4)]


def test_adaptive_ratio_is_the_smallest_that_fits_the_base_positions():
    # (64 - 16) x r + 16 >= length
    assert adaptive_ratio(100, 16, 64, [2, 4, 8]) == 2  # 112 >= 100
    assert adaptive_ratio(150, 16, 64, [8, 2, 4]) == 4  # 112 < 150 <= 208
    assert adaptive_ratio(5000, 16, 64, [2, 4, 8]) == 8  # none fits: the largest


def test_lm_loss_by_hand_on_labelled_raw_tokens_only():
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [3.0, 0.0, 0.0]]])  # (1, 4, 3)
    labels = torch.tensor([[IGNORE, 2, IGNORE, 0]])
    # position 0 predicts label[1] = 2, position 2 predicts label[3] = 0; position 1 predicts an ignored label
    nll0 = -(-1.0 - math.log(math.exp(1) + math.exp(0) + math.exp(-1)))
    nll2 = -(0.5 - math.log(2 * math.exp(0.5) + 1))
    assert float(lm_loss(logits, labels)) == pytest.approx((nll0 + nll2) / 2, abs=1e-6)


# ---------------------------------------------------------------- the model


def test_no_beacons_gives_the_base_model_outputs(base_lm):
    _, base = load(base_lm)
    model = BeaconLlama(base).eval()
    ids = torch.randint(3, 300, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(ids, plan_windows(40, 64, [2]))
        theirs = base(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_beacons_condense_the_past_and_only_beacon_parameters_get_gradients(base_lm):
    _, base = load(base_lm)
    model = BeaconLlama(base)
    emb = base.get_input_embeddings().weight
    assert torch.equal(model.beacon_embedding, emb[base.config.eos_token_id])
    assert torch.equal(model.beacon_proj[1]["k_proj"].weight, base.model.layers[1].self_attn.k_proj.weight)
    ids = torch.randint(3, 300, (2, 48), generator=torch.Generator().manual_seed(1))
    plan = plan_windows(48, 16, [2, 4, 8])
    logits, memory = model(ids, plan)
    assert logits.shape[:2] == ids.shape  # raw tokens only: no beacon rows to take a loss on
    # the cache keeps 16 / 2 + 16 / 4 beacons (the last window condenses nothing), per layer
    assert [tuple(k.shape) for k, _ in memory] == [(2, 1, 8 + 4, 16)] * 2
    # the first window reads no memory: the base's own logits; later windows differ (they read beacons)
    with torch.no_grad():
        first = base(ids[:, :16]).logits
    assert torch.allclose(logits[:, :16], first, atol=1e-5)
    assert not torch.allclose(logits[:, 16:32], base(ids[:, 16:32]).logits, atol=1e-3)
    lm_loss(logits, ids).backward()
    assert all(p.grad is None for p in base.parameters())
    assert model.beacon_embedding.grad is not None and model.beacon_embedding.grad.abs().sum() > 0
    for i, proj in enumerate(model.beacon_proj):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            # the last layer's beacon queries/outputs feed nothing: only beacons' keys/values are read later
            last_unread = i == len(model.beacon_proj) - 1 and name in ("q_proj", "o_proj")
            assert (proj[name].weight.grad.abs().sum() > 0) != last_unread, (i, name)


def test_dropping_raw_tokens_the_cache_holds_only_beacons(base_lm):
    """Changing a raw token of window 1 reaches window 3 only through the beacons: with no beacons
    (ratio-free windows) window 3 is blind to it."""
    _, base = load(base_lm)
    model = BeaconLlama(base).eval()
    ids = torch.randint(3, 300, (1, 48), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 3] = 7
    with torch.no_grad():
        blind = [Window(0, 16, 0, 2), Window(16, 16, 0, 2), Window(32, 16, 0, 2)]
        assert torch.allclose(model(ids, blind)[0][:, 32:], model(changed, blind)[0][:, 32:])
        plan = plan_windows(48, 16, [2, 2, 2])
        assert not torch.allclose(model(ids, plan)[0][:, 32:], model(changed, plan)[0][:, 32:])


def test_reading_on_from_the_cache_equals_reading_the_whole_input(base_lm):
    """Greedy decoding reads the prompt's full windows once and continues from their beacon cache."""
    _, base = load(base_lm)
    model = BeaconLlama(base).eval()
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole, _ = model(ids, plan_windows(40, 16, [4, 4, 4]))
        _, memory = model(ids[:, :32], plan_windows(32, 16, [4, 4]))
        assert memory[0][0].shape[2] == 4  # the second window was the last: only the first one's beacons
        _, memory = model(ids[:, :16], plan_windows(16, 16, [4]))
        assert memory[0][0].shape[2] == 0  # a single (last) window condenses nothing
        first, memory = model(ids[:, :32], [Window(0, 16, 4, 4), Window(16, 16, 4, 4)])
        tail, _ = model(ids[:, 32:], plan_windows(8, 16, [4]), memory)
    assert torch.allclose(torch.cat([first, tail], dim=1), whole, atol=1e-5)


def test_greedy_decoding_from_the_cache_equals_re_reading_everything(base_lm):
    _, base = load(base_lm)
    model = BeaconLlama(base).eval()
    with torch.no_grad():
        model.beacon_embedding.add_(0.5)  # beacons that differ from eos: a wrong cache shows
    prompts = torch.randint(3, 300, (2, 37), generator=torch.Generator().manual_seed(5)).tolist()
    ids = torch.tensor(prompts)
    with torch.no_grad():
        for _ in range(beacon.MAX_NEW_TOKENS):  # the plain way: re-read the whole input for each token
            logits, _ = model(ids, plan_windows(ids.shape[1], 16, [4] * math.ceil(ids.shape[1] / 16)))
            ids = torch.cat([ids, logits[:, -1].argmax(-1)[:, None]], dim=1)
    assert torch.equal(beacon.greedy_ids(model, prompts, 16, 4), ids[:, 37:])
    # a prompt that fits one window is read by the base alone: its own greedy continuation
    short = torch.tensor([prompts[0][:20]])
    with torch.no_grad():
        for _ in range(beacon.MAX_NEW_TOKENS):
            short = torch.cat([short, base(short).logits[:, -1].argmax(-1)[:, None]], dim=1)
    assert torch.equal(beacon.greedy_ids(model, [prompts[0][:20]], 64, 4), short[:, 20:])


# ---------------------------------------------------------------- the steps


def test_config_checks_ratios_divide_the_window_and_the_step_checks_the_base_window(base_lm, corpus, tmp_path):
    with pytest.raises(ConfigError, match="divide beacon.window"):
        _cfg(window=12, ratios=[8])
    with pytest.raises(ConfigError, match="beacon.window 128 exceeds"):
        train_beacon.run(_cfg(window=128), {"base_lm": base_lm, "corpus": corpus}, {"beacon_lm": tmp_path / "b"})
    assert not (tmp_path / "b").exists()


def test_train_saves_only_beacon_parameters_and_logs_the_loss(beacon_lm):
    out, curve = beacon_lm
    state = load_file(str(out / beacon.WEIGHTS_FILE))
    assert "beacon_embedding" in state and "beacon_proj.0.q_proj.weight" in state
    assert not any(k.startswith("base.") for k in state)
    assert json.loads((out / beacon.SETTINGS_FILE).read_text()) == {"window": 16, "ratios": [2, 4, 8], "base_context": 64}
    assert [c["step"] for c in curve] == [1, 2, 3] and all(math.isfinite(c["loss"]) for c in curve)


def test_training_killed_after_a_checkpoint_resumes_to_the_same_beacon_weights(base_lm, beacon_lm, corpus, tmp_path):
    """The re-run resumes from checkpoint-2 (the beacon parameters, AdamW, torch's RNG and the
    window-ratio draws) and ends with the uninterrupted run's weights and loss curve."""
    from tests.loop_kill import killed_after

    cfg = _cfg(save_steps=2)
    out, curve = tmp_path / "beacon_lm", tmp_path / "loss.json"
    with killed_after(2):
        train_beacon.run(cfg, {"base_lm": base_lm, "corpus": corpus}, {"beacon_lm": out, "beacon_loss_curve": curve})
    assert not out.exists() and (tmp_path / ".beacon_lm.checkpoints" / "checkpoint-2").is_dir()
    train_beacon.run(cfg, {"base_lm": base_lm, "corpus": corpus}, {"beacon_lm": out, "beacon_loss_curve": curve})
    whole_out, whole_curve = beacon_lm
    assert json.loads(curve.read_text()) == whole_curve
    resumed, whole = load_file(str(out / beacon.WEIGHTS_FILE)), load_file(str(whole_out / beacon.WEIGHTS_FILE))
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)
    assert not (tmp_path / ".beacon_lm.checkpoints").exists()


def test_beacon_weights_must_fit_the_base(base_lm, beacon_lm, tmp_path):
    with pytest.raises(DataError, match="point beacon_lm at train_beacon's output"):
        beacon.load_beacon(base_lm, tmp_path)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / beacon.SETTINGS_FILE).write_text("{}")
    save_file({"beacon_embedding": torch.zeros(32)}, str(wrong / beacon.WEIGHTS_FILE))  # no projections
    with pytest.raises(DataError, match="do not fit the base LM"):
        beacon.load_beacon(base_lm, wrong)


def test_evaluation_writes_flat_metrics_and_the_plot(base_lm, beacon_lm, corpus, tmp_path):
    outputs = {"beacon_metrics": tmp_path / "m.json", "beacon_plot": tmp_path / "p.png"}
    evaluate_beacon.run(_cfg(), {"base_lm": base_lm, "beacon_lm": beacon_lm[0], "corpus": corpus}, outputs)
    metrics = json.loads(outputs["beacon_metrics"].read_text())
    assert set(metrics) == {
        *(f"{m}/ppl@{f}x" for m in ("base", "beacon") for f in (2, 4)),
        *(f"{m}/{k}" for m in ("base", "beacon") for k in ("needle_exact_match", "needle_rouge_l", "kv_per_token@4x")),
        "base_beacon_window/ppl@4x",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    # 256 tokens: the base keeps its 64-token window; the beacons (ratio 8: (64 - 16) x 4 + 16 < 256) 15 windows x 2
    # beacons + the last 16 raw tokens
    assert metrics["base/kv_per_token@4x"] == 64 / 256
    assert metrics["beacon/kv_per_token@4x"] == (15 * 2 + 16) / 256
    assert outputs["beacon_plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_truncated_perplexity_scores_every_token_once(base_lm):
    """The strided window scores tokens 1..L-1 once each; at L <= the window it is the plain model NLL."""
    tokenizer, base = load(base_lm)
    ids = torch.randint(3, 300, (1, 50), generator=torch.Generator().manual_seed(3))
    ids[0, 0] = tokenizer.bos_token_id
    nll, n = beacon.truncated_nll(base, ids, 64, tokenizer.bos_token_id)
    with torch.no_grad():
        logits = base(ids).logits[0, :-1]
    expected = float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
    assert n == 49 and nll == pytest.approx(expected, rel=1e-5)
    _, n_long = beacon.truncated_nll(base, torch.randint(3, 300, (2, 200)), 64, tokenizer.bos_token_id)
    assert n_long == 2 * 199
