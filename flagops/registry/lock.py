"""A mutex for one registered model, kept in the registry itself, so promotions run one at a time.

Promotion reads ``@champion``, compares, then moves the aliases. MLflow has no transaction
or compare-and-set across those calls, so two pipelines that finish together can both read
"no champion" (or the same old one) and both take ``@champion``: the last writer wins, maybe
the worse model, and both records claim the promotion. Holding this lock around the whole
read-compare-set makes concurrent promotions equal to running them one after the other.

The lock is the one atomic primitive every MLflow store offers through its API, local sqlite
file and remote ``mlflow server`` alike: creating a registered model whose name already
exists fails (a unique key in the database). Holding the lock is owning the registered
model ``<name>.promotion-lock``; releasing it deletes that model. A database advisory lock
would not do: a team's pipelines reach Postgres only through the server's REST API.

A holder that died (SIGKILL mid-promotion) leaves its lock behind. A lock older than
``STALE_AFTER_S`` (a promotion takes seconds) is taken as dead and deleted. Two waiters that
break the same dead lock can, in a narrow window, both go on; that needs a promotion to hang
for minutes first, and the message on timeout says how to remove a lock by hand.

sqlite allows one writer at a time; MLflow waits 20 s for the file (busy timeout) but a
read-then-write transaction can still fail at once with "database is locked". ``retry_busy``
retries such calls and ends with an error that names the store and the way out. Two creates of
one name at the same moment can also reach sqlite's unique key past MLflow's own "already
exists" check, and come back as a raw SQLAlchemy ``IntegrityError``, or as "not found" when the
name was released before MLflow looked it up (``name_taken`` reads all three as "taken";
tests/reliability/test_concurrent_registry.py hit both kinds, about one run in six).
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

LOCK_SUFFIX = ".promotion-lock"
HOLDER_TAG = "flagops.lock.holder"
STALE_AFTER_S = 600.0
WAIT_S = 120.0  # longer than any promotion queue of a few pipelines
BUSY_S = 60.0

T = TypeVar("T")


class RegistryBusyError(RuntimeError):
    """The registry stayed locked (another promotion, or a busy sqlite file) past the wait."""


def lock_name(name: str) -> str:
    return name + LOCK_SUFFIX


@contextmanager
def promotion_lock(client: MlflowClient, name: str, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold ``<name>.promotion-lock`` for the block; wait (with jittered backoff) while another holds it."""
    lock, holder = lock_name(name), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline, pause = time.monotonic() + wait_s, 0.02
    while not _try_create(client, lock, holder):
        _break_if_stale(client, lock)
        if time.monotonic() > deadline:
            raise RegistryBusyError(
                f"registered model {name!r}: another promotion has held {lock!r} for over {wait_s:.0f} s "
                f"({_holder(client, lock)}); if none is running, delete the registered model {lock!r}"
            )
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 1.0)
    try:
        yield
    finally:
        if _holder(client, lock) == holder:  # never delete a lock that was broken and retaken
            retry_busy(client.delete_registered_model, lock)


def name_taken(exc: BaseException) -> bool:
    """Did creating a registered model fail because its name was taken? MLflow says
    RESOURCE_ALREADY_EXISTS; on sqlite, two creates that meet can instead surface sqlite's unique
    key raw, or (when the other holder deleted the name before MLflow looked it up to say "already
    exists") as "not found" raised while handling that unique-key error. Either way the name was
    taken a moment ago: the caller tries again."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MlflowException) and seen.error_code == "RESOURCE_ALREADY_EXISTS":
            return True
        if "UNIQUE constraint failed: registered_models" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _try_create(client: MlflowClient, lock: str, holder: str) -> bool:
    try:
        retry_busy(client.create_registered_model, lock, tags={HOLDER_TAG: holder}, description="flagops promotion lock")
    except Exception as e:  # noqa: BLE001  (sqlite's race surfaces as SQLAlchemy's IntegrityError)
        if name_taken(e):
            return False
        raise
    return True


def _holder(client: MlflowClient, lock: str) -> str | None:
    try:
        return retry_busy(client.get_registered_model, lock).tags.get(HOLDER_TAG)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _break_if_stale(client: MlflowClient, lock: str) -> None:
    try:
        created = retry_busy(client.get_registered_model, lock).creation_timestamp
        if time.time() - created / 1000 > STALE_AFTER_S:
            print(f"registry lock {lock!r} is older than {STALE_AFTER_S:.0f} s: its holder died; deleting it")
            retry_busy(client.delete_registered_model, lock)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # released meanwhile
            raise


def retry_busy(call: Callable[..., T], *args, busy_s: float = BUSY_S, **kwargs) -> T:
    """``call(*args, **kwargs)``, retried while a sqlite store answers "database is locked"."""
    deadline, pause = time.monotonic() + busy_s, 0.05
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  (MLflow wraps it, or SQLAlchemy's OperationalError comes raw)
            if "database is locked" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise RegistryBusyError(
                    f"the MLflow sqlite store stayed locked for {busy_s:.0f} s (one writer at a time): {str(e)[:200]}; "
                    "for pipelines that run at the same time use an mlflow server on PostgreSQL (docs/deploy.md)"
                ) from e
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, 2.0)
