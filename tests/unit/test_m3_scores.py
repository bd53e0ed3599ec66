"""M3 score functions against hand computation on tiny tensors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from flagops.evaluation.m3 import colbert_matrix, m3_runs, sparse_search
from flagops.models.m3 import (
    M3Encoded,
    colbert_scores,
    inner_scores,
    lexical_weights,
    mcls_content_budget,
    mcls_ids,
    sparse_embedding,
    special_token_ids,
)

CLS, SEP, PAD, UNK = 101, 102, 0, 100


def test_sparse_embedding_keeps_each_ids_max_weight_and_zeroes_special_tokens():
    #                 CLS   "7"  "8"  "7"  SEP  PAD
    ids = torch.tensor([[CLS, 7, 8, 7, SEP, PAD]])
    weights = torch.tensor([[0.7, 0.5, 0.2, 0.9, 0.3, 0.4]], requires_grad=True)
    vec = sparse_embedding(weights, ids, vocab_size=200, special_ids=[PAD, UNK, CLS])
    expected = torch.zeros(1, 200)
    expected[0, 7], expected[0, 8], expected[0, SEP] = 0.9, 0.2, 0.3  # 7 twice: the larger; CLS/PAD zeroed
    torch.testing.assert_close(vec, expected)
    vec[0, 7].backward()  # only the position holding the max gets the gradient
    torch.testing.assert_close(weights.grad, torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]))


def test_sparse_score_is_the_sum_over_shared_ids_of_weight_products():
    q = torch.zeros(1, 20)
    p = torch.zeros(2, 20)
    q[0, 3], q[0, 5] = 0.9, 0.2
    p[0, 3], p[0, 9] = 0.5, 1.0  # shares id 3 only
    p[1, 9] = 2.0  # shares nothing
    torch.testing.assert_close(inner_scores(q, p), torch.tensor([[0.9 * 0.5, 0.0]]))


def test_dense_score_is_the_inner_product():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    torch.testing.assert_close(inner_scores(q, p), torch.tensor([[0.0, 1.0, 0.6], [0.8, 0.6, 1.0]]))


def test_colbert_score_is_the_mean_over_query_tokens_of_the_best_passage_token():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # 2 real tokens + padding
    q_mask = torch.tensor([[1, 1, 0]])
    p = torch.tensor(
        [
            [[0.6, 0.8], [1.0, 0.0], [0.0, 0.0]],  # 2 real tokens + padding
            [[-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]],  # every real dot product negative
        ]
    )
    p_mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    got = colbert_scores(q, q_mask, p, p_mask)
    # passage 0: token (1,0) best 1.0; token (0,1) best 0.8 -> 0.9
    # passage 1: token (1,0) best max(-1, 0) = 0; token (0,1) best max(0, -1) = 0 -> 0.0
    # the padded zero vector would also give 0 here; a masked pad never wins over a real token:
    torch.testing.assert_close(got, torch.tensor([[0.9, 0.0]]))
    p[1] = torch.tensor([[-1.0, 0.0], [-0.6, -0.8], [0.0, 0.0]])  # now the best real match is negative
    # token (1,0): max(-1, -0.6) = -0.6; token (0,1): max(0, -0.8) = 0 -> -0.3 (a pad would floor it at 0)
    torch.testing.assert_close(colbert_scores(q, q_mask, p, p_mask)[0, 1], torch.tensor(-0.3))


def test_special_ids_are_flagembeddings_cls_eos_pad_unk():
    bert = SimpleNamespace(cls_token_id=CLS, eos_token_id=None, pad_token_id=PAD, unk_token_id=UNK, sep_token_id=SEP)
    assert special_token_ids(bert) == [PAD, UNK, CLS]  # BERT's [SEP] is not EOS: it keeps its weight
    xlmr = SimpleNamespace(cls_token_id=0, eos_token_id=2, pad_token_id=1, unk_token_id=3, sep_token_id=2)
    assert special_token_ids(xlmr) == [0, 1, 2, 3]


def test_lexical_weights_match_flagembeddings_dict_format():
    row = sp.csr_matrix(np.array([[0.0, 0.25, 0.0, 0.5]], np.float32))
    assert lexical_weights(row) == {"1": 0.25, "3": 0.5}


def test_mcls_ids_put_a_cls_before_every_interval_of_tokens():
    assert mcls_ids([5, 6, 7], CLS, SEP, 4) == ([CLS, 5, 6, 7, SEP], [1, 0, 0, 0, 0])  # shorter: the plain input
    ids, is_cls = mcls_ids(list(range(1, 10)), CLS, SEP, 4)
    assert ids == [CLS, 1, 2, 3, 4, CLS, 5, 6, 7, 8, CLS, 9, SEP]
    assert sum(is_cls) == 3  # ceil(9 / 4)
    assert mcls_ids([], CLS, SEP, 4) == ([CLS, SEP], [1, 0])
    n = mcls_content_budget(512, 256)
    assert n == 509  # 509 tokens + ceil(509 / 256) = 2 CLS + 1 SEP = 512


def test_sparse_search_matches_brute_force_and_skips_documents_without_shared_ids():
    docs = sp.random(30, 50, density=0.1, random_state=1, dtype=np.float32, format="csr")
    queries = sp.random(4, 50, density=0.1, random_state=2, dtype=np.float32, format="csr")
    dids, qids = [f"d{i}" for i in range(30)], [f"q{i}" for i in range(4)]
    run = sparse_search(queries, docs, qids, dids, top_k=5)
    brute = (queries @ docs.T).toarray()
    for r, qid in enumerate(qids):
        positive = [j for j in np.argsort(-brute[r], kind="stable")[:5] if brute[r, j] > 0]
        assert set(run[qid]) == {dids[j] for j in positive}
        for j in positive:
            assert run[qid][dids[j]] == pytest.approx(brute[r, j], rel=1e-5)


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_exhaustive_colbert_matrix_and_rerank_agree_with_pairwise_scores():
    rng = np.random.default_rng(0)
    q_vecs = [_unit(rng, n, 8) for n in (3, 5)]
    d_vecs = [_unit(rng, n, 8) for n in (2, 7, 4, 9, 1)]
    full = colbert_matrix(q_vecs, d_vecs)
    for i, q in enumerate(q_vecs):
        for j, d in enumerate(d_vecs):
            assert full[i, j] == pytest.approx(float((q @ d.T).max(1).mean()), abs=1e-6)
    enc_q = M3Encoded(_unit(rng, 2, 4), sp.csr_matrix(rng.random((2, 6)).astype(np.float32)), q_vecs)
    enc_d = M3Encoded(_unit(rng, 5, 4), sp.csr_matrix(rng.random((5, 6)).astype(np.float32)), d_vecs)
    qids, dids = ["a", "b"], [f"d{j}" for j in range(5)]
    exhaustive = m3_runs(enc_q, enc_d, qids, dids, exhaustive=True)
    rerank = m3_runs(enc_q, enc_d, qids, dids, exhaustive=False, rerank_top_k=5)  # k = corpus: same candidates
    for mode in ("colbert", "hybrid"):
        for qid in qids:
            assert exhaustive[mode][qid] == pytest.approx(rerank[mode][qid], abs=1e-6)
    dense, sparse = enc_q.dense @ enc_d.dense.T, (enc_q.sparse @ enc_d.sparse.T).toarray()
    hybrid = 0.4 * dense + 0.2 * sparse + 0.4 * full
    assert exhaustive["hybrid"]["b"]["d3"] == pytest.approx(float(hybrid[1, 3]), abs=1e-6)
    few = m3_runs(enc_q, enc_d, qids, dids, exhaustive=False, rerank_top_k=2)  # ColBERT sees the dense top 2 only
    for r, qid in enumerate(qids):
        assert set(few["colbert"][qid]) == {dids[j] for j in np.argsort(-dense[r])[:2]}
