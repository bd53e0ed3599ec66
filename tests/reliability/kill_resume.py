"""Kill -9 and resume, for every step of a tiny DAG (issue 15, item 2).

One uninterrupted ``flagops pipeline`` run per profile is the reference; a watcher records
when each step's process lives and when its first checkpoint appears. Then a second
workspace is run as a chain of preemptions: ``flagops pipeline`` is started, the watcher
waits for step N's process and SIGKILLs the whole process group (pipeline, ``dvc repro``,
the step) at a seeded random point: within the step's measured duration, or, for a
training step, while its checkpoints are on disk (after the first complete one appears, before the step
removes them with its model saved); then the re-run must resume from one. The next run resumes, and is killed in
step N+1, and so on; a last run completes the DAG. So every step is killed once and every
step but the first is also re-run after a kill, for about twice the DAG's cost rather than
once per step.

After each kill: the killed stage is not in ``dvc.lock``, and each of its outputs is absent
or already complete (equal to the reference's, which means the rename landed before the
kill): a partial file at an output's path would be taken for finished by whatever reads it
next. After the last run every output is compared with the reference's, byte for byte.
Not byte-deterministic, so compared ``masked``: the records of MLflow state (registration,
deployment: run and logged-model ids, the workspace's path, the code's git commit) and
evaluate's measured reranking latencies (``ms_per_query``). Safetensors weights whose bytes
differ are compared within ``WEIGHT_ATOL`` (on the tiny profiles they come back identical).

    python -m tests.reliability.kill_resume --profile tiny [--profile tiny_m3 ...] [--seed 0] [--step S ...] [--target S]

prints the step x outcome table and writes ``kill_resume.json`` under ``--root``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import yaml

from flagops.training.common import checkpoint_complete

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1800  # one pipeline run on a loaded 2-core machine
# Training resumed from a checkpoint replays the same batches with the optimizer, scheduler
# and RNG states restored, so the final weights are expected to match bit for bit; anything
# beyond float32 reordering noise would mean the resume diverged.
WEIGHT_ATOL = 1e-5


@dataclass
class Outcome:
    step: str
    kill: str = ""  # where the kill landed: "t+3.1s" or "checkpoint-3 +0.8s"
    killed: bool = False
    lock_clean: bool = True  # the killed stage is absent from dvc.lock
    partial: list[str] = field(default_factory=list)  # outputs present at their path but not complete
    resumed_from: str = ""  # the checkpoint the re-run resumed from
    result: str = ""  # identical | weights within tol | volatile: ... | DIFFERS: ...
    ok: bool = False


# --------------------------------------------------------------------------- running


def environment(workdir: Path) -> dict[str, str]:
    """The checkout's flagops, a workspace-local MLflow store and embedding cache."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the stages' `flagops`
        "FLAGOPS_EMBEDDING_CACHE": str(workdir.parent / f"{workdir.name}-embeddings"),
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def start(profile: str, workdir: Path, target: str | None = None) -> subprocess.Popen:
    """``flagops pipeline`` in its own session, so one killpg takes the run down like a preempted pod.
    With ``target``: ``dvc repro TARGET`` in the workspace ``flagops pipeline`` would render (the
    DAG up to that stage, for a shorter run)."""
    log = open(workdir.parent / f"{workdir.name}.log", "a")  # noqa: SIM115 (closed with the process)
    env = environment(workdir)
    if target is None:
        cmd = [sys.executable, "-m", "flagops.cli", "pipeline", "--profile", profile, "--workdir", str(workdir)]
    else:
        from flagops import workspace

        workspace.prepare(profile, workdir)
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        cmd = [sys.executable, "-m", "dvc", "repro", target]
    cwd = REPO if target is None else workdir
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def step_process(root: psutil.Process) -> tuple[str, psutil.Process] | None:
    """The ``flagops step NAME`` process under ``root``, with its step name."""
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for proc in children:
        try:
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if "step" in cmd and cmd.index("step") + 1 < len(cmd) and any(c.endswith("flagops") or c == "flagops.cli" for c in cmd):
            return cmd[cmd.index("step") + 1], proc
    return None


def checkpoints(workdir: Path, outs: list[str], complete: bool = False) -> list[str]:
    """Checkpoints beside the stage's outputs (flagops.training.common.checkpoint_dir), oldest
    first; with ``complete``, only those the step would resume from (a kill while the Trainer
    saves leaves one without its trainer_state.json, which the step removes and ignores)."""
    found = []
    for out in outs:
        ckpt = workdir / Path(out).parent / f".{Path(out).name}.checkpoints"
        if ckpt.is_dir():
            found += [p.name for p in ckpt.iterdir() if p.name.startswith("checkpoint-") and (not complete or checkpoint_complete(p))]
    return sorted(found, key=lambda n: int(n.rsplit("-", 1)[1]))


def stage_outs(workdir: Path) -> dict[str, list[str]]:
    """Every output path of every stage in the workspace's dvc.yaml, in DAG order."""
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    result = {}
    for name, stage in stages.items():
        paths = []
        for kind in ("outs", "metrics", "plots"):
            paths += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])]
        result[name] = paths
    return result


def stage_records(workdir: Path) -> set[str]:
    """Outputs that describe MLflow state (kept out of the DVC cache: flagops.dvc.stage)."""
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"].values()
    return {next(iter(o)) for stage in stages for o in stage.get("outs", []) if isinstance(o, dict)}


def reference(profile: str, root: Path, target: str | None = None) -> Path:
    """An uninterrupted run of ``profile`` (up to ``target``) with each step's timings; reused when already there."""
    if (root / f"ref-{profile}" / "timings.json").is_file():
        return root / f"ref-{profile}"  # the whole DAG's run serves any target too
    workdir = root / f"ref-{profile}" if target is None else root / f"ref-{profile}-{target}"
    timings = workdir / "timings.json"
    if timings.is_file():
        return workdir
    workdir.mkdir(parents=True, exist_ok=True)
    proc = start(profile, workdir, target)
    seen: dict[str, dict[str, float]] = {}
    t0 = time.monotonic()
    root_proc = psutil.Process(proc.pid)
    outs: dict[str, list[str]] = {}
    while proc.poll() is None:
        found = step_process(root_proc)
        now = time.monotonic() - t0
        if found:
            name = found[0]
            entry = seen.setdefault(name, {"start": now})
            entry["end"] = now
            if "checkpoint" not in entry and (workdir / "dvc.yaml").is_file():
                outs = outs or stage_outs(workdir)
                if checkpoints(workdir, outs.get(name, []), complete=True):
                    entry["checkpoint"] = now
            if "checkpoint" in entry and checkpoints(workdir, outs.get(name, [])):
                entry["checkpoint_last"] = now  # the step removes them once its model is saved
        time.sleep(0.1)
    if proc.wait(TIMEOUT) != 0:
        raise RuntimeError(f"the reference run of {profile} failed; see {workdir}.log")
    timings.write_text(json.dumps(seen, indent=2))
    return workdir


def kill_point(rng: random.Random, name: str, timing: dict[str, float]) -> tuple[str, float]:
    """(what to wait for, seconds after it): a training step after its first checkpoint, anything
    else after its process starts, at a seeded point inside what the reference measured."""
    duration = timing["end"] - timing["start"]
    if "checkpoint" in timing:
        last = timing.get("checkpoint_last", timing["checkpoint"] + 0.3 * (timing["end"] - timing["checkpoint"]))
        window = last - timing["checkpoint"]
        return "checkpoint", rng.uniform(0.0, 0.5) * window
    return "start", rng.uniform(0.1, 0.6) * duration


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def resumable_at_kill(kill: str) -> bool:
    """Did the kill (as ``run_until_kill`` describes it) leave a complete checkpoint on disk? One
    cut short (no trainer_state.json) is removed, not resumed, so the re-run rightly starts over."""
    return re.search(r"on disk: checkpoint-\d+(,|\))", kill) is not None


def run_until_kill(workdir: Path, proc: subprocess.Popen, target: str, wait_for: str, delay: float, outs: list[str]) -> tuple[bool, str]:
    """SIGKILL the run's process group ``delay`` s after step ``target`` starts (or writes its
    first checkpoint). False when the step ended before the kill."""
    root_proc = psutil.Process(proc.pid)
    step = started = armed = None
    ckpt = ""
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        if step is None:
            found = step_process(root_proc)
            if found and found[0] == target:
                step, started = found[1], now
                armed = started if wait_for == "start" else None
        elif not alive(step):
            break  # the step ended before its kill
        if step is not None and armed is None and (names := checkpoints(workdir, outs, complete=True)):
            armed, ckpt = now, names[0]  # a complete one: a kill at +0 s must leave something to resume
        if armed is not None and now - armed >= delay:
            kids = root_proc.children(recursive=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            psutil.wait_procs(kids, timeout=30)  # the step may have its own session: gone before we look
            if not ckpt:
                return True, f"t+{delay:.1f}s"
            left, whole = checkpoints(workdir, outs), checkpoints(workdir, outs, complete=True)
            cut = [f"{name} (cut short)" for name in left if name not in whole]
            return True, f"{ckpt} +{delay:.1f}s (on disk: {','.join(whole + cut) or 'none, model saved'})"
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False, "step ended before the kill"


# --------------------------------------------------------------------------- comparing


def digest(path: Path) -> dict[str, str]:
    """sha256 of a file, or of each file under a directory (by relative path)."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def weight_diff(a: Path, b: Path) -> float:
    """The largest absolute difference between two safetensors files with the same tensors."""
    from safetensors.numpy import load_file

    left, right = load_file(str(a)), load_file(str(b))
    if left.keys() != right.keys() or any(left[k].shape != right[k].shape for k in left):
        return float("inf")
    import numpy as np

    return max((float(np.abs(left[k].astype(np.float64) - right[k]).max()) for k in left if left[k].size), default=0.0)


def masked(path: Path, workdir: Path) -> str:
    """A JSON or YAML output's text with what no re-run reproduces masked: the workspace's path,
    MLflow's 32-hex run and logged-model ids, the 40-hex git commit of the code (the checkout
    may move between the reference and the resumed run) and measured latencies (``ms_per_query``).
    Versions, aliases, hashes and quality metrics stay."""
    text = path.read_text().replace(str(workdir), "<workspace>")
    text = re.sub(r"\b(m-)?([0-9a-f]{32}|[0-9a-f]{40})\b", "<id>", text)
    text = re.sub(r'("reused":\s*)(true|false)', r"\1<reused>", text)  # true: the version a killed run registered
    return re.sub(r'(ms_per_query"?:\s*)[-+.\deE]+', r"\1<ms>", text)


def loaded(text: str):
    """JSON and YAML as data: a record rebuilt from MLflow (a re-run reusing the version a killed
    run registered) may list the same keys in another order."""
    return yaml.safe_load(text)


def compare(ref: Path, ws: Path, out: str, records: set[str]) -> tuple[str, bool]:
    """(what differs, acceptable) for one output of the resumed workspace against the reference;
    JSON and YAML files are compared ``masked`` when their bytes differ. ``records``: outputs
    that describe MLflow state."""
    a, b = ref / out, ws / out
    if not b.exists():
        return f"DIFFERS: {out} missing", False
    da, db = digest(a), digest(b)
    if da == db:
        return "identical", True
    if a.is_file() and a.suffix in (".json", ".yaml") and loaded(masked(a, ref)) == loaded(masked(b, ws)):
        return ("same record (ids, commit, paths masked)" if out in records else "same but latencies"), True
    if da.keys() != db.keys():
        return f"DIFFERS: {out} files {sorted(set(da) ^ set(db))}", False
    changed = [k for k in da if da[k] != db[k]]
    worst = 0.0
    for name in changed:
        if not name.endswith(".safetensors"):
            return f"DIFFERS: {out}/{name}".rstrip("/"), False
        worst = max(worst, weight_diff(a / name, b / name))
    if worst <= WEIGHT_ATOL:
        return f"weights within {WEIGHT_ATOL:g} (max |diff| {worst:.1e})", True
    return f"DIFFERS: {out} weights max |diff| {worst:.3g} > {WEIGHT_ATOL:g}", False


def locked(workdir: Path) -> set[str]:
    lock = workdir / "dvc.lock"
    return set(yaml.safe_load(lock.read_text()).get("stages", {})) if lock.is_file() else set()


def leftovers(workdir: Path) -> list[str]:
    """Temporary siblings atomic_path leaves when killed (``.name.XXXXXXXX``), and checkpoint dirs."""
    skip = {".dvc", ".dvcignore"}
    return sorted(
        str(p.relative_to(workdir)) for p in workdir.rglob(".*") if p.name not in skip and ".dvc" not in p.relative_to(workdir).parts
    )


# --------------------------------------------------------------------------- the chain


def kill_chain(
    profile: str, root: Path, seed: int = 0, steps: list[str] | None = None, target: str | None = None
) -> tuple[list[Outcome], dict]:
    """Kill every step (or ``steps``, in DAG order) of ``profile`` once, resuming after each kill;
    with ``target``, of the DAG up to that stage."""
    ref = reference(profile, root, target)
    timings = json.loads((ref / "timings.json").read_text())
    outs, records = stage_outs(ref), stage_records(ref)
    order = [name for name in outs if name in timings]  # stages the reference ran, in DAG order
    rng = random.Random(f"{profile}:{seed}")
    workdir = root / f"killed-{profile}{'-' + target if target else ''}-seed{seed}"
    outcomes = []
    t0 = time.monotonic()
    for name in steps or order:
        wait_for, delay = kill_point(rng, name, timings[name])
        outcome = Outcome(name)
        proc = start(profile, workdir, target)
        outcome.killed, outcome.kill = run_until_kill(workdir, proc, name, wait_for, delay, outs[name])
        outcome.lock_clean = name not in locked(workdir) or not outcome.killed
        for out in outs[name]:
            if (workdir / out).exists() and not compare(ref, workdir, out, records)[1]:
                outcome.partial.append(out)
        outcomes.append(outcome)
    proc = start(profile, workdir, target)
    if proc.wait(TIMEOUT) != 0:
        raise RuntimeError(f"the run after the last kill failed; see {workdir}.log")
    log = (root / f"{workdir.name}.log").read_text(errors="replace")
    for outcome in outcomes:
        results = [compare(ref, workdir, out, records) for out in outs[outcome.step]]
        bad = [r for r, good in results if not good]
        outcome.result = "; ".join(bad) if bad else ", ".join(sorted({r for r, _ in results}))
        marker = f"{outcome.step}: "
        resumed = [line.split("resuming from ")[1].strip() for line in log.splitlines() if marker in line and "resuming from " in line]
        outcome.resumed_from = resumed[-1] if resumed else ""
        if resumable_at_kill(outcome.kill) and not outcome.resumed_from:
            bad.append("STARTED OVER: checkpoints were on disk")
            outcome.result = "; ".join(bad)
        outcome.ok = outcome.killed and outcome.lock_clean and not outcome.partial and not bad
    summary = {
        "profile": profile,
        "seed": seed,
        "seconds": round(time.monotonic() - t0, 1),
        "reference_seconds": round(max(t["end"] for t in timings.values()), 1),
        "leftovers": leftovers(workdir),
    }
    return outcomes, summary


def table(outcomes: list[Outcome]) -> str:
    rows = [("step", "killed at", "lock", "partial", "resumed from", "outputs after resume", "ok")]
    for o in outcomes:
        rows.append(
            (
                o.step,
                o.kill,
                "clean" if o.lock_clean else "RECORDED",
                ",".join(o.partial) or "none",
                o.resumed_from or "-",
                o.result,
                "ok" if o.ok else "FAIL",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " | " + r[-1] for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="append", help="tiny profile(s); default: tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=Path("runs/kill_resume"))
    parser.add_argument("--step", action="append", help="kill only these steps (DAG order); default: every step")
    parser.add_argument("--target", help="run the DAG only up to this stage")
    args = parser.parse_args(argv)
    report = []
    failed = 0
    for profile in args.profile or ["tiny"]:
        outcomes, summary = kill_chain(profile, args.root.resolve(), args.seed, args.step, args.target)
        print(
            f"\n== {profile} (seed {args.seed}): {len(outcomes)} steps killed in {summary['seconds']:.0f} s "
            f"(uninterrupted: {summary['reference_seconds']:.0f} s)"
        )
        print(table(outcomes))
        if summary["leftovers"]:
            print(f"left behind by the kills (never read as outputs): {', '.join(summary['leftovers'])}")
        failed += sum(not o.ok for o in outcomes)
        report.append(summary | {"outcomes": [asdict(o) for o in outcomes]})
    (args.root / "kill_resume.json").write_text(json.dumps(report, indent=2))
    total = sum(len(r["outcomes"]) for r in report)
    print(f"\n{total} steps killed and resumed: {total - failed} ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
