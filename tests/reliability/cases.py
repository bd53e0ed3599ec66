"""The bad-input matrix as data: each case builds its inputs, names the CLI call and the message.

A ``Case`` is one bad input. ``setup(workdir)`` writes the inputs under ``workdir/in`` and
returns the argv for ``flagops``; outputs, if the CLI got that far, would go under
``workdir/out``. ``expect`` is a regex the last stderr line must match: it names the file
and line (or the key) and the fix. Later kinds of case (kill/resume, concurrency, serving
faults) add their own lists beside ``CASES`` and reuse the harness.

Add a case: write a ``setup`` and append ``Case(...)`` with its category. The categories
are the rows of the report (``python -m tests.reliability.report``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
STS = str(FIXTURES / "sts.jsonl")


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    setup: Callable[[Path], list[str]]
    expect: str
    subprocess: bool = False  # run `python -m flagops.cli` in a child: the exit status a shell sees
    env: dict[str, str] = field(default_factory=dict)  # "{workdir}" in a value is the case's workspace
    fixed: str = ""  # the defect this case found, now fixed in flagops (the report counts them)


# --------------------------------------------------------------------------- writing inputs

GOOD_TRAIN = {"query": "how to sort a list", "pos": ["sorted() returns a new list"], "neg": ["open() opens a file"]}
GOOD_PASSAGE = {"_id": "p1", "title": "sorted", "text": "Return a new sorted list."}


def _write(workdir: Path, name: str, data: str | bytes) -> str:
    path = workdir / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8", newline="")
    return f"in/{name}"


def _lines(*rows: dict | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# --------------------------------------------------------------------------- the CLI calls


def train_step(path: str) -> list[str]:
    """train_embedder reads (and checks) all of its training JSONL before it loads a model."""
    return ["step", "train_embedder", "--profile", "tiny", "--no-track", "--in", f"train_data={path}"] + [
        "--out",
        "model=out/model",
        "--out",
        "loss_curve=out/loss.json",
    ]


def corpus_step(path: str) -> list[str]:
    return ["step", "synthesize_queries", "--profile", "tiny", "--no-track", "--in", f"corpus={path}"] + [
        "--out",
        "train_pairs=out/train.jsonl",
        "--out",
        "eval_set=out/eval",
    ]


def eval_task(path: str, model: str = "bm25") -> list[str]:
    return ["eval", "--model", model, "--task", path, "--no-cache", "--out", "out/scores.json"]


def params(*args: str) -> list[str]:
    return ["params", *args, "-o", "out/params.yaml"]


# --------------------------------------------------------------------------- files: training JSONL, teacher scores


def _train(data: str | bytes, name: str = "train.jsonl") -> Callable[[Path], list[str]]:
    return lambda d: train_step(_write(d, name, data))


TRAIN_CASES = [
    Case(
        "train: truncated last line",
        "files: training JSONL",
        _train(_lines(GOOD_TRAIN, GOOD_TRAIN) + json.dumps(GOOD_TRAIN)[:25]),
        r"in/train\.jsonl:3: invalid JSON .*complete JSON object",
        subprocess=True,
        fixed="invalid JSON named no fix",
    ),
    Case(
        "train: pos is a string",
        "files: training JSONL",
        _train(_lines(GOOD_TRAIN, {**GOOD_TRAIN, "pos": "one passage"})),
        r"in/train\.jsonl:2: field 'pos' must be a list of strings",
    ),
    Case("train: empty file", "files: training JSONL", _train(""), r"in/train\.jsonl: empty file; expected one JSON object per line"),
    Case(
        "train: line is an array",
        "files: training JSONL",
        _train(_lines(GOOD_TRAIN, "[1, 2]")),
        r"in/train\.jsonl:2: expected a JSON object, got list",
    ),
    Case(
        "train: blank query",
        "files: training JSONL",
        _train(_lines({**GOOD_TRAIN, "query": "  "})),
        r"in/train\.jsonl:1: field 'query' is blank",
    ),
    Case(
        "train: UTF-8 BOM",
        "files: training JSONL",
        _train(b"\xef\xbb\xbf" + _lines(GOOD_TRAIN).encode()),
        r"in/train\.jsonl:1: .*BOM.*(save|re-encode)",
        fixed="BOM reported as json's 'decode using utf-8-sig'",
    ),
    Case(
        "train: CRLF, missing pos on line 3",
        "files: training JSONL",
        _train(_lines(GOOD_TRAIN, GOOD_TRAIN, {"query": "q"}).replace("\n", "\r\n")),
        r"in/train\.jsonl:3: missing field 'pos'",
    ),
    Case(
        "train: Latin-1 byte",
        "files: training JSONL",
        _train(_lines(GOOD_TRAIN).encode() + '{"query": "caf\xe9", "pos": ["x"]}\n'.encode("latin-1")),
        r"in/train\.jsonl:2: not UTF-8 .*re-encode",
    ),
    Case(
        "teacher scores: count differs from passages",
        "files: teacher scores",
        _train(_lines({**GOOD_TRAIN, "pos_scores": [0.9, 0.1]})),
        r"in/train\.jsonl:1: field 'pos_scores' has 2 scores for 1 passages; give one score per passage",
    ),
    Case(
        "teacher scores: not numbers",
        "files: teacher scores",
        _train(_lines({**GOOD_TRAIN, "neg_scores": ["high"]})),
        r"in/train\.jsonl:1: field 'neg_scores' must be a list of numbers",
    ),
    Case(
        "teacher scores: a bool",
        "files: teacher scores",
        _train(_lines({**GOOD_TRAIN, "pos_scores": [True]})),
        r"in/train\.jsonl:1: field 'pos_scores' must be a list of numbers",
    ),
]

# --------------------------------------------------------------------------- files: corpus JSONL


def _corpus(data: str | bytes) -> Callable[[Path], list[str]]:
    return lambda d: corpus_step(_write(d, "corpus.jsonl", data))


CORPUS_CASES = [
    Case(
        "corpus: truncated line",
        "files: corpus JSONL",
        _corpus(_lines(GOOD_PASSAGE) + '{"_id": "p2", "text": "cut'),
        r"in/corpus\.jsonl:2: invalid JSON .*complete JSON object",
        fixed="invalid JSON named no fix",
    ),
    Case("corpus: missing _id", "files: corpus JSONL", _corpus(_lines({"text": "no id"})), r"in/corpus\.jsonl:1: missing field '_id'"),
    Case(
        "corpus: duplicate _id",
        "files: corpus JSONL",
        _corpus(_lines(GOOD_PASSAGE, GOOD_PASSAGE)),
        r"in/corpus\.jsonl:2: duplicate _id 'p1'; ids must be unique",
    ),
    Case(
        "corpus: text is a number",
        "files: corpus JSONL",
        _corpus(_lines({**GOOD_PASSAGE, "text": 42})),
        r"in/corpus\.jsonl:1: field 'text' must be a string",
    ),
    Case("corpus: empty file", "files: corpus JSONL", _corpus("\n\n"), r"in/corpus\.jsonl: empty file"),
    Case("corpus: UTF-16 file", "files: corpus JSONL", _corpus(_lines(GOOD_PASSAGE).encode("utf-16")), r"in/corpus\.jsonl:1: not UTF-8"),
    Case(
        "corpus: missing file",
        "files: corpus JSONL",
        lambda d: corpus_step("in/nope.jsonl"),
        r"in/nope\.jsonl: input 'corpus'.*does not exist",
    ),
]

# --------------------------------------------------------------------------- files: BEIR folders and qrels


def _beir(qrels: str | bytes, queries: str | None = None) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        _write(d, "beir/corpus.jsonl", _lines(GOOD_PASSAGE, {**GOOD_PASSAGE, "_id": "p2"}))
        _write(d, "beir/queries.jsonl", queries if queries is not None else _lines({"_id": "q1", "text": "sort a list"}))
        if qrels is not None:
            _write(d, "beir/qrels/test.tsv", qrels)
        return eval_task("in/beir")

    return setup


HEADER = "query-id\tcorpus-id\tscore\n"
BEIR_CASES = [
    Case(
        "qrels: unknown corpus id",
        "files: BEIR folder",
        _beir(HEADER + "q1\tp9\t1\n"),
        r"qrels/test\.tsv:2: unknown corpus id 'p9' \(not in corpus\.jsonl\)",
    ),
    Case(
        "qrels: unknown query id",
        "files: BEIR folder",
        _beir(HEADER + "q1\tp1\t1\nq7\tp1\t1\n"),
        r"qrels/test\.tsv:3: unknown query id 'q7'",
    ),
    Case(
        "qrels: score not a number",
        "files: BEIR folder",
        _beir(HEADER + "q1\tp1\thigh\n"),
        r"qrels/test\.tsv:2: score 'high' is not a number",
    ),
    Case("qrels: two columns", "files: BEIR folder", _beir(HEADER + "q1\tp1\n"), r"qrels/test\.tsv:2: expected 3 tab-separated columns"),
    Case(
        "qrels: CRLF, unknown id on line 3",
        "files: BEIR folder",
        _beir((HEADER + "q1\tp1\t1\nq1\tpX\t1\n").replace("\n", "\r\n")),
        r"qrels/test\.tsv:3: unknown corpus id 'pX'",
    ),
    Case("qrels: not UTF-8", "files: BEIR folder", _beir(HEADER.encode() + b"q1\tp\xff\t1\n"), r"qrels/test\.tsv: not UTF-8 .*re-encode"),
    Case("qrels: missing", "files: BEIR folder", _beir(None), r"in/beir: .*qrels"),
    Case(
        "qrels: UTF-8 BOM",
        "files: BEIR folder",
        _beir(b"\xef\xbb\xbf" + HEADER.encode() + b"q1\tp1\t1\n"),
        r"qrels/test\.tsv:1: .*BOM.*without BOM",
        fixed="BOM read into the header: 'not BEIR's' with an invisible character",
    ),
    Case(
        "queries: truncated line",
        "files: BEIR folder",
        _beir(HEADER + "q1\tp1\t1\n", queries='{"_id": "q1", "text": "sort a list"}\n{"_id": "q2", "te'),
        r"queries\.jsonl:2: invalid JSON .*complete JSON object",
        fixed="invalid JSON named no fix",
    ),
]

# --------------------------------------------------------------------------- files: STS and reranking eval tasks


def _task(name: str, data: str | bytes, model: str = "bm25") -> Callable[[Path], list[str]]:
    return lambda d: eval_task(_write(d, name, data), model)


def _parquet(d: Path) -> list[str]:
    import pandas as pd

    path = d / "in" / "rerank.parquet"
    path.parent.mkdir(parents=True)
    pd.DataFrame([RERANK_ROW] * 3).to_parquet(path)
    path.write_bytes(path.read_bytes()[:200])
    return eval_task("in/rerank.parquet")


STS_ROW = {"sentence1": "a cat", "sentence2": "a kitten", "score": 4.0}
RERANK_ROW = {"query": "sort", "positive": ["sorted()"], "negative": ["open()"]}
TASK_CASES = [
    Case(
        "sts: missing score",
        "files: STS",
        _task("sts.jsonl", _lines(STS_ROW, {**STS_ROW, "score": None})),
        r"in/sts\.jsonl:2: missing field 'score'",
    ),
    Case(
        "sts: score is text",
        "files: STS",
        _task("sts.jsonl", _lines({**STS_ROW, "score": "similar"})),
        r"in/sts\.jsonl:1: field 'score' must be a number, got 'similar'",
    ),
    Case(
        "sts: TSV not UTF-8",
        "files: STS",
        _task("sts.tsv", b"sentence1\tsentence2\tscore\ncaf\xe9\tcafe\t4\n"),
        r"in/sts\.tsv: not UTF-8 .*re-encode",
        fixed="UnicodeDecodeError traceback",
    ),
    Case(
        "sts: TSV row without a score",
        "files: STS",
        _task("sts.tsv", "sentence1\tsentence2\tscore\na\tb\t1\nc\td\n"),
        r"in/sts\.tsv:3: missing field 'score'",
    ),
    Case(
        "sts: TSV with a BOM",
        "files: STS",
        _task("sts.tsv", b"\xef\xbb\xbfsentence1\tsentence2\tscore\na\tb\t1\n"),
        r"in/sts\.tsv:1: .*BOM",
        fixed="BOM read into the first column: 'match no task'",
    ),
    Case(
        "rerank: negative is a string",
        "files: eval tasks",
        _task("rerank.jsonl", _lines(RERANK_ROW, {**RERANK_ROW, "negative": "open()"})),
        r"in/rerank\.jsonl:2: field 'negative' must be a list of strings",
    ),
    Case(
        "rerank: no row has both lists",
        "files: eval tasks",
        _task("rerank.jsonl", _lines({**RERANK_ROW, "negative": []})),
        r"in/rerank\.jsonl: no reranking rows with both a positive and a negative",
    ),
    Case(
        "rerank: truncated parquet",
        "files: eval tasks",
        _parquet,
        r"in/rerank\.parquet: not a readable parquet file.*again",
        fixed="ArrowInvalid traceback",
    ),
    Case(
        "eval task: unknown layout", "files: eval tasks", _task("x.jsonl", _lines({"a": 1})), r"in/x\.jsonl: columns \['a'\] match no task"
    ),
    Case("eval task: missing path", "files: eval tasks", lambda d: eval_task("in/none"), r"in/none"),
]

# --------------------------------------------------------------------------- configs


def _yaml(text: str) -> Callable[[Path], list[str]]:
    return lambda d: params(_write(d, "profile.yaml", text))


CONFIG_CASES = [
    Case(
        "override: unknown key",
        "configs",
        lambda d: params("tiny", "train.learning_rte=1e-4"),
        r"train\.learning_rte.*valid keys",
        subprocess=True,
    ),
    Case("override: unknown section", "configs", lambda d: params("tiny", "trian.epochs=1"), r"'trian'.*valid keys"),
    Case("override: out of range", "configs", lambda d: params("tiny", "train.temperature=-1"), r"train\.temperature: .*greater than 0"),
    Case("override: wrong type", "configs", lambda d: params("tiny", "train.max_steps=many"), r"train\.max_steps: .*integer"),
    Case(
        "override: no '='",
        "configs",
        lambda d: params("tiny", "train.max_steps"),
        r"override 'train\.max_steps': expected section\.key=value",
    ),
    Case(
        "override: value not YAML",
        "configs",
        lambda d: params("tiny", "train.max_steps=[1,"),
        r"override 'train\.max_steps=\[1,'.*YAML",
        fixed="yaml ParserError traceback",
    ),
    Case("override: key under a value", "configs", lambda d: params("tiny", "train.max_steps.x=1"), r"'max_steps' is not a section"),
    Case("profile: does not exist", "configs", lambda d: params("tinyy"), r"tinyy.*(tiny|profiles)"),
    Case("profile file: unknown key", "configs", _yaml("extends: tiny\ntrain:\n  epochz: 2\n"), r"train\.epochz.*valid keys"),
    Case("profile file: bad YAML", "configs", _yaml("train:\n  epochs: [1\n"), r"in/profile\.yaml:3: invalid YAML .*fix the syntax"),
    Case("profile file: a list", "configs", _yaml("- a\n- b\n"), r"in/profile\.yaml"),
    Case("profile file: missing", "configs", lambda d: params("in/gone.yaml"), r"in/gone\.yaml"),
]

# --------------------------------------------------------------------------- CLI arguments

CLI_CASES = [
    Case("step: unknown name", "CLI arguments", lambda d: ["step", "train_embeder", "--profile", "tiny"], r"train_embeder.*(steps|known)"),
    Case(
        "step: unknown input",
        "CLI arguments",
        lambda d: ["step", "train_embedder", "--profile", "tiny", "--no-track", "--in", "bogus=x"],
        r"unknown: bogus",
    ),
    Case(
        "step: --in without '='",
        "CLI arguments",
        lambda d: ["step", "train_embedder", "--profile", "tiny", "--in", "x"],
        r"--in 'x': expected NAME=PATH",
    ),
    Case(
        "step: --profile and --params",
        "CLI arguments",
        lambda d: ["step", "train_embedder", "--profile", "tiny", "--params", "p.yaml"],
        r"either --params FILE or --profile NAME",
    ),
    Case(
        "step: no params.yaml here",
        "CLI arguments",
        lambda d: ["step", "train_embedder"],
        r"no params\.yaml here; pass --params FILE or --profile",
    ),
    Case(
        "unknown option",
        "CLI arguments",
        lambda d: ["eval", "--model", "bm25", "--task", STS, "--modle", "x"],
        r"unrecognized arguments: --modle x",
        subprocess=True,
    ),
    Case(
        "eval: --ivf-above 0",
        "CLI arguments",
        lambda d: ["eval", "--model", "bm25", "--task", STS, "--ivf-above", "0"],
        r"--ivf-above: expected a positive integer",
    ),
    Case(
        "eval: --ivf-min-queries -1",
        "CLI arguments",
        lambda d: ["eval", "--model", "bm25", "--task", STS, "--ivf-min-queries", "-1"],
        r"--ivf-min-queries: expected 0 or a positive integer",
    ),
    Case(
        "eval: --report with a wrong suffix",
        "CLI arguments",
        lambda d: ["eval", "--model", "bm25", "--task", STS, "--report", "out/r.pdf"],
        r"--report out/r\.pdf: .*\.png.*\.html",
    ),
    Case(
        "eval: the same task twice",
        "CLI arguments",
        lambda d: ["eval", "--model", "bm25", "--task", STS, "--task", STS],
        r"task 'sts' is given twice",
    ),
    Case(
        "pipeline: unknown profile",
        "CLI arguments",
        lambda d: ["pipeline", "--profile", "nosuch", "--workdir", "out/ws"],
        r"unknown profile 'nosuch': choose one of",
        fixed="left an empty workspace folder",
    ),
    Case(
        "pytorchjob: --workers -1",
        "CLI arguments",
        lambda d: ["train", "submit-pytorchjob", "--profile", "tiny", "--workers", "-1", "--dry-run"],
        r"workers=-1: must be 0 or more",
    ),
    Case(
        "deploy render: no MLflow store",
        "CLI arguments",
        lambda d: ["deploy", "render", "--profile", "tiny", "-o", "out/isvc.yaml"],
        r"no MLflow store at .*mlflow\.db: run the pipeline first",
        fixed="created ./mlflow.db, then an MlflowException traceback",
    ),
    Case(
        "serve: model directory missing",
        "CLI arguments",
        lambda d: ["serve", "--model", "in/nodir", "--port", "0"],
        r"model source 'in/nodir': no such directory",
        subprocess=True,  # in-process, a regression that starts the server would hang the suite
    ),
    Case(
        "serve: unknown --kind", "CLI arguments", lambda d: ["serve", "--dummy", "--kind", "gpt"], r"argument --kind: invalid choice: 'gpt'"
    ),
]

# --------------------------------------------------------------------------- model directories


def _model_dir(d: Path, source: str = "tiny-bert") -> Path:
    from flagops.models.reranker import resolve_reranker_source

    dest = d / "in" / "model"
    shutil.copytree(resolve_reranker_source(source), dest)
    return dest


def _truncated(d: Path) -> list[str]:
    weights = _model_dir(d) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    return eval_task(STS, "in/model")


def _no_tokenizer(d: Path) -> list[str]:
    model = _model_dir(d)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (model / name).unlink(missing_ok=True)
    return eval_task(STS, "in/model")


def _pickle_only(d: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file

    model = _model_dir(d)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return eval_task(STS, "in/model")


def _no_config(d: Path) -> list[str]:
    (_model_dir(d) / "config.json").unlink()
    return eval_task(STS, "in/model")


def _m3_head(d: Path) -> list[str]:
    import torch

    model = _model_dir(d)
    torch.save(torch.nn.Linear(32, 8).state_dict(), model / "colbert_linear.pt")  # the encoder's hidden size is 64
    torch.save(torch.nn.Linear(64, 1).state_dict(), model / "sparse_linear.pt")
    return [
        "step",
        "train_m3",
        "--profile",
        "tiny_m3",
        "--no-track",
        "--in",
        "train_data=in/train.jsonl",
        "--in",
        "base_model=in/model",
    ] + [
        "--out",
        "model=out/model",
        "--out",
        "loss_curve=out/loss.json",
    ]


def _m3_head_setup(d: Path) -> list[str]:
    _write(d, "train.jsonl", _lines(*[GOOD_TRAIN] * 4))
    return _m3_head(d)


def _m3_garbage_head(d: Path) -> list[str]:
    argv = _m3_head_setup(d)
    (d / "in" / "model" / "colbert_linear.pt").write_bytes(b"not a tensor file")
    return argv


def _reranker_head(d: Path) -> list[str]:
    from safetensors.torch import load_file, save_file

    model = _model_dir(d, "tiny-reranker")
    state = load_file(model / "model.safetensors")
    key = next(k for k in state if k.startswith("classifier") and k.endswith("weight"))
    state[key] = state[key][:, :32].contiguous()  # hidden 64 -> 32
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})
    return eval_task(str(FIXTURES / "reranking.jsonl"), "in/model")


MODEL_CASES = [
    Case("truncated safetensors", "model directories", _truncated, r"model\.safetensors.*truncated", fixed="SafetensorError traceback"),
    Case("missing tokenizer", "model directories", _no_tokenizer, r"in/model.*tokenizer", fixed="loaded with an empty tokenizer, exit 0"),
    Case(
        "pickle-only checkpoint",
        "model directories",
        _pickle_only,
        r"pytorch_model\.bin.*pickle.*FLAGOPS_ALLOW_PICKLE=1",
        subprocess=True,
        fixed="pytorch_model.bin loaded silently, exit 0",
    ),
    Case("no config.json", "model directories", _no_config, r"model source 'in/model': no config\.json"),
    Case(
        "M3 ColBERT head of the wrong shape",
        "model directories",
        _m3_head_setup,
        r"colbert_linear\.pt.*(shape|hidden|size)",
        fixed="M3CheckpointError traceback",
    ),
    Case(
        "M3 head file unreadable",
        "model directories",
        _m3_garbage_head,
        r"colbert_linear\.pt: not a readable state dict.*re-save",
        fixed="M3CheckpointError traceback",
    ),
    Case(
        "reranker head of the wrong shape",
        "model directories",
        _reranker_head,
        r"in/model.*(shape|size)",
        fixed="transformers RuntimeError traceback",
    ),
]

# --------------------------------------------------------------------------- registry states


def _store(d: Path, *, alias_deleted: bool = False, artifacts_deleted: bool = False) -> str:
    """A sqlite MLflow store under ``d/in`` with model ``x``: version 1 (@champion) and version 2."""
    from mlflow import MlflowClient

    db = d / "in" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    art = d / "in" / "artifacts"
    exp = client.create_experiment("x", artifact_location=art.as_uri())
    run = client.create_run(exp)
    (d / "in" / "m").mkdir()
    (d / "in" / "m" / "config.json").write_text("{}")
    client.log_artifacts(run.info.run_id, str(d / "in" / "m"), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("x")
    for _ in range(2):
        client.create_model_version("x", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("x", "champion", "1")
    if alias_deleted:
        client.delete_model_version("x", "1")
    if artifacts_deleted:
        shutil.rmtree(art)
    return uri


def _registry(kind: str) -> Callable[[Path], list[str]]:
    def setup(d: Path) -> list[str]:
        _store(d, alias_deleted=kind == "alias", artifacts_deleted=kind == "artifacts")
        model = "models:/nope@champion" if kind == "missing" else "models:/x@champion"
        if kind == "serve":
            return ["serve", "--model", "models:/nope@champion", "--port", "0"]
        return eval_task(STS, model)

    return setup


def _env_store(case_name: str, category: str, kind: str, expect: str, *, subprocess: bool = False, fixed: str = "") -> Case:
    """Registry cases read the store through $MLFLOW_TRACKING_URI, as `flagops serve` does."""
    env = {"MLFLOW_TRACKING_URI": "sqlite:///{workdir}/in/mlflow.db"}
    return Case(case_name, category, _registry(kind), expect, subprocess=subprocess, env=env, fixed=fixed)


REGISTRY_CASES = [
    _env_store(
        "alias at a deleted version", "registry states", "alias", r"models:/x@champion.*(alias|champion)", fixed="MlflowException traceback"
    ),
    _env_store(
        "alias whose artifacts are gone",
        "registry states",
        "artifacts",
        r"models:/x@champion: .*artifacts.*register the model again",
        fixed="named a temporary folder, not the URI; left it behind",
    ),
    _env_store(
        "eval: a model that is not registered",
        "registry states",
        "missing",
        r"models:/nope@champion.*(not found|registered)",
        fixed="MlflowException traceback",
    ),
    _env_store(
        "serve: a model that is not registered",
        "registry states",
        "serve",
        r"models:/nope@champion",
        subprocess=True,
        fixed="MlflowException traceback, exit 1",
    ),
]

CASES: list[Case] = TRAIN_CASES + CORPUS_CASES + BEIR_CASES + TASK_CASES + CONFIG_CASES + CLI_CASES + MODEL_CASES + REGISTRY_CASES

# The HTTP payload cases are fuzzed, not listed: tests/serving/test_serving_fuzz.py runs schemathesis
# against three servers (embedder, reranker, M3) with 20 generated examples per operation and checks
# that no request gets a 5xx. The report counts them by reference and does not re-run the fuzzer.
HTTP_FUZZ = {"test": "tests/serving/test_serving_fuzz.py", "servers": 3, "examples_per_operation": 20}
