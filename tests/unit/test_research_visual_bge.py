"""Visualized-BGE on tiny real models: a random ViT (hidden 16) in front of the random tiny-bert;
the loss against a hand computation, the sequence the text encoder reads, the three kinds of
input, stage 2's gradients, the drawn data and the three steps on a tiny workspace."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from flagops.config import ConfigError, validate
from flagops.data.formats import DataError
from flagops.losses.infonce import compute_loss_from_embeddings
from flagops.models.embedder import Embedder
from flagops.models.visual_bge import VisualBGE, VisualSettings, to_pixels
from flagops.research import visual_bge as vb
from flagops.steps import build_visual_bge_data, evaluate_visual_bge, train_visual_bge

SETTINGS = VisualSettings(image_size=16, patch_size=8, vit_hidden_size=16, vit_layers=1, vit_heads=2, text_max_len=16)
N = SETTINGS.num_patches  # 4 image tokens


@pytest.fixture(scope="module")
def model():
    return VisualBGE.create("tiny-bert", SETTINGS, seed=0).eval()


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


def test_infonce_with_groups_and_in_batch_candidates_matches_a_hand_computation():
    # 2 queries, groups of 2 (positive first): query i's positive is column 2i among all 4 candidates.
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    t = 0.02
    expected = 0.0
    for i in range(2):
        s = [sum(q[i, d].item() * p[j, d].item() for d in range(2)) / t for j in range(4)]
        expected += -s[2 * i] + math.log(sum(math.exp(x - max(s)) for x in s)) + max(s)
    expected /= 2
    assert compute_loss_from_embeddings(q, p, t, in_batch=True).item() == pytest.approx(expected, rel=1e-5)


def test_the_sequence_is_cls_then_image_tokens_then_text_with_positions_after_the_image(model):
    enc = model.tokenize(["red circle"])
    pixels = to_pixels(_images(1), SETTINGS.image_size)
    with torch.no_grad():
        seq, mask = model.assemble(enc["input_ids"], enc["attention_mask"], pixels)
        vit_out = model.vision(pixel_values=pixels).last_hidden_state  # (1, 1 + N, d_vit): the ViT's CLS first
        emb = model.text.embeddings
        word, pos, norm = emb.word_embeddings.weight, emb.position_embeddings.weight, emb.LayerNorm
        typ = emb.token_type_embeddings.weight[0]
        ids = enc["input_ids"][0]
        assert vit_out.shape[1] == N + 1 and seq.shape[1] == 1 + N + len(ids) - 1
        torch.testing.assert_close(seq[0, 0], norm(word[ids[0]] + pos[0] + typ))  # [CLS] at position 0
        for k in range(N):  # patch k (the ViT's CLS dropped), projected, at position k + 1, no token type
            torch.testing.assert_close(seq[0, 1 + k], norm(model.proj(vit_out[0, 1 + k]) + pos[1 + k]))
        for j in range(1, len(ids)):  # text token j at position N + j
            torch.testing.assert_close(seq[0, N + j], norm(word[ids[j]] + pos[N + j] + typ))
    assert mask.tolist() == [[1] * (1 + N + len(ids) - 1)]


def test_padding_masks_only_the_text_padding(model):
    enc = model.tokenize(["a", "a much longer text with many words"])
    pixels = to_pixels(_images(2), SETTINGS.image_size)
    _, mask = model.assemble(enc["input_ids"], enc["attention_mask"], pixels)
    assert mask[0, : 1 + N + 2].tolist() == [1] * (1 + N + 2) and mask[0, 1 + N + 2 :].sum() == 0  # [CLS] img a [SEP] pad...
    together = model.embed(["a", "a much longer text with many words"], _images(2))
    alone = model.embed(["a"], _images(1))
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


def test_text_only_is_the_plain_text_encoders_cls_embedding(model):
    texts = ["a small red circle on the left", "blue", "there is a large square coloured green at the right"]
    plain = Embedder.load("tiny-bert", pooling="cls", normalize=True).encode(texts, is_query=False, batch_size=8, max_length=16)
    np.testing.assert_allclose(model.embed(texts), plain, atol=1e-6)


def test_image_only_text_only_and_both_are_unit_vectors_that_differ(model):
    images = _images(2)
    image_only = model.embed(["", ""], images)
    text_only = model.embed(["make the circle blue", "make the circle blue"])
    both = model.embed(["make the circle blue", "make the circle blue"], images)
    other_text = model.embed(["move the square to the left"] * 2, images)
    for v in (image_only, text_only, both):
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(image_only[0], image_only[1])  # the image is read
    assert not np.allclose(both, image_only) and not np.allclose(both, other_text)  # and so is the text beside it
    enc = model.tokenize([""])
    seq, _ = model.assemble(enc["input_ids"], enc["attention_mask"], to_pixels(images[:1], SETTINGS.image_size))
    assert seq.shape[1] == 1 + N + 1  # an image alone: [CLS] img [SEP]


def test_stage_two_trains_only_the_vit_and_the_projection():
    model = VisualBGE.create("tiny-bert", SETTINGS, seed=1)
    trainable = model.freeze_text()
    assert {id(p) for p in trainable} == {id(p) for p in [*model.vision.parameters(), *model.proj.parameters()]}
    q = model.encode(["make the circle blue", "a red square"], _images(2))
    p = model.encode(["", "", "", ""], _images(4))
    compute_loss_from_embeddings(q, p, 0.02).backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert model.proj.weight.grad.abs().sum() > 0 and model.vision.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def _shape_stats(img: Image.Image) -> dict:
    """What is drawn: mean colour, centre x and height (shares of the side), how much of its box it fills, its widest row."""
    a = np.asarray(img, dtype=np.float32)
    drawn = (a.max(axis=2) - a.min(axis=2)) > 60  # saturated pixels: the background is grey
    ys, xs = np.nonzero(drawn)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    widths = drawn.sum(axis=1)[ys.min() : ys.max() + 1]
    return {
        "rgb": a[drawn].mean(axis=0),
        "cx": (xs.min() + xs.max() + 1) / 2 / a.shape[1],
        "height": (ys.max() - ys.min() + 1) / a.shape[0],
        "fill": drawn.sum() / box,
        "widest": int(np.argmax(widths)) / len(widths),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    cfg = validate({"visual_bge": {"enabled": True, "image_size": 64, "patch_size": 16, "train_renderings": 1}}).visual_bge
    root = tmp_path_factory.mktemp("vbge") / "data"
    assert vb.build_dataset(cfg, root) == {"train_images": 120, "test_images": 120}
    return vb.read_dataset(root)


def test_captions_match_the_drawn_shapes(dataset):
    for row in dataset.images.values():
        s = _shape_stats(dataset.load(row.id))
        c = row.combo
        assert row.caption == f"a {c.size} {c.colour} {c.shape} on the {c.position}"
        nearest = min(vb.COLOURS, key=lambda name: np.abs(np.array(vb.COLOURS[name]) - s["rgb"]).sum())
        assert nearest == c.colour, row
        assert abs(s["cx"] - vb.POSITIONS[c.position]) < 0.08, row
        radius = s["height"] / {"circle": 2, "square": 1.7, "triangle": 1.5, "diamond": 2}[c.shape]  # small 0.12-0.16, large 0.24-0.28
        assert (radius > 0.2) == (c.size == "large"), (row, radius)
        fill = {"square": (0.9, 1.01), "circle": (0.7, 0.88), "triangle": (0.4, 0.62), "diamond": (0.4, 0.62)}[c.shape]
        assert fill[0] < s["fill"] < fill[1], (row, s["fill"])
        if c.shape in ("triangle", "diamond"):  # a triangle is widest at its base, a diamond in its middle
            assert (s["widest"] > 0.8) == (c.shape == "triangle"), (row, s["widest"])


def test_each_edit_changes_one_attribute_to_the_one_it_names(dataset):
    assert len(dataset.edits) == len(dataset.images)
    for e in dataset.edits:
        src, tgt = dataset.images[e.source], dataset.images[e.target]
        assert src.split == tgt.split == e.split
        changed = [a for a in vb.ATTRIBUTES if getattr(src.combo, a) != getattr(tgt.combo, a)]
        assert len(changed) == 1, e
        assert e.instruction.split()[-1] == getattr(tgt.combo, changed[0]) and src.combo.shape in e.instruction


def test_training_groups_put_the_positive_first_then_one_attribute_away_negatives(dataset):
    cfg = validate({"visual_bge": {"batch_size": 3, "group_size": 4}}).visual_bge
    batches = vb.train_batches(dataset, cfg, random.Random(0))
    for _ in range(4):
        task, texts, sources, candidates = next(batches)
        assert len(texts) == 3 and len(candidates) == 12
        for i in range(3):
            group = [dataset.images[c].combo for c in candidates[4 * i : 4 * i + 4]]
            assert all(sum(getattr(g, a) != getattr(group[0], a) for a in vb.ATTRIBUTES) == 1 for g in group[1:])
            if task == "edit":
                assert candidates[4 * i + 1] == sources[i]  # the unedited source is the hardest negative
            else:
                assert texts[i] != vb.describe(group[0], len(vb.TEMPLATES) - 1)  # the held-out phrasing stays held out
        assert all(dataset.images[c].split == "train" for c in candidates)


def test_a_bad_dataset_row_names_its_file_and_line(tmp_path, dataset):
    root = tmp_path / "data"
    root.mkdir()
    (root / "images.jsonl").write_text(json.dumps({"id": "x", "file": "x.png", "split": "test", "caption": "c", "shape": "hexagon"}) + "\n")
    (root / "edits.jsonl").write_text("")
    with pytest.raises(DataError, match=r"images.jsonl:1: shape 'hexagon' is not one of"):
        vb.read_dataset(root)


def test_recall_at_k_against_a_hand_ranking():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.3], [0.1, 0.7, 0.4]])
    # positives: row 0 -> col 0 (rank 1), row 1 -> col 1 (tied with col 0: rank 2, then col 2 above: 3), row 2 -> col 2 (rank 2)
    assert vb.recall_at(scores, np.array([0, 1, 2]), ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_patch_size_must_divide_the_image():
    with pytest.raises(ConfigError, match="image_size 30 is no multiple of patch_size 8"):
        validate({"visual_bge": {"image_size": 30}}, origin="t")


def test_the_three_steps_on_a_tiny_workspace(tmp_path):
    cfg = validate(
        {
            "model": {"base": "tiny-bert"},
            "visual_bge": {
                **{"enabled": True, "image_size": 16, "patch_size": 8, "vit_hidden_size": 16, "vit_layers": 1},
                **{"max_steps": 2, "batch_size": 2, "train_renderings": 1},
            },
        }
    )
    data, model_dir, metrics = tmp_path / "data", tmp_path / "model", tmp_path / "metrics.json"
    build_visual_bge_data.run(cfg, {}, {"visual_bge_data": data})
    train_visual_bge.run(cfg, {"visual_bge_data": data}, {"visual_bge_model": model_dir})
    evaluate_visual_bge.run(cfg, {"visual_bge_data": data, "visual_bge_model": model_dir}, {"visual_bge_metrics": metrics})
    saved = VisualBGE.load(model_dir)
    untrained = vb.create_model(cfg.visual_bge, cfg.model)
    assert torch.equal(saved.text.embeddings.word_embeddings.weight, untrained.text.embeddings.word_embeddings.weight)  # frozen
    assert not torch.equal(saved.proj.weight, untrained.proj.weight)  # trained
    result = json.loads(metrics.read_text())
    assert set(result) == {
        "visual_bge/t2i_recall@1",
        "visual_bge/t2i_recall@5",
        "visual_bge/composed_recall@1",
        "visual_bge/composed_recall@5",
        "random_init/t2i_recall@1",
        "random_init/composed_recall@1",
        "caption_search/t2i_recall@1",
        "caption_search/composed_recall@1",
    }
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_training_killed_after_a_checkpoint_resumes_to_the_same_model(dataset, tmp_path):
    """The re-run resumes from checkpoint-3 (the ViT and projection, AdamW, torch's RNG, the batch
    draws and which task comes next) and ends with the uninterrupted run's weights and losses."""
    from tests.loop_kill import killed_after

    shape = {"image_size": 64, "patch_size": 16, "vit_hidden_size": 16, "vit_layers": 1}  # the dataset's images
    cfg = validate({"model": {"base": "tiny-bert"}, "visual_bge": {**shape, "max_steps": 5, "batch_size": 2, "save_steps": 3}})
    whole = vb.train(cfg.visual_bge, cfg.model, dataset, tmp_path / "whole")
    with killed_after(3):  # odd: step 4 is a composed (edit) batch, not a text one
        vb.train(cfg.visual_bge, cfg.model, dataset, tmp_path / "cut")
    resumed = vb.train(cfg.visual_bge, cfg.model, dataset, tmp_path / "cut")
    assert resumed == whole
    a, b = VisualBGE.load(tmp_path / "whole"), VisualBGE.load(tmp_path / "cut")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not (tmp_path / ".cut.checkpoints").exists()


def test_a_batch_larger_than_the_training_edits_is_a_config_error(dataset, tmp_path):
    cfg = validate({"visual_bge": {"batch_size": 121}})
    with pytest.raises(ConfigError, match="batch_size 121 exceeds the 120 training edits"):
        vb.train(cfg.visual_bge, cfg.model, dataset, tmp_path / "model")
    assert not (tmp_path / "model").exists()
