"""The embedded synthetic dataset: determinism, counts, difficulty, caching and concurrency."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hairseg_core.data import DataError, build_dataset, ensure_synthetic
from hairseg_core.data.synthetic import MANIFEST, render_portrait, sample_rng, synthetic_dir_name

SMALL = {"size": 96, "n_train": 6, "n_val": 2, "n_test": 2}


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))
    }


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real default set (257 px, 240/60/60, seed 0), generated once for this module."""
    return ensure_synthetic(tmp_path_factory.mktemp("cache"))


def test_default_set_layout_and_counts(default_set: Path) -> None:
    assert default_set.name == "synthetic-v1-s0-257"
    for split, count in (("train", 240), ("val", 60), ("test", 60)):
        assert len(list((default_set / split / "images").glob("*.png"))) == count
        assert len(list((default_set / split / "masks").glob("*.png"))) == count
        ds = build_dataset("folder", split, root=default_set)
        assert len(ds) == count
    sample = build_dataset("folder", "train", root=default_set)[0]
    assert sample["image"].shape == (257, 257, 3) and sample["mask"].shape == (257, 257)


def test_default_set_hair_statistics(default_set: Path) -> None:
    ds = build_dataset("folder", "train", root=default_set)
    fractions = np.array([ds[i]["mask"].mean() for i in range(len(ds))])
    assert 0.15 <= fractions.mean() <= 0.35, fractions.mean()
    bald = int((fractions == 0).sum())
    assert 5 <= bald <= 40, f"expected some bald (empty-mask) portraits, got {bald}"
    assert fractions.max() < 0.75
    manifest = json.loads((default_set / MANIFEST).read_text())
    assert manifest["counts"] == {"train": 240, "val": 60, "test": 60}


def test_colour_alone_does_not_segment_the_hair(default_set: Path) -> None:
    """Even an oracle that knows each image's mean hair colour cannot threshold its way to the mask."""
    ds = build_dataset("folder", "val", root=default_set)
    best_ious = []
    for i in range(len(ds)):
        sample = ds[i]
        hair = sample["mask"].astype(bool)
        if not hair.any():
            continue
        image = sample["image"].astype(np.float32)
        distance = np.linalg.norm(image - image[hair].mean(axis=0), axis=2)
        best = 0.0
        for threshold in np.percentile(distance[hair], [50, 70, 80, 90, 95, 99]):
            predicted = distance <= threshold
            best = max(best, (predicted & hair).sum() / (predicted | hair).sum())
        best_ious.append(best)
    assert np.mean(best_ious) < 0.8, np.mean(best_ious)


def test_default_set_is_reused(default_set: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in default_set.rglob("*.png")}
    start = time.perf_counter()
    again = ensure_synthetic(default_set.parent)
    assert again == default_set
    assert time.perf_counter() - start < 1.0
    assert {p: p.stat().st_mtime_ns for p in default_set.rglob("*.png")} == before
    assert not [p for p in default_set.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = ensure_synthetic(tmp_path / "a", seed=5, **SMALL)
    second = ensure_synthetic(tmp_path / "b", seed=5, **SMALL)
    other = ensure_synthetic(tmp_path / "c", seed=6, **SMALL)
    assert first.name == second.name == "synthetic-v1-s5-96-n6-2-2"
    digests = tree_digest(first)
    assert len(digests) == 2 * (6 + 2 + 2)
    assert digests == tree_digest(second)
    assert digests != tree_digest(other)


def test_images_do_not_depend_on_split_sizes() -> None:
    image_a, mask_a = render_portrait(sample_rng(0, "train", 3), 96)
    image_b, mask_b = render_portrait(sample_rng(0, "train", 3), 96)
    image_c, _ = render_portrait(sample_rng(0, "val", 3), 96)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)
    assert image_a.dtype == np.uint8 and image_a.shape == (96, 96, 3)
    assert set(np.unique(mask_a).tolist()) <= {0, 1}


def test_build_dataset_synthetic_and_env_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAIRSEG_CACHE", str(tmp_path / "env-cache"))
    ds = build_dataset("synthetic", "val", seed=1, **SMALL)
    assert len(ds) == 2
    assert (tmp_path / "env-cache" / synthetic_dir_name(seed=1, **SMALL)).is_dir()
    assert ds[0]["image"].shape == (96, 96, 3)


def test_concurrent_first_use_yields_one_complete_set(tmp_path: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(ensure_synthetic(tmp_path, seed=2, **SMALL))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name], "staging folders must not remain"
    assert len(tree_digest(results[0])) == 20


def test_incomplete_cache_folder_is_reported(tmp_path: Path) -> None:
    target = tmp_path / synthetic_dir_name(seed=0, **SMALL)
    (target / "train" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="not a complete synthetic set"):
        ensure_synthetic(tmp_path, seed=0, **SMALL)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        ensure_synthetic(tmp_path, size=16)
    with pytest.raises(ValueError, match="n_val"):
        ensure_synthetic(tmp_path, size=96, n_val=0)
