"""Shared pieces of the sweep integration tests (real Ray, real MLflow, real Optuna; no mocks).

Why a helper module: the end-to-end, resume, tracking-server, multi-node and fault-drill tests
all run ``pipelines/sweep.py`` as a subprocess on a tiny search space and then read back what
the sweep left in MLflow and in Tune's storage. Keeping the space, the process handling and
the readers here makes every test check the same invariants the same way:

* one MLflow parent run per sweep, exactly one child run per Tune trial, all FINISHED;
* every epoch Tune saw is in the trial's MLflow metric history, with the same value.

Everything binds to 127.0.0.1, uses ephemeral ports and temporary folders, and kills what it
started (whole process trees) even when a test fails.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import yaml

if TYPE_CHECKING:
    from hairseg_core.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SWEEP = REPO / "pipelines" / "sweep.py"
FINALIZE = REPO / "pipelines" / "finalize.py"
PYTHON = sys.executable
EXPERIMENT = "hairseg-tiny"  # sweep.py names the experiment hairseg-<space name>
T = TypeVar("T")

#: A search space whose trials take seconds on one CPU core: a 16-channel MobileNetV2
#: DeepLabv3+ on 65-pixel crops of 24 synthetic images, 3 steps per epoch. So little training
#: leaves val_miou at the all-background value for most trials (ties give ASHA nothing to
#: decide on), so the objective is val_loss, which ``lr_head`` (3.5 decades) moves for every
#: trial. The random sampler with a fixed seed and one trial at a time make the trial order,
#: hence ASHA's decisions, reproducible.
TINY_SPACE: dict[str, Any] = {
    "name": "tiny",
    "description": "integration-test sweep: seconds per trial",
    "metric": "val_loss",
    "mode": "min",
    "num_samples": 4,
    "max_concurrent_trials": 1,
    "seed": 0,
    "fixed": {
        "dataset": "synthetic",
        "dataset_options": {"n_train": 24, "n_val": 8, "n_test": 8, "size": 97},
        "backbone": "mobilenet_v2",
        "pretrained": "none",
        "aspp_channels": 16,
        "decoder_channels": 16,
        "epochs": 3,
        "batch_size": 4,
        "max_steps_per_epoch": 3,
        "crop_size": 65,
        "base_size": 65,
        "num_workers": 0,
        "amp": False,
    },
    "params": {"lr_head": {"type": "float", "low": 1e-5, "high": 0.05, "log": True}},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "searcher": {"sampler": "random"},
    "resources": {"cpu": 1, "gpu": 0},
    "max_failures": 2,
    "keep_checkpoints": 1,
}


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


#: ``data: {input: stream}``: a drill's trials read their data from the node cache (the streaming input path)
#: instead of the object store. Each drill runs one path in CI; ``HAIRSEG_TEST_DATA_INPUT=stream`` (or
#: ``memory``) forces one path on every sweep test, to run the whole set on either.
STREAM = {"data": {"input": "stream"}}


def write_space(path: Path, overrides: Mapping[str, Any] | None = None) -> Path:
    """Write TINY_SPACE, with nested ``overrides`` merged in, as a search-space YAML."""
    space = _merge(TINY_SPACE, overrides or {})
    forced = os.environ.get("HAIRSEG_TEST_DATA_INPUT")
    if forced:
        space = _merge(space, {"data": {"input": forced}})
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def tiny_train_config(tmp_path: Path, **overrides: Any) -> TrainConfig:
    """A single-run config whose epochs take about a second: 16 synthetic 97-px images, 65-px crops."""
    from hairseg_core.config import TrainConfig

    settings = {
        "dataset": "synthetic",
        "data_root": str(tmp_path / "cache"),
        "dataset_options": {"size": 97, "n_train": 16, "n_val": 8, "n_test": 4},
        "backbone": "mobilenet_v2",
        "aspp_channels": 16,
        "decoder_channels": 16,
        "crop_size": 65,
        "base_size": 65,
        "batch_size": 4,
        "epochs": 3,
        "max_steps_per_epoch": 3,
        "num_workers": 0,
        "lr_backbone": 1e-3,
        "lr_head": 3e-3,
        "seed": 7,
        **overrides,
    }
    return TrainConfig(**settings)


# ----------------------------------------------------------------------------- processes
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, grace: float = 0.0, timeout: float = 30.0) -> list[psutil.Process]:
    """Kill ``pid`` and every descendant (Ray's raylet, GCS, workers...); return survivors.

    Descendants are collected *before* signalling: once the parent dies they are re-parented
    and can no longer be found through it. With ``grace`` > 0 they get SIGTERM and that long
    to exit before SIGKILL. psutil checks a process's start time before signalling it, so a
    recycled pid is never hit.
    """
    procs = process_tree(pid)
    alive = procs
    if grace > 0:
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(alive, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=timeout)
    return alive


def sweep_env(cache_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a sweep subprocess: shared synthetic cache, nothing inherited that
    could point it at another MLflow store or Ray cluster."""
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "RAY_ADDRESS"}}
    env.update(
        {
            "HAIRSEG_CACHE": str(cache_dir),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            # Tune warns on every snapshot of such short trials; the noise hides real errors.
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class SweepProcess:
    """A running ``pipelines/sweep.py``; output goes to files so a long run cannot block on a pipe."""

    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"sweep did not finish in {timeout:.0f} s\n--- stdout\n{self.stdout[-3000:]}"
                f"\n--- stderr\n{self.stderr[-6000:]}"
            ) from None

    def kill(self) -> list[psutil.Process]:
        """SIGKILL the driver and all its descendants, as a crashed machine would; return survivors."""
        if self.proc.poll() is not None:  # exited (and reaped): its pid may belong to another process now
            return []
        tree = process_tree(self.proc.pid)  # before the kill: orphans are re-parented at once
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # its process group, while the leader is unreaped
        for proc in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.proc.wait(timeout=30)
        _, survivors = psutil.wait_procs(tree, timeout=30)
        return survivors

    def describe(self) -> str:
        return f"exit {self.proc.returncode}\n--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}"


@dataclass
class Workspace:
    """A temporary working directory for one sweep: space file, env, ./mlruns.db, ./ray_results."""

    cwd: Path
    cache: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    started: list[SweepProcess] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        """The default store sweep.py uses in this directory."""
        return f"sqlite:///{self.cwd / 'mlruns.db'}"

    @property
    def storage(self) -> Path:
        return self.cwd / "ray_results"

    def space(self, overrides: Mapping[str, Any] | None = None, name: str = "tiny.yaml") -> Path:
        return write_space(self.cwd / name, overrides)

    def start(self, args: Sequence[str], log_name: str = "sweep", script: Path = SWEEP) -> SweepProcess:
        """Start the sweep (or another pipeline) in its own session, so it can be killed as a whole."""
        out, err = self.cwd / f"{log_name}.out", self.cwd / f"{log_name}.err"
        with out.open("wb") as fout, err.open("wb") as ferr:
            proc = subprocess.Popen(
                [PYTHON, str(script), *args],
                cwd=self.cwd,
                env=sweep_env(self.cache, self.extra_env),
                stdout=fout,
                stderr=ferr,
                start_new_session=True,
            )
        sweep = SweepProcess(proc, out, err)
        self.started.append(sweep)
        return sweep

    def run(
        self, args: Sequence[str], timeout: float = 300, log_name: str = "sweep", script: Path = SWEEP
    ) -> SweepProcess:
        sweep = self.start(args, log_name, script)
        sweep.wait(timeout)
        return sweep

    def cleanup(self) -> None:
        """Kill sweeps a failed test left running."""
        for sweep in self.started:
            sweep.kill()

    def sweep_dir(self) -> Path:
        """The one Tune experiment folder under ./ray_results."""
        dirs = [p for p in self.storage.iterdir() if p.is_dir()] if self.storage.is_dir() else []
        assert len(dirs) == 1, f"expected one sweep under {self.storage}, found {[p.name for p in dirs]}"
        return dirs[0]


def make_workspace(tmp_path: Path, tmp_path_factory: Any, local_store: bool = True) -> Workspace:
    """A Workspace whose synthetic-data cache and empty MLflow database are shared by the session.

    Creating MLflow's sqlite schema runs dozens of migrations (~10 s on a loaded 2-core box), so
    one empty database is made per session and copied into each workspace as ./mlruns.db
    (unless ``local_store`` is False: sweeps that track to a server must not create one).
    """
    base = Path(tmp_path_factory.getbasetemp())
    cache = base / "hairseg-cache"
    cache.mkdir(exist_ok=True)
    template = base / "mlflow-empty.db"
    if not template.is_file():
        from mlflow import MlflowClient

        building = base / "mlflow-empty.db.tmp"
        MlflowClient(f"sqlite:///{building}").search_experiments(max_results=1)
        building.rename(template)
    cwd = tmp_path / "work"
    cwd.mkdir()
    if local_store:
        shutil.copyfile(template, cwd / "mlruns.db")
    return Workspace(cwd=cwd, cache=cache)


# ----------------------------------------------------------------------------- MLflow server
class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a sqlite backend and proxied artifacts; restartable
    on the same port and store (the fault drill stops it mid-sweep)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.db = root / "server.db"
        self.artifacts = root / "server-artifacts"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as resp:  # noqa: S310 - local test server
                return resp.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 180) -> MlflowServer:
        self.starts += 1
        log = (self.root / f"server-{self.starts}.log").open("wb")
        cmd = [
            str(Path(PYTHON).parent / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.artifacts),
            "--workers",
            "1",
        ]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()
        try:
            wait_until(
                lambda: self.healthy() or self.proc.poll() is not None,
                timeout,
                f"MLflow server on {self.uri}",
            )
        except AssertionError:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{self.log_tail()}")
        return self

    def log_tail(self) -> str:
        return (self.root / f"server-{self.starts}.log").read_text(errors="replace")[-4000:]

    def stop(self, grace: float = 10) -> float:
        """Kill the server and its uvicorn workers; the port is free again afterwards.

        ``grace`` seconds of SIGTERM first (0: SIGKILL at once, a crash: requests in flight fail
        instead of being drained). Returns ``time.time()`` of the first failed ``/health`` after
        the kill, the moment the server is known to be really down.
        """
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid, grace=grace)
            self.proc.wait(timeout=10)
        self.proc = None
        wait_until(lambda: not self.healthy(), 30, f"MLflow server on {self.uri} to stop", 0.05)
        return time.time()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- Ray cluster
#: Environment a driver needs to join a cluster bound to 127.0.0.1. Ray "resolves" a loopback
#: address (``--address 127.0.0.1:PORT``) to the machine's outward IP unless it believes cluster
#: mode is off (its macOS/Windows default), and then retries a GCS that is not listening there
#: forever. Token authentication (Ray >= 2.59) needs nothing here: the cluster and the driver
#: both use the token Ray keeps in ~/.ray/auth_token.
LOOPBACK_DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@contextlib.contextmanager
def local_cluster(
    workers: int = 2, worker_env: Sequence[Mapping[str, str]] | None = None
) -> Iterator[tuple[Any, list[Any]]]:
    """A real multi-node Ray cluster on 127.0.0.1: a head with no CPUs (so every trial runs on a
    worker node) and ``workers`` nodes of one CPU each, told apart by a ``worker<i>`` resource.
    Drivers join it with ``--address cluster.address`` and :data:`LOOPBACK_DRIVER_ENV`.
    ``worker_env[i]`` overrides environment variables of worker node i's raylet and so of every
    worker process it starts (e.g. its own ``TORCH_HOME``, as a separate machine has).

    Ray records a started cluster in /tmp/ray/ray_current_cluster, where any later
    ``ray.init()`` on this machine would find and join it; the record is removed at once.
    """
    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    reset_ray_address()
    try:
        nodes = [
            cluster.add_node(
                num_cpus=1,
                node_ip_address="127.0.0.1",
                resources={f"worker{i}": 1},
                env_vars=dict(worker_env[i]) if worker_env else None,
            )
            for i in range(workers)
        ]
        yield cluster, nodes
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()


# ----------------------------------------------------------------------------- readers
@dataclass
class SweepRuns:
    """What one experiment holds in MLflow, split by the ``hairseg.kind`` tag."""

    client: Any
    parents: list[Any]
    trials: list[Any]
    #: trial runs a restarted attempt replaced (deleted, tagged ``hairseg.superseded_by``)
    superseded: list[Any] = field(default_factory=list)

    def by_trial(self) -> dict[str, Any]:
        return {r.data.tags["hairseg.trial_id"]: r for r in self.trials}

    def history(self, run_id: str, key: str = "val_miou") -> list[tuple[int, float]]:
        """(step, value) of every logged value, in logging order."""
        metrics = self.client.get_metric_history(run_id, key)
        return [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.timestamp, m.step))]


def sweep_runs(tracking_uri: str, experiment: str = EXPERIMENT) -> SweepRuns:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = (
        client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000) if exp is not None else []
    )
    kind = "hairseg.kind"
    return SweepRuns(
        client=client,
        parents=[r for r in runs if r.data.tags.get(kind) == "sweep"],
        trials=[r for r in runs if r.data.tags.get(kind) == "trial" and r.info.lifecycle_stage != "deleted"],
        superseded=[r for r in runs if r.data.tags.get(kind) == "trial" and r.info.lifecycle_stage == "deleted"],
    )


def tune_results(sweep_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result each trial reported to Tune (its result.json), keyed by trial id."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(sweep_dir.glob("trial_*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[str(rows[0]["trial_id"])] = rows
    return out


def check_sweep_accounted(
    runs: SweepRuns, results: Mapping[str, list[dict[str, Any]]], num_samples: int, epochs: int
) -> None:
    """The invariants every sweep must keep, however it was interrupted.

    One parent; one FINISHED child per Tune trial and no other; each child's per-epoch metrics hold
    exactly one value for each epoch Tune saw, in order (1..n, n = ``hairseg.epochs_run``; no repeats
    from a restarted attempt), and the value MLflow holds for an epoch is the value Tune got, i.e. no
    reported epoch is missing from MLflow. Runs a restarted attempt superseded are deleted, and each
    names a live successor; the run of a trial that Tune's saved state never recorded (the driver died
    just after the trial started) is deleted too, tagged ``hairseg.orphaned``, and no Tune trial has its id.
    """
    assert len(runs.parents) == 1, f"expected one parent run, got {[r.info.run_id for r in runs.parents]}"
    parent = runs.parents[0]
    assert len(results) == num_samples, f"Tune holds {len(results)} trials, expected {num_samples}"
    trial_ids = [r.data.tags.get("hairseg.trial_id") for r in runs.trials]
    assert sorted(trial_ids) == sorted(results), f"MLflow trial runs {trial_ids} != Tune trials {sorted(results)}"
    for trial_id, run in runs.by_trial().items():
        tags = run.data.tags
        # trial runs are top-level runs (shown one row each in MLflow's table), linked by a tag
        assert tags["hairseg.parent_run_id"] == parent.info.run_id, f"trial {trial_id} belongs to another sweep"
        assert "mlflow.parentRunId" not in tags, f"trial {trial_id} is nested: MLflow's table would fold it away"
        assert run.info.status == "FINISHED", f"trial {trial_id} run is {run.info.status}"
        rows = results[trial_id]
        for row in rows:
            assert row["training_iteration"] == row["epoch"], f"trial {trial_id}: Tune iteration != epoch: {row}"
        tune_epochs = {int(row["epoch"]): row["val_miou"] for row in rows}
        last = max(tune_epochs)
        assert sorted(tune_epochs) == list(range(1, last + 1)), f"trial {trial_id}: Tune epochs {sorted(tune_epochs)}"
        assert last <= epochs
        assert int(tags["hairseg.epochs_run"]) == last, f"trial {trial_id}: epochs_run tag {tags['hairseg.epochs_run']}"
        history = runs.history(run.info.run_id)
        for key in ("val_miou", "val_loss", "train_loss"):
            steps = [step for step, _ in runs.history(run.info.run_id, key)]
            assert steps == list(range(1, last + 1)), f"trial {trial_id}: MLflow {key} steps {steps}: one per epoch"
        final = dict(history)
        for epoch, value in tune_epochs.items():
            assert abs(final[epoch] - value) < 1e-9, (
                f"trial {trial_id} epoch {epoch}: MLflow {final[epoch]} != Tune {value}"
            )
    live = {r.info.run_id for r in runs.trials}
    for run in runs.superseded:
        if "hairseg.orphaned" in run.data.tags:  # a trial the killed driver's saved state never recorded
            orphan = run.data.tags["hairseg.trial_id"]
            assert orphan not in results, f"run {run.info.run_id} retired as orphaned, but Tune has trial {orphan}"
            assert run.info.status == "KILLED", f"orphaned run {run.info.run_id} is {run.info.status}"
            continue
        successor = run.data.tags.get("hairseg.superseded_by")
        while successor is not None and successor not in live:  # superseded more than once
            successor = runs.client.get_run(successor).data.tags.get("hairseg.superseded_by")
        assert successor in live, f"superseded run {run.info.run_id} has no live successor"
