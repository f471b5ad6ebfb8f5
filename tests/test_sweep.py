"""``pipelines/sweep.py`` end to end: Ray Tune + Optuna + ASHA on a tiny space, tracked in MLflow.

Real processes only: the sweep runs as a subprocess in a temporary directory, starts its own
local Ray, and writes ./mlruns.db and ./ray_results there; the test then reads both back.
The failure tests prove that bad input (search space, tracking URI, Ray address) is refused
with exit status 2 and a message naming it, before Ray starts and before any trial.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
from pathlib import Path

import cv2
import mlflow
import mlflow.artifacts
import numpy as np
import pytest
import yaml
from sweep_helpers import (
    EXPERIMENT,
    FINALIZE,
    TINY_SPACE,
    Workspace,
    _merge,
    check_sweep_accounted,
    free_port,
    sweep_runs,
    tune_results,
    wait_until,
)

NUM_SAMPLES = 4
EPOCHS = 3
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _download(ws: Workspace, run_id: str, path: str) -> Path:
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(ws.cwd / "downloads"), tracking_uri=ws.tracking_uri
    )
    return Path(local)


def test_sweep_end_to_end(ws: Workspace) -> None:
    space = ws.space({"fixed": {"epochs": EPOCHS}})
    args = ["--space", str(space), "--num-samples", str(NUM_SAMPLES), "--no-finalize", "--quiet"]
    sweep = ws.run([*args, "--num-cpus", "2"], timeout=300)
    assert sweep.proc.returncode == 0, sweep.describe()

    runs = sweep_runs(ws.tracking_uri, EXPERIMENT)
    results = tune_results(ws.sweep_dir())
    check_sweep_accounted(runs, results, NUM_SAMPLES, EPOCHS)
    parent = runs.parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hairseg.sweep"] == ws.sweep_dir().name
    assert parent.data.params["num_samples"] == str(NUM_SAMPLES)
    # 24 tiny images: far below the memory budget, so the data went through the object store (memory path)
    assert parent.data.tags["hairseg.data.input"] == "memory", parent.data.tags
    assert "data (synthetic/train 24, synthetic/val 8): in memory" in sweep.stdout, sweep.stdout[-2000:]
    assert "lr_head" in json.loads(parent.data.params["search_space"])

    # ASHA: grace 1, reduction factor 2 over 3 epochs stops trials below the rung median.
    epochs_run = {t: max(int(r["epoch"]) for r in rows) for t, rows in results.items()}
    stopped = {t for t, n in epochs_run.items() if n < EPOCHS}
    assert stopped, f"ASHA stopped no trial early: epochs run {epochs_run}"
    assert len(stopped) < NUM_SAMPLES, "the first trial at each rung always continues"
    for trial_id, run in runs.by_trial().items():
        assert run.data.tags["hairseg.early_stopped"] == str(trial_id in stopped)
        assert run.data.params["lr_head"] == str(results[trial_id][0]["config"]["lr_head"])
        assert "predictions/epoch001.png" in _artifact_paths(runs.client, run.info.run_id, "predictions")

    # Summary on the parent: the results table, best trial and Optuna plots.
    client, parent_id = runs.client, parent.info.run_id
    artifacts = _artifact_paths(client, parent_id)
    assert {"results/trials.json", "results/trials.csv", "best_trial.json", "search_space.json"} <= artifacts
    table = list(csv.DictReader(io.StringIO(_download(ws, parent_id, "results/trials.csv").read_text())))
    assert sorted(row["trial_id"] for row in table) == sorted(results)
    assert {row["trial_id"]: int(row["epochs_run"]) for row in table} == epochs_run
    best_loss = {t: min(r["val_loss"] for r in rows) for t, rows in results.items()}
    best = min(best_loss, key=best_loss.get)
    assert parent.data.tags["hairseg.best_trial"] == best
    assert parent.data.tags["hairseg.best_run_id"] == runs.by_trial()[best].info.run_id
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best_loss[best])
    for plot in ("optimization_history", "intermediate_values"):
        assert f"plots/{plot}.png" in artifacts, f"missing Optuna plot {plot}: {sorted(artifacts)}"
        assert _download(ws, parent_id, f"plots/{plot}.png").read_bytes()[:8] == PNG_MAGIC
    for plot in ("param_importances", "parallel_coordinate"):  # drawn, or the reason it was not
        assert {f"plots/{plot}.png", f"plots/{plot}.txt"} & artifacts

    # The cost up front and beside what it took (a CPU run: the workload, no GPU-hours), on the parent run;
    # each trial run records the AMP / channels-last / cudnn settings it trained with.
    assert "cost estimate (CPU run)" in sweep.stdout and "cost: the sweep took" in sweep.stdout, sweep.stdout
    assert parent.data.metrics["estimate_train_images_upper"] == NUM_SAMPLES * EPOCHS * 3 * 4  # 3 steps of 4
    assert parent.data.metrics["actual_wall_hours"] > 0 and parent.data.tags["hairseg.estimate.cpu_run"] == "true"
    assert "cost/estimate.txt" in artifacts
    for run in runs.by_trial().values():
        assert run.data.tags["hairseg.gpu_settings_source"] == "cpu" and run.data.tags["hairseg.amp"] == "false"

    # Every trial ended: --resume of this sweep has nothing to do (and says so, before Ray starts).
    again = ws.run(["--resume", "--run-name", ws.sweep_dir().name, "--quiet"], timeout=120, log_name="again")
    assert again.proc.returncode == 0, again.describe()
    assert "already finished" in again.stdout and "Started a local Ray instance" not in again.stderr
    newest = ws.run(["--resume", "--space", str(space), "--quiet"], timeout=120, log_name="newest")
    assert newest.proc.returncode == 2 and "no unfinished restorable sweep" in newest.stderr


def test_invalid_space_exits_2_before_ray(ws: Workspace) -> None:
    space = ws.space({"params": {"lr_headd": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    sweep = ws.run(["--space", str(space), "--no-finalize"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert f"{space}: params.lr_headd" in sweep.stderr, sweep.stderr
    assert "not a training setting" in sweep.stderr
    assert "Ray instance" not in sweep.stderr, "Ray must not start for an invalid space"
    assert not ws.storage.exists()


def _folder_space(ws: Workspace, splits: tuple[str, ...] = ("train",)) -> tuple[Path, Path]:
    """A 6-image folder dataset (``splits``) and a tiny search space over it."""
    root = ws.cwd / "data"
    rng = np.random.default_rng(0)
    for split in splits:
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(root / split / "images" / f"p{i}.png"), rng.integers(0, 256, (40, 40, 3), np.uint8))
            cv2.imwrite(str(root / split / "masks" / f"p{i}.png"), np.where(rng.random((40, 40)) > 0.5, 255, 0))
    raw = _merge(TINY_SPACE, {"fixed": {"dataset": "folder", "data_root": str(root)}})
    raw["fixed"]["dataset_options"] = {"val_fraction": 0.34}
    space = ws.cwd / "folder.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    return root, space


def test_missing_test_split_fails_before_ray_unless_no_finalize(ws: Workspace) -> None:
    _, space = _folder_space(ws)
    sweep = ws.run(["--space", str(space), "--quiet"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert "the final stage needs the 'test' split" in sweep.stderr and "--no-finalize" in sweep.stderr
    assert "Started a local Ray instance" not in sweep.stderr


def test_corrupt_image_fails_before_ray_naming_the_file(ws: Workspace) -> None:
    root, space = _folder_space(ws)
    (root / "train" / "images" / "p3.png").write_bytes(b"\x89PNG truncated by a failed copy")
    sweep = ws.run(["--space", str(space), "--quiet"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert "p3.png" in sweep.stderr and "error: dataset 'folder'" in sweep.stderr
    assert "Traceback" not in sweep.stderr
    assert "Started a local Ray instance" not in sweep.stderr, "bad data must fail before Ray starts"
    assert not sweep_runs(ws.tracking_uri).parents, "no MLflow parent run for a sweep that never started"


def test_corrupt_test_image_fails_before_ray_naming_the_file(ws: Workspace) -> None:
    """The final stage's test split is decoded before Ray, not read after hours of training."""
    root, space = _folder_space(ws, splits=("train", "test"))
    (root / "test" / "images" / "p4.png").write_bytes(b"\x89PNG cut short")
    sweep = ws.run(["--space", str(space), "--quiet"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert "the final stage needs the 'test' split" in sweep.stderr and "p4.png" in sweep.stderr
    assert "Started a local Ray instance" not in sweep.stderr
    assert not sweep_runs(ws.tracking_uri).parents


def test_set_overrides_are_validated_like_the_file(ws: Workspace) -> None:
    space = ws.space()
    bad = ws.run(["--space", str(space), "--set", "scheduler.grace_period=9"], timeout=120)
    assert bad.proc.returncode == 2 and "scheduler.grace_period (9) exceeds epochs (3)" in bad.stderr
    typo = ws.run(["--space", str(space), "--set", "lr_heads=0.1"], timeout=120)
    assert typo.proc.returncode == 2 and "fixed.lr_heads: not a training setting" in typo.stderr
    # a searched setting given with --set is pinned (out of params), so its value is checked as a fixed one
    searched = ws.run(["--space", str(space), "--set", "lr_head=-0.1"], timeout=120)
    assert searched.proc.returncode == 2 and "fixed: lr_head: " in searched.stderr, searched.stderr
    resumed = ws.run(["--resume", "--set", "epochs=1"], timeout=120)
    assert resumed.proc.returncode == 2 and "--set would change the settings of a sweep being resumed" in resumed.stderr


def test_unreachable_tracking_server_exits_2_before_any_trial(ws: Workspace) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # bound and released: nothing listens there
    space = ws.space()
    sweep = ws.run(["--space", str(space), "--no-finalize", "--tracking-uri", uri], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert f"cannot reach the MLflow tracking server at {uri}" in sweep.stderr, sweep.stderr
    assert "Ray instance" not in sweep.stderr
    assert not ws.storage.exists()


def test_unreachable_ray_cluster_exits_2_instead_of_hanging(ws: Workspace) -> None:
    address = f"127.0.0.1:{free_port()}"  # ray.init would retry this GCS address forever
    space = ws.space()
    sweep = ws.run(["--space", str(space), "--no-finalize", "--address", address], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert f"cannot reach the Ray cluster at {address}" in sweep.stderr, sweep.stderr
    assert not ws.storage.exists()


def test_deterministic_error_fails_once_and_a_killed_worker_is_retried(ws: Workspace) -> None:
    """Errors that would repeat end the trial at its first attempt; a killed worker is retried.

    Both are real: ``lr_head: .inf`` makes Adam's first step turn the weights NaN, and the trainer's
    guard raises ``FloatingPointError`` on the next loss (a seeded run does that on every attempt);
    the other failure is a SIGKILL of a healthy trial's worker process mid-training, which a retry
    on the same (or another) node fixes. ``max_failures: 1`` allows one retry.
    """
    raw = _merge(TINY_SPACE, {"num_samples": 4, "max_failures": 1, "fixed": {"epochs": 4}, "seed": 1})
    raw["fixed"]["max_steps_per_epoch"] = 6
    raw["params"] = {"lr_head": {"type": "categorical", "choices": [0.003, float("inf")]}}
    raw["scheduler"] = {"type": "fifo"}
    space = ws.cwd / "crashing.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    sweep = ws.start(["--space", str(space), "--no-finalize", "--quiet", "--num-cpus", "2"])

    def healthy_trial_mid_run() -> tuple[str, int] | None:
        """A trial with a finite lr_head, >= 1 reported epoch and epochs to go, and its worker pid."""
        if sweep.proc.poll() is not None:
            raise AssertionError(f"the sweep ended before the kill: {sweep.describe()}")
        if not ws.storage.is_dir() or not any(ws.storage.iterdir()):
            return None
        for trial_id, rows in tune_results(ws.sweep_dir()).items():
            if rows[-1]["config"]["lr_head"] == 0.003 and 1 <= len(rows) < 3:
                return trial_id, int(rows[-1]["pid"])
        return None

    killed, pid = wait_until(healthy_trial_mid_run, 240, "a healthy trial mid-run", 0.1)
    os.kill(pid, signal.SIGKILL)
    sweep.wait(300)
    assert sweep.proc.returncode == 0, sweep.describe()

    runs = sweep_runs(ws.tracking_uri, EXPERIMENT)
    trial_dirs = {p.name.removeprefix("trial_"): p for p in ws.sweep_dir().glob("trial_*")}
    assert len(trial_dirs) == 4 and len(runs.trials) == 4, "one Tune trial and one MLflow run per sample"
    by_trial = runs.by_trial()
    crashed = {t for t, r in by_trial.items() if r.data.params["lr_head"] == "inf"}
    assert crashed and crashed != set(by_trial), f"seed 1 should sample both values: {sorted(by_trial)}"
    for trial_id, run in by_trial.items():
        error_file = trial_dirs[trial_id] / "error.txt"
        if trial_id in crashed:
            assert run.info.status == "FAILED", f"crashed trial {trial_id} run is {run.info.status}"
            text = error_file.read_text()
            assert "FloatingPointError" in text and "training loss became nan" in text
            assert text.count("Failure # ") == 1, f"a deterministic error must not be retried:\n{text}"
            assert "not retried" in run.data.tags["hairseg.error"]
            assert "training loss became nan" in run.data.tags["hairseg.error"]
        elif trial_id == killed:
            assert error_file.read_text().count("Failure # ") == 1, "the killed attempt is the only failure"
            assert run.info.status == "FINISHED"
            assert [s for s, _ in runs.history(run.info.run_id)][-1] == 4, "the retry trained to the end"
        else:
            assert run.info.status == "FINISHED" and not error_file.exists()
            assert [s for s, _ in runs.history(run.info.run_id)] == [1, 2, 3, 4]
    assert "training loss became nan" in sweep.stdout  # the summary table names the error


def test_sweep_with_final_stage_then_finalize_alone(ws: Workspace) -> None:
    """The main job end to end: trials, Table 5, exports, registry promotion; then the stage alone."""
    space = ws.space({"num_samples": 2})
    # --set: the space's own keys, checked like the file (bare keys are training settings)
    overrides = ["--set", "epochs=2", "finalize.max_test_images=4", "finalize.export_size=97"]
    sweep = ws.run(["--space", str(space), "--quiet", "--num-cpus", "2", *overrides], timeout=600)
    assert sweep.proc.returncode == 0, sweep.describe()
    # MLflow warns at every pickled model it saves; the registered model is ONNX + a state dict
    assert "Pickle or CloudPickle" not in sweep.stderr + sweep.stdout, sweep.stderr[-3000:]
    out = sweep.stdout
    assert "post-processing on the test split (paper Table 5)" in out
    for method in ("baseline", "crf", "matting", "crf+matting"):
        assert re.search(rf"^{re.escape(method)}\s+0\.\d+", out, re.MULTILINE), f"no Table 5 row {method}"
    assert "registered hairseg v1: promoted to @champion" in out

    name = ws.sweep_dir().name
    export = ws.cwd / "exports" / name
    assert {"model.onnx", "model.ts", "model.json"} <= {p.name for p in export.iterdir()}
    meta = json.loads((export / "model.json").read_text())
    assert meta["input"]["size"] == 97

    client = mlflow.MlflowClient(ws.tracking_uri)
    champion = client.get_model_version_by_alias("hairseg", "champion")
    assert str(champion.version) == "1" and champion.tags["hairseg.sweep"] == name
    final_runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id], "tags.`hairseg.kind` = 'finalize'"
    )
    assert len(final_runs) == 1
    assert "table5/postprocessing.json" in _artifact_paths(client, final_runs[0].info.run_id, "table5")

    # The stage alone on the same sweep: the same model ties with the champion, so a dry run keeps it.
    alone = ws.run(["--experiment", EXPERIMENT, "--dry-run"], timeout=300, log_name="finalize", script=FINALIZE)
    assert alone.proc.returncode == 0, alone.describe()
    assert "champion kept" in alone.stdout and "dry run" in alone.stdout.lower()
    assert len(client.search_model_versions("name='hairseg'")) == 1
    assert str(client.get_model_version_by_alias("hairseg", "champion").version) == "1"


def test_sweep_where_every_trial_errors_fails_clearly(ws: Workspace) -> None:
    raw = _merge(TINY_SPACE, {"num_samples": 2, "max_failures": 0, "fixed": {"epochs": 1}})
    raw["params"] = {"lr_head": {"type": "categorical", "choices": [float("inf")]}}
    space = ws.cwd / "doomed.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    sweep = ws.run(["--space", str(space), "--quiet", "--num-cpus", "2"], timeout=300)
    assert sweep.proc.returncode == 1, sweep.describe()
    # Tune logs each trial's traceback as it happens; the sweep's own last word is one clear line
    assert "error: every trial errored" in sweep.stderr.strip().splitlines()[-1]
    assert "2 trial(s) errored" in sweep.stdout and "training loss became nan" in sweep.stdout
    runs = sweep_runs(ws.tracking_uri, EXPERIMENT)
    assert runs.parents[0].info.status == "FAILED"
    assert {r.info.status for r in runs.trials} == {"FAILED"}
    assert not (ws.cwd / "exports").exists()
