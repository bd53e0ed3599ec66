"""Visualized-BGE served: kind detection, then V1 and V2 over real HTTP on a tiny real model.

The server (a random ViT in front of tiny-bert, saved as train_visual_bge saves) must give
exactly what ``VisualBGE.embed`` gives in-process, for an image alone, a text alone and both;
bad images and empty instances are 400s naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from kserve.errors import InvalidInput
from PIL import Image
from serving_helpers import LIMITS, bytes_input, start_server, stop_server, v1, v2

from flagops.config import ServeConfig
from flagops.models.visual_bge import VisualBGE, VisualSettings
from flagops.serving.dummy import DummyVisualModel
from flagops.serving.kinds import ModelKind, detect_kind

ATOL = 1e-5
TEXTS = ["make the circle blue", "a small red square on the left"]


@pytest.fixture(scope="module")
def visual_dir(tmp_path_factory):
    settings = VisualSettings(image_size=16, patch_size=8, vit_hidden_size=16, vit_layers=1, vit_heads=2, text_max_len=16)
    dest = tmp_path_factory.mktemp("visual") / "visual-bge"
    VisualBGE.create("tiny-bert", settings, seed=3).save(dest)
    return dest


@pytest.fixture(scope="module")
def server(tmp_path_factory, visual_dir):
    server = start_server(tmp_path_factory.mktemp("visual-server") / "server.log", "visual", "--model", str(visual_dir), *LIMITS)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(2)]


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_the_saved_directory_is_detected_as_the_visual_kind(visual_dir):
    assert detect_kind(visual_dir) is ModelKind.VISUAL


def test_v1_embeds_image_alone_text_alone_and_both_as_the_model_does(server, visual_dir, images):
    model = VisualBGE.load(visual_dir)
    body = {
        "instances": [
            {"image": b64(images[0])},
            {"image": b64(images[1]), "text": TEXTS[0]},
            {"text": TEXTS[1]},
            TEXTS[0],
        ]
    }
    r = v1(server, body)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["predictions"])
    expected = np.concatenate(
        [model.embed([""], images[:1]), model.embed(TEXTS[:1], images[1:]), model.embed(TEXTS[1:]), model.embed(TEXTS[:1])]
    )
    assert got.shape == (4, model.dim)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_v2_takes_image_and_text_inputs_and_an_empty_image_for_a_text_alone(server, visual_dir, images):
    model = VisualBGE.load(visual_dir)
    body = {"inputs": [bytes_input("image", [b64(images[0]), ""]), bytes_input("text", TEXTS)]}
    r = v2(server, body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "embedding" and out["datatype"] == "FP32" and out["shape"] == [2, model.dim]
    got = np.asarray(out["data"]).reshape(out["shape"])
    np.testing.assert_allclose(got[0], model.embed(TEXTS[:1], images[:1])[0], atol=ATOL)
    np.testing.assert_allclose(got[1], model.embed(TEXTS[1:])[0], atol=ATOL)
    only_images = v2(server, {"inputs": [bytes_input("image", [b64(images[1])])]})
    assert only_images.status_code == 200, only_images.text
    np.testing.assert_allclose(only_images.json()["outputs"][0]["data"], model.embed([""], images[1:])[0], atol=ATOL)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"image": "not base64!"}]}, "instances[0].image is not valid base64"),
        ({"instances": [{"image": base64.b64encode(b"plain text").decode()}]}, "instances[0].image is no readable image"),
        ({"instances": [{}]}, "instances[0] holds neither image nor text"),
        ({"instances": [{"image": 3}]}, "instances[0].image is int"),
        ({"instances": []}, "empty input"),
        ({"instances": [{"picture": "x"}]}, "unknown key(s) 'picture' in instances[0]"),
    ],
)
def test_v1_bad_input_is_a_400_naming_the_field(server, body, message):
    r = v1(server, body)
    assert r.status_code == 400 and message in r.text, r.text


def test_v2_inputs_of_different_lengths_or_names_are_400s(server, images):
    r = v2(server, {"inputs": [bytes_input("image", [b64(images[0])]), bytes_input("text", TEXTS)]})
    assert r.status_code == 400 and "as many rows" in r.text, r.text
    r = v2(server, {"inputs": [bytes_input("texts", TEXTS)]})
    assert r.status_code == 400 and "'image' (base64) and/or 'text'" in r.text, r.text


def test_the_dummy_decodes_images_and_gives_each_input_its_own_vector(images):
    model = DummyVisualModel(serve_cfg=ServeConfig(max_texts=4))
    model.load()
    body = {"instances": [{"image": b64(images[0])}, {"image": b64(images[0]), "text": "x"}, {"image": b64(images[1])}, "x"]}
    try:
        got = np.asarray(asyncio.run(model.predict(body))["predictions"])
        with pytest.raises(InvalidInput, match="too many inputs: 5"):
            asyncio.run(model.predict({"instances": ["x"] * 5}))
    finally:
        model.stop()
    assert got.shape == (4, 8) and len({tuple(np.round(v, 6)) for v in got}) == 4
