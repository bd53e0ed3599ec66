"""Wait for a Kubeflow PyTorchJob without holding a worker slot.

`WaitForPyTorchJob` defers at once to `PyTorchJobTrigger`, which polls the job's status in the
triggerer (asyncio, one short call per poll) until a Succeeded or Failed condition, or a deadline.
It reads the job with `kubectl get` (local mode: the triggerer's kubeconfig) or, in a pod, with
the Kubernetes API and the pod's service account (RBAC: get pytorchjobs).

The triggerer imports the trigger by its classpath, `_flagops_pytorchjob.PyTorchJobTrigger`, so
the dags folder must be on the triggerer's PYTHONPATH: Airflow 3 puts only config/ and plugins/ there.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

DONE = ("Succeeded", "Failed")  # the training operator's terminal condition types


def job_state(job: dict) -> tuple[str, str]:
    """(Succeeded | Failed | the newest condition's type, its 'reason: message') of a PyTorchJob."""
    conditions = (job.get("status") or {}).get("conditions") or []
    current = [c for c in conditions if c.get("status") == "True"] or [{"type": "Pending"}]
    last = next((c for c in current if c["type"] in DONE), current[-1])
    detail = ": ".join(filter(None, (last.get("reason"), last.get("message"))))
    return last["type"], " ".join(detail.split()) or "no reason given"  # one line


async def kubectl_job(name: str, namespace: str, timeout_s: float) -> dict:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found on the triggerer's PATH")
    proc = await asyncio.create_subprocess_exec(
        kubectl,
        "get",
        "pytorchjob",
        name,
        "-n",
        namespace,
        "-o",
        "json",
        f"--request-timeout={int(timeout_s)}s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s + 5)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"`kubectl get pytorchjob {name}` took over {timeout_s:.0f} s") from None
    if proc.returncode:
        raise RuntimeError(f"`kubectl get pytorchjob {name}` failed: {' '.join(err.decode().split())[-300:]}")
    return json.loads(out)


async def incluster_job(name: str, namespace: str, timeout_s: float) -> dict:
    from kubernetes_asyncio import client, config

    config.load_incluster_config()
    async with client.ApiClient() as api:
        custom = client.CustomObjectsApi(api)
        return await custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", name, _request_timeout=timeout_s)


READERS = {"kubectl": kubectl_job, "incluster": incluster_job}


class PyTorchJobTrigger(BaseTrigger):
    """Polls a PyTorchJob every ``poll_s`` until it ends or ``deadline`` (epoch seconds) passes.

    Yields one event: {"state": Succeeded | Failed | timeout | error, "job": "ns/name", "detail": ...}.
    Up to ``max_errors`` failed reads in a row are retried (an API server restart is not the job's end).
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        reader: str,
        deadline: float,
        poll_s: float = 30.0,
        call_timeout_s: float = 30.0,
        max_errors: int = 3,
    ):
        super().__init__()
        self.name, self.namespace, self.reader, self.deadline = name, namespace, reader, deadline
        self.poll_s, self.call_timeout_s, self.max_errors = poll_s, call_timeout_s, max_errors

    def serialize(self) -> tuple[str, dict]:
        keys = ("name", "namespace", "reader", "deadline", "poll_s", "call_timeout_s", "max_errors")
        return f"{type(self).__module__}.{type(self).__qualname__}", {k: getattr(self, k) for k in keys}

    async def run(self):
        job, errors = f"{self.namespace}/{self.name}", 0
        while True:
            try:
                state, detail = job_state(await READERS[self.reader](self.name, self.namespace, self.call_timeout_s))
                errors = 0
            except Exception as exc:  # noqa: BLE001 - any failed read (kubectl, the API client, its JSON) is retried, then reported
                errors, state, detail = errors + 1, "error", " ".join(str(exc).split()) or type(exc).__name__
                if errors >= self.max_errors:
                    break
            else:
                self.log.info("PyTorchJob %s: %s (%s)", job, state, detail)
                if state in DONE:
                    break
            if time.time() > self.deadline:
                state, detail = "timeout", f"still {state} at the deadline ({detail})"
                break
            await asyncio.sleep(self.poll_s)
        yield TriggerEvent({"state": state, "job": job, "detail": detail})


class WaitForPyTorchJob(BaseOperator):
    """Succeeds when the PyTorchJob ``job_name`` succeeds; fails, naming the job and its reason, otherwise."""

    template_fields = ("job_name", "namespace")

    def __init__(self, *, job_name: str, namespace: str, reader: str = "kubectl", timeout_s: float = 48 * 3600, poll_s: float = 30.0, **kw):
        super().__init__(**kw)
        if reader not in READERS:
            raise ValueError(f"reader={reader!r}: expected one of {', '.join(READERS)}")
        self.job_name, self.namespace, self.reader, self.timeout_s, self.poll_s = job_name, namespace, reader, timeout_s, poll_s

    def execute(self, context):
        trigger = PyTorchJobTrigger(self.job_name, self.namespace, self.reader, time.time() + self.timeout_s, self.poll_s)
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context, event: dict) -> str:
        message = f"PyTorchJob {event['job']} {event['state']}: {event['detail']}"
        if event["state"] == "Succeeded":
            self.log.info(message)
            return event["job"]
        if event["state"] == "error":  # the status could not be read: a retry waits again
            raise AirflowException(message)
        raise AirflowFailException(message)  # Failed or timed out: a retry would not change the job
