"""What a sweep pays once to start its first trial worker, and why Ray's worker preloading does not remove it.

With ``reuse_actors`` a warm trial costs ~3 % over the plain training loop (``sweep_overhead.py``); what
keeps the whole-run ratio above that is paid once per worker: a fresh process that imports torch,
Ray Tune and MLflow before the first trial can train. This script measures that start in isolation and
tests the obvious cure, Ray's ``preload_python_modules`` system setting (every worker process imports
the named modules before it accepts work, so the raylet's prestarted idle workers would be warm).

Each variant runs in a fresh subprocess (the trial module imported, as in the sweep's driver; its own
``ray.init``, 2 CPUs) that first waits ``--settle``
seconds so the raylet's prestarted workers are up (and, with preloading, done importing):

* ``tune``          Tune function trainable, 2 trials one at a time, 1 CPU each, ``reuse_actors``; the
                    trainable's body imports ``hairseg_core.search.trial`` (what a real trial's process
                    imports): ``tuner.fit()`` to the first trial's start, the import's own seconds, whether
                    the trial ran in one of the raylet's prestarted workers, and the second trial's start
                    after the first (same process: ``reuse_actors``);
* ``tune+preload``  the same with ``_system_config={"preload_python_modules": ["hairseg_core.search.trial"]}``;
* ``actor``         a plain Ray actor (no runtime env): seconds to its first method call, prestarted or not;
* ``actor-as-tune`` the actor class Tune itself builds for a trainable (``ray.tune.execution.class_cache``:
                    it always carries a ``runtime_env`` with ``env_vars``), same measurement.

The idle workers' resident memory is printed beside each: preloading makes every idle worker hold
torch. Linux only (reads ``/proc`` to find Ray's ``ray::IDLE`` workers). Medians of ``--repeats``; the
last line is JSON.

    .venv/bin/python benchmarks/worker_start.py                 # 3 repeats, 15 s settle
    .venv/bin/python benchmarks/worker_start.py --repeats 1 --variants tune actor
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRIAL_MODULE = "hairseg_core.search.trial"
VARIANTS = ("tune", "tune+preload", "actor", "actor-as-tune")


def idle_workers() -> dict[int, float]:
    """pid -> resident MiB of every process whose title is Ray's ``ray::IDLE`` (an unused worker)."""
    page = os.sysconf("SC_PAGE_SIZE")
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes()
            rss_pages = int((proc / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile, or not ours to read
        if title.startswith(b"ray::IDLE"):
            found[int(proc.name)] = rss_pages * page / 2**20
    return found


def probe_trial(config: dict[str, Any]) -> None:
    """Tune trainable: when it started, what the trial module's import cost in this process, where it ran."""
    from ray import tune

    started = time.time()
    warm = TRIAL_MODULE in sys.modules
    __import__(TRIAL_MODULE)
    tune.report({"started": started, "import_s": time.time() - started, "warm": warm, "pid": os.getpid()})


class Probe:
    """An actor that says which process it lives in and whether the trial module was already imported."""

    def where(self) -> tuple[int, bool]:
        return os.getpid(), TRIAL_MODULE in sys.modules


def run_variant(variant: str, settle: float) -> dict[str, Any]:
    """In this process: ``ray.init``, wait for the prestarted workers, then time one variant."""
    import ray

    __import__(TRIAL_MODULE)  # as in the sweep's driver: Tune's own driver-side setup then imports nothing big
    system_config = {"preload_python_modules": [TRIAL_MODULE]} if variant == "tune+preload" else {}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=system_config)
    try:
        time.sleep(settle)
        idle = idle_workers()
        record: dict[str, Any] = {"variant": variant, "idle_workers": len(idle)}
        record["idle_rss_mib"] = statistics.fmean(idle.values()) if idle else float("nan")
        if variant.startswith("tune"):
            record.update(_time_tune(set(idle)))
        else:
            record.update(_time_actor(variant, set(idle)))
        return record
    finally:
        ray.shutdown()


def _time_tune(prestarted: set[int]) -> dict[str, Any]:
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="hairseg-worker-start-") as tmp:
        tuner = tune.Tuner(
            tune.with_resources(probe_trial, {"cpu": 1}),
            param_space={"n": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tmp, verbose=0),
        )
        start = time.time()
        results = tuner.fit()
    first, second = sorted((r.metrics for r in results), key=lambda m: m["started"])
    return {
        "first_start_s": first["started"] - start,
        "import_s": first["import_s"],
        "ready_s": first["started"] - start + first["import_s"],  # when a real trial could start training
        "warm_before_import": first["warm"],
        "prestarted": first["pid"] in prestarted,
        "second_same_process": second["pid"] == first["pid"],
        "second_import_s": second["import_s"],
    }


def _time_actor(variant: str, prestarted: set[int]) -> dict[str, Any]:
    import ray

    if variant == "actor-as-tune":
        from ray.tune.execution.class_cache import _ActorClassCache  # the class Tune builds for a trainable

        remote = _ActorClassCache().get(Probe).options(num_cpus=1)
    else:
        remote = ray.remote(num_cpus=1)(Probe)
    start = time.time()
    pid, warm = ray.get(remote.remote().where.remote())
    return {"ready_s": time.time() - start, "prestarted": pid in prestarted, "warm_before_import": warm}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--settle", type=float, default=15.0, help="seconds after ray.init before timing")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant here
    args = p.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_variant(args.one, args.settle)))
        return 0

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    records: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variants}
    for repeat in range(args.repeats):
        for variant in args.variants:  # interleaved, so drift hits every variant alike
            out = subprocess.run(
                [sys.executable, __file__, "--one", variant, "--settle", str(args.settle)],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                sys.stderr.write(out.stdout[-2000:] + out.stderr[-4000:])
                raise SystemExit(f"variant {variant!r} failed (exit {out.returncode})")
            record = json.loads(lines[-1].removeprefix("RESULT "))
            records[variant].append(record)
            ready, prestarted = record["ready_s"], record["prestarted"]
            print(f"repeat {repeat + 1} {variant:14s} ready {ready:.2f} s, prestarted worker: {prestarted}")

    print(f"\nload average {os.getloadavg()[0]:.2f}; medians of {args.repeats}:")
    print(f"{'variant':14s} {'ready s':>8s} {'start s':>8s} {'import s':>9s} {'prestarted':>11s} {'idle RSS MiB':>13s}")
    summary = {}
    for variant, rows in records.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("ready_s", "idle_rss_mib")}
        if "import_s" in rows[0]:
            med["import_s"] = statistics.median(r["import_s"] for r in rows)
            med["first_start_s"] = statistics.median(r["first_start_s"] for r in rows)
            med["second_same_process"] = all(r["second_same_process"] for r in rows)
        med["prestarted"] = sum(r["prestarted"] for r in rows)
        summary[variant] = med
        imp = f"{med['import_s']:.2f}" if "import_s" in med else "-"
        begun = f"{med['first_start_s']:.2f}" if "first_start_s" in med else "-"
        print(
            f"{variant:14s} {med['ready_s']:8.2f} {begun:>8s} {imp:>9s} {med['prestarted']:>6d}/{len(rows):<4d}"
            f" {med['idle_rss_mib']:13.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"records": records, "summary": summary}, indent=2))
    print(json.dumps({v: round(s["ready_s"], 3) for v, s in summary.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
