"""Every MLflow tag (and tag prefix) hairseg writes or reads, by name: one place to see the contract.

The values are what runs, experiments and model versions already carry in existing stores (and what the
tests, the report and saved UI views look up), so a value here never changes; a new tag gets a new name.
Grouped by what carries the tag. MLflow's own tags that hairseg sets are at the end.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- which run is which
#: The sweep a run or model version belongs to (parent, trial and final-stage runs; registered versions).
TAG_SWEEP = "hairseg.sweep"
#: What a run is: ``sweep`` (the parent run), ``trial`` or ``finalize``.
TAG_KIND = "hairseg.kind"
#: The Tune trial id of a trial run; with ``hairseg.sweep`` it finds the trial's run again.
TAG_TRIAL = "hairseg.trial_id"
#: The sweep run a trial run belongs to. Trial runs are top-level runs (see docs/tracking.md): MLflow's
#: runs table folds nested runs under a collapsed parent row and no saved view can unfold it.
TAG_PARENT = "hairseg.parent_run_id"
#: On a sweep's parent run: the sweep's folder in Tune's storage (its manifest, lease and final-stage record).
TAG_STORAGE = "hairseg.storage"
#: On a created run or logged model: a random token, so that a create whose answer was lost is found, not repeated.
TAG_CREATE_TOKEN = "hairseg.create_token"

# --------------------------------------------------------------------------- retired trial runs
#: On a deleted trial run: the run that replaced it when an attempt restarted from an older epoch.
TAG_SUPERSEDED_BY = "hairseg.superseded_by"
#: On a replacement trial run: the run it replaced.
TAG_SUPERSEDES = "hairseg.supersedes"
#: On a replacement trial run: why the old run was replaced (which checkpoint the attempt restarted from).
TAG_SUPERSEDE_REASON = "hairseg.supersede_reason"
#: On a deleted trial run: why no trial of the sweep continues it (``RunRetirement.retire_orphan_trial_run``).
TAG_ORPHANED = "hairseg.orphaned"

# --------------------------------------------------------------------------- the machine and code behind a run
#: CPU model of the machine that made the run.
TAG_CPU = "hairseg.cpu"
#: Logical cores of that machine.
TAG_CPU_COUNT = "hairseg.cpu_count"
#: GPU name of that machine (``none`` without one).
TAG_GPU = "hairseg.gpu"
#: Operating system of that machine.
TAG_PLATFORM = "hairseg.platform"
#: Host name of that machine.
TAG_HOST = "hairseg.host"
#: Python version.
TAG_PYTHON = "hairseg.python"
#: torch version.
TAG_TORCH = "hairseg.torch"
#: Ray version.
TAG_RAY = "hairseg.ray"
#: MLflow version.
TAG_MLFLOW = "hairseg.mlflow"
#: Optuna version.
TAG_OPTUNA = "hairseg.optuna"
#: Whether the git checkout had uncommitted changes (``True`` / ``False``).
TAG_GIT_DIRTY = "hairseg.git_dirty"
#: Set instead of MLflow's git commit tag when the code is not a git checkout.
TAG_GIT_COMMIT = "hairseg.git_commit"

# --------------------------------------------------------------------------- a sweep's parent run
#: The trial the sweep picked (the one the final stage exports).
TAG_BEST_TRIAL = "hairseg.best_trial"
#: The MLflow run of that trial.
TAG_BEST_RUN_ID = "hairseg.best_run_id"
#: That trial's best checkpoint (a local path or s3:// / gs:// URI): what the final stage loads.
TAG_BEST_CHECKPOINT = "hairseg.best_checkpoint"
#: The machines the trials' latencies were measured on (JSON).
TAG_LATENCY_MACHINES = "hairseg.latency_machines"
#: How the latency the Pareto pick used was measured (``search.deploy_latency``), when the driver measured it.
TAG_LATENCY_METHOD = "hairseg.latency_method"
#: The trials on the Pareto front of a multi-objective sweep (comma-separated ids).
TAG_PARETO_FRONT = "hairseg.pareto_front"
#: The search space's rule for picking one trial off the front (``select:``).
TAG_SELECT_RULE = "hairseg.select_rule"
#: Why that rule picked the trial it did.
TAG_SELECT_REASON = "hairseg.select_reason"
#: Whether the sweep's cost estimate assumed a CPU-only run (``true`` / ``false``).
TAG_ESTIMATE_CPU_RUN = "hairseg.estimate.cpu_run"
#: The GPU whose measured rates the cost estimate used (``none`` without one).
TAG_ESTIMATE_RATES_GPU = "hairseg.estimate.rates_gpu"
#: The cluster's GPUs the cost estimate knew of.
TAG_ESTIMATE_CLUSTER_GPUS = "hairseg.estimate.cluster_gpus"
#: How the cost estimate was made, and what it leaves out.
TAG_ESTIMATE_BASIS = "hairseg.estimate.basis"

# --------------------------------------------------------------------------- a trial run
#: Epochs the trial trained (ASHA stops some early).
TAG_EPOCHS_RUN = "hairseg.epochs_run"
#: Whether the scheduler stopped the trial before its last epoch (``True`` / ``False``).
TAG_EARLY_STOPPED = "hairseg.early_stopped"
#: The error that ended a failed trial.
TAG_ERROR = "hairseg.error"
#: On a failed trial's run: whether the failure was retried.
TAG_RETRIED = "hairseg.retried"
#: The Ray node the trial ran on.
TAG_NODE_ID = "hairseg.node_id"
#: That node's IP address.
TAG_NODE_IP = "hairseg.node_ip"
#: The epoch an attempt restored its checkpoint from (0: from scratch).
TAG_RESTORED_FROM_EPOCH = "hairseg.restored_from_epoch"
#: The machine the trial's inference latency was measured on.
TAG_LATENCY_MACHINE = "hairseg.latency_machine"
#: The input size that latency was measured at.
TAG_LATENCY_INPUT_SIZE = "hairseg.latency_input_size"
#: The CPU threads that latency was measured with.
TAG_LATENCY_THREADS = "hairseg.latency_threads"
#: How many timed repeats that latency is the median of.
TAG_LATENCY_REPEATS = "hairseg.latency_repeats"
#: Prefix of the latency machine's other fields (``hairseg.latency_<field>``).
TAG_LATENCY_PREFIX = "hairseg.latency_"
#: How the trial read its training data: ``memory`` (decoded, in Ray's object store) or ``stream`` (node cache).
TAG_DATA_INPUT = "hairseg.data.input"
#: The input mode the search space asked for (``auto``, ``memory`` or ``stream``).
TAG_DATA_INPUT_REQUESTED = "hairseg.data.input_requested"
#: GiB the decoded training data takes.
TAG_DATA_DECODED_GIB = "hairseg.data.decoded_gib"
#: GiB of memory the trial may hold decoded data in.
TAG_DATA_MEMORY_BUDGET_GIB = "hairseg.data.memory_budget_gib"
#: The node cache folder the data was read from, if any.
TAG_DATA_CACHE_DIR = "hairseg.data.cache_dir"
#: The short side the stored data was resized to.
TAG_DATA_STORE_SHORT_SIDE = "hairseg.data.store_short_side"
#: Prefix of each GPU setting the trial trained with (``hairseg.<knob>``: ``true`` / ``false``).
TAG_GPU_KNOB_PREFIX = "hairseg."
#: Where those GPU settings came from (``cpu``, ``fixed``, ``cache`` or ``probe``).
TAG_GPU_SETTINGS_SOURCE = "hairseg.gpu_settings_source"
#: The device the trial trained on.
TAG_TRAIN_DEVICE = "hairseg.train_device"
#: The key of the GPU settings cache entry used.
TAG_GPU_SETTINGS_KEY = "hairseg.gpu_settings_key"
#: Seconds the GPU settings probe took.
TAG_GPU_PROBE_SECONDS = "hairseg.gpu_probe_seconds"
#: Images per second the probe measured for each setting (JSON).
TAG_GPU_PROBE_IMAGES_PER_S = "hairseg.gpu_probe_images_per_s"

# --------------------------------------------------------------------------- the final stage's run and model versions
#: On a registered model version: sha256 of the checkpoint it was made from. One version per (sweep, digest).
TAG_CHECKPOINT_DIGEST = "hairseg.checkpoint_digest"
#: On a model version: the promotion decision (JSON), so a repeated final stage prints it without recomputing it.
TAG_DECISION = "hairseg.decision"
#: Model-version / run tag holding the short side (px, or "native") the network was evaluated at.
TAG_INFERENCE_SCALE = "hairseg.inference_scale"
#: Where the test metrics were computed (``native``: at each image's own resolution).
TAG_METRIC_RESOLUTION = "hairseg.metric_resolution"
#: The split the final stage evaluated.
TAG_TEST_SPLIT = "hairseg.test_split"
#: How many test images it evaluated.
TAG_TEST_IMAGES = "hairseg.test_images"
#: The data source whose test split gave Table 5.
TAG_TEST_SOURCE = "hairseg.test_source"
#: The local folder the webcam exports were written to.
TAG_EXPORT_DIR = "hairseg.export_dir"
#: The final-stage run that holds the exports (``resolve_model_uri`` downloads its ``export/``).
TAG_EXPORT_RUN_ID = "hairseg.export_run_id"
#: On a final-stage run: the model version it registered.
TAG_MODEL_VERSION = "hairseg.model_version"
#: On a final-stage run: whether that version holds ``@champion``.
TAG_PROMOTED = "hairseg.promoted"
#: On a final-stage run: why it was promoted or not.
TAG_PROMOTION_REASON = "hairseg.promotion_reason"
#: Prefix of the interval behind a promotion decision (``hairseg.promotion.<field>``: basis, diff, ci_lo, ...).
TAG_PROMOTION = "hairseg.promotion"
#: How many test images the promotion's paired bootstrap compared.
TAG_PROMOTION_IMAGES = "hairseg.promotion.images"

# --------------------------------------------------------------------------- MLflow's own tags that hairseg sets
#: What MLflow's UI reads to open an experiment in its model-training view instead of the GenAI one
#: (``mlflow.experimentKind``; values in the UI bundle: ``custom_model_development``, ``genai_development``).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
#: The value of that tag for hairseg's experiments.
EXPERIMENT_KIND = "custom_model_development"
#: A run's description in the UI (its "Description" box and column).
TAG_NOTE = "mlflow.note.content"
#: The entry point that made a run (the UI's Source column).
TAG_SOURCE_NAME = "mlflow.source.name"
#: How it was run (``LOCAL``).
TAG_SOURCE_TYPE = "mlflow.source.type"
#: The git commit of the code that made a run.
TAG_SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
#: On a run's dataset input: what the data was used for (``training``).
TAG_DATASET_CONTEXT = "mlflow.data.context"
#: Experiment tag prefix of the UI's saved views; ``?viewStateShareKey=<key>`` opens one.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
