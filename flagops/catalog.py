"""Every pipeline step, as data, and the DAG a config selects from them.

This is the single place a step's inputs, outputs, config sections, image and resources
are spelled out. ``dvc.yaml``, the CLI, the KFP components and pipelines and the Airflow
DAGs are thin adapters over ``STEPS``; tests check each agrees with it.

A config picks its pipeline by data, never by code: each step may carry ``when``
conditions on config values (``model.kind == "m3"``), and an input may name several
artifacts it can be fed from (the first one the pipeline produces wins) or be optional.
``pipeline(cfg)`` resolves that into a DAG and stops with a one-line error on a cycle, a
dangling input or an artifact produced twice. See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

ArtifactKind = Literal["dataset", "model", "metrics", "plot", "record"]

DEFAULT_IMAGE = "ghcr.io/flagops/flagops:0.1.0"


def image() -> str:
    """The container image steps run in on a cluster (``FLAGOPS_IMAGE`` overrides)."""
    return os.environ.get("FLAGOPS_IMAGE", DEFAULT_IMAGE)


class CatalogError(ValueError):
    """The steps a config selects do not form a DAG; the message names the step and artifact."""


@dataclass(frozen=True)
class Artifact:
    name: str
    path: str  # workspace-relative default (the DVC out / dep)
    kind: ArtifactKind = "dataset"
    is_dir: bool = False


@dataclass(frozen=True)
class Resources:
    cpu: str = "1"
    memory: str = "4Gi"
    gpus: int = 0


@dataclass(frozen=True)
class SecretEnv:
    """A Kubernetes Secret's key a step's pod reads as an environment variable (KFP task, Airflow
    pod): credentials reach the step from the cluster, never through params or MLflow."""

    secret: str  # the Secret's name, in the pipeline's namespace
    key: str  # the key in it
    env_from: str  # the dotted config key that names the environment variable (the step reads it there)
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # as Step.when: only where the config uses it


@dataclass(frozen=True)
class Step:
    name: str  # snake_case verb phrase, the same in every face
    module: str  # flagops.steps.<module>, which defines run(cfg, inputs, outputs, **params)
    sections: tuple[str, ...]  # config sections it reads (its typed config; DVC params)
    inputs: tuple[str, ...]  # the input names run() receives (required and optional)
    outputs: tuple[Artifact, ...]
    resources: Resources = field(default_factory=Resources)
    summary: str = ""
    # (dotted config key, values): the step is in a config's pipeline when every key holds one of its values.
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    optional: tuple[str, ...] = ()  # inputs the step runs without when the pipeline produces none
    # input -> the artifacts it may be fed from, first produced wins; an input not listed takes its own name.
    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()
    params: tuple[tuple[str, Any], ...] = ()  # keyword arguments run() gets: one module, several steps
    secrets: tuple[SecretEnv, ...] = ()  # credentials its pod reads from the cluster

    @property
    def run(self) -> Callable:
        return importlib.import_module(self.module).run

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.outputs)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(i for i in self.inputs if i not in self.optional)

    def feeds(self, name: str) -> tuple[str, ...]:
        """The artifacts input ``name`` may be fed from, in order of preference."""
        return dict(self.sources).get(name, (name,))

    def enabled(self, cfg) -> bool:
        return all(config_value(cfg, key) in values for key, values in self.when)

    def condition(self) -> str:
        """``model.kind=m3``: when the step runs, for messages and `flagops steps`."""
        return " and ".join(f"{key}={'|'.join(map(str, values))}" for key, values in self.when)


def config_value(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@dataclass(frozen=True)
class Task:
    """A step placed in one pipeline, with each input wired to the artifact that feeds it."""

    step: Step
    wiring: tuple[tuple[str, Artifact], ...]  # (input name, the artifact feeding it); absent optional inputs left out
    env: tuple[tuple[str, str, str], ...] = ()  # (Secret, key, environment variable) its pod reads (Step.secrets)

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def inputs(self) -> dict[str, str]:
        """input name -> artifact name."""
        return {name: art.name for name, art in self.wiring}


@dataclass(frozen=True)
class Pipeline:
    tasks: tuple[Task, ...]  # in a topological order (catalog order among independent tasks)

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(t.step for t in self.tasks)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"step {name!r} is not in this pipeline; its steps are: {', '.join(self.names)}")

    def producer(self) -> dict[str, str]:
        """artifact name -> the task that writes it."""
        return {a.name: t.name for t in self.tasks for a in t.step.outputs}

    def edges(self) -> set[tuple[str, str]]:
        """(upstream, downstream) task pairs, derived from the wiring."""
        producer = self.producer()
        return {(producer[art], t.name) for t in self.tasks for art in t.inputs.values()}

    def artifacts(self) -> dict[str, Artifact]:
        return {a.name: a for t in self.tasks for a in t.step.outputs}


def resolve(steps: Iterable[Step], cfg) -> Pipeline:
    """The DAG of the steps ``cfg`` enables; CatalogError on a cycle, a dangling input or an
    artifact produced twice."""
    chosen = [s for s in steps if s.enabled(cfg)]
    producer: dict[str, str] = {}
    made: dict[str, Artifact] = {}
    for s in chosen:
        for a in s.outputs:
            if a.name in producer:
                raise CatalogError(f"artifact {a.name!r} is produced by both {producer[a.name]} and {s.name}; enable one of them")
            producer[a.name], made[a.name] = s.name, a
    tasks = {}
    for s in chosen:
        wiring = []
        for name in s.inputs:
            art = next((a for a in s.feeds(name) if a in producer), None)
            if art is not None:
                wiring.append((name, made[art]))
            elif name not in s.optional:
                wanted = " or ".join(repr(a) for a in s.feeds(name))
                raise CatalogError(f"step {s.name}: input {name!r} needs {wanted}, which no step of this pipeline produces")
        used = [e for e in s.secrets if all(config_value(cfg, k) in v for k, v in e.when)]
        env = tuple((e.secret, e.key, config_value(cfg, e.env_from)) for e in used)
        tasks[s.name] = Task(s, tuple(wiring), env)
    return Pipeline(_toposort(tasks, producer))


def _toposort(tasks: dict[str, Task], producer: dict[str, str]) -> tuple[Task, ...]:
    upstream = {n: {producer[a] for a in t.inputs.values()} for n, t in tasks.items()}
    done: list[str] = []
    while len(done) < len(tasks):
        ready = [n for n in tasks if n not in done and upstream[n] <= set(done)]
        if not ready:
            raise CatalogError(f"the steps form a cycle: {_cycle(upstream, set(done))}")
        done.append(ready[0])  # catalog order among the ready ones: a stable, readable order
    return tuple(tasks[n] for n in done)


def _cycle(upstream: dict[str, set[str]], done: set[str]) -> str:
    """One cycle among the steps not done, as ``a -> b -> a``."""
    node = next(n for n in upstream if n not in done)
    path: list[str] = []
    while node not in path:
        path.append(node)
        node = sorted(upstream[node] - done)[0]
    loop = path[path.index(node) :] + [node]
    return " -> ".join(reversed(loop))


GPU = Resources(cpu="8", memory="32Gi", gpus=1)
# The embedders train on teacher-scored data when the pipeline scores it: the trained reranker's
# scores first, an external teacher's next, else the mined data as it is.
SCORED = ("reranker_scored_data", "scored_data", "train_data")
RERANKER = (("reranker.enabled", (True,)),)
LONGCTX = (("longctx.enabled", (True,)),)
EVAL = Resources(cpu="2", memory="8Gi", gpus=1)
# Every logged training loss, [{"step", "loss"}]: a `dvc plots` line plot beside the comparison chart.
LOSS_CURVE = Artifact("loss_curve", "plots/train_loss.json", kind="plot")
RERANKER_LOSS = Artifact("reranker_loss_curve", "plots/reranker_train_loss.json", kind="plot")
BASE_LM_LOSS = Artifact("base_lm_loss_curve", "plots/base_lm_train_loss.json", kind="plot")
EXTEND_LOSS = Artifact("extend_loss_curve", "plots/extend_context_train_loss.json", kind="plot")

STEPS: tuple[Step, ...] = (
    Step(
        "build_corpus",
        "flagops.steps.build_corpus",
        ("corpus",),
        (),
        (Artifact("corpus", "data/corpus.jsonl"),),
        summary="Collect passages: Python stdlib docstrings, a user JSONL or a BEIR folder.",
    ),
    Step(
        "synthesize_queries",
        "flagops.steps.synthesize_queries",
        ("synthesis",),
        ("corpus",),
        (Artifact("train_pairs", "data/train_pairs.jsonl"), Artifact("eval_set", "data/eval", is_dir=True)),
        summary="Generate a query per passage; split train/test by group (module).",
        # synthesis.generator=llm: the endpoint's API key, from the Secret docs/synthesis.md creates
        secrets=(SecretEnv("flagops-llm", "api-key", "synthesis.llm.api_key_env", when=(("synthesis.generator", ("llm",)),)),),
    ),
    Step(
        "build_ood_eval",
        "flagops.steps.build_ood_eval",
        ("ood_eval", "synthesis"),
        (),
        (Artifact("ood_eval_set", "data/eval_ood", is_dir=True),),
        summary="A second, untrained domain for evaluate: numpy/scipy docstrings, queries by the heuristic synthesis.",
        when=(("ood_eval.enabled", (True,)),),
    ),
    Step(
        "pretrain_retromae",
        "flagops.steps.pretrain_retromae",
        ("model", "pretrain"),
        ("corpus",),
        (Artifact("pretrained_model", "models/pretrained", kind="model", is_dir=True),),
        GPU,
        summary="RetroMAE-pretrain the base on the corpus and the rest of the stdlib's text; the embedder fine-tunes from it.",
        when=(("pretrain.enabled", (True,)),),
    ),
    Step(
        "mine_hard_negatives",
        "flagops.steps.mine_hard_negatives",
        ("model", "mining"),
        ("train_pairs",),
        (Artifact("train_data", "data/train.jsonl"),),
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="Sample negatives from ranks 10-210 of a teacher's faiss search.",
    ),
    Step(
        "score_with_teacher",
        "flagops.steps.score_with_teacher",
        ("teacher",),
        ("train_data",),
        (Artifact("scored_data", "data/train_scored.jsonl"),),
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="Add pos_scores/neg_scores from a teacher reranker, for the rerankers' and embedders' distillation.",
        when=(("teacher.mode", ("external",)),),
        params=(("teacher", "config"),),
    ),
    Step(
        "train_reranker",
        "flagops.steps.train_reranker",
        ("reranker",),
        ("train_data",),
        (Artifact("reranker_model", "models/reranker", kind="model", is_dir=True), RERANKER_LOSS),
        GPU,
        summary="Fine-tune a cross-encoder, LLM (LoRA) or layerwise reranker on grouped cross-entropy (+ teacher KD).",
        when=RERANKER,
        sources=(("train_data", ("scored_data", "train_data")),),
    ),
    Step(
        "score_with_reranker",
        "flagops.steps.score_with_teacher",
        ("teacher", "reranker"),
        ("train_data", "reranker_model"),
        (Artifact("reranker_scored_data", "data/train_reranker_scored.jsonl"),),
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="Score the training data with the trained reranker: the embedder distils from it.",
        when=(("teacher.mode", ("trained",)),),
        params=(("teacher", "trained"),),
    ),
    Step(
        "train_embedder",
        "flagops.steps.train_embedder",
        ("model", "train"),
        ("train_data", "base_model"),
        (Artifact("model", "models/candidate", kind="model", is_dir=True), LOSS_CURVE),
        GPU,
        summary="Fine-tune contrastively (InfoNCE, in-batch negatives, optional distillation).",
        when=(("model.kind", ("bge",)),),
        optional=("base_model",),
        sources=(("train_data", SCORED), ("base_model", ("pretrained_model",))),
    ),
    Step(
        "train_m3",
        "flagops.steps.train_m3",
        ("model", "m3", "train"),
        ("train_data", "base_model"),
        (Artifact("model", "models/candidate", kind="model", is_dir=True), LOSS_CURVE),
        GPU,
        summary="Fine-tune BGE-M3 heads: dense + sparse + ColBERT with self-distillation.",
        when=(("model.kind", ("m3",)),),
        optional=("base_model",),
        sources=(("train_data", SCORED), ("base_model", ("pretrained_model",))),
    ),
    Step(
        "merge_models",
        "flagops.steps.merge_models",
        ("model", "reranker", "merge"),
        ("model", "train_data"),
        (Artifact("merged_model", "models/merged", kind="model", is_dir=True),),
        Resources(cpu="2", memory="8Gi"),
        summary="LM-Cocktail: mix the candidate with its base (fixed, data-driven or by-layers weights); evaluate picks the release.",
        when=(("merge.enabled", (True,)),),
        optional=("train_data",),
        sources=(("train_data", SCORED),),
    ),
    Step(
        "evaluate",
        "flagops.steps.evaluate",
        ("model", "evaluate", "reranker", "merge"),
        ("model", "eval_set", "reranker_model", "pretrained_model", "merged_model", "ood_eval_set"),
        (
            Artifact("metrics", "metrics/eval.json", kind="metrics"),
            Artifact("chart", "plots/eval_comparison.png", kind="plot"),
            Artifact("chart_data", "plots/eval_comparison.json", kind="plot"),
        ),
        EVAL,
        summary="nDCG@10 / MRR@10 / Recall / MAP for BM25, the base model, the candidate (and the rerankers over its top-k).",
        optional=("reranker_model", "pretrained_model", "merged_model", "ood_eval_set"),
    ),
    Step(
        "register_model",
        "flagops.steps.register_model",
        ("model", "registry"),
        ("model", "metrics", "train_data", "merged_model"),
        (Artifact("registration", "registry/registration.json", kind="record"),),
        summary="Log the candidate (the merged model when evaluate chose it) to MLflow with signature, lineage tags and a model card.",
        optional=("merged_model",),
        sources=(("train_data", SCORED),),
    ),
    Step(
        "promote_model",
        "flagops.steps.promote_model",
        ("registry",),
        ("registration",),
        (Artifact("promotion", "registry/promotion.json", kind="record"),),
        summary="Give the `champion` alias only if the candidate beats the current champion.",
    ),
    Step(
        "deploy_model",
        "flagops.steps.deploy_model",
        ("registry", "deploy"),
        ("promotion",),
        (
            Artifact("inference_service", "deploy/inferenceservice.yaml", kind="record"),
            Artifact("deployment", "registry/deployment.json", kind="record"),
        ),
        summary="Render (and apply) the champion's KServe InferenceService; a new champion starts as a canary.",
    ),
    # The long-context branch (docs/long-context.md): a base LM, its extension, their evaluation.
    Step(
        "train_base_lm",
        "flagops.steps.train_base_lm",
        ("longctx",),
        ("corpus",),
        (Artifact("base_lm", "models/base_lm", kind="model", is_dir=True), BASE_LM_LOSS),
        GPU,
        summary="Train a tiny Llama and its BPE tokenizer from scratch on the corpus at a short context.",
        when=(("base_lm_needed", (True,)),),  # the long-context branch, and the research branches on a decoder
    ),
    Step(
        "extend_context",
        "flagops.steps.extend_context",
        ("longctx",),
        ("base_lm", "corpus"),
        (Artifact("extended_lm", "models/extended_lm", kind="model", is_dir=True), EXTEND_LOSS),
        GPU,
        summary="Extend the LM's context by RoPE rescaling, LoRA-trained (QLoRA on CUDA) on needle QA and short text.",
        when=LONGCTX,
    ),
    Step(
        "evaluate_long_context",
        "flagops.steps.evaluate_long_context",
        ("longctx",),
        ("base_lm", "extended_lm", "corpus"),
        (
            Artifact("longctx_metrics", "metrics/longctx.json", kind="metrics"),
            Artifact("needle_heatmap", "plots/needle_heatmap.png", kind="plot"),
        ),
        EVAL,
        summary="Needle-in-a-haystack over lengths x depths, topic retrieval and short-context perplexity, before and after.",
        when=LONGCTX,
    ),
    Step(
        "register_long_context",
        "flagops.steps.register_long_context",
        ("longctx", "registry"),
        ("extended_lm", "base_lm", "longctx_metrics", "corpus"),
        (Artifact("longctx_registration", "registry/longctx_registration.json", kind="record"),),
        summary="Register the extended LM (merged weights + LoRA adapter) with its lineage; champion only if it beats the current one.",
        when=LONGCTX,
    ),
    Step(
        "deploy_long_context",
        "flagops.steps.deploy_long_context",
        ("longctx", "deploy"),
        ("longctx_registration",),
        (Artifact("longctx_inference_service", "deploy/longctx-inferenceservice.yaml", kind="record"),),
        summary="Render (and apply) the long-context champion's InferenceService on KServe's Hugging Face LLM runtime.",
        when=LONGCTX,
    ),
    # The reranker family: the same three modules, its own registered model, gate and service.
    Step(
        "register_reranker",
        "flagops.steps.register_model",
        ("reranker", "registry"),
        ("model", "metrics", "train_data"),
        (Artifact("reranker_registration", "registry/reranker_registration.json", kind="record"),),
        summary="Log the trained reranker to MLflow under its own name, with lineage to its data and teacher.",
        when=RERANKER,
        sources=(("model", ("reranker_model",)), ("train_data", ("scored_data", "train_data"))),
        params=(("family", "reranker"),),
    ),
    Step(
        "promote_reranker",
        "flagops.steps.promote_model",
        ("reranker", "registry"),
        ("registration",),
        (Artifact("reranker_promotion", "registry/reranker_promotion.json", kind="record"),),
        summary="Give the reranker `champion` only if it beats the current one on reranked/<primary metric>.",
        when=RERANKER,
        sources=(("registration", ("reranker_registration",)),),
        params=(("family", "reranker"),),
    ),
    Step(
        "deploy_reranker",
        "flagops.steps.deploy_model",
        ("reranker", "registry", "deploy"),
        ("promotion",),
        (
            Artifact("reranker_inference_service", "deploy/reranker-inferenceservice.yaml", kind="record"),
            Artifact("reranker_deployment", "registry/reranker_deployment.json", kind="record"),
        ),
        summary="Render (and apply) the reranker champion's InferenceService (/v1/rerank).",
        when=RERANKER,
        sources=(("promotion", ("reranker_promotion",)),),
        params=(("family", "reranker"),),
    ),
    # The research systems (docs/research.md), each a branch with its own section.
    # LLM-Embedder (llm_embedder.enabled).
    Step(
        "score_with_lm",
        "flagops.steps.score_with_lm",
        ("llm_embedder",),
        ("base_lm", "train_data"),
        (Artifact("llm_embedder_data", "data/llm_embedder_train.jsonl"),),
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="LLM-Embedder's reward: each key of the training data scored by the base LM's answer likelihood (-mean NLL).",
        when=(("llm_embedder.enabled", (True,)),),
    ),
    Step(
        "train_llm_embedder",
        "flagops.steps.train_llm_embedder",
        ("model", "llm_embedder"),
        ("llm_embedder_data",),
        (
            Artifact("llm_embedder_model", "models/llm_embedder", kind="model", is_dir=True),
            Artifact("llm_embedder_loss_curve", "plots/llm_embedder_train_loss.json", kind="plot"),
        ),
        GPU,
        summary="Train the base encoder on the LM's rewards: stabilized distillation + contrastive, one task per batch.",
        when=(("llm_embedder.enabled", (True,)),),
    ),
    Step(
        "evaluate_llm_embedder",
        "flagops.steps.evaluate_llm_embedder",
        ("model", "llm_embedder"),
        ("llm_embedder_model", "base_lm", "eval_set"),
        (Artifact("research_llm_embedder", "metrics/research_llm_embedder.json", kind="metrics"),),
        EVAL,
        summary="Base encoder vs LLM-Embedder: nDCG@10, and the LM's answer NLL / exact match with the top-k each retrieves.",
        when=(("llm_embedder.enabled", (True,)),),
    ),
    # LLaRA (llara.enabled).
    Step(
        "pretrain_llara",
        "flagops.steps.pretrain_llara",
        ("llara", "longctx"),
        ("base_lm", "corpus"),
        (
            Artifact("llara_pretrained_lm", "models/llara_pretrained", kind="model", is_dir=True),
            Artifact("llara_pretrain_loss_curve", "plots/llara_pretrain_loss.json", kind="plot"),
        ),
        GPU,
        summary="EBAE/EBAR pretraining: the 8 special tokens' pooled logits predict the passage and the next one, beside the LM loss.",
        when=(("llara.enabled", (True,)),),
    ),
    Step(
        "finetune_llara",
        "flagops.steps.finetune_llara",
        ("llara",),
        ("lm", "train_data"),
        (Artifact("llara_model", "models/llara", kind="model", is_dir=True),),
        GPU,
        summary="Fine-tune the EBAE/EBAR-pretrained LM as a retriever: mean of the 8 special states, InfoNCE, LoRA.",
        when=(("llara.enabled", (True,)),),
        sources=(("lm", ("llara_pretrained_lm",)),),
        params=(("output", "llara_model"),),
    ),
    Step(
        "finetune_llara_plain",
        "flagops.steps.finetune_llara",
        ("llara",),
        ("lm", "train_data"),
        (Artifact("llara_plain_model", "models/llara_plain", kind="model", is_dir=True),),
        GPU,
        summary="The baseline: the same fine-tuning from the plain base LM, without EBAE/EBAR.",
        when=(("llara.enabled", (True,)),),
        sources=(("lm", ("base_lm",)),),
        params=(("output", "llara_plain_model"),),
    ),
    Step(
        "evaluate_llara",
        "flagops.steps.evaluate_llara",
        ("llara",),
        ("llara_model", "llara_plain_model", "llara_pretrained_lm", "eval_set"),
        (Artifact("research_llara", "metrics/research_llara.json", kind="metrics"),),
        EVAL,
        summary="Held-out nDCG@10 of LLaRA fine-tuned with vs without EBAE/EBAR pretraining.",
        when=(("llara.enabled", (True,)),),
    ),
    # Activation Beacon (beacon.enabled).
    Step(
        "train_beacon",
        "flagops.steps.train_beacon",
        ("beacon", "longctx"),
        ("base_lm", "corpus"),
        (
            Artifact("beacon_lm", "models/beacon_lm", kind="model", is_dir=True),
            Artifact("beacon_loss_curve", "plots/beacon_train_loss.json", kind="plot"),
        ),
        GPU,
        summary="Train Activation Beacon's beacon embedding and q/k/v/o on the frozen base LM, reading long text window by window.",
        when=(("beacon.enabled", (True,)),),
    ),
    Step(
        "evaluate_beacon",
        "flagops.steps.evaluate_beacon",
        ("beacon", "longctx"),
        ("base_lm", "beacon_lm", "corpus"),
        (
            Artifact("beacon_metrics", "metrics/research_beacon.json", kind="metrics"),
            Artifact("beacon_plot", "plots/beacon_perplexity.png", kind="plot"),
        ),
        EVAL,
        summary="Perplexity and needles at 4x/8x the base's context: beacons vs the base truncated to its window; KV kept per token.",
        when=(("beacon.enabled", (True,)),),
    ),
    # Visualized-BGE (visual_bge.enabled).
    Step(
        "build_visual_bge_data",
        "flagops.steps.build_visual_bge_data",
        ("visual_bge",),
        (),
        (Artifact("visual_bge_data", "data/visual_bge", is_dir=True),),
        summary="Draw shapes with captions and edit instructions (Pillow): Visualized-BGE's train and held-out images.",
        when=(("visual_bge.enabled", (True,)),),
    ),
    Step(
        "train_visual_bge",
        "flagops.steps.train_visual_bge",
        ("visual_bge", "model"),
        ("visual_bge_data",),
        (Artifact("visual_bge_model", "models/visual_bge", kind="model", is_dir=True),),
        Resources(cpu="2", memory="8Gi", gpus=1),
        summary="Visualized-BGE stage 2: the ViT and projection train under the frozen text encoder (InfoNCE, one task per batch).",
        when=(("visual_bge.enabled", (True,)),),
    ),
    Step(
        "evaluate_visual_bge",
        "flagops.steps.evaluate_visual_bge",
        ("visual_bge", "model"),
        ("visual_bge_data", "visual_bge_model"),
        (Artifact("visual_bge_metrics", "metrics/research_visual_bge.json", kind="metrics"),),
        EVAL,
        summary="Recall@1/5 on held-out images, text->image and composed, against the random init and a caption-only search.",
        when=(("visual_bge.enabled", (True,)),),
    ),
)

BY_NAME = {s.name: s for s in STEPS}
ARTIFACTS = {a.name: a for s in STEPS for a in s.outputs}  # alternatives of a step write the same artifact


def get(name: str) -> Step:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown step {name!r}; steps are: {', '.join(BY_NAME)}") from None


def pipeline(cfg) -> Pipeline:
    """The DAG ``cfg`` (a FlagopsConfig) selects from the catalog."""
    return resolve(STEPS, cfg)


def check(steps: Iterable[Step] = STEPS) -> None:
    """Raise CatalogError if a step is listed twice, names an optional or sourced input it
    does not have, or describes an artifact differently from another step."""
    seen: dict[str, Artifact] = {}
    names: set[str] = set()
    for s in steps:
        if s.name in names:
            raise CatalogError(f"step {s.name!r} listed twice")
        names.add(s.name)
        unknown = (set(s.optional) | {k for k, _ in s.sources}) - set(s.inputs)
        if unknown:
            raise CatalogError(f"step {s.name}: {sorted(unknown)} named as optional or sourced but not among its inputs")
        for a in s.outputs:
            if seen.setdefault(a.name, a) != a:
                raise CatalogError(f"step {s.name}: artifact {a.name!r} differs from another step's {a.name!r}")


check()
