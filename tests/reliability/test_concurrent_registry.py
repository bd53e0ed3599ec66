"""Two pipelines finish at the same moment against one MLflow registry (issue 15, item 3).

Two real processes run the real steps, ``register_model`` then ``promote_model``, on two
tiny random BERTs with different scores: A (tiny-bert, nDCG@10 0.50) and B (tiny-bert@1,
0.45). File barriers line them up before each step, and a seeded jitter of a few
milliseconds before promotion moves their overlap around from round to round. Each round
uses a fresh registered model (``race-<round>``), so every round starts from an empty
registry: both promotions want ``@champion``, the widest race there is.

A third party, a thread of the test process, polls the aliases the whole time: every
alias it ever sees must resolve to a registered version.

After each round:

* both versions are registered, distinct, and carry their own model's hash (none lost);
* exactly one promotion saw an empty registry ("first model"); the other was decided
  against it, as if the two had run one after the other (``registry.lock.promotion_lock``);
* exactly one ``@champion``, A, the better model;
* B is ``@challenger`` either way: promoted second, it lost the gate; promoted first, it was
  champion until A beat it (A's record names it as the previous champion), and a dethroned
  champion becomes the challenger.

Stores: sqlite (one file, the default of a single user) and a real ``mlflow server`` on
PostgreSQL (``pgserver``'s embedded Postgres, the team setup of docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from flagops.data.formats import write_json, write_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RACERS = {"a": ("tiny-bert", 0.50), "b": ("tiny-bert@1", 0.45)}
SEED = 15

# One racer: imports first (seconds), then per round waits at the barrier, registers, waits
# again, sleeps its jitter and promotes. Its records land in <work>/<round>/<racer>.*.json.
WORKER = r"""
import json, os, sys, time
from pathlib import Path
from flagops.config import validate
from flagops.steps import execute

uri, racer, model, metrics, train, work, jitters = sys.argv[1:8]
work, jitters = Path(work), json.loads(jitters)

def barrier(phase):
    (work / f"{phase}.{racer}").touch()
    deadline = time.monotonic() + 120
    while not all((work / f"{phase}.{r}").exists() for r in ("a", "b")):
        if time.monotonic() > deadline:
            sys.exit(f"racer {racer}: the other racer never reached {phase}")
        time.sleep(0.0005)

for rnd, jitter in enumerate(jitters):
    cfg = validate({"profile": "tiny", "registry": {"tracking_uri": uri, "model_name": f"race-{rnd}"}})
    out = work / str(rnd)
    out.mkdir(exist_ok=True)
    barrier(f"register-{rnd}")
    execute("register_model", cfg, {"model": model, "metrics": metrics, "train_data": train},
            {"registration": out / f"{racer}.registration.json"})
    barrier(f"promote-{rnd}")
    time.sleep(jitter)
    execute("promote_model", cfg, {"registration": out / f"{racer}.registration.json"}, {"promotion": out / f"{racer}.promotion.json"})
"""


@pytest.fixture(scope="module")
def racers(tmp_path_factory):
    """Each racer's saved model and its evaluate metrics, and one train file (lineage)."""
    from flagops.models.embedder import Embedder

    root = tmp_path_factory.mktemp("racers")
    train = root / "train.jsonl"
    write_jsonl(train, [{"query": "q", "pos": ["p"], "neg": ["n"]}])
    out = {}
    for racer, (source, ndcg) in RACERS.items():
        Embedder.load(source).save(root / racer)
        write_json(root / f"{racer}.metrics.json", {"candidate/ndcg@10": ndcg, "candidate/recall@100": 0.8, "base/ndcg@10": 0.3})
        out[racer] = (root / racer, root / f"{racer}.metrics.json")
    return out, train


class AliasPoller(threading.Thread):
    """Reads every race model's aliases in a loop; records each alias it saw and any that did not resolve."""

    def __init__(self, uri: str):
        super().__init__(daemon=True)
        self.client = MlflowClient(uri, uri)
        self.stop = threading.Event()
        self.seen = 0
        self.dangling: list[str] = []
        self.errors: list[str] = []

    def run(self):
        from mlflow.exceptions import MlflowException

        while not self.stop.is_set():
            try:
                for rm in self.client.search_registered_models("name LIKE 'race-%'"):
                    for alias, version in rm.aliases.items():
                        self.seen += 1
                        try:
                            self.client.get_model_version(rm.name, str(version))
                        except MlflowException as e:
                            self.dangling.append(f"{rm.name}@{alias} -> v{version}: {e.message[:200]}")
            except MlflowException as e:  # a busy store is the racers' problem, not an alias that dangles
                self.errors.append(e.message[:200])
            time.sleep(0.01)


def race(uri: str, racers, work: Path, rounds: int) -> dict:
    """Run ``rounds`` races on ``uri``; return the records, the final registry state and the poller."""
    (models, train), rng = racers, random.Random(SEED)
    work.mkdir(exist_ok=True)
    jitters = {r: [round(rng.uniform(0, 0.03), 4) for _ in range(rounds)] for r in RACERS}
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("FLAGOPS_PARENT_RUN_ID", None)
    poller = AliasPoller(uri)
    poller.start()
    procs = {}
    for racer in RACERS:
        model, metrics = models[racer]
        args = [sys.executable, "-c", WORKER, uri, racer, str(model), str(metrics), str(train), str(work), json.dumps(jitters[racer])]
        procs[racer] = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in procs.values()) and time.monotonic() < deadline:
        if any(p.poll() for p in procs.values()):  # one racer failed: the other would wait at its barrier
            break
        time.sleep(0.2)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
    logs = {r: p.communicate()[0] for r, p in procs.items()}
    poller.stop.set()
    poller.join()
    for racer, proc in procs.items():
        assert proc.returncode == 0, f"racer {racer} failed:\n{logs[racer][-4000:]}"
    client = MlflowClient(uri, uri)
    states = []
    for rnd in range(rounds):
        read = {r: {k: json.loads((work / str(rnd) / f"{r}.{k}.json").read_text()) for k in ("registration", "promotion")} for r in RACERS}
        name = f"race-{rnd}"
        versions = {int(mv.version): mv for mv in client.search_model_versions(f"name = '{name}'")}
        aliases = {alias: int(v) for alias, v in client.get_registered_model(name).aliases.items()}
        states.append({"records": read, "versions": versions, "aliases": aliases})
    return {"rounds": states, "poller": poller, "jitters": jitters}


def check(result: dict) -> list[str]:
    """Every round's invariants (see the module docstring); returns which racer promoted first, per round."""
    poller = result["poller"]
    assert poller.seen > 0, "the poller never saw an alias: it did not overlap the races"
    assert not poller.dangling, f"aliases pointed at versions that do not exist: {poller.dangling}"
    order = []
    for rnd, state in enumerate(result["rounds"]):
        rec, versions, aliases = state["records"], state["versions"], state["aliases"]
        va, vb = rec["a"]["registration"]["version"], rec["b"]["registration"]["version"]
        assert {va, vb} == set(versions) == {1, 2}, f"round {rnd}: versions lost or duplicated: {sorted(versions)}"
        for racer, v in (("a", va), ("b", vb)):
            sha = rec[racer]["registration"]["model_sha256"]
            assert versions[v].tags["model_sha256"] == sha, f"round {rnd}: v{v} is not {racer}'s model"
        firsts = [r for r in RACERS if rec[r]["promotion"]["previous_champion"] is None]
        assert len(firsts) == 1, f"round {rnd}: {len(firsts)} promotions saw no champion (both must not): {rec}"
        assert rec["a"]["promotion"]["promoted"], f"round {rnd}: A (0.50) lost: {rec['a']['promotion']['reasons']}"
        if firsts == ["a"]:
            assert rec["b"]["promotion"]["previous_champion"] == va and not rec["b"]["promotion"]["promoted"]
        else:
            assert rec["b"]["promotion"]["promoted"] and rec["a"]["promotion"]["previous_champion"] == vb
        assert aliases == {"champion": va, "challenger": vb}, f"round {rnd}: {aliases}"
        order.append(firsts[0])
    return order


def test_sqlite_store_survives_two_pipelines_finishing_together(racers, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri, uri).search_experiments()  # the store exists (its schema made); the experiment does not yet
    order = check(race(uri, racers, tmp_path, rounds=3))
    print(f"sqlite: 3 races, first to promote per round: {order}")


# --- a real mlflow server on PostgreSQL ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server_on_postgres(tmp_path):
    """``mlflow server`` with a PostgreSQL backend store (pgserver's embedded Postgres binaries)."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (the dev extra: pip install -e '.[dev]') ships the Postgres binaries")
    pg = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        pg.psql("CREATE DATABASE mlflow;")
        # psycopg2, the driver of the kustomize base's MLflow (SQLAlchemy's plain postgresql:// means psycopg 3)
        db_uri = pg.get_uri("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)
        port = free_port()
        args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_uri, "--artifacts-destination"]
        args += [(tmp_path / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
        log = (tmp_path / "mlflow-server.log").open("w")
        server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server, tmp_path / "mlflow-server.log")
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
    finally:
        pg.cleanup()


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def test_postgres_server_survives_two_pipelines_finishing_together(racers, mlflow_server_on_postgres, tmp_path):
    order = check(race(mlflow_server_on_postgres, racers, tmp_path / "work", rounds=2))
    print(f"postgres: 2 races, first to promote per round: {order}")


# --- the lock itself: a dead holder, a live one, a busy sqlite file -------------------------


@pytest.fixture
def client(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def test_a_held_lock_makes_the_next_promotion_wait_then_fail_clearly(client):
    from flagops.registry.lock import RegistryBusyError, lock_name, promotion_lock

    with promotion_lock(client, "m"):
        assert client.get_registered_model(lock_name("m"))  # held: the registry shows it
        with pytest.raises(RegistryBusyError, match=r"another promotion has held 'm.promotion-lock' .*delete the registered model"):
            with promotion_lock(client, "m", wait_s=0.3):
                pass
    assert not client.search_registered_models(f"name = '{lock_name('m')}'")  # released
    with promotion_lock(client, "m", wait_s=0.3):  # and free again
        pass


def test_a_dead_holders_lock_is_broken_after_the_stale_age(client, monkeypatch, capsys):
    from flagops.registry import lock

    client.create_registered_model(lock.lock_name("m"), tags={lock.HOLDER_TAG: "a process that was killed"})
    monkeypatch.setattr(lock, "STALE_AFTER_S", 0.0)
    with lock.promotion_lock(client, "m", wait_s=5):
        assert client.get_registered_model(lock.lock_name("m")).tags[lock.HOLDER_TAG] != "a process that was killed"
    assert "its holder died; deleting it" in capsys.readouterr().out


def test_database_is_locked_is_retried_then_named():
    from mlflow.exceptions import MlflowException

    from flagops.registry.lock import RegistryBusyError, retry_busy

    calls = []

    def fails(times: int, error: MlflowException):
        def call():
            calls.append(1)
            if len(calls) <= times:
                raise error
            return "done"

        return call

    locked = MlflowException("(sqlite3.OperationalError) database is locked")
    assert retry_busy(fails(2, locked)) == "done" and len(calls) == 3
    with pytest.raises(RegistryBusyError, match=r"stayed locked for 0 s .*mlflow server on PostgreSQL \(docs/deploy.md\)"):
        retry_busy(fails(10**6, locked), busy_s=0.2)
    calls.clear()
    with pytest.raises(MlflowException, match="no such model"):  # any other error passes through at once
        retry_busy(fails(10**6, MlflowException("no such model", error_code="RESOURCE_DOES_NOT_EXIST")))
    assert len(calls) == 1


def test_a_raw_unique_constraint_error_means_the_lock_is_taken():
    # sqlite can let two creates of one name race past MLflow's "already exists" check; the loser
    # then gets SQLAlchemy's IntegrityError, unwrapped (seen in a clean run of the race above).
    # A stand-in client raises it, since the race itself cannot be forced.
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST
    from sqlalchemy.exc import IntegrityError

    from flagops.registry.lock import _try_create, name_taken

    raw = IntegrityError(
        "INSERT INTO registered_models ...", {}, Exception("UNIQUE constraint failed: registered_models.workspace, registered_models.name")
    )

    class RacedClient:
        def create_registered_model(self, *args, **kwargs):
            raise raw

    assert name_taken(raw) and name_taken(MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS))
    assert not name_taken(MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST))
    assert _try_create(RacedClient(), "m.promotion-lock", "holder") is False  # held by the other: wait, do not crash

    # The other variant: MLflow caught the unique-key error and looked the name up to say "already
    # exists", but its holder had deleted it meanwhile: "not found", raised while handling it.
    def released_meanwhile():
        try:
            raise raw
        except IntegrityError:
            raise MlflowException("Registered Model with name=m.promotion-lock not found", error_code=RESOURCE_DOES_NOT_EXIST) from None

    try:
        released_meanwhile()
    except MlflowException as exc:
        assert exc.__context__ is raw and name_taken(exc)
