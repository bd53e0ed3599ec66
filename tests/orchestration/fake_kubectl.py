"""A stand-in for `kubectl` and a Kubernetes cluster with the Kubeflow training operator, for tests.

No cluster can exist on the test machine, so this script answers the two calls the multinode DAG
makes, keeping the cluster's state as JSON files under $FAKE_KUBE_STATE:

- `kubectl apply -f -`: stores the ConfigMaps and PyTorchJobs it is given and, for a PyTorchJob,
  does what the operator and its Master pod would: runs the Master container's command (torchrun
  ... flagops step ...) in the background, in $FAKE_KUBE_PVC (the workspace PVC), with the params
  ConfigMap "mounted" and RANK / MASTER_ADDR / MASTER_PORT set. The pod's environment is the
  container's env, the caller's MLFLOW_* variables (standing in for the MLflow Secret) and PATH /
  PYTHONPATH / HOME (standing in for the image). One Master, run once: no Workers, no restarts.
- `kubectl get pytorchjob NAME -n NS -o json [--ignore-not-found]`: the job with the operator's
  conditions (nothing, with --ignore-not-found, for a job that does not exist; what
  `flagops train submit-pytorchjob` asks before it applies): Running
  while the command runs, then Succeeded or Failed by its exit code. Each answer is appended to
  $FAKE_KUBE_STATE/get.log, so a test can see the waiter poll a running job.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import yaml

STATE = Path(os.environ["FAKE_KUBE_STATE"])
PVC = Path(os.environ["FAKE_KUBE_PVC"])


def _path(kind: str, namespace: str, name: str) -> Path:
    return STATE / kind / namespace / f"{name}.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _master(job: dict, namespace: str) -> Path:
    """Write the Master pod's command line (volumes and $(VARS) resolved); return its folder."""
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    (container,) = spec["containers"]
    pod = STATE / "pods" / namespace / job["metadata"]["name"]
    pod.mkdir(parents=True, exist_ok=True)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    local = {}
    for path, name in mounts.items():
        if "persistentVolumeClaim" in volumes[name]:
            local[path] = str(PVC)
        elif "configMap" in volumes[name]:
            cm = json.loads(_path("configmaps", namespace, volumes[name]["configMap"]["name"]).read_text())
            for key, text in cm["data"].items():
                (pod / name).mkdir(exist_ok=True)
                (pod / name / key).write_text(text)
            local[path] = str(pod / name)
    values = {"RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}

    def resolve(arg: str) -> str:
        arg = re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg)
        for path, here in local.items():
            arg = arg.replace(path, here)
        return arg

    argv = [resolve(a) for a in container["command"] + container.get("args", [])]
    argv[0] = str(Path(sys.executable).parent / argv[0])  # torchrun from the same venv as the image's
    env = {e["name"]: resolve(e["value"]) for e in container.get("env", [])}
    (pod / "pod.json").write_text(json.dumps({"argv": argv, "env": env, "cwd": resolve(container["workingDir"])}))
    return pod


def run_pod(pod: Path) -> None:
    spec = json.loads((pod / "pod.json").read_text())
    with open(pod / "log", "w") as log:
        image = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME") or k.startswith("MLFLOW_")}
        rc = subprocess.run(
            spec["argv"], check=False, cwd=spec["cwd"], env=image | spec["env"], stdout=log, stderr=subprocess.STDOUT
        ).returncode
    (pod / "exit_code").write_text(str(rc))


def apply(text: str) -> None:
    for obj in (o for o in yaml.safe_load_all(text) if o):
        meta = obj["metadata"]
        namespace, kind = meta.get("namespace", "default"), obj["kind"].lower() + "s"
        path = _path(kind, namespace, meta["name"])
        if kind == "pytorchjobs" and path.exists():  # the operator would not start a finished job again
            print(f"pytorchjob.kubeflow.org/{meta['name']} unchanged")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj))
        if kind == "pytorchjobs":
            pod = _master(obj, namespace)
            subprocess.Popen(
                [sys.executable, __file__, "_run-pod", str(pod)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        print(f"{obj['kind'].lower()}/{meta['name']} created")


def get_pytorchjob(name: str, namespace: str, ignore_not_found: bool = False) -> int:
    path = _path("pytorchjobs", namespace, name)
    if not path.exists():
        if ignore_not_found:  # kubectl prints nothing and exits 0
            return 0
        print(f'Error from server (NotFound): pytorchjobs.kubeflow.org "{name}" not found', file=sys.stderr)
        return 1
    job = json.loads(path.read_text())
    rc_file = STATE / "pods" / namespace / name / "exit_code"
    conditions = [
        {"type": "Created", "status": "True", "reason": "PyTorchJobCreated"},
        {"type": "Running", "status": "True", "reason": "PyTorchJobRunning"},
    ]
    if rc_file.exists():
        conditions[-1]["status"] = "False"
        if rc_file.read_text() == "0":
            conditions.append(
                {
                    "type": "Succeeded",
                    "status": "True",
                    "reason": "PyTorchJobSucceeded",
                    "message": f"PyTorchJob {namespace}/{name} successfully completed.",
                }
            )
        else:
            conditions.append(
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PyTorchJobFailed",
                    "message": f"PyTorchJob {namespace}/{name} is failed because 1 Master replica(s) failed.",
                }
            )
    job["status"] = {"conditions": conditions}
    with open(STATE / "get.log", "a") as log:
        log.write(f"{namespace}/{name} {next(c['type'] for c in reversed(conditions) if c['status'] == 'True')}\n")
    print(json.dumps(job))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["_run-pod"]:
        run_pod(Path(argv[1]))
        return 0
    if argv[:2] == ["apply", "-f"] and argv[2:3] == ["-"]:
        apply(sys.stdin.read())
        return 0
    flags = [a for a in argv if not a.startswith("--request-timeout") and a != "--ignore-not-found"]
    if len(flags) == 7 and flags[:2] == ["get", "pytorchjob"] and flags[3] == "-n" and flags[5:] == ["-o", "json"]:
        return get_pytorchjob(flags[2], flags[4], ignore_not_found="--ignore-not-found" in argv)
    print(f"fake kubectl: unsupported call: kubectl {' '.join(argv)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
