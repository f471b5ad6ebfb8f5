"""Pretrained weights are resolved before Ray starts, and errors that would repeat are classified.

The sweep tests run ``pipelines/sweep.py`` for real: with an empty torch hub cache and the offline
switch it must stop in seconds, before Ray and before any MLflow run, naming the file and where to
put it; with a mirror on 127.0.0.1 that serves torchvision's real MobileNetV2 file it fetches,
verifies and trains.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from pydantic import ValidationError
from sweep_helpers import EXPERIMENT, SweepProcess, Workspace, sweep_runs

from hairseg_core.artifact import read_metadata
from hairseg_core.config import ConfigError, TrainConfig
from hairseg_core.data.errors import DataError
from hairseg_core.models import WeightsMismatchError, WeightsNotFoundError
from hairseg_core.search.trial_errors import NonRetriableTrialError, is_deterministic
from hairseg_core.search.weights import install_weights
from hairseg_core.track.errors import TrackingUnavailable

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-b0353104.pth"
needs_weights = pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="needs ../shared/weights")


# ----------------------------------------------------------------------------- classification
def _validation_error() -> ValidationError:
    try:
        TrainConfig(batch_size=0)
    except ValidationError as exc:
        return exc
    raise AssertionError("batch_size=0 should be invalid")


def _cv2_error() -> BaseException:
    """A real ``cv2.error``: resizing an empty image."""
    import cv2
    import numpy as np

    try:
        cv2.resize(np.zeros((0, 0, 3), np.uint8), (4, 4))
    except cv2.error as exc:
        return exc
    raise AssertionError("cv2.resize of an empty image should fail")


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("space.yaml: fixed.epochs: bad"),
        _validation_error(),
        DataError("img_3.png: mask 10x10 does not match image 12x12"),
        WeightsNotFoundError("mobilenet_v2-b0353104.pth not found"),
        WeightsMismatchError("3 keys with the wrong shape"),
        FloatingPointError("training loss became nan"),
        ValueError("batch_size 64 exceeds the 24 training images"),
        RuntimeError("size mismatch for classifier.weight: copying a param with shape [2, 16]"),
        RuntimeError("Sizes of tensors must match except in dimension 1"),
        # issue 28: none of these is fixed by another attempt
        RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`"),
        PermissionError(13, "Permission denied", "/data/CelebAMask-HQ/img/1.jpg"),
        FileNotFoundError(2, "No such file or directory", "/data/missing.png"),
        _cv2_error(),
        MlflowException("Invalid value 'x' for parameter 'lr'", INVALID_PARAMETER_VALUE),
    ],
)
def test_errors_that_would_repeat_are_deterministic(error: BaseException) -> None:
    assert is_deterministic(error)


@pytest.mark.parametrize(
    "error",
    [
        TrackingUnavailable("MLflow at http://127.0.0.1:5000 unreachable for 120 s"),
        ConnectionError("connection reset"),
        TimeoutError("timed out"),
        OSError("No space left on device"),
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (input shape [8, 3, 513, 513])"),
        RuntimeError("something unexpected in a worker"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        MlflowException("503 Service Unavailable", TEMPORARILY_UNAVAILABLE),
        KeyboardInterrupt(),
    ],
)
def test_errors_a_retry_can_fix_are_not_deterministic(error: BaseException) -> None:
    assert not is_deterministic(error)


def test_non_retriable_error_keeps_the_original_message() -> None:
    error = NonRetriableTrialError(FloatingPointError("training loss became nan at epoch 1"))
    assert str(error).startswith("FloatingPointError: training loss became nan at epoch 1")
    assert "not retried" in str(error) and error.original_type == "FloatingPointError"


# ----------------------------------------------------------------------------- install on a node
def test_install_weights_writes_missing_files_atomically_and_skips_present_ones(tmp_path: Path) -> None:
    payload = b"\x00weights" * 1000
    written = install_weights({"mobilenet_v2-b0353104.pth": payload}, tmp_path)
    assert written == [tmp_path / "mobilenet_v2-b0353104.pth"]
    assert (tmp_path / "mobilenet_v2-b0353104.pth").read_bytes() == payload
    assert install_weights({"mobilenet_v2-b0353104.pth": payload}, tmp_path) == [], "already there: untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mobilenet_v2-b0353104.pth"], "no .part file left"
    assert install_weights(None, tmp_path) == [] and install_weights({}, tmp_path) == []


# ----------------------------------------------------------------------------- the sweep's preflight
PRETRAINED_SPACE = {"num_samples": 1, "fixed": {"epochs": 1, "pretrained": "imagenet"}}


@pytest.fixture
def empty_torch_home(ws: Workspace, tmp_path: Path) -> Path:
    home = tmp_path / "torch-home"
    home.mkdir()
    ws.extra_env.update({"TORCH_HOME": str(home), "HAIRSEG_WEIGHTS_DIR": ""})
    return home


def test_offline_sweep_without_weights_exits_2_before_ray_and_mlflow(ws: Workspace, empty_torch_home: Path) -> None:
    ws.extra_env["HAIRSEG_OFFLINE"] = "1"
    space = ws.space(PRETRAINED_SPACE)
    started = time.monotonic()
    sweep = ws.run(["--space", str(space), "--no-finalize"], timeout=120)
    elapsed = time.monotonic() - started
    assert sweep.proc.returncode == 2, sweep.describe()
    err = sweep.stderr
    assert "error: pretrained weights" in err
    assert "mobilenet_v2-b0353104.pth" in err, "the message names the file"
    assert str(empty_torch_home / "hub" / "checkpoints") in err, "and where to put it"
    assert "pretrained: none" in err, "and the alternative"
    assert "Started a local Ray instance" not in err and not ws.storage.exists(), "Ray never started"
    client = mlflow.MlflowClient(ws.tracking_uri)
    assert client.get_experiment_by_name(EXPERIMENT) is None, "no MLflow experiment or run was created"
    assert elapsed < 60, f"took {elapsed:.0f} s"


class _CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def weights_mirror(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving a folder that holds torchvision's MobileNetV2 file."""
    root = tmp_path / "mirror"
    root.mkdir()
    (root / SHARED_WEIGHTS.name).symlink_to(SHARED_WEIGHTS)
    _CountingHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_CountingHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _CountingHandler.requests
    finally:
        server.shutdown()
        server.server_close()


@needs_weights
def test_sweep_fetches_weights_once_from_a_mirror_verifies_and_trains(
    ws: Workspace, empty_torch_home: Path, weights_mirror: tuple[str, list[str]]
) -> None:
    url, requests = weights_mirror
    ws.extra_env.update({"HAIRSEG_OFFLINE": "0", "HAIRSEG_WEIGHTS_MIRROR": url})
    space = ws.space({**PRETRAINED_SPACE, "num_samples": 2, "max_concurrent_trials": 2})
    sweep = ws.run(["--space", str(space), "--no-finalize", "--quiet", "--num-cpus", "2"], timeout=300)
    assert sweep.proc.returncode == 0, sweep.describe()
    cached = empty_torch_home / "hub" / "checkpoints" / SHARED_WEIGHTS.name
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == hashlib.sha256(SHARED_WEIGHTS.read_bytes()).hexdigest()
    assert requests == [f"/{SHARED_WEIGHTS.name}"], f"fetched exactly once, by the driver: {requests}"
    runs = sweep_runs(ws.tracking_uri)
    assert {r.info.status for r in runs.trials} == {"FINISHED"} and len(runs.trials) == 2
    # the trials trained from the ImageNet filters: after 3 small steps the first conv still matches them
    reference = torch.load(SHARED_WEIGHTS, weights_only=True)["features.0.0.weight"].flatten()
    checkpoints = sorted(ws.sweep_dir().glob("trial_*/checkpoint_*/checkpoint.pt"))
    assert checkpoints, "every trial checkpoints its epoch"
    for path in checkpoints:
        trained = torch.load(path, weights_only=True)["model_state"]["backbone.features.0.0.weight"].flatten()
        correlation = torch.corrcoef(torch.stack([reference, trained]))[0, 1]
        assert correlation > 0.95, f"{path}: first conv does not come from the ImageNet file (r={correlation:.3f})"


# ----------------------------------------------------------------------------- the laptop study, tiny
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LAPTOP_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "laptop.yaml"


#: shrinks a shipped real-data space to seconds: one 2-step epoch at 65 px, three test images per source
TINY_OVERRIDES = (
    "epochs=1",
    "max_steps_per_epoch=2",
    "crop_size=65",
    "base_size=65",
    "eval_size=65",
    "precise_bn_batches=1",
    "scheduler.grace_period=1",
    "finalize.max_test_images=3",
    "finalize.export_size=65",
)


def _run_shipped_space(
    ws: Workspace, tmp_path: Path, space_file: Path, num_samples: int, extra: tuple[str, ...] = ()
) -> SweepProcess:
    """``pipelines/sweep.py`` on a shipped space as it is, cut to seconds by :data:`TINY_OVERRIDES` + ``extra``.

    Its ``../shared/data`` roots (relative to the repository) are made absolute, and the ImageNet file is
    linked into a fresh torch hub cache: the sweep takes the path a user's first run takes, with no download.
    """
    home = tmp_path / "torch-home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    (home / "hub" / "checkpoints" / SHARED_WEIGHTS.name).symlink_to(SHARED_WEIGHTS)
    ws.extra_env.update({"TORCH_HOME": str(home), "HAIRSEG_WEIGHTS_DIR": ""})
    space = ws.cwd / space_file.name
    space.write_text(space_file.read_text().replace("../shared/data", str(SHARED_DATA)))
    overrides = [*TINY_OVERRIDES, *extra]
    args = ["--space", str(space), "--num-samples", str(num_samples), "--quiet", "--num-cpus", "2", "--set", *overrides]
    sweep = ws.run(args, timeout=600)
    assert sweep.proc.returncode == 0, sweep.describe()
    return sweep


@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(not (SHARED_DATA / "celeb1k").is_dir(), reason="needs ../shared/data")
def test_laptop_study_end_to_end_with_tiny_overrides(ws: Workspace, tmp_path: Path) -> None:
    """search_spaces/laptop.yaml as shipped (real data, ImageNet weights, three pooled sources), cut to seconds."""
    sweep = _run_shipped_space(ws, tmp_path, LAPTOP_SPACE, num_samples=1)
    out = sweep.stdout
    assert "training draws: celeb1k 742 img" in out and "celebamask4k 3491 img" in out, "the pool's shares"
    assert "post-processing on the test split (paper Table 5)" in out
    assert "celeb1k" in out and "figaro1k" in out, "the final stage tests every source"
    assert "registered hairseg-laptop v1: promoted to @champion" in out
    client = mlflow.MlflowClient(ws.tracking_uri)
    version = client.get_model_version_by_alias("hairseg-laptop", "champion")
    assert float(version.tags["test_figaro1k_miou"]) > 0 and float(version.tags["test_miou"]) > 0
    runs = sweep_runs(ws.tracking_uri, "hairseg-laptop")
    (trial,) = runs.trials
    assert trial.info.status == "FINISHED"
    metrics = trial.data.metrics
    # validated per source, val_miou the mean of the two (val_combine: mean)
    assert metrics["val_miou"] == pytest.approx((metrics["val_celeb1k_miou"] + metrics["val_figaro1k_miou"]) / 2)
    assert "val_celebamask4k_miou" not in metrics


WEBCAM_LAPTOP_SPACE = LAPTOP_SPACE.with_name("webcam_laptop.yaml")


@pytest.mark.slow
@needs_weights
@pytest.mark.skipif(not (SHARED_DATA / "celeb1k").is_dir(), reason="needs ../shared/data")
def test_webcam_laptop_space_end_to_end_exports_int8_picked_on_quiet_latency(ws: Workspace, tmp_path: Path) -> None:
    """search_spaces/webcam_laptop.yaml as shipped, cut to seconds: the pick uses the driver's latency, the
    export's ONNX entry is the int8 graph, whose own test accuracy is measured and logged."""
    # as shipped: its four enqueued heads, so four (tiny) trials
    extra = ("finalize.calibration_images=4", "finalize.latency_repeats=20")
    sweep = _run_shipped_space(ws, tmp_path, WEBCAM_LAPTOP_SPACE, num_samples=4, extra=extra)
    out = sweep.stdout
    assert "measured by the driver after every trial ended" in out and "onnx int8" in out
    assert "the exported int8 graph on every test source" in out
    assert "registered hairseg-webcam-laptop v1: promoted to @champion" in out
    export = next((ws.cwd / "exports").iterdir())
    meta = read_metadata(export)
    assert meta.files["onnx"] == "model.int8.onnx" and (export / "model.onnx").is_file()
    assert meta.quantization["calibration_images"] == 4 and meta.latency_ms["frame_1_thread"] > 0
    assert meta.metrics["miou"] > 0 and meta.metrics["fp32_miou"] > 0
    runs = sweep_runs(ws.tracking_uri, "hairseg-webcam_laptop")
    assert runs.parents[0].data.tags["hairseg.latency_method"].startswith("latency_ms: ms per 640x480 frame")
    experiment = runs.client.get_experiment_by_name("hairseg-webcam_laptop").experiment_id
    (finalize,) = runs.client.search_runs([experiment], "tags.`hairseg.kind` = 'finalize'")
    final = finalize.data.metrics
    assert final["export_celeb1k_miou"] > 0 and final["export_figaro1k_miou"] > 0
    assert final["export_celeb1k_miou_lo"] <= final["export_celeb1k_miou"] <= final["export_celeb1k_miou_hi"]
