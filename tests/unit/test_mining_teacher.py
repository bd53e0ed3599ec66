"""Mining's teacher: OpenVINO bf16 by default where mining's own accuracy check passes, torch fp32 otherwise."""

import numpy as np
import pytest

from flagops.config import load_config
from flagops.data.formats import TrainExample
from flagops.mining import teacher as mining
from flagops.models import quantize
from flagops.models.device import backend_name
from flagops.models.openvino_backend import bf16_ready

needs_bf16 = pytest.mark.skipif(not bf16_ready(), reason="OpenVINO bf16 runs only with the openvino package on a CPU with bf16 units")


def _examples(n: int) -> list[TrainExample]:
    return [TrainExample(query=f"what does function {i} do", pos=[f"function {i} returns the value number {i}"]) for i in range(n)]


def _pool(examples) -> list[str]:
    return [ex.pos[0] for ex in examples]


def test_sample_ndcg_by_hand():
    # query 0 finds its positive (passage 1) first: nDCG 1; query 1's positive (passage 0) comes
    # second: DCG 1/log2(3), ideal 1, so nDCG 0.6309
    queries = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    passages = np.array([[0.5, 0.5], [0.0, 1.0]], dtype=np.float32)
    got = mining.sample_ndcg(queries, passages, [{1}, {0}])
    assert got == pytest.approx((1.0 + 1.0 / np.log2(3)) / 2, abs=1e-6)


def test_check_sample_is_seeded_and_holds_each_querys_positive():
    examples = _examples(600)
    queries, mini, relevant = mining.check_sample(examples, _pool(examples), seed=3)
    assert (queries, mini, relevant) == mining.check_sample(examples, _pool(examples), seed=3)
    assert len(queries) == mining.CHECK_QUERIES and len(mini) == mining.CHECK_PASSAGES == len(set(mini))
    by_query = {ex.query: ex.pos[0] for ex in examples}
    assert all(mini[next(iter(rel))] == by_query[q] for q, rel in zip(queries, relevant, strict=True))


def test_the_check_runs_only_where_auto_would_pick_bf16_and_the_pool_pays_for_it(monkeypatch):
    monkeypatch.setattr("flagops.models.openvino_backend.bf16_ready", lambda: True)  # the rule, not this CPU
    cfg = load_config("tiny").model
    assert mining.wants_bf16_check(cfg, cfg.base, mining.MIN_POOL)
    assert not mining.wants_bf16_check(cfg, cfg.base, mining.MIN_POOL - 1)
    for pinned in ({"backend": "torch"}, {"dtype": "float32"}, {"quantize": "none"}, {"kind": "m3"}):
        assert not mining.wants_bf16_check(cfg.model_copy(update=pinned), cfg.base, 10_000), pinned
    monkeypatch.setattr("flagops.models.openvino_backend.bf16_ready", lambda: False)
    assert not mining.wants_bf16_check(cfg, cfg.base, 10_000)


def test_no_check_where_the_teacher_runs_on_a_gpu(fake_cuda, monkeypatch):
    monkeypatch.setattr("flagops.models.openvino_backend.bf16_ready", lambda: True)
    cfg = load_config("tiny").model  # device auto: the (fake) GPU, fp16 there
    assert not mining.wants_bf16_check(cfg, cfg.base, 10_000)


@needs_bf16
def test_a_passing_check_mines_in_openvino_bf16(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAGOPS_CACHE", str(tmp_path))
    cfg = load_config("tiny").model
    examples = _examples(mining.MIN_POOL)
    chosen = mining.mining_teacher(cfg, None, examples, _pool(examples), batch_size=64, seed=0)
    check = chosen.check
    assert check.method == quantize.OPENVINO_BF16 and check.passed, check.summary()
    assert check.min_cosine > 0.99 and abs(check.ndcg_delta) <= quantize.MAX_NDCG_DELTA
    assert 0.0 < check.ndcg_fp32 <= 1.0 and "128 training queries over 128 pool passages" in check.eval_set
    assert backend_name(chosen.encoder.model) == "openvino-bf16"
    # its vectors are the fp32 teacher's within the check's cosine
    exact = mining.Embedder.from_config(cfg.model_copy(update={"backend": "torch"}), inference=True)
    texts = _pool(examples)[:16]
    a, b = exact.encode(texts), chosen.encoder.encode(texts)
    assert np.min(np.sum(a * b, axis=1)) >= check.min_cosine - 1e-3


@needs_bf16
def test_a_failing_check_mines_in_torch_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAGOPS_CACHE", str(tmp_path))
    monkeypatch.setattr(quantize, "MIN_COSINE", 1.01)  # no cosine reaches it: the rule fails
    cfg = load_config("tiny").model
    examples = _examples(mining.MIN_POOL)
    chosen = mining.mining_teacher(cfg, None, examples, _pool(examples), batch_size=64, seed=0)
    assert chosen.check is not None and not chosen.check.passed
    assert backend_name(chosen.encoder.model) == "torch-fp32"

    def no_conversion(*args, **kwargs):
        raise AssertionError("a failed record on file: nothing to convert")

    monkeypatch.setattr("flagops.models.openvino_backend.use_openvino", no_conversion)
    again = mining.mining_teacher(cfg, None, examples, _pool(examples), batch_size=64, seed=0)
    assert again.check == chosen.check and backend_name(again.encoder.model) == "torch-fp32"


def test_a_small_pool_mines_as_from_config_loads_with_no_check():
    cfg = load_config("tiny").model
    examples = _examples(40)
    chosen = mining.mining_teacher(cfg, None, examples, _pool(examples), batch_size=64, seed=0)
    assert chosen.check is None and backend_name(chosen.encoder.model) == "torch-fp32"


@needs_bf16
def test_the_check_is_kept_beside_the_converted_model_and_read_next_time(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAGOPS_CACHE", str(tmp_path))
    cfg = load_config("tiny").model
    examples = _examples(mining.MIN_POOL)
    first = mining.mining_teacher(cfg, None, examples, _pool(examples), batch_size=64, seed=0)
    assert [p.parent.parent.name for p in tmp_path.rglob(mining.CHECK_FILE)] == ["openvino"]
    encoded = []
    real = mining.Embedder.encode
    monkeypatch.setattr(mining.Embedder, "encode", lambda self, texts, **kw: encoded.append(len(texts)) or real(self, texts, **kw))
    again = mining.mining_teacher(cfg, None, examples[::-1], _pool(examples), batch_size=64, seed=1)  # other pairs, same model
    assert again.check == first.check and encoded == []  # read, not measured
    assert backend_name(again.encoder.model) == "openvino-bf16"
