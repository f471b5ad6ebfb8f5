"""Dataset loaders: every supported on-disk layout, split logic and bad-input handling."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hairseg_core.builders import UnknownNameError
from hairseg_core.data import DATASETS, DataError, DataWarning, build_dataset, dataset_summary, holdout_names
from hairseg_core.data.transforms import build_eval_transform

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_gray(path: Path, gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), gray)
    return path


def make_pair(rng: np.random.Generator, h: int = 20, w: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """An image whose top-left block is hair, and the matching 0/1 mask."""
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(3, h - 3)), int(rng.integers(3, w - 3))
    mask[:y, :x] = 1
    return image, mask


def make_folder(root: Path, splits: dict[str, int], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks: dict[str, dict[str, np.ndarray]] = {}
    for split, count in splits.items():
        masks[split] = {}
        for i in range(count):
            image, mask = make_pair(rng)
            stem = f"{split}{i:03d}"
            write_rgb(root / split / "images" / f"{stem}.png", image)
            write_gray(root / split / "masks" / f"{stem}.png", mask * 255)
            masks[split][stem] = mask
    return masks


# --------------------------------------------------------------------------- folder


def test_folder_loads_rgb_images_and_binary_masks(tmp_path: Path) -> None:
    masks = make_folder(tmp_path, {"train": 4, "val": 2, "test": 3})
    red = np.zeros((20, 24, 3), np.uint8)
    red[..., 0] = 255
    write_rgb(tmp_path / "test" / "images" / "test000.jpg", red)  # replace a PNG by a JPEG of pure red
    (tmp_path / "test" / "images" / "test000.png").unlink()

    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        ds = build_dataset("folder", split, root=tmp_path)
        assert len(ds) == count
        assert ds.names == sorted(masks[split])
        for i in range(len(ds)):
            sample = ds[i]
            assert sample["image"].dtype == np.uint8 and sample["image"].shape == (20, 24, 3)
            np.testing.assert_array_equal(sample["mask"], masks[split][sample["name"]])
    test_image = build_dataset("folder", "test", root=tmp_path)[0]["image"]
    assert test_image[..., 0].min() > 240 and test_image[..., 2].max() < 15, "channels must be RGB, not BGR"


def test_folder_with_transform_returns_tensors(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 2, "val": 1})
    sample = build_dataset("folder", "train", root=tmp_path, transform=build_eval_transform(16))[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 16, 16)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (16, 16)
    assert set(sample["mask"].unique().tolist()) <= {0, 1}


def test_folder_accepts_zero_one_masks(tmp_path: Path) -> None:
    masks = make_folder(tmp_path, {"train": 1, "val": 1})
    write_gray(tmp_path / "train" / "masks" / "train000.png", masks["train"]["train000"])  # 0/1 instead of 0/255
    np.testing.assert_array_equal(
        build_dataset("folder", "train", root=tmp_path)[0]["mask"], masks["train"]["train000"]
    )


def test_folder_holds_out_val_deterministically(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 20, "test": 2})
    with pytest.warns(DataWarning, match="holding out 2 of 20"):
        train = build_dataset("folder", "train", root=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # announced once per process, not once per build
        val = build_dataset("folder", "val", root=tmp_path)
        val_again = build_dataset("folder", "val", root=tmp_path)
    assert len(val) == 2 and len(train) == 18
    assert not set(train.names) & set(val.names)
    assert val.names == val_again.names
    with pytest.warns(DataWarning, match="holding out 5 of 20"):
        other_seed = build_dataset("folder", "val", root=tmp_path, split_seed=1, val_fraction=0.25)
    assert len(other_seed) == 5
    full = build_dataset("folder", "train", root=tmp_path, val_fraction=0.0)
    assert len(full) == 20
    with pytest.raises(DataError, match="val_fraction=0.0"):
        build_dataset("folder", "val", root=tmp_path, val_fraction=0.0)


def test_holdout_names_is_order_independent() -> None:
    names = [f"img{i}" for i in range(50)]
    held = holdout_names(names, 0.1, seed=7)
    assert len(held) == 5 and held == holdout_names(reversed(names), 0.1, seed=7)
    assert held != holdout_names(names, 0.1, seed=8)
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_names(names, 1.0, seed=0)


def test_folder_accepts_any_existing_split_folder(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 1, "val": 1, "hard_cases": 2})
    assert len(build_dataset("folder", "hard_cases", root=tmp_path)) == 2
    with pytest.raises(DataError, match="unknown split 'nope'"):
        build_dataset("folder", "nope", root=tmp_path)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_folder_corrupt_image(tmp_path: Path, on_error: str) -> None:
    make_folder(tmp_path, {"train": 3, "val": 1})
    bad = tmp_path / "train" / "images" / "train001.png"
    bad.write_bytes(b"this is not a PNG")
    if on_error == "raise":
        ds = build_dataset("folder", "train", root=tmp_path)  # pairing is fine; decoding is lazy
        ds[0]
        with pytest.raises(DataError, match=r"train001\.png.*not a readable image"):
            ds[1]
    else:
        with pytest.warns(DataWarning, match=r"skipped 1 of 3.*train001\.png"):
            ds = build_dataset("folder", "train", root=tmp_path, on_error="skip")
        assert ds.names == ["train000", "train002"]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_folder_size_mismatch(tmp_path: Path, on_error: str) -> None:
    make_folder(tmp_path, {"train": 2, "val": 1})
    write_gray(tmp_path / "train" / "masks" / "train000.png", np.zeros((10, 24), np.uint8))
    if on_error == "raise":
        with pytest.raises(DataError, match=r"train000\.png: mask is 10x24.*is 20x24"):
            build_dataset("folder", "train", root=tmp_path)[0]
    else:
        with pytest.warns(DataWarning, match="mask is 10x24"):
            ds = build_dataset("folder", "train", root=tmp_path, on_error="skip")
        assert ds.names == ["train001"]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_folder_missing_mask(tmp_path: Path, on_error: str) -> None:
    make_folder(tmp_path, {"train": 3, "val": 1})
    missing = tmp_path / "train" / "masks" / "train002.png"
    missing.unlink()
    if on_error == "raise":
        with pytest.raises(DataError, match=rf"missing mask {missing}"):
            build_dataset("folder", "train", root=tmp_path)  # checked at construction
    else:
        with pytest.warns(DataWarning, match="missing mask"):
            ds = build_dataset("folder", "train", root=tmp_path, on_error="skip")
        assert ds.names == ["train000", "train001"]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_folder_mask_values_outside_binary(tmp_path: Path, on_error: str) -> None:
    masks = make_folder(tmp_path, {"train": 2, "val": 1})
    grey = masks["train"]["train001"] * 255
    grey[0, 0] = 128  # e.g. an anti-aliased or JPEG-compressed mask
    write_gray(tmp_path / "train" / "masks" / "train001.png", grey)
    if on_error == "raise":
        with pytest.raises(DataError, match=r"train001\.png: mask values \{0, 128, 255\} are outside \{0, 255\}"):
            build_dataset("folder", "train", root=tmp_path)[1]
    else:
        with pytest.warns(DataWarning, match="mask values"):
            ds = build_dataset("folder", "train", root=tmp_path, on_error="skip")
        assert ds.names == ["train000"]


def test_folder_rgb_mask_with_differing_channels(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 1, "val": 1})
    colour = np.zeros((20, 24, 3), np.uint8)
    colour[..., 2] = 255
    write_rgb(tmp_path / "train" / "masks" / "train000.png", colour)
    with pytest.raises(DataError, match=r"train000\.png: mask has differing colour channels"):
        build_dataset("folder", "train", root=tmp_path)[0]


def test_folder_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "masks").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match=rf"{tmp_path / 'train' / 'images'}: no images found"):
        build_dataset("folder", "train", root=tmp_path)
    with pytest.raises(DataError, match=rf"{tmp_path / 'val' / 'images'}: missing folder"):
        build_dataset("folder", "val", root=tmp_path)
    with pytest.raises(DataError, match=r"test: split folder missing \(found: train, val\)"):
        build_dataset("folder", "test", root=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("folder", "train", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="needs root="):
        build_dataset("folder", "train")


def test_skip_mode_fails_when_nothing_is_usable(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 1, "val": 1})
    (tmp_path / "train" / "images" / "train000.png").write_bytes(b"")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="every sample is unreadable"):
        build_dataset("folder", "train", root=tmp_path, on_error="skip")


def test_duplicate_stems_are_rejected(tmp_path: Path) -> None:
    make_folder(tmp_path, {"train": 1, "val": 1})
    write_rgb(tmp_path / "train" / "images" / "train000.jpg", np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(DataError, match="two images share the stem 'train000'"):
        build_dataset("folder", "train", root=tmp_path)


def test_registry_and_argument_errors(tmp_path: Path) -> None:
    assert set(DATASETS.names()) >= {"folder", "lfw_parts", "celebamask_hq", "figaro1k", "synthetic"}
    with pytest.raises(UnknownNameError, match="expected one of: .*figaro1k"):
        build_dataset("figaro2k", "train", root=tmp_path)
    make_folder(tmp_path, {"train": 1, "val": 1})
    with pytest.raises(ValueError, match="on_error"):
        build_dataset("folder", "train", root=tmp_path, on_error="ignore")
    with pytest.raises(TypeError, match="no_such_option"):
        build_dataset("folder", "train", root=tmp_path, no_such_option=1)


def test_dataset_summary(tmp_path: Path) -> None:
    masks = make_folder(tmp_path, {"train": 3, "val": 1})
    summary = dataset_summary(build_dataset("folder", "train", root=tmp_path))
    assert summary["samples"] == 3 and summary["distinct_sizes"] == 1 and summary["smallest_hw"] == (20, 24)
    expected = np.mean([m.mean() for m in masks["train"].values()])
    assert summary["hair_fraction_mean"] == pytest.approx(expected)


# --------------------------------------------------------------------------- LFW Part Labels


def make_lfw(
    root: Path, people: dict[str, list[int]], splits: dict[str, list[tuple[str, int]]]
) -> dict[str, np.ndarray]:
    """Funneled JPEGs + part-label PPMs (hair red, skin green, background blue) + split files."""
    rng = np.random.default_rng(1)
    truth = {}
    for person, numbers in people.items():
        for n in numbers:
            stem = f"{person}_{n:04d}"
            write_rgb(root / "lfw_funneled" / person / f"{stem}.jpg", rng.integers(0, 256, (25, 25, 3), np.uint8))
            gt = np.zeros((25, 25, 3), np.uint8)
            gt[:] = BLUE
            gt[8:20, 6:19] = GREEN
            hair_rows = int(rng.integers(2, 10))
            gt[:hair_rows, 4:21] = RED
            gt[0, 0] = (200, 180, 0)  # a mixed superpixel colour with red dominant still counts as hair
            write_rgb(root / "parts_lfw_funneled_gt_images" / f"{stem}.ppm", gt)
            hair = np.zeros((25, 25), np.uint8)
            hair[:hair_rows, 4:21] = 1
            hair[0, 0] = 1
            truth[stem] = hair
    files = {"train": "parts_train.txt", "val": "parts_validation.txt", "test": "parts_test.txt"}
    for split, entries in splits.items():
        (root / files[split]).write_text("".join(f"{p} {n}\n" for p, n in entries))
    return truth


def test_lfw_parts_layout(tmp_path: Path) -> None:
    truth = make_lfw(
        tmp_path,
        {"Aaron_Eckhart": [1], "Zico": [1, 2, 3]},
        {"train": [("Aaron_Eckhart", 1), ("Zico", 2)], "val": [("Zico", 1)], "test": [("Zico", 3)]},
    )
    train = build_dataset("lfw_parts", "train", root=tmp_path)
    assert train.names == ["Aaron_Eckhart_0001", "Zico_0002"]
    assert build_dataset("lfw_parts", "val", root=tmp_path).names == ["Zico_0001"]
    assert build_dataset("lfw_parts", "test", root=tmp_path).names == ["Zico_0003"]
    for sample in train:
        assert sample["image"].shape == (25, 25, 3)
        np.testing.assert_array_equal(sample["mask"], truth[sample["name"]])


def test_lfw_parts_bad_inputs(tmp_path: Path) -> None:
    make_lfw(tmp_path, {"Zico": [1, 2]}, {"train": [("Zico", 1), ("Zico", 2)], "val": [("Zico", 1)]})
    (tmp_path / "parts_lfw_funneled_gt_images" / "Zico_0002.ppm").unlink()
    with pytest.raises(DataError, match=r"missing mask .*Zico_0002\.ppm"):
        build_dataset("lfw_parts", "train", root=tmp_path)
    with pytest.warns(DataWarning):
        assert len(build_dataset("lfw_parts", "train", root=tmp_path, on_error="skip")) == 1
    with pytest.raises(DataError, match=r"parts_test\.txt: missing LFW Part Labels split file"):
        build_dataset("lfw_parts", "test", root=tmp_path)
    (tmp_path / "parts_validation.txt").write_text("Zico 1\nZico one\n")
    with pytest.raises(DataError, match=r"parts_validation\.txt:2: expected '<Person_Name> <image number>'"):
        build_dataset("lfw_parts", "val", root=tmp_path)
    grey_pnm = b"P5\n25 25\n255\n" + bytes(25 * 25)  # a single-channel file where RGB is expected
    (tmp_path / "parts_lfw_funneled_gt_images" / "Zico_0001.ppm").write_bytes(grey_pnm)
    (tmp_path / "parts_validation.txt").write_text("Zico 1\n")
    with pytest.raises(DataError, match=r"Zico_0001\.ppm: expected an RGB part-label image"):
        build_dataset("lfw_parts", "val", root=tmp_path)[0]


# --------------------------------------------------------------------------- CelebAMask-HQ


def make_celeba(root: Path, indices: list[int], without_hair: set[int]) -> dict[int, np.ndarray]:
    """Images at 2x the mask size, like the 1024² photos vs 512² annotations."""
    rng = np.random.default_rng(2)
    truth = {}
    for i in indices:
        write_rgb(root / "CelebA-HQ-img" / f"{i}.jpg", rng.integers(0, 256, (64, 64, 3), np.uint8))
        mask = np.zeros((32, 32), np.uint8)
        if i not in without_hair:
            mask[: int(rng.integers(4, 16)), 3:29] = 1
            write_gray(root / "CelebAMask-HQ-mask-anno" / str(i // 2000) / f"{i:05d}_hair.png", mask * 255)
        truth[i] = mask
    (root / "CelebAMask-HQ-mask-anno").mkdir(parents=True, exist_ok=True)
    return truth


def test_celebamask_hq_layout_and_seeded_split(tmp_path: Path) -> None:
    indices = list(range(9)) + [2001]
    truth = make_celeba(tmp_path, indices, without_hair={3})
    with pytest.warns(DataWarning, match=r"seeded 80/10/10 split \(split_seed=0\), not CelebA's official partition"):
        parts = {s: build_dataset("celebamask_hq", s, root=tmp_path, mask_size=32) for s in ("train", "val", "test")}
    assert "seeded split" in parts["train"].source
    assert [len(parts[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    names = [n for s in parts.values() for n in s.names]
    assert sorted(names, key=int) == [str(i) for i in indices]
    again = build_dataset("celebamask_hq", "val", root=tmp_path, mask_size=32)
    assert again.names == parts["val"].names
    for ds in parts.values():
        for sample in ds:
            assert sample["image"].shape == (32, 32, 3), "image must be resized to the mask size"
            np.testing.assert_array_equal(sample["mask"], truth[int(sample["name"])])
    assert any(s["name"] == "2001" for ds in parts.values() for s in ds), "index 2001 lives in mask folder 1"


def test_celebamask_hq_split_file(tmp_path: Path) -> None:
    make_celeba(tmp_path, [0, 1, 2, 3], without_hair=set())
    split_file = tmp_path / "split.txt"
    split_file.write_text("# index split\n0 train\n1.jpg 0\n2 val\n3 2\n")
    assert build_dataset("celebamask_hq", "train", root=tmp_path, split_file=split_file).names == ["0", "1"]
    assert build_dataset("celebamask_hq", "val", root=tmp_path, split_file=split_file).names == ["2"]
    assert build_dataset("celebamask_hq", "test", root=tmp_path, split_file=split_file).names == ["3"]
    split_file.write_text("0 training\n")
    with pytest.raises(DataError, match=r"split\.txt:1: expected"):
        build_dataset("celebamask_hq", "train", root=tmp_path, split_file=split_file)
    split_file.write_text("7 train\n")
    with pytest.raises(DataError, match="lists image '7'"):
        build_dataset("celebamask_hq", "train", root=tmp_path, split_file=split_file)


def test_celebamask_hq_corrupt_mask_names_file(tmp_path: Path) -> None:
    make_celeba(tmp_path, [0], without_hair=set())
    bad = tmp_path / "CelebAMask-HQ-mask-anno" / "0" / "00000_hair.png"
    bad.write_bytes(b"\x89PNG broken")
    ds = build_dataset("celebamask_hq", "train", root=tmp_path, split_scheme="seeded", split_fractions=(1.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"00000_hair\.png: not a readable mask"):
        ds[0]


# --------------------------------------------------------------------------- Figaro-1k


def make_figaro(root: Path, train: int, test: int) -> None:
    rng = np.random.default_rng(3)
    for part, count in (("Training", train), ("Testing", test)):
        for i in range(count):
            image, mask = make_pair(rng, 30, 22)
            stem = f"Frame{i + 1 + (1000 if part == 'Testing' else 0):05d}"
            write_rgb(root / "Figaro1k" / "Original" / part / f"{stem}-org.jpg", image)
            write_gray(root / "Figaro1k" / "GT" / part / f"{stem}-gt.pbm", mask * 255)


def test_figaro1k_layout(tmp_path: Path) -> None:
    make_figaro(tmp_path, train=10, test=3)
    (tmp_path / "Figaro1k" / "Original" / "Training" / "._Frame00001-org.jpg").write_bytes(b"macOS junk")
    with pytest.warns(DataWarning, match="holding out 1 of 10"):
        train = build_dataset("figaro1k", "train", root=tmp_path)  # parent of Figaro1k/
    val = build_dataset("figaro1k", "val", root=tmp_path / "Figaro1k")  # or Figaro1k/ itself
    test = build_dataset("figaro1k", "test", root=tmp_path)
    assert (len(train), len(val), len(test)) == (9, 1, 3)
    assert not set(train.names) & set(val.names)
    sample = test[0]
    assert sample["name"] == "Frame01001" and sample["image"].shape == (30, 22, 3)
    assert set(np.unique(sample["mask"]).tolist()) == {0, 1}


def test_figaro1k_bad_inputs(tmp_path: Path) -> None:
    make_figaro(tmp_path, train=3, test=2)
    (tmp_path / "Figaro1k" / "GT" / "Testing" / "Frame01002-gt.pbm").unlink()
    with pytest.raises(DataError, match=r"missing mask .*Frame01002-gt\.pbm"):
        build_dataset("figaro1k", "test", root=tmp_path)
    with pytest.raises(DataError, match="not a Figaro-1k folder"):
        build_dataset("figaro1k", "test", root=tmp_path / "Figaro1k" / "GT")


# --------------------------------------------------------------------------- real data


def _shared_data() -> Path:
    return Path(os.environ.get("HAIRSEG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.mark.skipif(not (_shared_data() / "figaro1k").is_dir(), reason="shared Figaro-1k data not present")
def test_shared_figaro_smoke() -> None:
    ds = build_dataset("folder", "test", root=_shared_data() / "figaro1k", transform=None)
    assert len(ds) > 10
    for index in (0, len(ds) - 1):
        sample = ds[index]
        assert sample["image"].ndim == 3 and sample["image"].shape[2] == 3
        assert sample["mask"].shape == sample["image"].shape[:2]
        assert set(np.unique(sample["mask"]).tolist()) == {0, 1}
        assert 0.02 < sample["mask"].mean() < 0.98
    tensor_sample = build_dataset(
        "folder", "test", root=_shared_data() / "figaro1k", transform=build_eval_transform(129)
    )[1]
    assert tensor_sample["image"].shape == (3, 129, 129)


@pytest.mark.skipif(not (_shared_data() / "celebamask4k").is_dir(), reason="shared celebamask4k data not present")
def test_shared_celebamask4k_train_and_val() -> None:
    """The third real source: 3 491 train + 399 val CelebAMask-HQ pairs at 256², no test split."""
    root = _shared_data() / "celebamask4k"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # a val folder exists: nothing may be held out of train
        train = build_dataset("folder", "train", root=root)
        val = build_dataset("folder", "val", root=root)
    assert (len(train), len(val)) == (3491, 399)
    assert not set(train.names) & set(val.names)
    sample = val[0]
    assert sample["image"].shape == (256, 256, 3) and sample["image"].dtype == np.uint8
    assert sample["mask"].shape == (256, 256) and set(np.unique(sample["mask"]).tolist()) == {0, 1}
    assert sample["mask"].mean() >= 0.01, "every pair has hair on at least 1 % of the image"
    with pytest.raises(DataError, match=r"celebamask4k/test: split folder missing \(found: train, val\)"):
        build_dataset("folder", "test", root=root)
