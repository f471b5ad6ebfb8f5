"""The only Ray Tune / Optuna glue, one job per module.

- ``space``: the search space as an Optuna define-by-run sampler; the searcher and scheduler.
- ``weights``: pretrained files resolved on the driver, installed on every trial's node.
- ``trial``: the Tune function trainable (one configuration, reported once per epoch).
- ``checkpoints``: a trial whose newest checkpoint is gone continues from an earlier one.
- ``fail_once``: an error that would repeat fails its trial once, not ``max_failures`` times.
- ``callbacks``: the driver closes each trial's MLflow run with its final status.
- ``tuner``: the ``tune.Tuner`` of a sweep, new or restored.
- ``state``: the sweep manifest, storage paths, and the sweep ``--resume`` continues.
- ``preflight``: everything checked before Ray starts (Ray address, weights, data, test split).
- ``gpu_preflight``: the GPU placement check, GPU memory guard and cost estimate before Tune starts.
- ``results``: progress, best trial, Pareto front and trial table from Tune's results.
- ``summary``: what a sweep prints when Tune returns (trial table, errors, front, resume command).
- ``driver``: a whole sweep, what ``pipelines/sweep.py`` runs: checks, Tune, summary, final stage.

Nothing here calls ``ray.init``: the entry point owns the Ray connection, so the same code runs
locally, on ``ray up`` clusters and under KubeRay. Import the submodules directly; this package
imports nothing, so ``import hairseg_core.search.state`` does not load the trial's torch stack.
"""
