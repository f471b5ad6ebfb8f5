"""Metrics of paper §5.1 and the boundary F-score, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hairseg_core.train.metrics import (
    BoundaryFScore,
    ConfusionMatrix,
    SegmentationMetrics,
    boundary_map,
    scores_from_confusion,
)

IGNORE = 255


def _labels_for_cm_3_1_2_4() -> tuple[np.ndarray, np.ndarray]:
    """Pred/target whose confusion matrix (rows = true) is [[3, 1], [2, 4]], plus 4 ignored pixels."""
    target = np.array([[0, 0, 0, 0, 1, 1, 1], [1, 1, 1, IGNORE, IGNORE, IGNORE, IGNORE]])
    pred = np.array([[0, 0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 1, 0]])
    return pred, target


def test_scores_from_confusion_by_hand() -> None:
    # cm = [[3, 1], [2, 4]]: rows (true) 4, 6; cols (pred) 5, 5; total 10.
    scores = scores_from_confusion(np.array([[3, 1], [2, 4]]))
    assert scores["acc"] == pytest.approx(7 / 10)  # (3 + 4) / 10
    assert scores["acc_class"] == pytest.approx((3 / 4 + 4 / 6) / 2)  # 0.708333
    iou0 = 3 / (4 + 5 - 3)  # 0.5
    iou1 = 4 / (6 + 5 - 4)  # 0.571429
    assert scores["miou"] == pytest.approx((iou0 + iou1) / 2)  # 0.535714
    assert scores["fwiou"] == pytest.approx(0.4 * iou0 + 0.6 * iou1)  # 0.542857
    assert set(scores) == {"acc", "acc_class", "miou", "fwiou"}


def test_scores_with_absent_classes() -> None:
    # Hair absent from both prediction and target: its IoU is 0/0 and is skipped, not counted as 0.
    assert scores_from_confusion(np.array([[5, 0], [0, 0]])) == {
        "acc": 1.0,
        "acc_class": 1.0,
        "miou": 1.0,
        "fwiou": 1.0,
    }
    # Hair predicted but absent from the target: IoU_hair = 0 counts, Acc_hair (0/0) is skipped.
    scores = scores_from_confusion(np.array([[3, 2], [0, 0]]))
    assert scores["acc"] == pytest.approx(0.6)
    assert scores["acc_class"] == pytest.approx(0.6)
    assert scores["miou"] == pytest.approx((3 / 5 + 0.0) / 2)
    assert scores["fwiou"] == pytest.approx(1.0 * 3 / 5)
    assert all(math.isnan(v) for v in scores_from_confusion(np.zeros((2, 2))).values())
    with pytest.raises(ValueError, match="square"):
        scores_from_confusion(np.zeros((2, 3)))


@pytest.mark.parametrize("as_torch", [False, True])
def test_confusion_matrix_counts_and_ignore(as_torch: bool) -> None:
    pred, target = _labels_for_cm_3_1_2_4()
    if as_torch:
        pred, target = torch.from_numpy(pred), torch.from_numpy(target)
    cm = ConfusionMatrix()
    cm.update(pred, target)  # [H, W] input
    np.testing.assert_array_equal(cm.matrix, [[3, 1], [2, 4]])
    assert cm.compute() == scores_from_confusion(np.array([[3, 1], [2, 4]]))
    cm.update(pred[None], target[None])  # [B, H, W] input accumulates
    np.testing.assert_array_equal(cm.matrix, [[6, 2], [4, 8]])
    cm.reset()
    assert cm.matrix.sum() == 0


def test_confusion_matrix_streaming_equals_one_shot() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, size=(6, 16, 16))
    target[rng.random(target.shape) < 0.1] = IGNORE
    pred = rng.integers(0, 2, size=(6, 16, 16))
    one_shot, streamed = ConfusionMatrix(), ConfusionMatrix()
    one_shot.update(pred, target)
    for i in range(6):
        streamed.update(torch.from_numpy(pred[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    np.testing.assert_array_equal(one_shot.matrix, streamed.matrix)
    assert one_shot.matrix.sum() == int((target != IGNORE).sum())


def test_confusion_matrix_rejects_bad_input() -> None:
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        cm.update(np.array([[0, 2]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="integer"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer labels"):
        cm._counts_torch(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))


def test_confusion_matrix_device_path_matches_numpy() -> None:
    # update() sends GPU tensors through the torch bincount; run that code on CPU tensors here so it is
    # checked on machines without a GPU.
    pred, target = _labels_for_cm_3_1_2_4()
    cm = ConfusionMatrix()
    np.testing.assert_array_equal(
        cm._counts_torch(torch.from_numpy(pred), torch.from_numpy(target)), cm._counts_numpy(pred, target)
    )
    with pytest.raises(ValueError, match="labels must lie"):
        cm._counts_torch(torch.tensor([[0, 3]]), torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), int), np.zeros((2, 3), int))


def _square(size: int = 40, top: int = 10, left: int = 10, side: int = 20) -> np.ndarray:
    mask = np.zeros((size, size), np.int64)
    mask[top : top + side, left : left + side] = 1
    return mask


def test_boundary_map_of_square() -> None:
    boundary = boundary_map(_square(), np.ones((40, 40), bool))
    assert boundary.sum() == 4 * 20 - 4  # the one-pixel ring inside the square
    assert boundary[10, 10:30].all() and not boundary[11, 11:29].any()


def test_boundary_f_identical_and_shifted_by_hand() -> None:
    target = _square()
    metric = BoundaryFScore(tolerance=2)
    metric.update(target, target)
    assert metric.compute() == 1.0

    # Shift right by 1 px with zero tolerance: of the 76 ring pixels, only the top and bottom rows
    # overlap, minus one pixel each -> 2 * 19 = 38 matches on both sides: P = R = F = 0.5.
    shifted = np.roll(target, 1, axis=1)
    exact = BoundaryFScore(tolerance=0)
    exact.update(shifted, target)
    assert (exact.pred_matched, exact.pred_total, exact.true_matched, exact.true_total) == (38, 76, 38, 76)
    assert exact.compute() == pytest.approx(0.5)
    loose = BoundaryFScore(tolerance=1)
    loose.update(shifted, target)
    assert loose.compute() == 1.0


def test_boundary_f_tolerance_is_monotone() -> None:
    target = _square()
    shifted = np.roll(target, 3, axis=1)
    scores = []
    for tol in (0, 1, 2, 3):
        metric = BoundaryFScore(tolerance=tol)
        metric.update(torch.from_numpy(shifted)[None], torch.from_numpy(target)[None])
        scores.append(metric.compute())
    assert scores == sorted(scores)
    assert scores[2] < 1.0 and scores[3] == 1.0


def test_boundary_f_accumulates_counts_over_images() -> None:
    big, small = _square(), _square(top=2, left=2, side=4)  # rings of 76 and 12 pixels
    metric = BoundaryFScore(tolerance=2)
    metric.update(np.stack([big, np.zeros_like(small)]), np.stack([big, small]))
    # P = 76/76, R = 76/88 -> F = 2PR/(P+R) = 152/164; a per-image mean would give (1 + 0)/2.
    assert metric.compute() == pytest.approx(152 / 164)
    assert metric.precision_recall() == pytest.approx((1.0, 76 / 88))


def test_boundary_f_empty_cases() -> None:
    empty = np.zeros((8, 8), np.int64)
    both_empty = BoundaryFScore()
    both_empty.update(empty, empty)
    assert both_empty.compute() == 1.0
    missed = BoundaryFScore()
    missed.update(empty, _square(size=8, top=2, left=2, side=4))
    assert missed.compute() == 0.0


def test_boundary_ignores_padding() -> None:
    # Hair runs into right-side padding (cols >= 30). The hair/padding border is not a hair boundary,
    # and whatever the model predicts on padding must not change the score.
    target = np.zeros((40, 40), np.int64)
    target[10:30, 10:] = 1
    target[:, 30:] = IGNORE
    boundary = boundary_map(target, target != IGNORE)
    assert boundary[:, 29].sum() == 2  # only the top/bottom row ends, not the side facing the padding
    assert boundary.sum() == 20 + 2 * 19  # left column + top and bottom rows up to the padding

    pred = np.zeros((40, 40), np.int64)
    pred[10:30, 10:30] = 1
    pred[:, 30:] = np.random.default_rng(0).integers(0, 2, size=(40, 10))  # garbage on padding
    metric = BoundaryFScore(tolerance=0)
    metric.update(pred, target)
    assert metric.compute() == 1.0
    # Scoring the padding as background would count the garbage there and lower the score.
    unpadded = BoundaryFScore(tolerance=0)
    unpadded.update(pred, np.where(target == IGNORE, 0, target))
    assert unpadded.compute() < 1.0


def test_segmentation_metrics_combines_both() -> None:
    target = _square()
    pred = np.roll(target, 1, axis=1)
    metrics = SegmentationMetrics(boundary_tolerance=0)
    metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    scores = metrics.compute()
    assert set(scores) == {"acc", "acc_class", "miou", "fwiou", "boundary_f"}
    # 20 hair pixels lost on the left column, 20 false ones on the right: cm = [[1180, 20], [20, 380]].
    assert scores == {**scores_from_confusion(np.array([[1180, 20], [20, 380]])), "boundary_f": 0.5}
    metrics.reset()
    metrics.update(target, target)
    assert metrics.compute()["miou"] == 1.0 and metrics.compute()["boundary_f"] == 1.0
