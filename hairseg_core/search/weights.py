"""Pretrained weights on every node: resolved once on the driver, installed by each trial.

The driver resolves (and if needed fetches) every backbone's ImageNet file before Ray starts and hands
the bytes to the trials through the object store, so no trial downloads and a bad file fails in seconds.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from hairseg_core.config import SearchSpace
from hairseg_core.models import BACKBONES, PRETRAINED_SOURCES, load_pretrained_backbone
from hairseg_core.models.fetch import ensure_imagenet_weights, imagenet_backbones

logger = logging.getLogger(__name__)

#: Pretrained files the driver resolved before Ray started, by the name the lookup expects them under.
WeightsFiles = Mapping[str, bytes]


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
