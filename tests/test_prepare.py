"""`hairseg data prepare celebamask_hq`: a fake CelebAMask-HQ in the official layout, checked, split and used.

The tree mirrors the download: ``CelebA-HQ-img/<i>.jpg``, ``CelebAMask-HQ-mask-anno/<i//2000>/<iiiii>_hair.png``
and ``CelebA-HQ-to-CelebA-mapping.txt`` (``idx orig_idx orig_file``), plus CelebA's ``list_eval_partition.txt``
where a test needs it. Photos are 64 px JPEGs and masks 64 px PNGs (``--mask-size 64``), so everything runs in
seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from hairseg_core import cli
from hairseg_core.config import load_search_space
from hairseg_core.data import DataError, DataWarning, build_dataset
from hairseg_core.data.celeba_split import CELEBA_LAST_TRAIN, CELEBA_LAST_VAL, plan_split
from hairseg_core.data.prepare import check_celebamask_hq
from hairseg_core.search.overrides import parse_set

REPO = Path(__file__).resolve().parents[1]
PX = 64
# HQ index -> CelebA file number: 8 in CelebA's train range, 2 in val, 2 in test; 2001 and 4005 sit in mask
# folders 1 and 2. Indices 3 and 2001 have no hair file (no visible hair).
CELEBA_NUMBER = {
    0: 1000,
    1: 162770,  # the last train file: the boundary itself
    2: 5,
    3: 200,
    4: 162771,  # the first val file
    5: 90000,
    6: 182638,  # the first test file
    7: 150000,
    8: 182637,  # the last val file
    9: 202599,  # the last test file
    2001: 12,
    4005: 77,
}
WITHOUT_HAIR = {3, 2001}
OFFICIAL = {
    "train": ["0", "1", "2", "3", "5", "7", "2001", "4005"],
    "val": ["4", "8"],
    "test": ["6", "9"],
}


def _write(path: Path, array: np.ndarray, ext: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext, array)
    assert ok
    path.write_bytes(buf.tobytes())


def make_celebamask_hq(root: Path, *, mapping: bool = True) -> Path:
    """A 12-photo CelebAMask-HQ in the official layout; returns ``root``."""
    rng = np.random.default_rng(0)
    for index in CELEBA_NUMBER:
        photo = cv2.GaussianBlur(rng.integers(0, 256, (PX, PX, 3), dtype=np.uint8), (0, 0), 2)
        _write(root / "CelebA-HQ-img" / f"{index}.jpg", photo, ".jpg")
        if index not in WITHOUT_HAIR:
            mask = np.zeros((PX, PX), np.uint8)
            mask[: 8 + index % 20, 4:60] = 255
            _write(root / "CelebAMask-HQ-mask-anno" / str(index // 2000) / f"{index:05d}_hair.png", mask, ".png")
        # another part of the same face, which the recipe must ignore
        _write(
            root / "CelebAMask-HQ-mask-anno" / str(index // 2000) / f"{index:05d}_skin.png", np.zeros((8, 8)), ".png"
        )
    if mapping:
        rows = [f"{i} {n - 1} {n:06d}.jpg" for i, n in sorted(CELEBA_NUMBER.items())]
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n" + "\n".join(rows) + "\n")
    return root


def write_partition(path: Path, overrides: dict[int, int] | None = None) -> Path:
    """CelebA's list_eval_partition.txt for the files the fake tree maps to (CelebA's ranges, then ``overrides``)."""
    split = {n: 0 if n <= CELEBA_LAST_TRAIN else 1 if n <= CELEBA_LAST_VAL else 2 for n in CELEBA_NUMBER.values()}
    split.update(overrides or {})
    path.write_text("".join(f"{n:06d}.jpg {s}\n" for n, s in sorted(split.items())))
    return path


def _names(root: Path, split: str, **options: object) -> list[str]:
    return build_dataset("celebamask_hq", split, root=root, mask_size=PX, **options).names


def prepare(root: Path, *extra: str) -> int:
    return cli.main(
        ["data", "prepare", "celebamask_hq", "--root", str(root), "--mask-size", str(PX), "--quiet", *extra]
    )


# --------------------------------------------------------------------------- the split


def test_official_split_from_the_mapping_and_from_the_partition_file(tmp_path: Path) -> None:
    root = make_celebamask_hq(tmp_path / "CelebAMask-HQ")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for split, expected in OFFICIAL.items():
            dataset = build_dataset("celebamask_hq", split, root=root, mask_size=PX)
            assert dataset.names == expected
            assert "official split" in dataset.source
    assert [str(w.message) for w in record if issubclass(w.category, DataWarning)] == []

    # CelebA's own partition list, when present, wins over the ranges (here it moves CelebA file 5 to test)
    write_partition(root / "list_eval_partition.txt", overrides={5: 2})
    assert _names(root, "test") == ["2", "6", "9"]
    plan = plan_split(root, [str(i) for i in CELEBA_NUMBER])
    assert plan.method == "official_partition" and "list_eval_partition.txt" in plan.description

    # the seeded split only when asked for, or when the mapping is missing (then announced)
    assert plan_split(root, [str(i) for i in CELEBA_NUMBER], split_scheme="seeded").method == "seeded"
    (root / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.warns(DataWarning, match="seeded 80/10/10 split .*because there is no CelebA-HQ-to-CelebA-mapping"):
        assert len(_names(root, "train")) == 10
    with pytest.raises(DataError, match=r"CelebA-HQ-to-CelebA-mapping\.txt: missing; split_scheme 'official'"):
        _names(root, "train", split_scheme="official")


def test_bad_mapping_and_partition_files_name_the_line(tmp_path: Path) -> None:
    root = make_celebamask_hq(tmp_path)
    mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
    mapping.write_text("idx orig_idx orig_file\n0 999 000001.jpg\n")
    with pytest.raises(DataError, match=r"mapping\.txt: has no line for image 1\.jpg"):
        _names(root, "train")
    mapping.write_text("idx orig_idx orig_file\n0 999\n")
    with pytest.raises(DataError, match=r"mapping\.txt:2: expected '<idx> <orig_idx> <orig_file>'"):
        _names(root, "train")
    make_celebamask_hq(root)
    partition = write_partition(tmp_path / "partition.txt")
    partition.write_text(partition.read_text().replace(" 0\n", " train\n", 1))
    with pytest.raises(DataError, match=r"partition\.txt:1: expected '<CelebA file> <0\|1\|2>'"):
        _names(root, "train", partition_file=partition)
    with pytest.raises(DataError, match="give either split_file"):
        _names(root, "train", split_file=partition, split_scheme="seeded")
    with pytest.raises(DataError, match=r"nowhere\.txt: partition_file not found"):
        _names(root, "train", partition_file=tmp_path / "nowhere.txt")


# --------------------------------------------------------------------------- the recipe


def test_prepare_checks_writes_the_split_and_prints_lines_that_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_celebamask_hq(tmp_path / "CelebAMask-HQ")
    assert prepare(root) == 0
    out, err = capsys.readouterr()
    assert "error" not in err
    assert f"CelebAMask-HQ at {root}: ok" in out
    assert "photos       12 in CelebA-HQ-img/, indices 0..4005 (the full CelebAMask-HQ has 30000" in out
    assert "64x64" in out
    assert "hair masks   10 in CelebAMask-HQ-mask-anno/<i//2000>/, 64x64" in out
    assert "2 photos have no hair file" in out
    assert "missing      3994 indices between the first and last photo: 10, 11, 12, 13, 14, ..." in out
    assert "split        8 train / 2 val / 2 test: official CelebA split (CelebA-HQ-to-CelebA-mapping.txt" in out

    split_file = root / "hairseg-split.txt"
    text = split_file.read_text()
    assert text.startswith("# hairseg split file for CelebAMask-HQ at")
    assert "# split: official CelebA split" in text and "# images: 8 train / 2 val / 2 test" in text
    rows = dict(line.split() for line in text.splitlines() if not line.startswith("#"))
    assert {s: sorted((k for k, v in rows.items() if v == s), key=int) for s in OFFICIAL} == OFFICIAL
    assert f"{split_file} (written)" in out

    # the printed --set line, fed to the sweep's own parser, gives a space whose data is this split
    set_line = next(line for line in out.splitlines() if "pipelines/sweep.py" in line)
    pairs = set_line.split("--set ", 1)[1].split()
    assert pairs == [
        "dataset=celebamask_hq",
        f"data_root={root.resolve()}",
        f"fixed.dataset_options.split_file={split_file.resolve()}",
        f"fixed.dataset_options.mask_size={PX}",
    ]
    space = load_search_space(REPO / "search_spaces" / "paper.yaml", parse_set(pairs, bare_prefix="fixed"))
    fixed = space.fixed
    val = build_dataset(fixed["dataset"], "val", root=fixed["data_root"], **fixed["dataset_options"])
    assert val.names == OFFICIAL["val"] and "split file" in val.source
    image, mask = val.load_raw(0)
    assert image.shape == (PX, PX, 3) and mask.shape == (PX, PX) and mask.any()
    assert f"dataset_options: {{split_file: {split_file.resolve()}, mask_size: {PX}}}" in out
    assert f"- {{name: celebamask_hq, dataset: celebamask_hq, data_root: {root.resolve()}, dataset_options:" in out

    # again: nothing changes; --check reads the file back and writes nothing
    assert prepare(root) == 0
    assert f"{split_file} (unchanged)" in capsys.readouterr().out
    split_file.unlink()
    assert prepare(root, "--check") == 0
    assert "not there yet (run without --check to write it)" in capsys.readouterr().out
    assert not split_file.exists()


def test_prepare_from_the_command_line(tmp_path: Path) -> None:
    root = make_celebamask_hq(tmp_path / "CelebAMask-HQ")
    write_partition(root / "list_eval_partition.txt")
    out_file = tmp_path / "splits" / "celebamask.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["data", "prepare", "celebamask_hq", "--root", str(root), "--mask-size", str(PX), "--threads", "2"]
    done = subprocess.run(
        [sys.executable, "-m", "hairseg_core.cli", *args, "--split-file", str(out_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "split        8 train / 2 val / 2 test: official CelebA split" in done.stdout
    assert "list_eval_partition.txt" in done.stdout
    assert out_file.is_file() and not (root / "hairseg-split.txt").exists()
    assert f"fixed.dataset_options.split_file={out_file.resolve()}" in done.stdout


def _break_missing_mask_folder(root: Path) -> Path:
    folder = root / "CelebAMask-HQ-mask-anno"
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()
    return folder


def _break_corrupt_jpg(root: Path) -> Path:
    path = root / "CelebA-HQ-img" / "5.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return path


def _break_truncated_jpg(root: Path) -> Path:
    path = root / "CelebA-HQ-img" / "7.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what an interrupted unzip leaves
    return path


def _break_mask_in_wrong_folder(root: Path) -> Path:
    path = root / "CelebAMask-HQ-mask-anno" / "2" / "04005_hair.png"
    return path.rename(root / "CelebAMask-HQ-mask-anno" / "0" / "04005_hair.png")


def _break_mask_without_photo(root: Path) -> Path:
    (root / "CelebA-HQ-img" / "8.jpg").unlink()
    return root / "CelebAMask-HQ-mask-anno" / "0" / "00008_hair.png"


def _break_mask_size(root: Path) -> Path:
    path = root / "CelebAMask-HQ-mask-anno" / "0" / "00001_hair.png"
    _write(path, np.zeros((PX // 2, PX // 2), np.uint8), ".png")
    return path


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_break_missing_mask_folder, "missing folder of the CelebAMask-HQ layout"),
        (_break_corrupt_jpg, "not a readable image"),
        (_break_truncated_jpg, "not a readable image"),
        (_break_mask_in_wrong_folder, "in folder 0/; expected CelebAMask-HQ-mask-anno/2/"),
        (_break_mask_without_photo, "hair mask without its photo"),
        (_break_mask_size, f"mask is 32x32; expected {PX}x{PX}"),
    ],
)
def test_a_broken_tree_exits_2_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage, expected: str
) -> None:
    root = make_celebamask_hq(tmp_path / "CelebAMask-HQ")
    bad = breakage(root)
    assert prepare(root) == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"error: {bad}: ") and expected in errors[0]
    assert "Traceback" not in err
    assert not (root / "hairseg-split.txt").exists(), "a broken tree gets no split file"
    if breakage is not _break_missing_mask_folder:  # the report is still printed, with the count
        assert "1 problem(s)" in out and "nothing was written" in err


def test_prepare_keeps_a_split_file_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_celebamask_hq(tmp_path)
    own = root / "hairseg-split.txt"
    own.write_text("0 train\n1 val\n")
    assert prepare(root) == 2
    assert "exists and was not written by `hairseg data prepare`" in capsys.readouterr().err
    assert own.read_text() == "0 train\n1 val\n"
    assert prepare(root, "--check") == 0  # --check reads it: a valid split of this folder, not the official one
    assert f"split file   {own}: 1 train / 1 val / 0 test (differs from the official_ranges split)" in (
        capsys.readouterr().out
    )


def test_check_returns_the_report_in_process(tmp_path: Path) -> None:
    root = make_celebamask_hq(tmp_path, mapping=False)
    check = check_celebamask_hq(root, mask_size=PX, threads=2)
    assert check.ok and (check.images, check.hair_masks, check.without_hair) == (12, 10, 2)
    assert check.plan.method == "seeded" and check.plan.counts() == {"train": 10, "val": 1, "test": 1}
    assert check.image_sizes == {(PX, PX): 12} and check.mask_sizes == {(PX, PX): 10}


def test_download_celebamask_hq_says_what_to_fetch_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "data"
    assert cli.main(["data", "download", "celebamask_hq", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert "drive.google.com" in err and "pan.baidu.com" in err and "CelebAMask-HQ.zip" in err
    assert f"hairseg data prepare celebamask_hq --root {dest}/CelebAMask-HQ" in err
    assert not dest.exists()


def test_wrong_root_points_at_the_unzipped_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_celebamask_hq(tmp_path / "CelebAMask-HQ")
    assert prepare(tmp_path) == 2  # the folder the zip was unpacked into, not the data set itself
    err = capsys.readouterr().err
    assert f"(it is in {tmp_path / 'CelebAMask-HQ'}: use that folder as the root)" in err
