"""Offline-safe lookup and loading of pretrained backbone weights.

This module itself never touches the network. ImageNet weights are looked up, in order, in an explicit
``weights_dir``, in ``$HAIRSEG_WEIGHTS_DIR``, in the torch hub cache (``torch.hub.get_dir()/checkpoints``,
where torchvision itself stores them) and, for timm models, in the Hugging Face hub cache.
:func:`find_imagenet_weights` is that pure local lookup; when the file is absent,
:class:`WeightsNotFoundError` says which file to fetch, from where, where to put it, and that
``pretrained: none`` trains from scratch instead.

Fetching on first use (like torchvision) lives in :mod:`.fetch`: ``pretrained: imagenet`` downloads a
missing file into the torch hub cache with hash verification, from the original URL or from a mirror
(``$HAIRSEG_WEIGHTS_MIRROR``), and never downloads when ``$HAIRSEG_OFFLINE`` is set, so sweeps on machines
(and CI) without internet fail in milliseconds with the same instructions instead of waiting on timeouts.

Every backbone keeps the parameter names of the library it comes from (torchvision, timm, fyu/drn), so an
original ImageNet checkpoint and a ``backbone.state_dict()`` saved by this package load the same way. Keys
that only the ImageNet classifier uses (``fc.*``, ``classifier.*``, ``head.*``) are expected to be left over;
any other missing, unexpected or mis-shaped backbone key is an error, because silently training from a
half-loaded backbone wastes a whole trial.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "HAIRSEG_WEIGHTS_DIR"
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_SAFETENSORS_SUFFIX = ".safetensors"
# Wrappers used by common training scripts around the actual state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")
_MAX_KEYS_IN_MESSAGE = 8


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but no local file holds them (and none could be, or may be, fetched)."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the backbone: keys are missing, unknown or have the wrong shape."""


@dataclass(frozen=True)
class PretrainedSource:
    """Where a backbone's ImageNet weights come from and what in them is not part of the backbone.

    ``file_names`` are tried in order (the first is the one recommended in error messages and fetched from
    ``url``; a mirror may hold any of them). ``unused_prefixes`` name checkpoint keys that belong to the
    ImageNet classifier (or layers the segmentation backbone drops) and may be left over without error.
    ``sha256`` maps file names to their full digest where it is known; a fetched file is always checked
    against the hash prefix in its name (torchvision's ``-b0353104``) and, when listed here, the full digest.
    """

    file_names: tuple[str, ...]
    url: str
    unused_prefixes: tuple[str, ...] = ()
    hf_hub_id: str | None = None
    hf_filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    notes: str = ""
    # hash=False: a dict is unhashable, and the file names already identify the source.
    sha256: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass
class LoadReport:
    """What a weights load did: the file, how many tensors went in, and which keys were left over."""

    path: Path
    loaded: int
    ignored: list[str] = field(default_factory=list)


def search_dirs(weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for ImageNet weights, in priority order (duplicates removed)."""
    dirs: list[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir).expanduser())
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if env_dir:
        dirs.append(Path(env_dir).expanduser())
    # torch.hub.get_dir() honours $TORCH_HOME at call time; torchvision caches downloads in checkpoints/.
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _hf_cache_lookup(source: PretrainedSource) -> Path | None:
    """Find the file in the local Hugging Face hub cache (where timm stores downloads); never downloads."""
    if source.hf_hub_id is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred, optional: only for hf_hub_id sources
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        return None
    for filename in source.hf_filenames:
        hit = try_to_load_from_cache(repo_id=source.hf_hub_id, filename=filename)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def find_imagenet_weights(
    backbone_name: str, source: PretrainedSource, weights_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Return the local ImageNet weights file for ``backbone_name`` or raise :class:`WeightsNotFoundError`."""
    dirs = search_dirs(weights_dir)
    for directory in dirs:
        for name in source.file_names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    hf_hit = _hf_cache_lookup(source)
    if hf_hit is not None:
        return hf_hit

    searched = "\n".join(f"  - {d}" for d in dirs)
    if source.hf_hub_id:
        searched += f"\n  - Hugging Face hub cache entry {source.hf_hub_id}"
    alternatives = ""
    if len(source.file_names) > 1:
        alternatives = f" (also accepted: {', '.join(source.file_names[1:])})"
    raise WeightsNotFoundError(
        f"ImageNet weights for backbone {backbone_name!r} not found: expected file "
        f"{source.file_names[0]!r}{alternatives}.\n"
        f"Searched:\n{searched}\n"
        f"Nothing was downloaded: run `hairseg weights fetch {backbone_name}`, or on a machine with internet "
        f"fetch {source.url} and place it "
        f"under one of the directories above (or point ${WEIGHTS_DIR_ENV} / weights_dir at its folder)"
        f"{'; ' + source.notes if source.notes else ''}. "
        "To train from random initialisation instead, pass pretrained: none."
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a tensor dict from ``.pth``/``.pt``/``.bin``/``.ckpt`` (torch) or ``.safetensors`` files.

    Torch files are opened with ``weights_only=True`` so a checkpoint cannot run code on load. Common
    training-script wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and the ``module.`` prefix that
    DistributedDataParallel adds are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {str(path)!r} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    if suffix == _SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file  # deferred: safetensors only for .safetensors files

        obj: object = load_file(str(path), device="cpu")
    elif suffix in _TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise WeightsMismatchError(
                f"weights file {str(path)!r} cannot be read with torch.load(weights_only=True): it pickles "
                "Python objects besides tensors (e.g. a whole nn.Module). Save `model.state_dict()` instead. "
                f"torch said: {str(exc).splitlines()[0]}"
            ) from exc
    else:
        raise ValueError(
            f"unsupported weights file {str(path)!r}: expected one of "
            f"{', '.join((*_TORCH_SUFFIXES, _SAFETENSORS_SUFFIX))}"
        )
    state = _unwrap(obj, path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # at most a few levels of {"checkpoint": {"model": {...}}}
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise WeightsMismatchError(
        f"weights file {str(path)!r} holds no state dict of tensors (looked at the top level and under "
        f"{', '.join(_WRAPPER_KEYS)})"
    )


def _preview(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return shown + (f" ... (+{more} more)" if more > 0 else "")


def load_backbone_state(
    backbone: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    unused_prefixes: Sequence[str] = (),
) -> LoadReport:
    """Copy ``state`` into ``backbone`` with strict key/shape checking; return what was ignored.

    ``state`` may be a backbone state dict (library key names) or a whole DeepLabV3Plus state dict, in which
    case only the ``backbone.*`` entries are used and the ASPP/decoder/classifier entries are ignored.
    """
    state = dict(state)
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in state):
        ignored += [k for k in state if not k.startswith("backbone.")]
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}

    own = backbone.state_dict()
    unexpected = [k for k in state if k not in own]
    expected_extra = [k for k in unexpected if k.startswith(tuple(unused_prefixes))]
    ignored += expected_extra
    unexpected = [k for k in unexpected if k not in expected_extra]
    # BatchNorm counters are absent from pre-2018 checkpoints (e.g. DRN); they carry no learned values.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} backbone keys missing from the file: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys in the file not in the backbone: {_preview(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} keys with the wrong shape: {_preview(mismatched)}")
    if problems:
        raise WeightsMismatchError(
            f"weights file {str(path)!r} does not fit backbone {type(backbone).__name__}:\n  "
            + "\n  ".join(problems)
            + "\nPass weights made for this backbone, or pretrained: none."
        )

    to_load = {k: v for k, v in state.items() if k in own}
    backbone.load_state_dict(to_load, strict=False)
    if ignored:
        log.info("loaded %s; ignored %d non-backbone keys: %s", path, len(ignored), _preview(ignored))
    else:
        log.info("loaded %s (%d tensors)", path, len(to_load))
    return LoadReport(path=path, loaded=len(to_load), ignored=ignored)
