"""synthesize_queries with ``generator: llm`` against a real ``transformers serve`` process on CPU.

Two tiny Llamas are served by one server (each loaded on its first request):

- ``det``: deterministic by construction. Its one decoder layer has zero output projections
  (attention ``o_proj``, MLP ``down_proj``), so the last hidden state is the current token's
  embedding and the next token depends only on the current one. The embeddings put each
  passage's last prompt token on its own hidden unit, and ``lm_head`` maps that unit to an
  added token spelling that passage's JSON reply, which maps to EOS. Greedy decoding
  therefore writes ``{"query": ...}`` then stops.
- ``garbage``: the random ``tiny-decoder``: its replies are never JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from flagops.config import FlagopsConfig, LLMSynthesisConfig, ModelConfig, SynthesisConfig
from flagops.data.formats import Passage, write_jsonl
from flagops.data.llm_synthesis import LLMError, load_template
from flagops.steps import synthesize_queries

pytestmark = pytest.mark.timeout(120)

# Each test template ends with the passage, so the last prompt token is the passage's last word.
TEMPLATE = 'Write a search query as {"query": "..."} for this passage.\n$title\n$passage'
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
PASSAGES = [
    Passage("io.read", "io.read", "Read the whole content of a text file", "io"),
    Passage("socket.connect", "socket.connect", "Open a network connection to a remote socket", "socket"),
    Passage("threading.start", "threading.start", "Start running a function in a new thread", "threading"),
    Passage("json.dumps", "json.dumps", "Serialise an object to a JSON formatted string", "json"),
    Passage("zlib.compress", "zlib.compress", "Compress bytes with the deflate algorithm", "zlib"),
]
QUERIES = ["how do I read a file", "connect to a server socket", "run code in a thread", "object to json text", "deflate some bytes"]
SERVE_START_S = 90  # a loaded 2-core machine needs ~30 s to import the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_decoder_tokenizer():
    from transformers import AutoTokenizer

    from flagops.models.llm_reranker import resolve_decoder_source

    source = resolve_decoder_source("tiny-decoder")
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.chat_template = CHAT_TEMPLATE
    return source, tokenizer


def build_deterministic_llm(dest: Path, templates_dir: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from flagops.models.llm_reranker import save_tokenizer

    _, tokenizer = tiny_decoder_tokenizer()
    replies = [json.dumps({"query": q}) for q in QUERIES]
    tokenizer.add_tokens(replies)
    template = load_template("query_v1", templates_dir)
    last_ids = []
    for p in PASSAGES:
        prompt = template.render(title=p.title, passage=p.text)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        last_ids.append(ids[-1])
    assert len(set(last_ids)) == len(PASSAGES), "each passage must end on its own token"
    reply_ids = tokenizer.convert_tokens_to_ids(replies)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for tensor in (model.model.layers[0].self_attn.o_proj.weight, model.model.layers[0].mlp.down_proj.weight):
            tensor.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        edges = [*zip(last_ids, reply_ids, strict=True), *((r, tokenizer.eos_token_id) for r in reply_ids)]
        for unit, (current, following) in enumerate(edges):  # one hidden unit per edge of the token chain
            model.model.embed_tokens.weight[current, unit] = 1.0
            model.lm_head.weight[following, unit] = 1.0
    model.save_pretrained(str(dest))
    save_tokenizer(tokenizer, dest)


def build_garbage_llm(dest: Path) -> None:
    source, tokenizer = tiny_decoder_tokenizer()
    shutil.copytree(source, dest)
    tokenizer.save_pretrained(str(dest))  # the same tokenizer, with a chat template


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, log file, {name: model dir}) of one ``transformers serve`` process."""
    root = tmp_path_factory.mktemp("llm-serve")
    templates = root / "templates"
    templates.mkdir()
    (templates / "query_v1.txt").write_text(TEMPLATE, encoding="utf-8")
    models = {"det": root / "det", "garbage": root / "garbage"}
    build_deterministic_llm(models["det"], templates)
    build_garbage_llm(models["garbage"])
    port, log = free_port(), root / "serve.log"
    cli = Path(sys.executable).parent / "transformers"
    cmd = [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--enable-log-requests"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.skip(f"transformers serve did not start offline in {SERVE_START_S} s: {log.read_text()[-500:]}")
        yield f"{base}/v1", log, models, templates
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def server_calls(log: Path) -> int:
    return log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


def config(model: Path | str, base_url: str, cache: Path, **llm) -> FlagopsConfig:
    llm = {"max_tokens": 8, "concurrency": 2, "max_retries": 1, "timeout_s": 30, **llm}
    synthesis = SynthesisConfig(
        generator="llm", test_fraction=0.4, llm=LLMSynthesisConfig(base_url=base_url, model=str(model), cache_dir=str(cache), **llm)
    )
    return FlagopsConfig(model=ModelConfig(base="tiny-bert", pooling="mean", query_max_len=16, passage_max_len=48), synthesis=synthesis)


def run_step(cfg: FlagopsConfig, corpus: Path, out: Path) -> dict:
    outputs = {"train_pairs": out / "train.jsonl", "eval_set": out / "eval"}
    return synthesize_queries.run(cfg, {"corpus": corpus}, outputs)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, (p.to_json() for p in PASSAGES))
    return path


def test_valid_replies_are_written_and_a_rerun_makes_no_calls(server, corpus, tmp_path, monkeypatch, capsys):
    base_url, log, models, templates = server
    logged: list[dict] = []
    monkeypatch.setattr(synthesize_queries.tracking, "log_metrics", lambda m, step=None: logged.append(dict(m)))
    before = server_calls(log)
    cfg = config(models["det"], base_url, tmp_path / "cache", templates_dir=str(templates), filter_top_k=20, price_per_1k_prompt=2.0)
    run_step(cfg, corpus, tmp_path / "first")
    assert server_calls(log) - before == len(PASSAGES)
    train = [json.loads(line) for line in (tmp_path / "first" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line)["text"] for line in (tmp_path / "first" / "eval" / "queries.jsonl").read_text().splitlines()]
    assert sorted([t["query"] for t in train] + test) == sorted(QUERIES)
    by_query = dict(zip(QUERIES, PASSAGES, strict=True))
    assert all(t["pos"] == [by_query[t["query"]].full_text] for t in train)
    llm = next(m for m in logged if "llm_calls" in m)
    assert llm["llm_calls"] == len(PASSAGES) and llm["llm_cache_hits"] == 0
    assert llm["llm_prompt_tokens"] > 0 and llm["llm_cost"] == pytest.approx(llm["llm_prompt_tokens"] / 1000 * 2.0)
    assert llm["round_trip_generated"] == len(PASSAGES)
    assert "round-trip filter kept" in capsys.readouterr().out

    # The same config served from elsewhere (here: nowhere) reads every reply from the cache.
    dead = config(models["det"], f"http://127.0.0.1:{free_port()}/v1", tmp_path / "cache", templates_dir=str(templates), filter_top_k=20)
    run_step(dead, corpus, tmp_path / "second")
    assert files(tmp_path / "second") == files(tmp_path / "first")
    assert server_calls(log) - before == len(PASSAGES)
    assert logged[-2]["llm_calls"] == 0 and logged[-2]["llm_cache_hits"] == len(PASSAGES)


def test_garbage_replies_are_retried_then_a_clear_error_and_nothing_written(server, corpus, tmp_path):
    base_url, log, models, _ = server
    before = server_calls(log)
    with pytest.raises(LLMError, match=r"passage io\.read: the model's reply was unusable after 2 tries \((no JSON object|invalid JSON)"):
        run_step(config(models["garbage"], base_url, tmp_path / "cache", concurrency=1), corpus, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert server_calls(log) - before >= 2  # the first passage, asked twice


def test_server_down_is_a_clear_error_and_nothing_written(corpus, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMError, match=rf"passage io\.read: cannot reach {url} .*start the server or fix synthesis\.llm\.base_url"):
        run_step(config("any-model", url, tmp_path / "cache", concurrency=1), corpus, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_server_that_never_answers_times_out_with_a_clear_error(corpus, tmp_path):
    with socket.socket() as listener:  # the kernel accepts connections; nothing ever reads or replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        started = time.monotonic()
        with pytest.raises(LLMError, match=r"did not answer within 1 s; raise synthesis\.llm\.timeout_s"):
            run_step(config("any-model", url, tmp_path / "cache", timeout_s=1, concurrency=1), corpus, tmp_path / "out")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "out").exists()
