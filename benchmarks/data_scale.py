"""Memory of a sweep against the size of its data set: does used memory grow with the images? (issue: data of any size)

Two steps, both in one command or apart:

1. ``--generate DIR``: a folder data set of ``--count`` 512×512 pairs (default 8 000: 7 200 train, 800 val),
   made once from celeb1k's training photos (``--source``) by random flips, shifts and brightness, saved as
   JPEG (q 92) + PNG masks like any user's folder. Not committed; generated into a cache folder.
2. ``--measure DIR [DIR ...]``: for each folder, runs the issue's command (2 trials, 1 epoch, 5 steps at
   129 px, no final stage) as a subprocess in a fresh working directory, sampling every 0.25 s:

   * system used memory, ``MemTotal - MemAvailable`` from /proc/meminfo (shared memory included), and
     ``Shmem`` (Ray's object store lives there);
   * every process of the sweep (driver, Ray's GCS / raylet / dashboard, trial workers, idle workers,
     DataLoader children) by its anonymous memory (RssAnon: its heap, what it adds to used memory; mapped
     files such as the node cache are page cache and not counted, as MemAvailable does not count them).

   It prints one JSON line per folder with the peak rise of used memory over the idle baseline, the
   process breakdown at that peak, the input path the sweep chose, and a last line with the difference
   between the two rises (the issue's bound: at most 1 GiB).

    .venv/bin/python benchmarks/data_scale.py --generate ~/.cache/hairseg/bench/folder8k
    .venv/bin/python benchmarks/data_scale.py --measure ../shared/data/celeb1k ~/.cache/hairseg/bench/folder8k

Used memory is machine-wide: other processes' changes during a run count too, so run it on a quiet machine
(the per-process sums of anonymous memory in the output do not have that problem).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "pipelines" / "sweep.py"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "celeb1k"

#: The issue's command, less the data root.
COMMAND = [
    "--num-samples",
    "2",
    "--no-finalize",
    "--set",
    "dataset=folder",
    "epochs=1",
    "max_steps_per_epoch=5",
    "crop_size=129",
    "base_size=129",
    "eval_size=129",
    "scheduler.grace_period=1",
]


# ----------------------------------------------------------------------------------------------- generate
def _jitter(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    dy, dx = (int(v) for v in rng.integers(-24, 25, size=2))
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    size = (image.shape[1], image.shape[0])
    image = cv2.warpAffine(np.ascontiguousarray(image), shift, size, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(
        np.ascontiguousarray(mask), shift, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT
    )
    gain = float(rng.uniform(0.85, 1.15))
    image = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return image, mask


def generate(dest: Path, source: Path, count: int, seed: int = 0) -> dict[str, Any]:
    """Write ``count`` 512² pairs (90 % train, 10 % val) into ``dest`` in the folder layout."""
    stems = sorted(p.stem for p in (source / "train" / "images").iterdir())
    if not stems:
        raise SystemExit(f"{source}/train/images: no images to generate from")
    rng = np.random.default_rng(seed)
    n_val = count // 10
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split in ("train", "val"):
        (partial / split / "images").mkdir(parents=True)
        (partial / split / "masks").mkdir(parents=True)
    started = time.perf_counter()
    for i in range(count):
        stem = stems[i % len(stems)]
        bgr = cv2.imread(str(source / "train" / "images" / f"{stem}.jpg"))
        mask = cv2.imread(str(source / "train" / "masks" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        bgr, mask = _jitter(bgr, mask, rng)
        split = "val" if i < n_val else "train"
        name = f"g{i:05d}"
        cv2.imwrite(str(partial / split / "images" / f"{name}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
        cv2.imwrite(str(partial / split / "masks" / f"{name}.png"), np.where(mask > 127, 255, 0).astype(np.uint8))
        if (i + 1) % 1000 == 0:
            print(f"generated {i + 1}/{count} in {time.perf_counter() - started:.0f} s", flush=True)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return {"generated": str(dest), "pairs": count, "train": count - n_val, "val": n_val}


# ----------------------------------------------------------------------------------------------- measure
def _used_bytes() -> tuple[int, int]:
    info = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"], info["Shmem"]


def _category(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return "gone"
    if "gcs_server" in cmd or name == "gcs_server":
        return "ray_gcs"
    if "raylet" in name or "/raylet" in cmd:
        return "ray_raylet"
    if "dashboard" in cmd or "monitor.py" in cmd or "log_monitor" in cmd or "runtime_env" in cmd:
        return "ray_services"
    if re.search(r"ray::(ImplicitFunc|_Inner|run_trial|Trainable)", cmd) or "ray::Imp" in name:
        return "trial_workers"
    if cmd.startswith("ray::IDLE") or "default_worker.py" in cmd or name.startswith("ray::"):
        return "ray_other_workers"
    if "pt_data_worker" in cmd or "pt_data_worker" in name:
        return "dataloader_workers"
    return f"other:{name}"


def _private_bytes(pid: int) -> tuple[int, int]:
    """(RssAnon, RssShmem) of a process: what it adds to used memory, and its share of mapped shared memory.

    File-backed pages (the node cache's memory map, shared libraries) are left out: they are page cache,
    which MemAvailable counts as available, so they are not what "used memory" measures.
    """
    anon = shmem = 0
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith("RssShmem:"):
                shmem = int(line.split()[1]) * 1024
    return anon, shmem


def _breakdown(driver_pid: int) -> dict[str, float]:
    """Anonymous memory (GiB) of the sweep's processes by role, plus the object store's shared memory mapped."""
    try:
        root = psutil.Process(driver_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out: dict[str, float] = {}
    for proc in procs:
        try:
            anon, _ = _private_bytes(proc.pid)
        except OSError:
            continue
        key = _category(proc, driver_pid)
        out[key] = out.get(key, 0.0) + anon / 2**30
    return {k: round(v, 3) for k, v in sorted(out.items())}


def measure(data_root: Path, timeout: float, cache_dir: Path) -> dict[str, Any]:
    """Run the issue's sweep over ``data_root``; return the peak rise of used memory and where it went."""
    base_used = min(_used_bytes()[0] for _ in range(8) if time.sleep(0.1) is None)
    base_shm = _used_bytes()[1]
    with tempfile.TemporaryDirectory(prefix="hairseg-scale-") as cwd:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "HAIRSEG_DATA_CACHE": str(cache_dir),
            "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlruns.db",
        }
        args = [sys.executable, str(SWEEP), *COMMAND, f"data_root={data_root}"]
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        peak = (0, 0, 0.0)
        at_peak: dict[str, float] = {}
        pss_peak: dict[str, float] = {}
        last_pss = 0.0
        while proc.poll() is None:
            used, shm = _used_bytes()
            if time.perf_counter() - last_pss > 1.0:
                sample = _breakdown(proc.pid)
                last_pss = time.perf_counter()
                if sum(sample.values()) > sum(pss_peak.values()):
                    pss_peak = sample
                if used >= peak[0]:
                    at_peak = sample
            if used > peak[0]:
                peak = (used, shm, time.perf_counter() - started)
            if time.perf_counter() - started > timeout:
                proc.kill()
                raise SystemExit(f"sweep over {data_root} did not finish in {timeout:.0f} s")
            time.sleep(0.25)
        reader.join(timeout=10)
        wall = time.perf_counter() - started
    output = "".join(lines)
    chosen = re.search(r"^data \(.*$", output, re.MULTILINE)
    return {
        "data_root": str(data_root),
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "input_path": chosen.group(0) if chosen else None,
        "peak_rise_used_gib": round((peak[0] - base_used) / 2**30, 3),
        "peak_rise_shmem_gib": round((peak[1] - base_shm) / 2**30, 3),
        "peak_at_s": round(peak[2], 1),
        "anon_gib_near_peak": at_peak,
        "anon_gib_largest_sample": pss_peak,
        "anon_total_largest_gib": round(sum(pss_peak.values()), 3),
        "tail": output[-1500:] if proc.returncode else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generate", type=Path, help="write the generated folder data set here")
    parser.add_argument("--count", type=int, default=8000)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder data set to generate from")
    parser.add_argument("--measure", type=Path, nargs="*", default=[], help="folders to run the sweep over")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="node cache for the runs (default: a fresh temporary folder)"
    )
    args = parser.parse_args()
    if args.generate:
        print(json.dumps(generate(args.generate.expanduser(), args.source, args.count)), flush=True)
    rises = []
    with tempfile.TemporaryDirectory(prefix="hairseg-scale-cache-") as fresh:
        cache = args.cache_dir or Path(fresh)
        for root in args.measure:
            result = measure(root.expanduser().resolve(), args.timeout, cache)
            print(json.dumps(result), flush=True)
            rises.append(result["peak_rise_used_gib"])
    if len(rises) == 2:
        print(json.dumps({"rise_difference_gib": round(rises[1] - rises[0], 3), "bound_gib": 1.0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
