"""Length-grouped batches, length-sorted chunks and sub-batched encoding (loss and gradients equal the whole batch)."""

from __future__ import annotations

import random

import pytest
import torch

from flagops.data.formats import TrainExample
from flagops.training.batching import (
    LengthGroupedBatches,
    bucket_index,
    encode_in_chunks,
    encode_length_sorted,
    example_lengths,
    length_grouped_batches,
    unwrap_batch,
)


def test_bucket_index_uses_upper_bounds_and_the_last_bucket_for_longer():
    assert [bucket_index(n, (32, 64, 128)) for n in (1, 32, 33, 64, 65, 128, 500)] == [0, 0, 1, 1, 2, 2, 2]


def test_batches_hold_one_bucket_and_leftovers_are_pooled_by_length():
    rng = random.Random(0)
    lengths = [rng.randrange(1, 200) for _ in range(103)]
    buckets = (32, 64, 128, 256)
    batches = length_grouped_batches(lengths, buckets, (8, 8, 8, 8), 8, seed=1)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and all(len(b) == 8 for b in batches)
    assert len(lengths) - len(flat) < 8  # only the pool's last partial batch is dropped
    mixed = [b for b in batches if len({bucket_index(lengths[i], buckets) for i in b}) > 1]
    per_bucket = [sum(bucket_index(n, buckets) == k for n in lengths) for k in range(4)]
    assert len(mixed) <= sum(n % 8 for n in per_bucket) // 8 + 1  # only pooled remainders mix buckets
    again = length_grouped_batches(lengths, buckets, (8, 8, 8, 8), 8, seed=1)
    other = length_grouped_batches(lengths, buckets, (8, 8, 8, 8), 8, seed=2)
    assert again == batches and other != batches and len(other) == len(batches)


def test_per_bucket_batch_sizes():
    lengths = [10] * 40 + [100] * 12
    batches = length_grouped_batches(lengths, (16, 128), (16, 4), 4, seed=0)
    assert sorted(len(b) for b in batches) == [4, 4, 4] + [4, 4] + [16, 16]  # 40 = 2x16 + 8 pooled -> 2x4


def test_grouped_batches_padding_is_lower_than_random_batches():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randrange(5, 30), rng.randrange(100, 128)]) for _ in range(256)]
    grouped = length_grouped_batches(lengths, (32, 64, 128), (8, 8, 8), 8, seed=0)
    order = list(range(256))
    rng.shuffle(order)
    plain = [order[s : s + 8] for s in range(0, 256, 8)]

    def padded(batches):  # tokens incl. padding per real token
        return sum(max(lengths[i] for i in b) * len(b) for b in batches) / sum(lengths[i] for b in batches for i in b)

    assert padded(grouped) < 1.2 < padded(plain)


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.epoch = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return (i, self.epoch)


def test_length_grouped_dataset_recuts_per_epoch_and_keeps_its_length():
    lengths = [i % 50 for i in range(64)]
    ds = LengthGroupedBatches(_Items(64), lengths, (16, 32, 64), None, 4, seed=3)
    first = [list(ds[i]) for i in range(len(ds))]
    n = len(ds)
    ds.epoch = 1
    assert len(ds) == n and ds.items.epoch == 1
    assert [list(ds[i]) for i in range(n)] != first
    assert all(e == 1 for b in (ds[i] for i in range(n)) for _, e in b)
    assert unwrap_batch(lambda items: len(items))([ds[0]]) == 4
    with pytest.raises(ValueError, match="per_device_train_batch_size=1"):
        unwrap_batch(len)([ds[0], ds[1]])


def test_example_lengths_are_each_examples_longest_passage(tiny_embedder):
    tok = tiny_embedder.tokenizer
    examples = [TrainExample("q", ["one two"], ["one two three four five"]), TrainExample("q", ["a " * 100], [])]
    assert example_lengths(examples, tok, max_length=48) == [7, 48]  # [CLS] + 5 words + [SEP]; truncated


@pytest.fixture(scope="module")
def m3_model():
    from flagops.models.m3 import M3Embedder

    return M3Embedder.load("tiny-bert", pooling="cls", query_max_len=16, passage_max_len=48, colbert_dim=16)


def test_sub_batches_give_the_loss_and_gradients_of_the_whole_batch(m3_model):
    from flagops.losses.m3 import M3UnifiedLoss
    from flagops.training.m3 import M3ForTraining

    queries = ["alpha beta", "river stone cloud", "light", "omega sigma kappa lambda"]
    passages = [f"passage {i} about {w} and more words {'x ' * (i % 5)}" for i, w in enumerate("abcdefghijkl")]  # 4 x group 3
    q = m3_model.tokenize(queries, is_query=True)
    p = m3_model.tokenize(passages, is_query=False)
    batch = {
        "q_input_ids": q["input_ids"],
        "q_attention_mask": q["attention_mask"],
        "p_input_ids": p["input_ids"],
        "p_attention_mask": p["attention_mask"],
    }
    results = []
    for sub in (None, 5):  # 5 does not divide 12: uneven chunks too
        model = M3ForTraining(m3_model, M3UnifiedLoss(0.05), ("dense", "sparse", "colbert"), sub_batch_size=sub)
        model.eval()  # dropout off: chunking changes how the RNG is consumed, not the maths
        model.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (whole, g_whole), (chunked, g_chunked) = results
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert g_whole.keys() == g_chunked.keys() and len(g_whole) > 10
    for name in g_whole:
        torch.testing.assert_close(g_chunked[name], g_whole[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any("colbert_linear" in n for n in g_whole) and any("sparse_linear" in n for n in g_whole)


def test_encode_in_chunks_for_plain_tensors_and_no_grad():
    f = torch.nn.Linear(3, 2)
    x = torch.randn(7, 3)
    torch.testing.assert_close(encode_in_chunks(f, (x,), 3), f(x))
    with torch.no_grad():
        torch.testing.assert_close(encode_in_chunks(f, (x,), 2), f(x))


# --------------------------------------------------------------------------- length-sorted chunks

TEXTS = ["a", "one two three four five six seven eight nine ten eleven twelve", "x y", "stone river cloud light", "p q r s t"]


def test_length_sorted_chunks_give_the_padded_batch_outputs_and_gradients(tiny_embedder):
    """Rows come back in input order with the padded batch's embeddings and parameter gradients,
    while each chunk (sorted by length) is cut to its own longest row."""
    tiny_embedder.eval()  # no dropout, so both paths compute the same function
    batch = tiny_embedder.tokenize(TEXTS, is_query=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    widths = []

    def encode(i, m):
        widths.append(i.shape[1])
        return tiny_embedder(i, m)

    grads = []
    for size in (None, 2):
        tiny_embedder.zero_grad()
        widths.clear()
        out = encode_length_sorted(encode, ids, mask, size)
        (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()  # a loss that depends on the row order
        grads.append([p.grad.clone() for p in tiny_embedder.parameters() if p.grad is not None])
        if size is None:
            whole = out.detach()
            assert widths == [ids.shape[1]]
        else:
            torch.testing.assert_close(out.detach(), whole, rtol=1e-5, atol=1e-6)
            lengths = sorted(mask.sum(1).tolist())
            assert widths == [max(lengths[s : s + 2]) for s in range(0, len(lengths), 2)]
            assert sum(widths) < 3 * ids.shape[1]  # fewer padded tokens than three full-width chunks
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_length_sorted_chunks_never_cut_a_used_column():
    """Left padding (real tokens at the end) keeps every column; only columns unused by a whole chunk go."""
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    ids = torch.arange(16).reshape(4, 4)
    seen = []
    out = encode_length_sorted(lambda i, m: seen.append(m.shape[1]) or i.sum(1, keepdim=True), ids, mask, 2)
    assert seen == [4, 4] and out.squeeze(1).tolist() == ids.sum(1).tolist()
    right = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    seen.clear()
    out = encode_length_sorted(lambda i, m: seen.append(m.shape[1]) or (i * m).sum(1, keepdim=True), ids, right, 2)
    assert seen == [2, 4] and out.squeeze(1).tolist() == (ids * right).sum(1).tolist()


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (what a step's
    activations cost in memory, counted exactly rather than read off a noisy RSS)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_checkpointed_chunks_keep_the_loss_and_gradients_and_save_one_chunks_activations(tiny_embedder):
    """train.checkpoint_chunks (GradCache's trade): with dropout on, the same embeddings and
    parameter gradients as plain chunks (checkpointing replays each chunk's dropout masks), while
    autograd keeps far fewer activation bytes for backward."""
    tiny_embedder.train()
    texts = TEXTS * 4  # 12 rows, chunks of 3
    batch = tiny_embedder.tokenize(texts, is_query=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    runs = {}
    for checkpointed in (False, True):
        tiny_embedder.zero_grad()
        torch.manual_seed(7)
        held = {}

        def step():
            held["out"] = encode_length_sorted(tiny_embedder, ids, mask, 3, checkpointed=checkpointed)  # noqa: B023

        runs[checkpointed] = {"saved": saved_bytes(step)}
        out = held["out"]
        (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
        runs[checkpointed] |= {"out": out.detach(), "grads": [p.grad.clone() for p in tiny_embedder.parameters() if p.grad is not None]}
    plain, ckpt = runs[False], runs[True]
    torch.testing.assert_close(ckpt["out"], plain["out"])
    assert len(ckpt["grads"]) == len(plain["grads"]) > 0
    for a, b in zip(plain["grads"], ckpt["grads"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # only each chunk's inputs are saved (and one chunk's activations during its recompute, in backward)
    assert ckpt["saved"] < plain["saved"] / 10, (ckpt["saved"], plain["saved"])
    print(f"saved for backward: {plain['saved']} bytes plain, {ckpt['saved']} checkpointed")


def test_checkpoint_chunks_needs_length_chunk():
    from flagops.config import ConfigError, load_config
    from flagops.training import embedder as recipe

    cfg = load_config("tiny", ["train.checkpoint_chunks=true", "train.length_chunk=null"])
    with pytest.raises(ConfigError, match=r"train\.checkpoint_chunks=true .*set train\.length_chunk"):
        recipe.train(cfg.model, cfg.train, [], None)
