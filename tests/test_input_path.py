"""The input path: node caches (memory-mapped, built once per node), the memory / stream choice, equal results."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sweep_helpers import tiny_train_config
from test_datasets import make_folder, write_gray, write_rgb

from hairseg_core.config import DataSettings, search_space_from_dict
from hairseg_core.data import DataError, build_dataset
from hairseg_core.data.input_path import (
    StreamedSplit,
    cache_sources,
    choose_mode,
    needed_short_side,
    space_short_side,
)
from hairseg_core.data.memory import MaterializedSplit
from hairseg_core.data.node_cache import MappedSplit, build_or_open, stored_size
from hairseg_core.data.splits import ConcatSplit, LazySplit, TransformedDataset, sample_dicts
from hairseg_core.train.trainer import Trainer, TrialData, load_trial_data

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _folder(tmp_path: Path, **splits: int) -> Path:
    root = tmp_path / "data"
    make_folder(root, splits or {"train": 6, "val": 3})
    return root


def _write_large(root: Path, stem: str, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2] = 255
    write_rgb(root / "train" / "images" / f"{stem}.png", image)
    write_gray(root / "train" / "masks" / f"{stem}.png", mask)
    return image


def test_cache_gives_the_decoded_pixels_and_shrinks_only_oversized_images(tmp_path: Path) -> None:
    root = _folder(tmp_path, train=4, val=2)
    big = _write_large(root, "zbig", 300, 200)  # short side 200 > 2 x 64: stored at short side 128
    dataset = build_dataset("folder", "train", root=root)
    cached = build_or_open(dataset, "t-train", tmp_path / "cache", store_short_side=64)
    assert isinstance(cached, MappedSplit) and len(cached) == len(dataset) == 5
    assert cached.names == dataset.names
    for i in range(4):  # 20x24 images: untouched, bit for bit
        image, mask = cached.sample(i)
        want_image, want_mask = dataset.load_raw(i)
        np.testing.assert_array_equal(image, want_image)
        np.testing.assert_array_equal(mask, want_mask)
    image, mask = cached.sample(4)
    assert image.shape == (192, 128, 3) and mask.shape == (192, 128)
    np.testing.assert_array_equal(image, cv2.resize(big, (128, 192), interpolation=cv2.INTER_AREA))
    assert set(np.unique(mask)) == {0, 1}
    assert stored_size(300, 200, 64) == (192, 128) and stored_size(300, 200, None) == (300, 200)
    meta = json.loads((cached.directory / "meta.json").read_text())
    assert meta["count"] == 5 and meta["nbytes"] == cached.nbytes == 4 * 20 * 24 * 4 + 192 * 128 * 4


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    root = _folder(tmp_path, train=3, val=2)
    first = build_or_open(build_dataset("folder", "train", root=root), "t", tmp_path / "cache", 64)
    again = build_or_open(build_dataset("folder", "train", root=root), "t", tmp_path / "cache", 64)
    assert again.directory == first.directory
    # same files, another resize rule: another cache
    other = build_or_open(build_dataset("folder", "train", root=root), "t", tmp_path / "cache", 8)
    assert other.directory != first.directory
    rng = np.random.default_rng(5)
    write_rgb(root / "train" / "images" / "train000.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    changed = build_or_open(build_dataset("folder", "train", root=root), "t", tmp_path / "cache", 64)
    assert changed.directory != first.directory
    np.testing.assert_array_equal(changed.sample(0)[0], build_dataset("folder", "train", root=root).load_raw(0)[0])


def test_corrupt_image_names_the_file_and_leaves_nothing(tmp_path: Path) -> None:
    root = _folder(tmp_path, train=3, val=2)
    bad = root / "train" / "images" / "train001.png"
    bad.write_bytes(b"not an image")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="train001.png"):
        build_or_open(build_dataset("folder", "train", root=root), "t", cache, 64)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_node_with_other_files_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path, train=3, val=2)
    dataset = build_dataset("folder", "train", root=root)
    with pytest.raises(DataError, match="differ from those the sweep checked"):
        build_or_open(dataset, "t", tmp_path / "cache", 64, expect_digest="0" * 64)


def test_too_little_disk_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from hairseg_core.data import node_cache

    root = _folder(tmp_path, train=3, val=2)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(node_cache.shutil, "disk_usage", lambda _: usage._replace(free=1000))
    with pytest.raises(DataError, match="GiB free, but the node cache"):
        build_or_open(build_dataset("folder", "train", root=root), "t", tmp_path / "cache", 64)


def _build_in_child(root: str, cache: str, out: multiprocessing.Queue) -> None:
    split = build_or_open(build_dataset("folder", "train", root=root), "t", cache, 64, workers=2)
    out.put((str(split.directory), split.meta["build_seconds"]))


def test_concurrent_builders_on_one_node_build_once(tmp_path: Path) -> None:
    root = _folder(tmp_path, train=24, val=2)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [context.Process(target=_build_in_child, args=(str(root), str(tmp_path / "cache"), out)) for _ in "ab"]
    for child in children:
        child.start()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert results[0] == results[1]  # same folder, same meta: the second waited and opened the first's
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_streamed_split_pickles_as_a_recipe_and_reopens(tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path)
    cached = cache_sources(cfg, str(tmp_path / "cache"), needed_short_side([cfg]))
    ((name, split),) = cached["train"]
    assert isinstance(split, StreamedSplit) and len(split) == 16
    blob = pickle.dumps(split)
    assert len(blob) < 4096  # names and a digest, not pixels
    copy = pickle.loads(blob)
    assert copy._mapped is None
    np.testing.assert_array_equal(copy.sample(3)[0], split.sample(3)[0])


def test_choose_mode_and_short_side() -> None:
    assert choose_mode("auto", 10, 20) == "memory" and choose_mode("auto", 30, 20) == "stream"
    assert choose_mode("stream", 1, 20) == "stream" and choose_mode("memory", 30, 20) == "memory"
    with pytest.raises(ValueError, match="auto, memory or stream"):
        choose_mode("disk", 1, 2)
    space = search_space_from_dict(
        {
            "name": "s",
            "fixed": {"crop_size": 129, "eval_size": 161},
            "params": {
                "base_size": {"type": "categorical", "choices": [129, 193]},
                "rsc": {"type": "categorical", "choices": [False, True]},
            },
        }
    )
    assert space_short_side(space) == 2 * 193
    plain = search_space_from_dict({"name": "s", "fixed": {"crop_size": 300, "base_size": 129}})
    assert space_short_side(plain) == 300  # validation at the crop size (no eval_size)


def test_splits_pool_and_read_lazily(tmp_path: Path) -> None:
    root = _folder(tmp_path, train=3, val=2)
    a = MaterializedSplit.from_dataset(build_dataset("folder", "train", root=root))
    b = LazySplit(build_dataset("folder", "val", root=root))
    pooled = ConcatSplit([("a", a), ("b", b)])
    assert len(pooled) == 5 and pooled.names[3] == "b/val000"
    np.testing.assert_array_equal(pooled.sample(4)[0], b.sample(1)[0])
    with pytest.raises(IndexError):
        pooled.sample(5)
    items = sample_dicts(pooled)
    assert len(items) == 5 and items[-1]["name"] == "b/val001"
    assert LazySplit(build_dataset("folder", "train", root=root), limit=2).names == ["train000", "train001"]
    dataset = TransformedDataset(pooled, None)
    assert dataset[0]["name"] == "a/train000"


def test_load_trial_data_chooses_by_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAIRSEG_DATA_CACHE", str(tmp_path / "node-cache"))
    cfg = tiny_train_config(tmp_path)
    in_memory = load_trial_data(cfg)
    assert isinstance(in_memory.train, MaterializedSplit) and in_memory.input_path == "memory"
    streamed = load_trial_data(cfg, settings=DataSettings(memory_budget_gib=1e-6))
    assert isinstance(streamed.train, StreamedSplit) and streamed.input_path == "stream"
    assert (tmp_path / "node-cache").is_dir()
    forced = load_trial_data(cfg, settings=DataSettings(input="stream", cache_dir=str(tmp_path / "c2")))
    assert isinstance(forced.val, StreamedSplit) and forced.val.names == in_memory.val.names


@pytest.mark.parametrize("rsc", [False, True])
def test_stream_and_memory_paths_learn_the_same(tmp_path: Path, rsc: bool) -> None:
    """Same seed, same steps: the two paths give identical losses and validation metrics."""
    torch.set_num_threads(1)
    cfg = tiny_train_config(tmp_path, epochs=2, rsc=rsc, blur=rsc, precise_bn_batches=1)
    memory = load_trial_data(cfg, settings=DataSettings(input="memory"))
    stream = load_trial_data(cfg, settings=DataSettings(input="stream", cache_dir=str(tmp_path / "cache")))
    a = list(Trainer(cfg, data=memory).fit())
    b = list(Trainer(cfg, data=stream).fit())
    for key in ("train_loss", "val_loss", "val_miou", "val_boundary_f"):
        assert [h[key] for h in a] == [h[key] for h in b], key


def test_streamed_multi_source_data_keeps_per_source_validation(tmp_path: Path) -> None:
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    make_folder(root_a, {"train": 6, "val": 3}, seed=1)
    make_folder(root_b, {"train": 5, "val": 2}, seed=2)
    cfg = tiny_train_config(
        tmp_path,
        dataset="synthetic",
        data_root=None,
        dataset_options={},
        sources=[
            {"name": "a", "dataset": "folder", "data_root": str(root_a)},
            {"name": "b", "dataset": "folder", "data_root": str(root_b)},
        ],
        crop_size=32,
        base_size=32,
        batch_size=2,
        epochs=1,
        max_steps_per_epoch=2,
    )
    data = load_trial_data(cfg, settings=DataSettings(input="stream", cache_dir=str(tmp_path / "cache")))
    assert isinstance(data, TrialData) and data.val_parts == {"a": (0, 3), "b": (3, 5)}
    assert len(data.train) == 11 and data.train.names[6] == "b/train000"
    result = Trainer(cfg, data=data).run_epoch()
    assert 0.0 <= result["val_a_miou"] <= 1.0 and 0.0 <= result["val_b_miou"] <= 1.0


def test_data_root_in_object_storage_is_staged_per_node(tmp_path: Path) -> None:
    """A ``scheme://`` root goes through pyarrow's filesystem (here ``file://``; ``s3://`` / ``gs://`` alike)."""
    from hairseg_core.config import DataSource
    from hairseg_core.data.input_path import source_dataset
    from hairseg_core.data.remote import staged_folder

    bucket = _folder(tmp_path, train=3, val=2)
    uri = bucket.as_uri()
    source = DataSource(name="remote", dataset="folder", data_root=uri)
    cache = tmp_path / "cache"
    dataset = source_dataset(source, "train", cache_dir=str(cache))
    local = staged_folder(uri, cache)
    assert Path(dataset.samples[0].image).is_relative_to(local) and len(dataset) == 3
    np.testing.assert_array_equal(dataset.load_raw(1)[0], build_dataset("folder", "train", root=bucket).load_raw(1)[0])
    # a file removed from the bucket leaves the staged copy too; unchanged files are not copied again
    kept = local / "train" / "images" / "train000.png"
    before = kept.stat().st_mtime_ns
    for part in ("images", "masks"):
        (bucket / "train" / part / "train002.png").unlink()
    assert len(source_dataset(source, "train", cache_dir=str(cache))) == 2
    assert kept.stat().st_mtime_ns == before
    empty = tmp_path / "empty"
    with pytest.raises(DataError, match="empty: cannot list the data root"):
        source_dataset(DataSource(name="x", dataset="folder", data_root=empty.as_uri()), "train", cache_dir=str(cache))
    empty.mkdir()
    with pytest.raises(DataError, match="no files under this data root"):
        source_dataset(DataSource(name="x", dataset="folder", data_root=empty.as_uri()), "train", cache_dir=str(cache))


def test_data_cache_command_lists_and_prunes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import time

    from hairseg_core import cli

    root = _folder(tmp_path, train=3, val=2)
    cache = tmp_path / "cache"
    split = build_or_open(build_dataset("folder", "train", root=root), "listed-train", cache, 64)
    assert cli.main(["data", "cache", "--dir", str(cache)]) == 0
    assert split.directory.name in capsys.readouterr().out
    assert cli.main(["data", "cache", "--dir", str(cache), "--prune-days", "1"]) == 0
    assert "removed 0 cache(s)" in capsys.readouterr().out and split.directory.is_dir()
    old = time.time() - 3 * 86400
    for name in ("meta.json", "last_used"):
        if (split.directory / name).exists():
            os.utime(split.directory / name, (old, old))
    assert cli.main(["data", "cache", "--dir", str(cache), "--prune-days", "1"]) == 0
    assert "removed 1 cache(s)" in capsys.readouterr().out and not split.directory.exists()


def test_gpu_input_benchmark_dry_run(tmp_path: Path) -> None:
    """benchmarks/gpu_input.py (loader processes feeding the GPU step) runs end to end on the CPU at toy sizes."""
    import subprocess
    import sys

    make_folder(tmp_path / "data", {"train": 12}, seed=3)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_input.py"
    out = tmp_path / "input.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(tmp_path / "data"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["loader_workers"] for r in rows] == [0, 1]
    assert all(r["images_per_s"] > 0 and r["gpu_only_images_per_s"] > 0 and r["rsc_blur"] for r in rows)
