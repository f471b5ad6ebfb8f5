"""Which trial errors a retry can fix, and which would only repeat.

Ray Tune retries a crashed trial ``max_failures`` times. That is right for a lost node, a killed
worker or a tracking-server outage, and a waste for everything that depends only on the trial's
settings and inputs: an invalid setting, missing or mismatched weights, a corrupt sample, a shape
error or a loss that turns NaN under a seeded run fail again on every attempt, each one costing a
worker start (and a GPU) before saying the same thing. This module only classifies; the Ray glue
(``hairseg_core.search.trial``) decides what to do with the answer.
"""

from __future__ import annotations

import re

from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from hairseg_core.config import ConfigError
from hairseg_core.data.errors import DataError
from hairseg_core.models.weights import WeightsMismatchError, WeightsNotFoundError
from hairseg_core.track.errors import PERMANENT_ERRORS, TrackingUnavailable

#: Errors that a new attempt (possibly on another node, after a server came back) can fix.
TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TrackingUnavailable,
    ConnectionError,
    TimeoutError,
    MemoryError,
    OSError,
)

#: Errors that depend only on the trial's settings and inputs.
DETERMINISTIC_TYPES: tuple[type[BaseException], ...] = (
    ConfigError,
    ValidationError,
    DataError,
    WeightsNotFoundError,
    WeightsMismatchError,
    FloatingPointError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    NotImplementedError,
)

#: torch raises shape and dtype problems as plain RuntimeError; these messages say so.
_DETERMINISTIC_RUNTIME = re.compile(
    r"size mismatch|shape|sizes of tensors|must match|dimension|expected .* but got|out of bounds"
    r"|Given groups|Expected input|channels|dtype",
    re.IGNORECASE,
)
_OUT_OF_MEMORY = re.compile(r"out of memory|CUDA error|NCCL", re.IGNORECASE)
#: A CUDA kernel's own assertion (an index out of range, a label outside [0, classes)): the same batch trips it
#: again on any GPU. Checked before the generic "CUDA error" above, which a device-side assert also says.
_DEVICE_ASSERT = re.compile(r"device-side assert", re.IGNORECASE)
#: Files a trial reads or writes that are missing or forbidden stay so on a retry (a retry on another node of a
#: shared storage sees the same files); a lost node shows as Ray's own errors, not these.
_FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def _is_cv2_error(error: BaseException) -> bool:
    """OpenCV's ``cv2.error`` (a bad image, an impossible resize), recognised without importing cv2."""
    return any(cls.__name__ == "error" and cls.__module__.split(".")[0] == "cv2" for cls in type(error).__mro__)


def _is_permanent_mlflow_error(error: BaseException) -> bool:
    """An MLflow request the server rejected as such (``INVALID_PARAMETER_VALUE``, ``PERMISSION_DENIED``, ...)."""
    return isinstance(error, MlflowException) and error.error_code in PERMANENT_ERRORS


def is_deterministic(error: BaseException) -> bool:
    """Whether ``error`` would happen again on a retry with the same settings and data.

    Transient types win over deterministic ones (``WeightsNotFoundError`` is a ``FileNotFoundError``
    and so an ``OSError``, but a missing weights file does not appear by retrying; it is checked
    first). A GPU out-of-memory error is treated as transient: another node may have more memory. Not
    retried either: a missing or forbidden file (``FileNotFoundError``, ``PermissionError``), OpenCV's
    ``cv2.error``, a CUDA device-side assert and an MLflow request the server rejects as invalid or
    forbidden (``INVALID_PARAMETER_VALUE``, ``PERMISSION_DENIED``, ...; see ``tracking.PERMANENT_ERRORS``).
    """
    if isinstance(error, (WeightsNotFoundError, DataError, *_FILE_ERRORS)):
        return True
    if _is_cv2_error(error) or _is_permanent_mlflow_error(error):
        return True
    if _DEVICE_ASSERT.search(str(error)) and not isinstance(error, TrackingUnavailable):
        return True
    if isinstance(error, TRANSIENT_TYPES):
        return False
    if isinstance(error, DETERMINISTIC_TYPES):
        return True
    if isinstance(error, RuntimeError):
        message = str(error)
        return not _OUT_OF_MEMORY.search(message) and bool(_DETERMINISTIC_RUNTIME.search(message))
    return False


class NonRetriableTrialError(RuntimeError):
    """A trial error that would repeat on every attempt; the trial ends at its first one.

    The message keeps the original error's type and text, so the trial table and the MLflow run
    say what went wrong without a trip to the traceback.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error} (not retried: it would fail the same way again)")
        self.original_type = type(error).__name__
