"""Soak: flagops' server (or infinity-emb's) at concurrency 32 for ten minutes.

    .venv/bin/python benchmarks/soak.py [--duration 600] [--concurrency 32] [--peer infinity] [--disconnect-fraction 0.2]

The server loads the MiniLM package model (saved with ``Embedder.save``, as in
``serve_load.py``) on a free loopback port. Workers send OpenAI-style embedding requests
back to back until ``--duration`` seconds have passed (or ``--max-requests`` were sent):
mostly one stdlib docstring of up to ``--tokens`` tokens, every ``--batch-every``-th a
batch of ``--batch``, so shapes vary as they would in use. Every ``--interval`` seconds
the server's resident memory (RSS, children included) is sampled.

With ``--disconnect-fraction F``, that share of the requests (seeded) hang up instead of
waiting: half of them halfway through the body, half after the body, before the answer, each
with a TCP reset. They are counted as abandoned, not as requests or errors; the rest must
all still succeed.

Memory growth is the mean RSS of the last ``--window`` seconds over the mean of the
first ``--window`` seconds after ``--warmup`` (allocator pools and caches fill in the
warm-up). Exits 1 unless every request succeeded and growth stayed under ``--max-growth``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
from serve_load import (
    Outcome,
    Server,
    add_server_args,
    docstring_texts,
    env_pairs,
    flagops_server,
    infinity_server,
    save_model,
    send,
    start_all,
    stop_all,
)

MIB = 2**20


@dataclass
class Soak:
    """What a soak collects: each request's outcome with its start time, and RSS samples."""

    outcomes: list[tuple[float, Outcome]] = field(default_factory=list)  # (seconds since start, outcome)
    texts: int = 0
    abandoned: int = 0  # requests sent and hung up on purpose (--disconnect-fraction)
    seconds: float = 0.0  # wall time of the whole soak
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)


async def soak(server: Server, texts: list[str], args: argparse.Namespace) -> Soak:
    """Run the workers and the RSS sampler until the duration or the request cap is reached."""
    out = Soak()
    sent = 0
    t0 = time.monotonic()
    deadline = t0 + args.duration
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)

    def next_body() -> tuple[bytes, int] | None:
        nonlocal sent
        if sent >= args.max_requests or time.monotonic() >= deadline:
            return None
        r, sent = sent, sent + 1
        if args.batch_every and r % args.batch_every == args.batch_every - 1:
            picked = [texts[(r * args.batch + j) % len(texts)] for j in range(args.batch)]
            return server.body(picked), args.batch
        return server.body(texts[r % len(texts)]), 1

    rng = random.Random(15)

    async def worker(client: httpx.AsyncClient) -> None:
        while (item := next_body()) is not None:
            if rng.random() < args.disconnect_fraction:
                await hang_up(server, item[0], mid_upload=rng.random() < 0.5, wait=rng.uniform(0, 0.05))
                out.abandoned += 1
                continue
            started = time.monotonic() - t0
            outcome = await send(client, server, *item)
            out.outcomes.append((started, outcome))
            out.texts += item[1] if outcome.error is None else 0

    async def sampler() -> None:
        next_report = t0 + 60
        while time.monotonic() < deadline:
            try:
                out.rss.append((time.monotonic() - t0, server.rss()))
            except psutil.NoSuchProcess:  # the server died: the workers' errors tell the rest
                return
            if time.monotonic() >= next_report:
                next_report += 60
                report_minute(out, time.monotonic() - t0)
            await asyncio.sleep(args.interval)

    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        await asyncio.gather(sampler(), *(worker(client) for _ in range(args.concurrency)))
    out.seconds = time.monotonic() - t0
    return out


async def hang_up(server: Server, body: bytes, mid_upload: bool, wait: float) -> None:
    """Send an embeddings request (all of ``body``, or half) and reset the connection after ``wait`` s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = f"POST {server.embed_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + (body[: len(body) // 2] if mid_upload else body))
    await writer.drain()
    await asyncio.sleep(wait)
    writer.transport.abort()


def report_minute(out: Soak, now: float) -> None:
    """One progress line: the last minute's requests, errors, p50, and the RSS now."""
    recent = [o for t, o in out.outcomes if t >= now - 60]
    ms = [o.seconds * 1e3 for o in recent]
    errors = sum(o.error is not None for _, o in out.outcomes)
    print(
        f"  {now:6.0f} s: {len(out.outcomes):6d} requests ({len(recent)} in the last minute, "
        f"p50 {np.median(ms) if ms else float('nan'):.0f} ms), {errors} errors, {out.abandoned} abandoned, "
        f"RSS {out.rss[-1][1] / MIB:.0f} MiB, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def rss_growth(rss: list[tuple[float, int]], warmup: float, window: float, end: float) -> tuple[float, float, float]:
    """(first-window mean, last-window mean, growth as a fraction) of the RSS samples."""
    first = [b for t, b in rss if warmup <= t < warmup + window]
    last = [b for t, b in rss if t >= end - window]
    if not first or not last:
        raise ValueError("no RSS samples in a window: lower --interval or lengthen --duration")
    start, finish = float(np.mean(first)), float(np.mean(last))
    return start, finish, finish / start - 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peer", choices=["flagops", "infinity"], default="flagops", help="which server to soak")
    ap.add_argument("--duration", type=float, default=600, help="seconds of load")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-requests", type=int, default=1_000_000, help="stop early after this many")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per text at most, special tokens included")
    ap.add_argument("--batch", type=int, default=16, help="texts in a batch request")
    ap.add_argument("--batch-every", type=int, default=8, help="every Nth request is a batch (0: never)")
    ap.add_argument("--interval", type=float, default=2, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60, help="seconds before the first RSS window")
    ap.add_argument("--window", type=float, default=60, help="seconds in each RSS window")
    ap.add_argument("--max-growth", type=float, default=0.10, help="RSS growth bound, as a fraction")
    ap.add_argument("--timeout", type=float, default=60, help="seconds per request before it counts as an error")
    ap.add_argument("--disconnect-fraction", type=float, default=0.0, help="share of requests whose client hangs up before the answer")
    add_server_args(ap)
    ap.add_argument("--out", type=Path, help="also write the RSS samples and per-minute figures as JSON here")
    args = ap.parse_args(argv)
    if args.duration < args.warmup + 2 * args.window:
        ap.error(f"--duration must be at least --warmup + 2 x --window ({args.warmup + 2 * args.window:.0f} s)")

    with tempfile.TemporaryDirectory(prefix="flagops-soak-") as tmp:
        tmp = Path(tmp)
        model_dir = save_model(args.model, args.pooling, tmp / "model")
        texts = alternate_lengths(docstring_texts(model_dir, args.tokens, n=4000, at_least=8))
        if args.peer == "flagops":
            server = flagops_server(model_dir, tmp)
        else:
            server = infinity_server(model_dir, tmp, args.infinity_venv)
        server.env.update(env_pairs(args.env))
        print(
            f"soak {server.name}: {args.duration:.0f} s at concurrency {args.concurrency}; {len(texts)} docstrings "
            f"of 8-{args.tokens} tokens, every {args.batch_every}th request a batch of {args.batch}; "
            f"load avg {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        start_all([server], args.startup_timeout)
        try:
            result = asyncio.run(soak(server, texts, args))
            alive = server.proc.poll() is None
        finally:
            log_tail = server.log_tail(20)
            log_errors = error_lines(server.log)
            stop_all([server])
    if args.out:
        write_json(args.out, result, args)
    return verdict(result, args, alive, log_tail, log_errors)


def write_json(path: Path, result: Soak, args: argparse.Namespace) -> None:
    """RSS samples and, per minute of the soak, requests, errors and latency percentiles."""
    minutes = []
    for m in range(int(result.seconds // 60) + 1):
        ms = [o.seconds * 1e3 for t, o in result.outcomes if m * 60 <= t < (m + 1) * 60]
        errors = sum(o.error is not None for t, o in result.outcomes if m * 60 <= t < (m + 1) * 60)
        p50, p99 = np.percentile(ms, [50, 99]) if ms else (None, None)
        minutes.append({"minute": m, "requests": len(ms), "errors": errors, "p50_ms": p50, "p99_ms": p99})
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": result.seconds,
        "texts": result.texts,
        "abandoned": result.abandoned,
        "rss": [{"t": t, "bytes": b} for t, b in result.rss],
        "minutes": minutes,
    }
    path.write_text(json.dumps(report, indent=1))


def error_lines(log: Path) -> int:
    """Lines of the server's log that report an error or start a traceback."""
    return sum(" ERROR" in line or line.startswith("Traceback") for line in log.read_text(errors="replace").splitlines())


def alternate_lengths(texts: list[str]) -> list[str]:
    """Texts interleaved short and long, so consecutive requests differ in shape."""
    by_len = sorted(texts, key=len)
    return [t for pair in zip(by_len[: len(by_len) // 2], reversed(by_len[len(by_len) // 2 :]), strict=False) for t in pair]


def verdict(result: Soak, args: argparse.Namespace, alive: bool, log_tail: str, log_errors: int) -> int:
    """Print the figures; 0 if no request failed and RSS grew less than the bound."""
    end = result.seconds
    ms = np.array([o.seconds for _, o in result.outcomes]) * 1e3
    errors = [o.error for _, o in result.outcomes if o.error]
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (float("nan"),) * 3
    print(
        f"requests: {len(ms)} in {end:.0f} s ({len(ms) / end:.1f}/s, {result.texts / end:.1f} texts/s); "
        f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms"
    )
    print(f"errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else "") + f"; abandoned on purpose: {result.abandoned}")
    if not alive:
        print(f"the server died during the soak; its log ends:\n{log_tail}\nsoak: FAIL")
        return 1
    start, finish, growth = rss_growth(result.rss, args.warmup, args.window, result.rss[-1][0])
    peak = max(b for _, b in result.rss)
    print(
        f"RSS: {start / MIB:.1f} MiB (mean of {args.warmup:.0f}-{args.warmup + args.window:.0f} s) -> "
        f"{finish / MIB:.1f} MiB (mean of the last {args.window:.0f} s), growth {100 * growth:+.2f}% "
        f"(bound {100 * args.max_growth:.0f}%); peak {peak / MIB:.1f} MiB; {len(result.rss)} samples"
    )
    print(f"server log: {log_errors} error or traceback lines")
    ok = not errors and not log_errors and growth < args.max_growth
    print(f"soak: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
