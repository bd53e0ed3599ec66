"""The `flagops` command. Every face calls the same form: `flagops step NAME --in/--out ...`.

flagops steps [--profile P]            list the catalog, or the DAG profile P runs
flagops step NAME [--params F | --profile P] [--in k=PATH] [--out k=PATH] [sec.key=value ...]
flagops params PROFILE [-o params.yaml]   render a profile as a DVC params file
flagops dvc-yaml [--profile P]         render P's dvc.yaml (default: demo) from the catalog
flagops pipeline [--profile P] [--workdir D]   dvc repro under one MLflow parent run
flagops demo [--profile P]             pipeline + serve the champion + summary table
flagops eval --model SOURCE [--model ...] --task PATH [--task ...] [--out FILE]   a suite of tasks, C-MTEB style
flagops serve [--model SOURCE | --dummy] [--host H] [--port N] [--name N] [--kind K] [serve.key=value ...]
flagops kfp submit|schedule ...         upload pipelines/retrain.yaml and start a run / a recurring run
flagops deploy render|promote|rollback    KServe InferenceService for the champion; canary promote; alias rollback
flagops train submit-pytorchjob [--profile P | --params F] [--workers N] [--gpus-per-worker G] [--dry-run]
"""

from __future__ import annotations

import argparse
import errno
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

from flagops import catalog
from flagops.config import ConfigError, ServeConfig, load_config, to_yaml
from flagops.data.formats import DataError
from flagops.deploy.cli import add_deploy_commands
from flagops.kfp_client import add_kfp_commands
from flagops.models.sources import ModelSourceError
from flagops.registry import tracking
from flagops.training.pytorchjob import add_training_commands

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    ModelSourceError,
    catalog.CatalogError,
    KeyError,
    FileNotFoundError,
)


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {item!r}: expected NAME=PATH, e.g. {flag} corpus=data/corpus.jsonl")
        out[name] = path
    return out


def _config(args: argparse.Namespace):
    if args.profile and args.params:
        raise ConfigError("give either --params FILE or --profile NAME, not both")
    source = args.profile or args.params
    if source is None:
        if not Path("params.yaml").is_file():
            raise ConfigError("no params.yaml here; pass --params FILE or --profile NAME (tiny, demo)")
        source = "params.yaml"
    return load_config(source, args.overrides)


def cmd_step(args: argparse.Namespace) -> int:
    from flagops.steps import execute

    step = catalog.get(args.name)
    cfg = _config(args)
    # Defaults: the artifacts that feed each input in this config's pipeline (or, for a step
    # outside it, its own names; execute then says which config runs it).
    if step.enabled(cfg):
        wired = {n: art.path for n, art in catalog.pipeline(cfg).task(step.name).wiring}
    else:
        wired = {n: catalog.ARTIFACTS[n].path for n in step.required if n in catalog.ARTIFACTS}
    inputs = wired | _pairs(args.inputs, "--in")
    outputs = {a.name: a.path for a in step.outputs} | _pairs(args.outputs, "--out")
    execute(step.name, cfg, inputs, outputs, track=not args.no_track)
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    """The catalog, or with --profile the DAG that profile runs (tasks in run order, with their wiring)."""
    if args.profile is None:
        for s in catalog.STEPS:
            ins = ", ".join(f"{i}?" if i in s.optional else i for i in s.inputs) or "-"
            only = f" [{s.condition()}]" if s.when else ""
            print(f"{s.name:22s} in: {ins:32s} out: {', '.join(s.output_names):32s} {s.summary}{only}")
        return 0
    pipe = catalog.pipeline(load_config(args.profile))
    rows = [(t.name, ", ".join(n if n == a else f"{n}<-{a}" for n, a in t.inputs.items()) or "-", t) for t in pipe.tasks]
    width = max(len(ins) for _, ins, _ in rows)  # the wiring of the widest task sets the column
    for name, ins, t in rows:
        print(f"{name:22s} in: {ins:{width}s}  out: {', '.join(t.step.output_names)}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    cfg = load_config(args.profile, args.overrides)
    text = f"# Rendered from profile {args.profile!r} by `flagops params {args.profile}`; DVC tracks these values.\n" + to_yaml(cfg)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from flagops.data.formats import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(text)
    return 0


def cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from flagops.dvc import render_text

    sys.stdout.write(render_text(load_config(args.profile)))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from flagops.workspace import run_pipeline

    return run_pipeline(args.profile, Path(args.workdir) if args.workdir else None, args.overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from flagops.demo import run_demo

    return run_demo(args.profile, Path(args.workdir) if args.workdir else None, args.overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    """Score each model on each task; print the rows, then the per-type averages; --out: the JSON."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from flagops.data.formats import DataError, write_json
    from flagops.evaluation.index import IndexSettings, index_settings
    from flagops.evaluation.suite import averages, load_tasks, run_suite

    if args.report and Path(args.report).suffix not in (".png", ".html"):
        raise DataError(f"--report {args.report}: the report is a .png chart or an .html page; name the file FILE.png or FILE.html")
    tasks = load_tasks(args.tasks)  # all read and checked before any model loads
    given = (("ivf_above", args.ivf_above), ("ivf_min_queries", args.ivf_min_queries), ("nprobe", args.nprobe), ("method", args.index))
    given += (("hnsw_m", args.hnsw_m), ("ef_search", args.ef_search))
    search = IndexSettings(**{k: v for k, v in given if v is not None})
    if args.no_cache or args.cache_dir:
        search = replace(search, cache_dir=None if args.no_cache else Path(args.cache_dir))
    with index_settings(search):
        rows = run_suite(args.models, tasks, args.batch_size)
    means = averages(rows)
    table = Table(title="eval")
    for name in ("task", "type", "model", "main score"):
        table.add_column(name, justify="right" if name == "main score" else "left")
    for row in rows:
        table.add_row(escape(row["task"]), row["type"], escape(row["model"]), f"{row['main_score']:.4f}")  # "[hybrid]" is no markup
    summary = Table(title="averages")
    for name in ("model", "type", "tasks", "average"):
        summary.add_column(name, justify="right" if name in ("tasks", "average") else "left")
    for mean in means:
        summary.add_row(escape(mean["model"]), mean["type"], str(mean["tasks"]), f"{mean['average']:.4f}")
    console = Console(width=160)
    console.print(table)
    console.print(summary)
    if args.out:
        write_json(args.out, {"rows": rows, "averages": means})
    if args.report:
        write_suite_report(args.report, rows, title=f"flagops eval: {len(tasks)} tasks, {len(args.models)} models")
        print(f"eval: wrote {args.report}")
    if args.mlflow:
        from flagops.registry.tracking import log_suite

        run_id = log_suite(args.mlflow, rows, means, [Path(p) for p in (args.out, args.report) if p])
        print(f"eval: logged to MLflow experiment {args.mlflow!r}, run {run_id}")
    return 0


def write_suite_report(path: str, rows: list, title: str) -> None:
    """``--report``: a PNG chart (the models side by side, task by task, then the averages) or,
    for ``.html``, a page with the tables and that chart inlined."""
    from flagops.evaluation.plots import write_chart
    from flagops.evaluation.report import png_bytes, render_html, write_html
    from flagops.evaluation.suite import MAIN_METRIC, report_rows

    if path.endswith(".html"):
        write_html(path, render_html(rows, MAIN_METRIC, title, png_bytes(write_chart, report_rows(rows), title=title)))
    else:
        write_chart(path, report_rows(rows), title=title)


def cmd_serve(args: argparse.Namespace) -> int:
    from flagops.serving.kinds import KindError
    from flagops.serving.server import serve

    cfg = load_config(args.profile or "demo", args.overrides)
    model = "dummy" if args.dummy else args.model or _champion(cfg)
    try:
        serve(model, host=args.host, port=args.port, name=args.name, serve_cfg=cfg.serve, kind=args.kind, dummy=args.dummy)
    except KindError as exc:  # a directory whose kind cannot be told: the message names --kind
        raise ConfigError(str(exc)) from None
    return 0


def _champion(cfg) -> str:
    """``models:/NAME@champion`` of the profile's workspace (what `make serve` runs), its store exported."""
    import os

    from flagops.registry.tracking import tracking_uri
    from flagops.workspace import default_workdir

    workdir = default_workdir(cfg.profile)
    uri = tracking_uri(cfg.registry, workdir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: run `flagops demo --profile {cfg.profile}` first, "
            "or pass --model DIR|models:/NAME@alias (or --dummy)"
        )
    os.environ["MLFLOW_TRACKING_URI"] = uri
    model = f"models:/{cfg.registry.model_name}@champion"
    print(f"flagops: serving {model} from {tracking.redact_uri(uri)}")
    return model


def _count(text: str) -> int:
    """A positive integer argument."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _count_or_zero(text: str) -> int:
    """A non-negative integer argument."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flagops", description="MLOps pipeline for BGE retrieval models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("step", help="run one catalog step")
    p.add_argument("name")
    p.add_argument("--params", help="a params YAML (default: ./params.yaml)")
    p.add_argument("--profile", help="a built-in profile: tiny, demo")
    p.add_argument("--in", dest="inputs", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--out", dest="outputs", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--no-track", action="store_true", help="skip MLflow logging")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("steps", help="list the catalog, or the DAG a profile runs")
    p.add_argument("--profile", help="a profile name or YAML file: list its pipeline's tasks in run order")
    p.set_defaults(func=cmd_steps)

    p = sub.add_parser("params", help="render a profile as params.yaml")
    p.add_argument("profile")
    p.add_argument("-o", "--output", default="-")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("dvc-yaml", help="render dvc.yaml from the catalog")
    p.add_argument("--profile", default="demo", help="the profile (name or YAML file) whose DAG to render")
    p.set_defaults(func=cmd_dvc_yaml)

    for name, func, text in (
        ("pipeline", cmd_pipeline, "run the DAG with dvc repro under one MLflow parent run"),
        ("demo", cmd_demo, "run the pipeline, serve the champion, print the summary"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--profile", default="demo")
        p.add_argument("--workdir", help="workspace (default: runs/<profile>)")
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
        p.set_defaults(func=func)

    p = sub.add_parser("eval", help="score models on a suite of retrieval, STS and reranking tasks from disk")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="SOURCE",
        help="an embedder or reranker: a directory, pkg:PACKAGE, tiny-bert[@seed], models:/NAME@alias; bm25: the lexical baseline",
    )
    p.add_argument(
        "--task",
        dest="tasks",
        action="append",
        required=True,
        metavar="PATH",
        help="a BEIR or MTEB/C-MTEB folder (PATH::split picks the split), an STS or a reranking file",
    )
    p.add_argument("--out", help="write the rows and averages as JSON")
    p.add_argument(
        "--report",
        metavar="FILE",
        help="FILE.png: a chart comparing the models task by task (main scores, then averages); FILE.html: tables and the chart",
    )
    p.add_argument(
        "--mlflow",
        metavar="EXPERIMENT",
        help="log the scores, --out and --report to this MLflow experiment ($MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", help="where passage embeddings are cached (default: $FLAGOPS_CACHE/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="encode every corpus afresh and cache nothing")
    p.add_argument(
        "--ivf-above", type=_count, metavar="N", help="search corpora of more than N passages with faiss IVF, not exactly (default 200000)"
    )
    p.add_argument(
        "--ivf-min-queries",
        type=_count_or_zero,
        metavar="N",
        help="use IVF only for a task of N or more queries: below, its build costs more than exact search (default 10000)",
    )
    p.add_argument("--nprobe", type=_count, metavar="N", help="IVF lists searched per query: more is slower, closer to exact (default 32)")
    p.add_argument("--hnsw-m", type=_count, metavar="N", help="HNSW links per node: more is a slower build, higher recall (default 32)")
    p.add_argument(
        "--ef-search",
        type=_count,
        metavar="N",
        help="HNSW candidates kept per query, at least the depth searched: more is slower, closer to exact (default 128)",
    )
    p.add_argument(
        "--index",
        choices=("auto", "flat", "ivf", "hnsw"),
        help="faiss index: auto (exact up to --ivf-above passages or under --ivf-min-queries queries, IVF above), "
        "or force flat, ivf or hnsw (default auto)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="serve an embedder, BGE-M3 model or reranker with KServe (V1, V2, OpenAI, rerank)")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        help="a model directory, pkg:PACKAGE, tiny-bert, tiny-reranker or models:/NAME@alias "
        "(default: the profile's champion in runs/<profile>)",
    )
    source.add_argument("--dummy", action="store_true", help="serve fake outputs (API tests): 8-dim hash vectors, no model")
    p.add_argument("--host", help="default: serve.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: serve.port (8080)")
    p.add_argument("--name", help="model name in the URLs (default: serve.model_name)")
    # ServeConfig.kind lists ModelKind's values (tests/serving/test_serving_m3.py checks it);
    # reading them there would import kserve (1 s) into every flagops command.
    kinds = get_args(ServeConfig.model_fields["kind"].annotation)
    p.add_argument("--kind", choices=kinds, help="default: serve.kind (auto: detect from the model)")
    p.add_argument("--profile", help="profile for serve limits and the default model (default: demo)")
    p.add_argument("overrides", nargs="*", metavar="serve.key=value", help="e.g. serve.max_texts=64 serve.truncation=reject")
    p.set_defaults(func=cmd_serve)

    add_training_commands(sub)
    add_kfp_commands(sub)
    add_deploy_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after options (`step NAME --profile tiny train.lr=1e-4`); argparse
    # leaves such trailing positionals unparsed, so they are collected here.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    tracking.configure_env()  # before a step or the server imports mlflow; child processes inherit it
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"flagops: error: {tracking.redact_uri(str(msg))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not the input: a full disk, a file-size limit, a workspace not ours to write
        print(f"flagops: error: {tracking.redact_uri(os_error_message(exc))}", file=sys.stderr)
        return 1
    except Exception as exc:
        if (message := tracking.unreachable_message(exc)) is None:
            raise
        print(f"flagops: error: {message}", file=sys.stderr)
        return 1


NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
NOT_OURS = {errno.EACCES, errno.EPERM, errno.EROFS}


def os_error_message(exc: OSError) -> str:
    """One line: what failed, on which path, and what to do about it."""
    where = f"{exc.filename}: " if exc.filename else ""
    what = exc.strerror or str(exc)
    if exc.errno in NO_SPACE:
        return f"{where}{what}: free disk space there, or raise the file-size limit (ulimit -f)"
    if exc.errno in NOT_OURS:
        return f"{where}{what}: this user cannot write there; fix its permissions or pick another --workdir / --out path"
    return f"{where}{what}"


if __name__ == "__main__":
    sys.exit(main())
