"""Pretrained weights on every node: which a space needs, resolved once on the driver, installed by each trial.

The driver reads from the search space which backbones its trials may build with ImageNet weights
(:func:`imagenet_backbones`), resolves (and if needed fetches) each file before Ray starts and hands the
bytes to the trials through the object store, so no trial downloads and a bad file fails in seconds.
Reading a space is this module's job, not the model zoo's: ``hairseg_core.models`` knows backbones and
files, never a search space.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from hairseg_core.config import SearchSpace, TrainConfig
from hairseg_core.models import BACKBONES, PRETRAINED_SOURCES, load_pretrained_backbone
from hairseg_core.models.fetch import ensure_imagenet_weights

logger = logging.getLogger(__name__)

#: Pretrained files the driver resolved before Ray started, by the name the lookup expects them under.
WeightsFiles = Mapping[str, bytes]


def _is_imagenet(value: object) -> bool:
    return isinstance(value, str) and value.lower() == "imagenet"


def imagenet_backbones(space: SearchSpace) -> list[str]:
    """Every backbone a trial of ``space`` may build with ``pretrained: imagenet``, in the space's order.

    The backbone is fixed, searched, or the TrainConfig default; ``pretrained`` likewise. When
    ``pretrained`` is searched with ``by: backbone`` only the backbones whose choices include imagenet count.
    ``when`` conditions are ignored: fetching a file a trial may not need is cheaper than a failed trial.
    """
    fields = TrainConfig.model_fields
    if "backbone" in space.fixed:
        candidates = [space.fixed["backbone"]]
    elif "backbone" in space.params:
        candidates = space.params["backbone"].values()
    else:
        candidates = [fields["backbone"].default]
    backbones = [str(b) for b in dict.fromkeys(candidates)]

    spec = space.params.get("pretrained")
    if spec is None:
        pretrained = space.fixed.get("pretrained", fields["pretrained"].default)
        return backbones if _is_imagenet(pretrained) else []
    if spec.by == "backbone" and isinstance(spec.choices, dict):
        return [b for b in backbones if b not in spec.choices or any(_is_imagenet(v) for v in spec.choices[b])]
    return backbones if any(_is_imagenet(v) for v in spec.values()) else []


def install_weights(files: WeightsFiles | None, directory: Path | None = None) -> list[Path]:
    """Write the driver's pretrained files into this node's torch hub cache, where missing.

    The driver resolves (and if needed fetches) every backbone's ImageNet file once, before Ray
    starts, and hands the bytes to the trials through the object store; a trial on a node whose
    cache lacks a file writes it there (temporary file + rename, so concurrent trials on one node
    never see half a file) instead of each of N workers downloading the same file at once.
    Returns the files written.
    """
    if not files:
        return []
    directory = directory or Path(torch.hub.get_dir()) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, payload in files.items():
        target = directory / name
        if target.is_file() and target.stat().st_size == len(payload):
            continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        os.replace(tmp, target)
        logger.info("installed pretrained weights %s (%d bytes) from the driver", target, len(payload))
        written.append(target)
    return written


def sweep_weights(space: SearchSpace, progress: bool = True) -> dict[str, bytes]:
    """Every ImageNet file the space's trials may need, resolved (fetched if missing) and checked.

    Runs on the driver before Ray starts and before the MLflow parent run: a missing, corrupt or
    mismatched file fails here in seconds, naming the backbone and the file (``WeightsNotFoundError``
    / ``WeightsMismatchError``), instead of in every trial. Each file is loaded strictly into its
    backbone once. Returns ``{file name: bytes}`` for :func:`install_weights` on the trials' nodes.
    """
    files: dict[str, bytes] = {}
    for backbone in imagenet_backbones(space):
        path = ensure_imagenet_weights(backbone, progress=progress)
        source = PRETRAINED_SOURCES[backbone]
        load_pretrained_backbone(BACKBONES.build(backbone), backbone, path)
        name = path.name if path.name in source.file_names else source.file_names[0]
        files[name] = path.read_bytes()
    return files
