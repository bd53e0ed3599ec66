"""The paper-scale long-context run (Llama-3-8B-Instruct, 8K -> 80K, QLoRA) as a PyTorchJob: the
committed manifest is the render of its committed params, and it carries the recipe's key
fields: the 80K window, LoRA r 32 / alpha 16 on q/k/v/o, QLoRA, gradient checkpointing, ZeRO-2
and 8 GPUs running extend_context."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from flagops.config import validate
from flagops.training import deepspeed
from tests.orchestration.test_pytorchjob import K8S_VERSION, _flag, run_cli

REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "manifests" / "training" / "longctx-80k.params.yaml"
COMMITTED = REPO / "manifests" / "training" / "pytorchjob-extend-context-80k.yaml"


def header_argv() -> list[str]:
    """The command line the committed file's header names, minus `flagops train submit-pytorchjob`."""
    header = COMMITTED.read_text().splitlines()[0]
    return shlex.split(header.split("`")[1])[3:]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return list(yaml.safe_load_all(COMMITTED.read_text()))


def test_committed_manifest_is_the_render(monkeypatch):
    monkeypatch.chdir(REPO)  # the header's --params path is relative to the repo
    assert COMMITTED.read_text() == run_cli(*header_argv()), f"{COMMITTED.relative_to(REPO)} is stale; rerun the command in its header"


def test_recipe_fields(docs):
    cm, job = docs
    cfg = validate(yaml.safe_load(cm["data"]["params.yaml"]), "configmap")
    lc = cfg.longctx
    assert lc.base_context * lc.factor == 81920 and lc.rope_scaling == "theta" and lc.rope_theta == 200e6
    assert (lc.lora_r, lc.lora_alpha) == (32, 16.0) and set(lc.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert lc.qlora and lc.gradient_checkpointing and lc.train_embeddings
    assert max(lc.needle_lengths) == 81920 and lc.extend_train.batch_size == 1
    assert deepspeed.zero_stage(deepspeed.resolve_deepspeed_config(lc.extend_train.deepspeed)) == 2
    (master,) = job["spec"]["pytorchReplicaSpecs"].values()
    (container,) = master["template"]["spec"]["containers"]
    command = container["command"]
    assert command[command.index("step") + 1] == "extend_context"
    assert _flag(command, "nproc-per-node") == job["spec"]["nprocPerNode"] == container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert _flag(command, "nnodes") == "1"
    ins = [command[i + 1] for i, a in enumerate(command) if a == "--in"]
    assert ins == ["base_lm=models/base_lm", "corpus=data/corpus.jsonl"]  # the docs tell where to put Llama-3-8B-Instruct


def test_core_objects_pass_kubernetes_validate(docs):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    cm, job = docs
    kubernetes_validate.validate(cm, K8S_VERSION, strict=True)
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "extend-context-80k-master-0"}}
    pod["spec"] = {**copy.deepcopy(spec["template"]["spec"]), "restartPolicy": spec["restartPolicy"]}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
