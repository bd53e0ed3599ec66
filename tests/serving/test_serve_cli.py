"""The serve section reaches the server: `flagops serve` applies ``serve.KEY=VALUE`` arguments,
and the rendered InferenceService passes every field that way.

The container test runs the rendered command and arguments as they are, on this machine: the
tiny BERT saved where the storage initializer would put the model, the host and port moved to a
free loopback port. No cluster runs here, so the pod itself is not started.
"""

from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest
from serving_helpers import launch, serve_command, stop_server

from flagops.config import ServeConfig
from flagops.deploy import inference_service as isvc
from flagops.serving.smoke import free_port

# Every field the server reads, none at its default.
SERVE = ServeConfig(
    kind="embedder",
    max_texts=3,
    max_chars=300,
    max_tokens=12,
    truncation="reject",
    strict=False,
    max_body_bytes=4096,
    request_timeout_s=30.0,
    batch_size=2,
    max_batch_tokens=64,
    max_wait_ms=7.5,
    batch_wait="always",
    pad_to_multiple_of=None,
    device="cpu",
    dtype="float32",
    quantize="none",
    backend="openvino",  # needs the [openvino] extra (in the dev extra): the container server below runs it
)
CHAMPION = isvc.Champion(name="bge", version=3, storage_uri="s3://bucket/3/artifacts", model_path="artifacts/candidate")


def test_every_serve_field_differs_from_its_default():
    defaults = ServeConfig()
    same = [f for f in ServeConfig.model_fields if f not in ("host", "port", "model_name") and getattr(SERVE, f) == getattr(defaults, f)]
    assert same == []


def container(serve: ServeConfig) -> dict:
    doc = isvc.render_inference_service(isvc.DeployConfig(service_name="bge"), serve, CHAMPION)
    (c,) = doc["spec"]["predictor"]["containers"]
    return c


def test_the_rendered_container_passes_the_serve_section():
    c = container(SERVE)
    assert c["command"] == ["flagops", "serve"]
    args = c["args"]
    assert args[: args.index("--name") + 2] == [
        "--model",
        "/mnt/models/artifacts/candidate",
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "--name",
        "bge",
    ]
    assert args[args.index("--name") + 2 :] == [
        "serve.kind=embedder",
        "serve.max_texts=3",
        "serve.max_chars=300",
        "serve.max_tokens=12",
        "serve.truncation=reject",
        "serve.strict=false",
        "serve.max_body_bytes=4096",
        "serve.request_timeout_s=30.0",
        "serve.batch_size=2",
        "serve.max_batch_tokens=64",
        "serve.max_wait_ms=7.5",
        "serve.batch_wait=always",
        "serve.pad_to_multiple_of=null",
        "serve.device=cpu",
        "serve.dtype=float32",
        "serve.quantize=none",
        "serve.backend=openvino",
    ]
    assert container(ServeConfig())["args"] != args  # the section, not constants


def served_settings(log: str) -> dict:
    m = re.search(r"serve settings: (\{.*\})", log)
    assert m, log[-4000:]
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def container_server(tmp_path_factory):
    """The rendered container's command and arguments, with the model where /mnt/models would be."""
    from flagops.models.embedder import Embedder

    mount = tmp_path_factory.mktemp("mnt-models")
    Embedder.load("tiny-bert").save(mount / CHAMPION.model_path)
    c = container(SERVE)
    args = [a.replace(isvc.MODEL_MOUNT, str(mount)) for a in c["args"]]
    port = free_port()
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    assert c["command"] == ["flagops", "serve"]  # run as `python -m flagops.cli serve`: this interpreter
    server = launch(mount / "server.log", "bge", port, serve_command(*args))
    yield server
    stop_server(server)


def test_the_container_command_ends_with_the_rendered_settings(container_server):
    got = served_settings(container_server.log.read_text())
    expected = SERVE.model_dump(mode="json") | {"host": "127.0.0.1", "model_name": "bge"}
    assert got == expected | {"port": got["port"]}


def test_the_container_command_enforces_the_rendered_limits(container_server):
    url = f"{container_server.url}/v1/models/bge:predict"
    r = httpx.post(url, json={"instances": ["a", "b", "c", "d"]}, timeout=60)
    assert r.status_code == 400 and "max_texts" in r.text and "3" in r.text
    r = httpx.post(url, json={"instances": [" ".join(["word"] * 40)]}, timeout=60)  # over max_tokens=12, rejected
    assert r.status_code == 400 and "12" in r.text, r.text
    r = httpx.post(url, json={"instances": ["a"], "unknown": 1}, timeout=60)  # strict=false: ignored
    assert r.status_code == 200, r.text
    assert httpx.post(url, json={"instances": ["x" * 5000]}, timeout=60).status_code == 413  # over max_body_bytes


@pytest.mark.parametrize(
    ("override", "needle"),
    [("serve.max_texts=0", "serve.max_texts"), ("serve.batch_sise=4", "unknown key 'serve.batch_sise'")],
)
def test_a_bad_serve_argument_is_one_line(override, needle):
    r = subprocess.run(serve_command("--dummy", "--port", "0", override), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("flagops: error:") and needle in line
