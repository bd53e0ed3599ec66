"""Multi-node training as a Kubeflow PyTorchJob (kubeflow.org/v1), rendered from a config.

The job runs the profile's training step (``training_step_name``: ``train_embedder``, or
``train_m3`` when ``model.kind`` is m3).

One Master pod and ``workers`` Worker pods each run torchrun with one process per GPU, and
every process runs the same command every other face runs:

    torchrun --nnodes N --nproc-per-node G --node-rank $(RANK) --master-addr $(MASTER_ADDR) \\
        --master-port $(MASTER_PORT) -m flagops.cli step STEP --params ... --in ... --out ...

The training operator injects RANK (this pod's index: Master 0, Worker i + 1),
MASTER_ADDR and MASTER_PORT into each pod; Kubernetes expands the ``$(VAR)`` references.
The params come from a ConfigMap rendered from the same config, and data, checkpoints and
the trained model live on a ReadWriteMany PVC mounted as the working directory, so a
restarted pod resumes from the newest checkpoint. Submitting refuses to replace a job of
the same name that is still running, unless ``--replace`` is given.

    flagops train submit-pytorchjob --profile demo --workers 1 --gpus-per-worker 2 --dry-run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from flagops import catalog, kube
from flagops.config import ConfigError, FlagopsConfig, load_config

NO_KUBECTL = "kubectl not found on PATH; install it, use --in-cluster inside a pod, or use --dry-run and apply the YAML yourself"
CONTEXT = "train submit-pytorchjob"
WORKDIR = "/workspace"  # the PVC; the catalog's relative artifact paths resolve under it
PARAMS_DIR = "/etc/flagops"
CONTAINER = "pytorch"  # the training operator looks for this container name
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def training_step_name(cfg: FlagopsConfig) -> str:
    """The catalog step this config trains with: the task of its DAG that writes the ``model``
    artifact (``train_embedder``, or ``train_m3`` for model.kind m3)."""
    return catalog.pipeline(cfg).producer()["model"]


def default_job_name(cfg: FlagopsConfig) -> str:
    return "flagops-" + training_step_name(cfg).replace("_", "-")


def params_yaml(cfg: FlagopsConfig) -> str:
    """The values that differ from flagops' defaults; the image's flagops fills in the rest,
    so the file stays short and reads as the profile plus overrides."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def params_digest(cfg: FlagopsConfig) -> str:
    return hashlib.sha256(params_yaml(cfg).encode()).hexdigest()


def render_params_configmap(cfg: FlagopsConfig, name: str, namespace: str | None = None) -> dict[str, Any]:
    """The config as a ConfigMap holding ``params.yaml``, the file ``--params`` reads."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "flagops"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"params.yaml": params_yaml(cfg)}}


def _scaled(quantity: str, factor: int) -> str:
    """'8' * 2 -> '16', '32Gi' * 2 -> '64Gi': the step's per-GPU resources for a pod of GPUs."""
    m = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    if not m:
        raise ValueError(f"cannot scale resource quantity {quantity!r}")
    return f"{int(m.group(1)) * factor}{m.group(2)}"


def _command(nodes: int, gpus: int, task: catalog.Task) -> list[str]:
    """torchrun of the step as the DAG wires it: its inputs from the artifacts feeding them (an
    optional input the pipeline does not produce, such as a pretrained base, is left out)."""
    ins = [arg for name, art in task.wiring for arg in ("--in", f"{name}={art.path}")]
    outs = [arg for a in task.step.outputs for arg in ("--out", f"{a.name}={a.path}")]
    return [
        "torchrun",
        f"--nnodes={nodes}",
        f"--nproc-per-node={gpus}",
        "--node-rank=$(RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "flagops.cli",
        "step",
        task.name,
        "--params",
        f"{PARAMS_DIR}/params.yaml",
        *ins,
        *outs,
    ]


def _replica(replicas: int, image: str, nodes: int, gpus: int, params_configmap: str, pvc: str, task: catalog.Task) -> dict:
    step = task.step
    per_gpu = max(gpus, 1)
    resources = {"cpu": _scaled(step.resources.cpu, per_gpu), "memory": _scaled(step.resources.memory, per_gpu)}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    container = {
        "name": CONTAINER,
        "image": image,
        "command": _command(nodes, max(gpus, 1), task),
        "workingDir": WORKDIR,
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "TOKENIZERS_PARALLELISM", "value": "false"},
            {"name": "FLAGOPS_CACHE", "value": f"{WORKDIR}/.cache/flagops"},
        ],
        # MLFLOW_TRACKING_URI, its credentials and S3 keys: the Secret the Airflow pods use too.
        "envFrom": [{"secretRef": {"name": "flagops-mlflow", "optional": True}}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [
            {"name": "workspace", "mountPath": WORKDIR},
            {"name": "params", "mountPath": PARAMS_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},  # NCCL and dataloaders outgrow the 64 MiB default
        ],
    }
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",  # a restarted pod resumes from the newest checkpoint on the PVC
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/part-of": "flagops", "flagops/step": step.name}},
            "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
                "containers": [container],
                "volumes": [
                    {"name": "workspace", "persistentVolumeClaim": {"claimName": pvc}},
                    {"name": "params", "configMap": {"name": params_configmap}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                ],
            },
        },
    }


def render_pytorchjob(
    cfg: FlagopsConfig,
    *,
    name: str | None = None,
    image: str | None = None,
    workers: int = 1,
    gpus_per_worker: int | None = None,
    params_configmap: str = "flagops-params",
    pvc: str = "flagops-workspace",
    namespace: str | None = None,
    step: str | None = None,
) -> dict[str, Any]:
    """A PyTorchJob running the config's training step on 1 Master + ``workers`` Worker pods.

    Args:
        cfg: the config; its ``train`` section (cross-device negatives, DeepSpeed) travels
            in the params ConfigMap, see ``render_params_configmap``.
        name: the job's name (DNS-1123); default ``flagops-<step>``, e.g. flagops-train-m3.
        image: the flagops image; default ``catalog.image()``.
        workers: Worker pods besides the Master, so ``workers + 1`` nodes in all.
        gpus_per_worker: GPUs, and so torchrun processes, per pod; default the catalog's.
        params_configmap: the ConfigMap holding ``params.yaml``.
        pvc: a ReadWriteMany claim holding the inputs, checkpoints and outputs.
        namespace: optional; omitted so ``kubectl -n`` decides.
        step: another step of the config's DAG to run (e.g. extend_context); default
            ``training_step_name``.
    """
    step_name = step or training_step_name(cfg)
    name = name or "flagops-" + step_name.replace("_", "-")
    if not DNS_1123.match(name) or len(name) > 63:
        raise ConfigError(f"PyTorchJob name {name!r}: use lowercase letters, digits and '-' (at most 63)")
    if workers < 0:
        raise ConfigError(f"workers={workers}: must be 0 or more (Worker pods besides the Master)")
    task = catalog.pipeline(cfg).task(step_name)
    step = task.step
    gpus = step.resources.gpus if gpus_per_worker is None else gpus_per_worker
    if gpus < 0:
        raise ConfigError(f"gpus_per_worker={gpus}: must be 0 or more")
    image = image or catalog.image()
    specs = {"Master": _replica(1, image, workers + 1, gpus, params_configmap, pvc, task)}
    if workers:
        specs["Worker"] = _replica(workers, image, workers + 1, gpus, params_configmap, pvc, task)
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "flagops", "flagops/step": step.name},
        # Ties the job to the params it was rendered with (the ConfigMap's content).
        "annotations": {"flagops/profile": cfg.profile, "flagops/params-sha256": params_digest(cfg)},
    }
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": metadata,
        "spec": {
            "nprocPerNode": str(max(gpus, 1)),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
            "pytorchReplicaSpecs": specs,
        },
    }


def render_text(cfg: FlagopsConfig, regenerate: str, **kwargs) -> str:
    """The params ConfigMap and the PyTorchJob (``render_pytorchjob`` kwargs) as one YAML stream."""
    cm = render_params_configmap(cfg, kwargs.get("params_configmap", "flagops-params"), kwargs.get("namespace"))
    job = render_pytorchjob(cfg, **kwargs)
    header = f"# Rendered from the config by `{regenerate}`; do not edit by hand.\n"
    return header + yaml.dump_all([cm, job], Dumper=_Dumper, sort_keys=False, width=120)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (params.yaml) as literal blocks; no anchors or aliases."""

    def ignore_aliases(self, data) -> bool:
        return True


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


# --------------------------------------------------------------------------- CLI


def _regenerate_command(args: argparse.Namespace) -> str:
    """The command line that renders the same YAML, for the header."""
    parts = ["flagops train submit-pytorchjob --dry-run"]
    for flag in ("params", "profile", "step", "name", "image", "workers", "gpus_per_worker", "configmap", "pvc", "namespace"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    return " ".join(parts + list(args.overrides))


def cmd_submit_pytorchjob(args: argparse.Namespace) -> int:
    if args.profile and args.params:
        raise ConfigError("give either --params FILE or --profile NAME, not both")
    source = args.profile or args.params or "params.yaml"
    if source == "params.yaml" and not Path(source).is_file():
        raise ConfigError("no params.yaml here; pass --params FILE or --profile NAME")
    cfg = load_config(source, args.overrides)
    text = render_text(
        cfg,
        _regenerate_command(args),
        name=args.name,
        image=args.image,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        params_configmap=args.configmap,
        pvc=args.pvc,
        namespace=args.namespace,
        step=args.step,
    )
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    objects = [o for o in yaml.safe_load_all(text) if o]
    if args.in_cluster:
        return apply_in_cluster(objects, args.namespace, replace=args.replace)
    return apply_with_kubectl(text, objects, args.namespace, replace=args.replace)


def _finished(job: dict[str, Any]) -> bool:
    """Whether the training operator marked the job Succeeded or Failed: none of its pods runs any more."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Succeeded", "Failed") and c.get("status") == "True" for c in conditions)


def must_delete(existing: dict[str, Any] | None, where: str, replace: bool) -> bool:
    """Whether a job of the same name has to go first. A finished one is replaced (a re-run);
    a running one only with ``--replace``, since deleting it kills its training."""
    if existing is None:
        return False
    if not replace and not _finished(existing):
        raise ConfigError(
            f"PyTorchJob {where} already exists and has not finished; pass --replace to delete it and submit again, or use another --name"
        )
    return True


def _kubectl(*args: str, stdin: str | None = None) -> str:
    return kube.kubectl(*args, context=CONTEXT, missing=NO_KUBECTL, stdin=stdin)


def apply_with_kubectl(text: str, objects: list[dict[str, Any]], namespace: str | None, *, replace: bool) -> int:
    """``kubectl apply`` the ConfigMap and the PyTorchJob, after checking for a job of the same name."""
    name = objects[-1]["metadata"]["name"]
    ns = ["-n", namespace] if namespace else []
    found = _kubectl("get", "pytorchjob", name, *ns, "-o", "json", "--ignore-not-found")
    if must_delete(json.loads(found) if found.strip() else None, f"{namespace or '(current namespace)'}/{name}", replace):
        _kubectl("delete", "pytorchjob", name, *ns, "--wait=true")
    print(_kubectl("apply", "-f", "-", stdin=text).strip())
    return 0


def apply_in_cluster(objects: list[dict[str, Any]], namespace: str | None, *, replace: bool = False) -> int:
    """Create or replace the ConfigMap and PyTorchJob with the pod's service account
    (no kubectl in the image): what an Airflow KubernetesPodOperator task runs. The job is
    checked first, so a refusal leaves a running job's ConfigMap as it was."""
    from kubernetes import client, config

    config.load_incluster_config()
    ns = namespace or Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (job,) = [o for o in objects if o["kind"] == "PyTorchJob"]
    name, (group, version) = job["metadata"]["name"], job["apiVersion"].split("/")
    job_api = (group, version, ns, "pytorchjobs", name)
    if must_delete(_api(f"get pytorchjob {ns}/{name}", custom.get_namespaced_custom_object, *job_api), f"{ns}/{name}", replace):
        _api(f"delete pytorchjob {ns}/{name}", custom.delete_namespaced_custom_object, *job_api)
    where = f"{ns}/{cm['metadata']['name']}"
    if _api(f"replace configmap {where}", core.replace_namespaced_config_map, cm["metadata"]["name"], ns, cm) is None:
        _api(f"create configmap {where}", core.create_namespaced_config_map, ns, cm)
    _api(f"create pytorchjob {ns}/{name}", custom.create_namespaced_custom_object, group, version, ns, "pytorchjobs", job)
    print(f"submitted ConfigMap {where} and PyTorchJob {ns}/{name}")
    return 0


def _api(what: str, call, *args):
    """One Kubernetes API call with kubectl's timeout; None for 404, one ConfigError line otherwise."""
    import urllib3
    from kubernetes import client

    try:
        return call(*args, _request_timeout=kube.KUBECTL_TIMEOUT_S)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise ConfigError(f"{CONTEXT} --in-cluster: {what} failed: HTTP {exc.status} {exc.reason}") from None
    except urllib3.exceptions.HTTPError as exc:  # timeouts and refused connections
        raise ConfigError(f"{CONTEXT} --in-cluster: {what}: no answer from the API server ({type(exc).__name__})") from None


def add_training_commands(subparsers) -> None:
    """Add `flagops train submit-pytorchjob ...` to the top-level CLI's subparsers."""
    train = subparsers.add_parser("train", help="distributed training on a cluster")
    sub = train.add_subparsers(dest="train_command", required=True)
    p = sub.add_parser("submit-pytorchjob", help="render (and kubectl apply) a multi-node PyTorchJob of the profile's training step")
    p.add_argument("--params", help="a params YAML (default: ./params.yaml)")
    p.add_argument("--profile", help="a built-in profile: tiny, demo")
    p.add_argument("--step", help="the step to run (default: the training step, e.g. train_embedder; or extend_context)")
    p.add_argument("--name", help="job name (default: flagops-<training step>, e.g. flagops-train-embedder)")
    p.add_argument("--image", help="default: $FLAGOPS_IMAGE or the catalog's image")
    p.add_argument("--workers", type=int, default=1, help="Worker pods besides the Master (default: 1)")
    p.add_argument("--gpus-per-worker", type=int, help="GPUs and torchrun processes per pod (default: the catalog's)")
    p.add_argument("--configmap", default="flagops-params", help="ConfigMap for params.yaml (default: flagops-params)")
    p.add_argument("--pvc", default="flagops-workspace", help="ReadWriteMany PVC with data and outputs (default: flagops-workspace)")
    p.add_argument("--namespace", help="metadata.namespace (default: none, kubectl decides)")
    p.add_argument("--dry-run", action="store_true", help="print the YAML instead of applying it")
    p.add_argument("--in-cluster", action="store_true", help="apply with the pod's service account instead of kubectl")
    p.add_argument(
        "--replace", action="store_true", help="delete a still-running job of the same name first (a finished one is always replaced)"
    )
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(func=cmd_submit_pytorchjob)
