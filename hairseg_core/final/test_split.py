"""The test images the final stage evaluates: which sources, checked before a sweep, read lazily after it."""

from __future__ import annotations

from typing import Any

from hairseg_core.config import DataSource, TrainConfig
from hairseg_core.data.input_path import source_dataset
from hairseg_core.data.splits import LazySplit


def test_sources(train_config: TrainConfig) -> list[DataSource]:
    """The data sources whose test split the final stage evaluates; the first one gets Table 5."""
    sources = [s for s in train_config.data_sources if s.test]
    if not sources:
        raise ValueError("no data source has test: true; the final stage has nothing to evaluate")
    return sources


def _split_dataset(source: DataSource, split: str) -> Any:
    """``split`` of one data source (raw samples at their own resolution, no transform)."""
    return source_dataset(source, split)


def check_test_split(train_config: TrainConfig, split: str) -> dict[str, int]:
    """Decode every test image the final stage will read; return the image count per source.

    Run before a sweep starts: a missing split or a corrupt test image found after hours of
    training is too late, so each image and mask is decoded now (``DataError`` names the file).
    """
    counts = {}
    for source in test_sources(train_config):
        dataset = _split_dataset(source, split)
        if len(dataset) == 0:
            raise ValueError(
                f"split {split!r} of dataset {source.dataset!r} ({source.name}: {source.data_root}) has no images"
            )
        for i in range(len(dataset)):
            dataset[i]  # decodes image and mask, checks their sizes  # noqa: B018
        counts[source.name] = len(dataset)
    return counts


def load_test_split(
    train_config: TrainConfig, split: str, max_images: int | None, source: DataSource | None = None
) -> LazySplit:
    """The test images of one source (default: the first test source), raw, at their own resolution.

    Decoded when read, never held: the final stage reads each image a few times (Table 5, the champion,
    the export check), which costs milliseconds, while holding a 3,000-image test split of full-resolution
    photos would cost gigabytes of the driver's memory.
    """
    source = source or test_sources(train_config)[0]
    return LazySplit(_split_dataset(source, split), limit=max_images)
