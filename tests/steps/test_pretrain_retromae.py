"""pretrain_retromae's run(): the default texts (the corpus, then the stdlib docstrings that
are no passage), a user's {"text": ...} JSONL, and bad rows failing before anything is written."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModel

from flagops.config import load_config
from flagops.data.corpus import stdlib_passages
from flagops.data.formats import DataError, write_jsonl
from flagops.steps import pretrain_retromae as step
from flagops.training import common


def _cfg(*overrides):
    return load_config(
        "tiny",
        ["pretrain.base=tiny-bert", "pretrain.batch_size=2", "pretrain.max_length=32", "pretrain.max_steps=2", *overrides],
    )


def _corpus(tmp_path, n: int = 4):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, [p.to_json() for p in stdlib_passages(150)[:n]])
    return path


def test_default_texts_are_the_corpus_then_stdlib_docstrings_that_are_no_passage(tmp_path, capsys):
    corpus = _corpus(tmp_path)
    texts = step.pretraining_texts(_cfg(), corpus)
    corpus_texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    assert texts[: len(corpus_texts)] == corpus_texts
    assert len(texts) == len(set(texts)) > len(corpus_texts) + 1000  # every further stdlib docstring, each once
    assert f"{len(corpus_texts)} corpus passages + {len(texts) - len(corpus_texts)} further stdlib docstrings" in capsys.readouterr().out


def test_step_trains_on_a_texts_jsonl_and_writes_an_hf_encoder(tmp_path):
    texts, out = tmp_path / "texts.jsonl", tmp_path / "pretrained"
    write_jsonl(texts, [{"text": f"the river {i} carries docstrings of module {i}"} for i in range(4)])
    outputs = step.run(_cfg(f"pretrain.texts={texts}"), {"corpus": tmp_path / "unused.jsonl"}, {"pretrained_model": out})
    assert outputs == {"pretrained_model": out}
    assert (out / "tokenizer.json").is_file() and not common.checkpoint_dir(out).exists()
    assert AutoModel.from_pretrained(str(out)).config.hidden_size == 64


@pytest.mark.parametrize(
    ("line", "problem"),
    [("{not json", "invalid JSON"), ('{"title": "no text"}', '"text"'), ('{"text": "   "}', '"text"'), ('{"text": 3}', '"text"')],
)
def test_a_bad_row_is_a_one_line_error_naming_file_and_line_and_nothing_is_written(tmp_path, line, problem):
    texts, out = tmp_path / "texts.jsonl", tmp_path / "pretrained"
    texts.write_text('{"text": "a good row"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        step.run(_cfg(f"pretrain.texts={texts}"), {"corpus": tmp_path / "unused.jsonl"}, {"pretrained_model": out})
    message = str(err.value)
    assert message.startswith(f"{texts}:2: ") and problem in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]  # no output, no checkpoints


def test_a_malformed_corpus_line_names_the_corpus_file_and_line(tmp_path):
    corpus, out = tmp_path / "corpus.jsonl", tmp_path / "pretrained"
    corpus.write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{corpus}:2: invalid JSON"):
        step.run(_cfg(), {"corpus": corpus}, {"pretrained_model": out})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


def test_too_few_texts_for_one_step_is_a_data_error_before_training(tmp_path):
    texts, out = tmp_path / "texts.jsonl", tmp_path / "pretrained"
    write_jsonl(texts, [{"text": "only one text"}])
    with pytest.raises(DataError, match="1 texts make no full step of 2 texts"):
        step.run(_cfg(f"pretrain.texts={texts}"), {"corpus": tmp_path / "unused.jsonl"}, {"pretrained_model": out})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.jsonl"]  # no output, no checkpoints
