"""Datasets, the embedded synthetic default, augmentation pipelines and dataset download.

``build_dataset(name, split, root, transform)`` is the one entry point the trainer needs;
``DATASETS.names()`` lists what a search space may name.
"""

from hairseg_core.data.datasets import (
    DATASETS,
    SPLITS,
    SampleRef,
    SegmentationDataset,
    build_dataset,
    dataset_summary,
    holdout_names,
    read_image_rgb,
)
from hairseg_core.data.download import download_dataset
from hairseg_core.data.errors import DataError, DataWarning, DownloadError
from hairseg_core.data.synthetic import default_cache_root, ensure_synthetic, render_portrait
from hairseg_core.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegmentationTransform,
    build_eval_transform,
    build_train_transform,
    denormalize,
)

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "DataError",
    "DataWarning",
    "DownloadError",
    "SampleRef",
    "SegmentationDataset",
    "SegmentationTransform",
    "build_dataset",
    "build_eval_transform",
    "build_train_transform",
    "dataset_summary",
    "default_cache_root",
    "denormalize",
    "download_dataset",
    "ensure_synthetic",
    "holdout_names",
    "read_image_rgb",
    "render_portrait",
]
