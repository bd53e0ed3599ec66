"""encode's batching: tokenized once, sorted by token count, padded as the tokenizer would pad."""

import numpy as np
import pytest
import torch

from flagops.models.embedder import Embedder
from flagops.models.m3 import M3Embedder

TEXTS = [
    "understanding international",  # many characters, few wordpieces
    "a b c d e f g h",
    "the cat",
    "",
    "one two three four five six seven eight nine ten eleven twelve thirteen",
    "x",
    "hello world, this is a test",
]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("multiple", [None, 16])
def test_batches_equal_the_tokenizers_own_padding(side, multiple):
    e = Embedder.load("tiny-bert", query_instruction="Q: ", query_max_len=16, passage_max_len=48)
    e.tokenizer.padding_side = side
    e.pad_to_multiple_of = multiple
    for is_query in (True, False):
        seen = []
        for idx, enc in e.sorted_batches(TEXTS, is_query=is_query, batch_size=3):
            want = e.tokenize([TEXTS[i] for i in idx], is_query=is_query)
            assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
            for key, value in enc.items():
                assert value.dtype == torch.int64
                assert torch.equal(value, want[key]), (side, multiple, is_query, key)
            seen += idx.tolist()
        assert sorted(seen) == list(range(len(TEXTS)))


def test_batches_are_sorted_by_token_count_not_characters():
    e = Embedder.load("tiny-bert")
    counts = [len(ids) for ids in e.tokenizer(TEXTS, truncation=True, max_length=128)["input_ids"]]
    order = np.concatenate([idx for idx, _ in e.sorted_batches(TEXTS, is_query=False, batch_size=2)])
    assert [counts[i] for i in order] == sorted(counts, reverse=True)
    # "understanding international": the most characters (27), 4 wordpieces. Sorted by
    # characters it would share the first batch with an 11-token text; by tokens it does not.
    texts = ["a b c d e f g h i", "a b c d e f g h j", "understanding international", "x y"]
    assert [len(ids) for ids in e.tokenizer(texts)["input_ids"]] == [11, 11, 4, 4]
    first, enc = next(e.sorted_batches(texts, is_query=False, batch_size=2))
    assert first.tolist() == [0, 1] and bool(enc["attention_mask"].all())


def test_encode_keeps_order_and_matches_one_text_at_a_time():
    e = Embedder.load("tiny-bert", pooling="mean", passage_max_len=32)
    together = e.encode(TEXTS, batch_size=3)
    alone = np.concatenate([e.encode([t]) for t in TEXTS])
    assert together.dtype == np.float32 and together.shape == alone.shape
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert e.encode([]).shape == (0, e.model.config.hidden_size)


def test_encode_m3_keeps_order_in_every_mode():
    m3 = M3Embedder.load("tiny-bert", colbert_dim=8, passage_max_len=32)
    together = m3.encode_m3(TEXTS, batch_size=3)
    for i, text in enumerate(TEXTS):
        alone = m3.encode_m3([text])
        np.testing.assert_allclose(together.dense[i], alone.dense[0], atol=1e-5)
        np.testing.assert_allclose(together.sparse[i].toarray(), alone.sparse[0].toarray(), atol=1e-5)
        np.testing.assert_allclose(together.colbert[i], alone.colbert[0], atol=1e-5)
    empty = m3.encode_m3([])
    assert empty.dense.shape[0] == empty.sparse.shape[0] == len(empty.colbert) == 0
