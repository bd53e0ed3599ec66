"""LLM query synthesis through any OpenAI-compatible chat-completions endpoint.

Each passage is rendered into a versioned prompt template (``templates/<name>_v<N>.txt``,
overridable by a file of the same name in ``synthesis.llm.templates_dir``), sent to the
endpoint, and the reply is parsed as JSON and validated against a JSON schema. A malformed
reply is asked again up to ``max_retries`` times; 429 and 5xx are retried with exponential
backoff. Every reply is cached on disk under the sha256 of what determines it (model,
template name, version and text, the prompt's inputs, sampling params, attempt number) and
not of the URL, so a re-run makes no calls and gives the same data wherever the model is
served. The API key is read from the environment only and never logged.

Queries then pass a round-trip filter (InPars, Promptagator): a query is kept only when its
own passage is in the base embedder's top-k for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flagops.data.formats import DataError, Passage, atomic_path

BASE_URL_ENV = "FLAGOPS_LLM_BASE_URL"
MODEL_ENV = "FLAGOPS_LLM_MODEL"
BACKOFF_BASE_S = 1.0  # first wait after a 429/5xx; doubles per retry
NEGATIVES_PER_QUERY = 3

QUERY_SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 300, "pattern": r"\S"}},
    "required": ["query"],
}
NEGATIVES_SCHEMA = {
    "type": "object",
    "properties": {"negatives": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "maxLength": 2000}}},
    "required": ["negatives"],
}
LONG_QA_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string", "minLength": 1, "maxLength": 500}, "answer": {"type": "string", "minLength": 1}},
    "required": ["question", "answer"],
}


class LLMError(DataError):
    """The endpoint failed or kept replying with unusable output; the message names the passage and the fix."""


# ---------------------------------------------------------------- templates


@dataclass(frozen=True)
class PromptTemplate:
    name: str  # e.g. "query_v1": the name carries the version
    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, **values: str) -> str:
        try:
            return string.Template(self.text).substitute(values)
        except (KeyError, ValueError) as exc:
            raise LLMError(f"template {self.name}: cannot fill {exc}; its placeholders are $names from {sorted(values)}") from None


def load_template(name: str, templates_dir: str | Path | None = None) -> PromptTemplate:
    """``<templates_dir>/<name>.txt`` when it exists, else the one shipped with flagops."""
    if not re.fullmatch(r"[a-z_]+_v[0-9]+", name):
        raise LLMError(f"template {name!r}: expected <name>_v<version>, e.g. query_v1")
    if templates_dir is not None and (Path(templates_dir) / f"{name}.txt").is_file():
        return PromptTemplate(name, (Path(templates_dir) / f"{name}.txt").read_text(encoding="utf-8"))
    shipped = resources.files("flagops.data") / "templates" / f"{name}.txt"
    if not shipped.is_file():
        raise LLMError(
            f"template {name!r}: not in {templates_dir or 'the templates dir'} nor shipped with flagops (flagops/data/templates)"
        )
    return PromptTemplate(name, shipped.read_text(encoding="utf-8"))


def long_qa_prompt(template: PromptTemplate, passages: Sequence[Passage], detail: str) -> str:
    """A long-context QA prompt over ``passages`` concatenated and numbered; ``detail`` is
    ``one`` (the answer sits in a single passage) or ``multi`` (it needs all of them)."""
    if detail not in ("one", "multi"):
        raise LLMError(f"long QA detail {detail!r}: expected one or multi")
    context = "\n\n".join(f"[{i}] {p.full_text}" for i, p in enumerate(passages, start=1))
    if detail == "one":
        return template.render(details="one detail", scope="stated in a single passage", context=context)
    return template.render(details=f"details from all {len(passages)} passages", scope="combined", context=context)


# ---------------------------------------------------------------- the endpoint


@dataclass(frozen=True)
class Endpoint:
    """Where and how to call; the key stays in the environment and is never stored here."""

    base_url: str
    model: str
    api_key_env: str
    temperature: float
    max_tokens: int
    timeout_s: float

    @classmethod
    def from_config(cls, llm) -> Endpoint:
        base_url = llm.base_url or os.environ.get(BASE_URL_ENV)
        model = llm.model or os.environ.get(MODEL_ENV)
        for value, key, env in ((base_url, "base_url", BASE_URL_ENV), (model, "model", MODEL_ENV)):
            if not value:
                raise LLMError(f"synthesis.llm.{key} is not set; set it in the config or ${env} (synthesis.generator=llm)")
        return cls(base_url, model, llm.api_key_env, llm.temperature, llm.max_tokens, llm.timeout_s)

    def client(self):
        from openai import OpenAI

        # Servers without auth (vLLM, transformers serve) accept any key; the openai client needs one.
        key = os.environ.get(self.api_key_env) or "no-key"
        return OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=0)


@dataclass
class Usage:
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def metrics(self, price_per_1k_prompt: float, price_per_1k_completion: float) -> dict[str, float]:
        """Tokens and cost of the calls this run made (cache hits cost nothing)."""
        cost = self.prompt_tokens / 1000 * price_per_1k_prompt + self.completion_tokens / 1000 * price_per_1k_completion
        return {
            "llm_calls": self.calls,
            "llm_cache_hits": self.cache_hits,
            "llm_prompt_tokens": self.prompt_tokens,
            "llm_completion_tokens": self.completion_tokens,
            "llm_cost": cost,
        }


@dataclass
class LLMClient:
    """Cached, retried chat completions; safe to call from several threads."""

    endpoint: Endpoint
    cache_dir: Path
    max_retries: int
    usage: Usage = field(default_factory=Usage)
    _client: Any = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)  # guards usage

    def __post_init__(self) -> None:
        self._client = self.endpoint.client()

    def cache_key(self, template: PromptTemplate, prompt: str, attempt: int) -> str:
        e = self.endpoint
        parts = {
            "model": e.model,
            "template": template.name,
            "template_sha": template.sha,
            "prompt_sha": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),  # the passage, as rendered
            "temperature": e.temperature,
            "max_tokens": e.max_tokens,
            "attempt": attempt,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()

    def complete(self, template: PromptTemplate, prompt: str, attempt: int, where: str) -> str:
        """The reply's text, from the cache or one call; the call is cached before it is returned."""
        path = self.cache_dir / f"{self.cache_key(template, prompt, attempt)}.json"
        if path.is_file():
            with self._lock:
                self.usage.cache_hits += 1
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        response = self._call(prompt, where)
        content = response.choices[0].message.content or ""
        with self._lock:
            self.usage.calls += 1
            if response.usage is not None:
                self.usage.prompt_tokens += response.usage.prompt_tokens
                self.usage.completion_tokens += response.usage.completion_tokens
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"content": content, "model": self.endpoint.model, "template": template.name}), encoding="utf-8")
        return content

    def _call(self, prompt: str, where: str):
        import openai

        e, url = self.endpoint, self.endpoint.base_url
        for retry in range(self.max_retries + 1):
            try:
                return self._client.chat.completions.create(
                    model=e.model, messages=[{"role": "user", "content": prompt}], temperature=e.temperature, max_tokens=e.max_tokens
                )
            except (openai.RateLimitError, openai.InternalServerError) as exc:
                if retry == self.max_retries:
                    raise LLMError(
                        f"{where}: {url} answered HTTP {exc.status_code} after {retry + 1} tries; lower concurrency or retry later"
                    ) from None
                time.sleep(BACKOFF_BASE_S * 2**retry)
            except openai.APITimeoutError:
                raise LLMError(
                    f"{where}: {url} did not answer within {e.timeout_s:g} s; raise synthesis.llm.timeout_s or check the server"
                ) from None
            except openai.APIConnectionError as exc:
                raise LLMError(
                    f"{where}: cannot reach {e.base_url} ({exc.__cause__ or exc}); start the server or fix synthesis.llm.base_url"
                ) from None
            except openai.AuthenticationError:
                raise LLMError(f"{where}: {url} refused the key; set ${e.api_key_env} in the environment") from None
            except openai.APIStatusError as exc:
                raise LLMError(f"{where}: {url} answered HTTP {exc.status_code}: {str(exc.message)[:200]}") from None
        raise AssertionError("unreachable")

    def ask_json(self, template: PromptTemplate, prompt: str, schema: Mapping, where: str) -> dict:
        """The first reply that parses and fits ``schema``, asking up to ``max_retries`` more times."""
        problem = ""
        for attempt in range(self.max_retries + 1):
            reply = self.complete(template, prompt, attempt, where)
            obj, problem = parse_reply(reply, schema)
            if obj is not None:
                return obj
        raise LLMError(
            f"{where}: the model's reply was unusable after {self.max_retries + 1} tries ({problem}); "
            f"check that {self.endpoint.model} follows template {template.name}, or raise synthesis.llm.max_retries"
        )


def parse_reply(reply: str, schema: Mapping) -> tuple[dict | None, str]:
    """(object, "") when ``reply`` holds one JSON object that fits ``schema``, else (None, what was wrong).

    The object may sit inside prose or a ```json fence, as chat models often write it."""
    import jsonschema

    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end < start:
        return None, f"no JSON object in {reply[:80]!r}"
    try:
        obj = json.loads(reply[start : end + 1])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg}) in {reply[:80]!r}"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(obj))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "the object"
        # A long value would flood the message: name the rule it broke instead.
        what = error.message if len(error.message) <= 120 else f"breaks {error.validator} {error.validator_value!r}"
        return None, f"{at}: {what}"
    return obj, ""


# ---------------------------------------------------------------- query generation


@dataclass(frozen=True)
class Generated:
    query: str
    passage: Passage
    negatives: tuple[str, ...] = ()


def generate_queries(passages: Sequence[Passage], llm_cfg, cache_dir: Path) -> tuple[list[Generated], Usage]:
    """One query (and, with ``negatives``, LLM-written hard negatives) per passage, in order.

    Calls run ``concurrency`` at a time; the first failure stops the run with its ``LLMError``."""
    client = LLMClient(Endpoint.from_config(llm_cfg), cache_dir, llm_cfg.max_retries)
    query_t = load_template(llm_cfg.query_template, llm_cfg.templates_dir)
    neg_t = load_template(llm_cfg.negatives_template, llm_cfg.templates_dir) if llm_cfg.negatives else None

    def one(passage: Passage) -> Generated:
        where = f"passage {passage.id}"
        query = client.ask_json(query_t, query_t.render(title=passage.title, passage=passage.text), QUERY_SCHEMA, where)["query"].strip()
        negatives: tuple[str, ...] = ()
        if neg_t is not None:
            prompt = neg_t.render(query=query, passage=passage.full_text, count=str(NEGATIVES_PER_QUERY))
            negatives = tuple(n.strip() for n in client.ask_json(neg_t, prompt, NEGATIVES_SCHEMA, where)["negatives"] if n.strip())
        return Generated(query, passage, negatives)

    with ThreadPoolExecutor(max_workers=llm_cfg.concurrency) as pool:
        futures = [pool.submit(one, p) for p in passages]
        try:
            made = [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return made, client.usage


# ---------------------------------------------------------------- round-trip filter


def round_trip_keep(made: Sequence[Generated], encode: Callable[[list[str], bool], Any], top_k: int) -> list[bool]:
    """For each query: is its own passage among the top-k passages (of all generated) by cosine?

    ``encode(texts, is_query)`` returns normalised embeddings (n, dim)."""
    import numpy as np

    if not made:
        return []
    queries = encode([g.query for g in made], True)  # (n, dim)
    passages = encode([g.passage.full_text for g in made], False)  # (n, dim)
    scores = queries @ passages.T  # (n queries, n passages)
    own = scores[np.arange(len(made)), np.arange(len(made))]  # (n,)
    rank = (scores > own[:, None]).sum(axis=1)  # passages strictly better than the query's own
    return [bool(r < top_k) for r in rank]
