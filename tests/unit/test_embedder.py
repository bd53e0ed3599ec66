"""Pooling by hand on tiny tensors; settings travel with a saved model."""

import numpy as np
import torch

from flagops.models.embedder import Embedder, pool
from flagops.models.layout import SETTINGS_FILE

H = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]], [[2.0, 2.0], [4.0, 0.0], [9.0, 9.0]]])  # (2, 3, 2)
M = torch.tensor([[1, 1, 1], [1, 1, 0]])  # second text has one pad position


def test_cls_mean_last_token_by_hand():
    assert torch.equal(pool(H, M, "cls"), torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    assert torch.allclose(pool(H, M, "mean"), torch.tensor([[3.0, 2.0], [3.0, 1.0]]))
    assert torch.equal(pool(H, M, "last_token"), torch.tensor([[5.0, 4.0], [4.0, 0.0]]))
    left_padded = torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert torch.equal(pool(H, left_padded, "last_token"), torch.tensor([[5.0, 4.0], [9.0, 9.0]]))


def test_settings_saved_and_sentence_transformers_pooling_read(tmp_path):
    e = Embedder.load("tiny-bert", pooling="last_token", query_instruction="Q: ")
    e.save(tmp_path / "m")
    again = Embedder.load(tmp_path / "m")
    assert again.settings == e.settings
    (tmp_path / "m" / SETTINGS_FILE).unlink()  # only the sentence-transformers files remain
    assert Embedder.load(tmp_path / "m").settings.pooling == "last_token"


def test_query_instruction_is_prepended():
    e = Embedder.load("tiny-bert", query_instruction="Represent: ")
    q = e.tokenize(["hello"], is_query=True)["input_ids"][0].tolist()
    p = e.tokenize(["Represent: hello"], is_query=False)["input_ids"][0].tolist()
    assert q == p


def test_padding_to_a_multiple_changes_shapes_not_embeddings():
    texts = ["a short one", "a somewhat longer text of several more words than the first"]
    for pooling in ("cls", "mean", "last_token"):
        e = Embedder.load("tiny-bert", pooling=pooling, passage_max_len=48)
        plain = e.tokenize(texts, is_query=False)["input_ids"].shape[1]
        want = e.encode(texts)
        e.pad_to_multiple_of = 16
        padded = e.tokenize(texts, is_query=False)["input_ids"].shape[1]
        assert padded % 16 == 0 and padded > plain
        assert np.allclose(e.encode(texts), want, atol=1e-6), pooling
        e.pad_to_multiple_of = 7  # 48 is no multiple of 7: padding could pass the limit, so none
        assert e.tokenize(texts, is_query=False)["input_ids"].shape[1] == plain
