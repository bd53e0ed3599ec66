"""The KubernetesPodOperator for one catalog step: the flagops image, the same command as the
DVC stage, the catalog's resources, the workspace PVC and MLflow settings from a Secret.
Imported only in FLAGOPS_AIRFLOW_MODE=kubernetes; it builds pod specs and needs no cluster.
"""

from __future__ import annotations

import os

from _flagops_settings import PIPELINE_KEY
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from flagops import catalog


def pod_task(task: catalog.Task, argv: list[str], *, workdir: str, **kw):
    return pod(task.name, argv, task.step.resources, workdir=workdir, secret_env=task.env, **kw)


def pod(task_id: str, argv: list[str], r: catalog.Resources, *, workdir: str, secret_env=(), **kw):
    """A pod on the flagops image running argv in the workspace PVC, MLflow env from the Secret,
    and ``secret_env``'s (Secret, key, variable) triples (catalog.Task.env) as optional variables."""
    requests = {"cpu": r.cpu, "memory": r.memory}
    limits = requests | ({"nvidia.com/gpu": str(r.gpus)} if r.gpus else {})
    # GPU nodes are usually tainted so that only pods asking for a GPU land there.
    gpu_taint = [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if r.gpus else None
    pvc = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=os.environ.get("FLAGOPS_K8S_PVC", "flagops-workspace"))
    # MLFLOW_TRACKING_URI, its credentials and S3 keys come from a Secret, never from this file.
    secret = k8s.V1SecretEnvSource(name=os.environ.get("FLAGOPS_K8S_MLFLOW_SECRET", "flagops-mlflow"))
    # Artifact paths are workspace-relative, as in dvc.yaml, so the container starts in the workspace.
    in_workspace = k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", working_dir=workdir)]))
    return KubernetesPodOperator(
        task_id=task_id,
        name=task_id.replace("_", "-"),
        namespace=os.environ.get("FLAGOPS_K8S_NAMESPACE", "flagops"),
        image=catalog.image(),
        cmds=argv[:1],
        arguments=argv[1:],
        container_resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        volumes=[k8s.V1Volume(name="workspace", persistent_volume_claim=pvc)],
        volume_mounts=[k8s.V1VolumeMount(name="workspace", mount_path=workdir)],
        env_from=[k8s.V1EnvFromSource(secret_ref=secret)],
        env_vars=[k8s.V1EnvVar(name=k, value=v) for k, v in PIPELINE_KEY.items()]
        + [
            k8s.V1EnvVar(name=env, value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=name, key=key, optional=True)))
            for name, key, env in secret_env
        ],
        tolerations=gpu_taint,
        full_pod_spec=in_workspace,
        get_logs=True,
        on_finish_action="delete_pod",
        **kw,
    )
