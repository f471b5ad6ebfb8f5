"""The model registry: a final stage's ONNX model registered once per (sweep, checkpoint), ``@champion``, and back.

No pickle anywhere: a version holds MLflow's ONNX flavor plus the state-dict checkpoint ``model.pt`` and
``model.json`` as extra files, from which :meth:`ModelRegistry.load_model` rebuilds the torch module, and
:func:`resolve_model_uri` fetches the webcam exports of a ``models:/`` URI.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from hairseg_core.track.client import require_existing_store, resolve_tracking_uri
from hairseg_core.track.errors import TrackingUnavailable, first_line, login_problem
from hairseg_core.track.experiment import ExperimentRuns
from hairseg_core.track.retry import create_once, with_retries
from hairseg_core.track.tags import TAG_CHECKPOINT_DIGEST, TAG_CREATE_TOKEN, TAG_EXPORT_RUN_ID, TAG_SWEEP

CHAMPION_ALIAS = "champion"
#: Where MLflow puts a logged model's ``extra_files`` (the state-dict checkpoint and model.json).
MODEL_EXTRA_DIR = "extra_files"


class ModelRegistry(ExperimentRuns):
    """Registered versions of the webcam model: registering, finding, loading and the ``@champion`` alias."""

    def champion(self, name: str, alias: str = CHAMPION_ALIAS) -> Any | None:
        """The model version behind ``models:/<name>@champion``, or None when there is none yet."""

        def lookup() -> Any | None:
            try:
                return self.client.get_model_version_by_alias(name, alias)
            except MlflowException as exc:
                if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
                    return None
                # MLflow's basic-auth app answers 403, not 404, for the alias of a model nobody registered yet
                # (it finds no permission on a model that does not exist): the first sweep's final stage.
                if exc.error_code == "PERMISSION_DENIED" and not self.client.search_registered_models(
                    filter_string=f"name = '{name}'", max_results=1
                ):
                    return None
                raise

        return with_retries(lookup, "look up champion")

    def load_model(self, model_uri: str) -> Any:
        """A registered DeepLabv3+ back as a torch module (eval mode, CPU), rebuilt without unpickling code.

        The version's ``model.pt`` (a state dict plus the model config, read with ``weights_only=True``)
        is rebuilt by the package's own loader, and its trained scale is attached. Versions registered
        before the ONNX flavor (a pickled torch module) are rebuilt the same way from the ``model.pt`` of
        their export folder: their pickle is never loaded.
        """
        # Deferred: the artifact layer imports torch, which most tracking calls (and Ray's driver) never need.
        from hairseg_core.artifact import DEFAULT_FILES, load_model

        name = DEFAULT_FILES["checkpoint"]
        with tempfile.TemporaryDirectory(prefix="hairseg-model-") as tmp:
            try:
                checkpoint = Path(
                    with_retries(
                        lambda: mlflow.artifacts.download_artifacts(
                            artifact_uri=f"{model_uri.rstrip('/')}/{MODEL_EXTRA_DIR}/{name}",
                            dst_path=tmp,
                            tracking_uri=self.tracking_uri,
                        ),
                        "download registered checkpoint",
                    )
                )
            except (MlflowException, TrackingUnavailable, OSError):
                checkpoint = resolve_model_uri(model_uri, self.tracking_uri) / name  # an older, pickled version
            return load_model(checkpoint, "eager")  # eval mode, its train_scale attached

    def register_model(
        self,
        run_id: str,
        export_dir: str | Path,
        name: str,
        tags: Mapping[str, Any],
        after_logged: Callable[[], None] | None = None,
    ) -> str:
        """Log ``export_all``'s ONNX model to ``run_id`` with MLflow's ONNX flavor, register it; returns the version.

        No pickle: the flavor stores ``model.onnx`` itself (loaded by onnxruntime, ``mlflow.pyfunc`` takes
        an NCHW float32 batch and returns the softmax), and the state-dict checkpoint ``model.pt`` plus
        ``model.json`` ride along as extra files, from which :meth:`load_model` rebuilds the torch module.

        At most one version per (``tags["hairseg.sweep"]``, ``tags["hairseg.checkpoint_digest"]``): the version
        is looked up by those tags first, created with its tags in the same call (a version never exists
        untagged), and looked up again instead of created again when a create's answer was lost. The model
        is logged through the client, not ``mlflow.start_run``, whose exit would end ``run_id``.
        ``after_logged`` runs between logging and registering (the final stage's kill point for its drills).
        """
        sweep, digest = str(tags.get(TAG_SWEEP, "")), str(tags.get(TAG_CHECKPOINT_DIGEST, ""))

        def lookup() -> str | None:
            return self.find_model_version(name, sweep, digest) if sweep and digest else None

        found = lookup()
        if found is not None:
            return found
        mlflow.set_tracking_uri(self.tracking_uri)  # register_model resolves models:/ URIs through it
        info = self._log_onnx_model(run_id, Path(export_dir))
        if after_logged is not None:
            after_logged()
        version_tags = {k: str(v) for k, v in tags.items()}
        return create_once(
            lambda: str(mlflow.register_model(info.model_uri, name, tags=version_tags).version),
            lookup,
            "register model",
        )

    def _log_onnx_model(self, run_id: str, export_dir: Path) -> Any:
        """The export's ONNX graph (``model.json``'s ``onnx`` entry: the int8 one when the export is quantised,
        what the webcam app runs) logged onto ``run_id`` as a logged model (created at most once).

        The signature has dynamic batch, height and width; the input example is one 64x64 synthetic
        portrait, normalised as the metadata says.
        """
        import mlflow.onnx  # deferred: MLflow's ONNX flavor is lazy-loaded by mlflow itself
        import onnx  # deferred: onnx only when registering a model

        # Deferred (torch, cv2): only registering a model needs the artifact layer and its probe image.
        from hairseg_core.artifact import DEFAULT_FILES, read_metadata

        deployed = read_metadata(export_dir).files.get("onnx", DEFAULT_FILES["onnx"])
        onnx_model = onnx.load(str(export_dir / deployed))
        signature, example = _onnx_signature(onnx_model)
        extra = [str(export_dir / DEFAULT_FILES[k]) for k in ("checkpoint", "metadata")]
        logged = self._create_logged_model(run_id)
        return with_retries(  # idempotent: the same logged model's artifacts, written again
            lambda: mlflow.onnx.log_model(
                onnx_model,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=_onnx_requirements(),
                save_as_external_data=False,
                extra_files=extra,
                model_id=logged.model_id,
                run_id=run_id,
            ),
            "log model",
        )

    def _create_logged_model(self, run_id: str) -> Any:
        """A logged model of ``run_id``, created at most once (found by a token tag if an answer was lost)."""
        experiment_id = self.get_run(run_id).info.experiment_id
        token = uuid.uuid4().hex

        def find_logged() -> Any | None:
            found = self.client.search_logged_models(
                [experiment_id], filter_string=f"tags.`{TAG_CREATE_TOKEN}` = '{token}'"
            )
            return found[0] if found else None

        return create_once(
            lambda: self.client.create_logged_model(
                experiment_id, name="model", source_run_id=run_id, tags={TAG_CREATE_TOKEN: token}
            ),
            find_logged,
            "create logged model",
        )

    def find_model_version(self, name: str, sweep: str, digest: str) -> str | None:
        """The version of ``name`` registered for this sweep and checkpoint digest, or None."""
        query = f"name='{name}' and tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_CHECKPOINT_DIGEST}` = '{digest}'"
        found = with_retries(lambda: self.client.search_model_versions(query), "search model versions")
        return str(min(int(v.version) for v in found)) if found else None

    def get_model_version(self, name: str, version: str) -> Any:
        return with_retries(lambda: self.client.get_model_version(name, version), "get model version")

    def set_champion(self, name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
        with_retries(lambda: self.client.set_registered_model_alias(name, alias, version), "set alias")


def _onnx_signature(onnx_model: Any) -> tuple[ModelSignature, dict[str, np.ndarray]]:
    """NCHW float32 in, 2-class softmax out, any batch / height / width; an example input of one portrait."""
    # Deferred (torch, cv2): only registering a model needs the artifact layer and its probe image.
    from hairseg_core.artifact import normalize_image, synthetic_portrait

    graph_in, graph_out = onnx_model.graph.input[0].name, onnx_model.graph.output[0].name
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), graph_in)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1), graph_out)]),
    )
    example = {graph_in: np.ascontiguousarray(normalize_image(synthetic_portrait(64, 64)).numpy())}
    return signature, example


def _onnx_requirements() -> list[str]:
    """The pinned packages a registered version's environment needs to serve it."""
    import onnx  # deferred: onnx only when registering a model
    import onnxruntime  # deferred: onnxruntime only when registering a model

    return [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}", f"mlflow=={mlflow.__version__}"]


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """``models:/hairseg@champion`` (or ``models:/hairseg/3``) → local folder with model.onnx/.ts/.json.

    The final stage tags each registered version with the run that holds its webcam exports;
    this downloads that ``export/`` folder.
    """
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a models:/ URI")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    try:
        require_existing_store(tracking_uri)  # a look-up never creates an empty sqlite store
    except TrackingUnavailable as exc:
        raise FileNotFoundError(f"{uri}: {exc}") from None
    client = MlflowClient(tracking_uri)
    name, _, ref = uri[len("models:/") :].partition("@")
    try:
        if ref:
            version = with_retries(lambda: client.get_model_version_by_alias(name, ref), "resolve model alias")
        else:
            name, _, number = name.partition("/")
            version = with_retries(lambda: client.get_model_version(name, number), "get model version")
    except MlflowException as exc:
        login = login_problem(tracking_uri, exc)
        if login is not None:
            raise login from None
        raise FileNotFoundError(
            f"{uri}: no such registered model version in {tracking_uri} ({first_line(exc)})"
        ) from None
    run_id = version.tags.get(TAG_EXPORT_RUN_ID) or version.run_id
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="export", tracking_uri=tracking_uri))
