"""Safe loading: no code in flagops/ unpickles arbitrary objects or runs a model repository's code
by default.

An AST scan of every module: each ``torch.load(`` passes ``weights_only=True``; no call passes
``trust_remote_code=True`` as a literal (to ``from_pretrained`` or through a kwargs dict), and no
config default or built-in profile sets a ``trust_remote_code`` key to true. Pickle-only model
directories are refused unless ``$FLAGOPS_ALLOW_PICKLE=1`` (the bad-input matrix checks the
refusal; the opt-in is checked here).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

PACKAGE = Path(__file__).resolve().parents[2] / "flagops"


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return f"{func.value.id}.{func.attr}" if isinstance(func.value, ast.Name) else func.attr
    return func.id if isinstance(func, ast.Name) else ""


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: what`` for each unsafe load in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            keywords = {k.arg: k.value for k in node.keywords}
            if _call_name(node) == "torch.load" and not _is_true(keywords.get("weights_only")):
                found.append(f"{where}: torch.load without weights_only=True")
            if _is_true(keywords.get("trust_remote_code")):
                found.append(f"{where}: {_call_name(node) or 'a call'}(trust_remote_code=True)")
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and _is_true(value):
                    found.append(f"{where}: {{'trust_remote_code': True}}")
    return found


def test_no_unsafe_load_in_flagops():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in unsafe_calls(path.read_text(encoding="utf-8"), str(path))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("import torch\ntorch.load(p)\n", "torch.load without weights_only=True"),
        ("import torch\ntorch.load(p, weights_only=False)\n", "torch.load without weights_only=True"),
        ("AutoModel.from_pretrained(p, trust_remote_code=True)\n", "AutoModel.from_pretrained(trust_remote_code=True)"),
        ("kw = {'trust_remote_code': True}\nAutoModel.from_pretrained(p, **kw)\n", "{'trust_remote_code': True}"),
    ],
)
def test_the_scan_catches(snippet, expected):
    """The scan can fail: each unsafe form is reported, and the safe forms are not."""
    assert [hit.split(": ", 1)[1] for hit in unsafe_calls(snippet)] == [expected]
    assert unsafe_calls("torch.load(p, map_location='cpu', weights_only=True)\nAutoModel.from_pretrained(p)\n") == []


def _trust_keys(node, where: str) -> list[str]:
    if isinstance(node, dict):
        return [f"{where}.{k}" for k, v in node.items() if "trust_remote_code" in str(k) and v is True] + [
            hit for k, v in node.items() for hit in _trust_keys(v, f"{where}.{k}")
        ]
    return []


def test_no_config_default_or_profile_trusts_remote_code():
    from pydantic import BaseModel

    from flagops import config

    sections = [c for c in vars(config).values() if isinstance(c, type) and issubclass(c, BaseModel)]
    defaults = [f"{c.__name__}.{n}" for c in sections for n, f in c.model_fields.items() if "trust_remote_code" in n and f.default is True]
    assert not defaults
    for profile in sorted((PACKAGE / "configs").glob("*.yaml")):
        assert not _trust_keys(yaml.safe_load(profile.read_text()) or {}, profile.name)


def test_pickle_only_weights_load_only_when_the_user_opts_in(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from flagops.models.embedder import Embedder
    from flagops.models.sources import ModelSourceError, resolve_model_source

    model = tmp_path / "model"
    shutil.copytree(resolve_model_source("tiny-bert"), model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    monkeypatch.delenv("FLAGOPS_ALLOW_PICKLE", raising=False)
    with pytest.raises(ModelSourceError, match=r"pytorch_model\.bin: pickle-only weights .*FLAGOPS_ALLOW_PICKLE=1"):
        Embedder.load(model)
    monkeypatch.setenv("FLAGOPS_ALLOW_PICKLE", "1")
    reference = Embedder.load("tiny-bert", pooling="cls")
    loaded = Embedder.load(model, pooling="cls")
    texts = ["sorted() returns a new list"]
    assert torch.allclose(torch.as_tensor(loaded.encode(texts)), torch.as_tensor(reference.encode(texts)), atol=1e-6)
