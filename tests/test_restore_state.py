"""A sweep whose driver died while Tune copied its state to storage resumes with every trial.

The files are the ones real Tune writes (a tiny Optuna + concurrency-limited experiment run here),
then put into the state a kill mid-copy leaves: a trial list from one save, a searcher count and
limiter from the next (CI saw the resumed sweep end with "3 of 4 trials").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray.cloudpickle as cloudpickle

from hairseg_core.search.restore_state import align_searcher_with_trials

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch
    from hairseg_core.search.restore_state import align_searcher_with_trials

    def trainable(config):
        for step in range(2):
            tune.report({"loss": config["x"] + step})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = {}
    for mode, folder in zip(sys.argv[1::2], sys.argv[2::2]):
        if mode == "new":
            tuner = tune.Tuner(
                trainable,
                param_space={"x": tune.uniform(0, 1)},
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(OptunaSearch(seed=0), max_concurrent=1),
                    metric="loss", mode="min", num_samples=3,
                ),
                run_config=tune.RunConfig(name="s", storage_path=folder, verbose=0),
            )
        else:
            if mode == "repair":
                align_searcher_with_trials(folder + "/s")
            tuner = tune.Tuner.restore(folder + "/s", trainable=trainable, resume_unfinished=True, resume_errored=True)
        results = tuner.fit()
        out[mode] = sorted(str(r.metrics.get("trial_id")) for r in results if r.metrics.get("done"))
    print("RESULT " + json.dumps(out))
    """
)


def _run(*pairs: str) -> dict[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *pairs], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _newest(folder: Path, pattern: str) -> Path:
    return sorted(folder.glob(pattern))[-1]


def _cut_between_saves(sweep: Path, ghost: bool) -> str:
    """Drop the last trial from the trial list (an older save); optionally a limiter slot held by it."""
    exp_file = _newest(sweep, "experiment_state-*.json")
    state = json.loads(exp_file.read_text())
    dropped = json.loads(state["trial_data"].pop()[0])["trial_id"]  # entries: [trial JSON, run metadata JSON]
    exp_file.write_text(json.dumps(state))
    if ghost:
        search_file = _newest(sweep, "search_gen_state-*.json")
        search = cloudpickle.loads(search_file.read_bytes())
        search["name:ConcurrencyLimiter"]["live_trials"] = {dropped}
        search["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] = 1
        search_file.write_bytes(cloudpickle.dumps(search))
    return dropped


@pytest.mark.slow
def test_state_cut_between_two_saves_resumes_with_every_trial(tmp_path: Path) -> None:
    first = _run("new", str(tmp_path / "run"))["new"]
    assert len(first) == 3

    plain, repaired = tmp_path / "plain", tmp_path / "repaired"
    shutil.copytree(tmp_path / "run", plain)
    shutil.copytree(tmp_path / "run", repaired)
    _cut_between_saves(plain / "s", ghost=False)  # a ghost slot with max_concurrent 1 would hang plain Tune
    dropped = _cut_between_saves(repaired / "s", ghost=True)

    # One process each: restores of copies of one experiment in one Ray session would share a staging folder.
    out = {**_run("restore", str(plain)), **_run("repair", str(repaired))}
    # What Tune alone does with such state: the searcher believes it made 3 trials, the sweep ends with 2.
    assert len(out["restore"]) == 2, out
    # Aligned first: the lost trial is suggested again (a new id) and the ghost slot is freed.
    assert len(out["repair"]) == 3 and dropped not in out["repair"], out
    assert set(first) - {dropped} < set(out["repair"])

    again = align_searcher_with_trials(str(repaired / "s"))
    assert again is not None and not again.changed  # the state Tune saved after the resume agrees


def test_nothing_to_align_in_an_empty_folder(tmp_path: Path) -> None:
    assert align_searcher_with_trials(str(tmp_path)) is None
