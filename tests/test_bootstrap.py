"""Paired bootstrap promotion on constructed per-image counts whose answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hairseg_core.config import FinalizeSettings
from hairseg_core.final.bootstrap import (
    PerImageCounts,
    bootstrap_weights,
    metric_interval,
    metric_per_resample,
    metric_value,
    paired_bootstrap,
)
from hairseg_core.final.promotion import decide_paired_promotion, promotion_tags
from hairseg_core.final.table5 import add_intervals
from hairseg_core.train.metrics import SegmentationMetrics, scores_from_confusion


def _cm(tp: int, fp: int, fn: int, tn: int) -> np.ndarray:
    """A binary confusion matrix ``cm[true, pred]`` (class 1 = hair)."""
    return np.array([[tn, fp], [fn, tp]], dtype=np.int64)


def _images(rng: np.random.Generator, n: int, hair: int = 2000, total: int = 10000) -> list[tuple[int, int, int]]:
    """Per-image (hair pixels, false positives, misses) of a model that gets ~90 % of the hair."""
    return [(hair, int(rng.integers(50, 150)), int(rng.integers(100, 300))) for _ in range(n)]


def _counts(
    images: list[tuple[int, int, int]], total: int = 10000, extra_miss: list[int] | None = None
) -> PerImageCounts:
    cms = []
    for i, (hair, fp, fn) in enumerate(images):
        fn = min(hair, max(0, fn + (extra_miss[i] if extra_miss else 0)))
        cms.append(_cm(hair - fn, fp, fn, total - hair - fp))
    return PerImageCounts.from_confusions(cms)


def test_per_image_counts_sum_to_the_dataset_scores() -> None:
    """Recorded per-image shares add up to what SegmentationMetrics reports, boundary F included."""
    rng = np.random.default_rng(3)
    metrics, counts = SegmentationMetrics(num_classes=2), PerImageCounts()
    for i in range(5):
        target = np.zeros((40, 50), np.int64)
        target[5 + i : 25 + i, 10:30] = 1
        pred = np.roll(target, i, axis=1)
        pred[rng.random(pred.shape) < 0.02] = 1
        counts.record(metrics, pred, target, name=f"img{i}")
    dataset = metrics.compute()
    assert len(counts) == 5 and counts.names[-1] == "img4"
    assert np.array_equal(np.sum(counts.confusion, axis=0), metrics.confusion.matrix)
    for metric in ("acc", "acc_class", "miou", "fwiou", "boundary_f"):
        assert metric_value(counts, metric) == pytest.approx(dataset[metric], abs=1e-12), metric


def test_resampled_metric_matches_scoring_each_resample_directly() -> None:
    rng = np.random.default_rng(0)
    counts = _counts(_images(rng, 12))
    weights = bootstrap_weights(12, 1000, seed=5)
    assert weights.shape == (1000, 12) and np.all(weights.sum(axis=1) == 12)
    assert np.array_equal(weights, bootstrap_weights(12, 1000, seed=5)), "seeded: the same draws again"
    fast = metric_per_resample(counts, weights, "miou")
    cms = np.stack(counts.confusion)
    for r in (0, 17, 999):
        summed = np.tensordot(weights[r], cms, axes=1)
        assert fast[r] == pytest.approx(scores_from_confusion(summed)["miou"], abs=1e-12)
    interval = metric_interval(counts, weights, "miou", 0.95)
    assert interval.lo < interval.value < interval.hi and interval.n_images == 12 and interval.resamples == 1000


def test_identical_models_are_never_promoted() -> None:
    rng = np.random.default_rng(1)
    counts = _counts(_images(rng, 40))
    comparison = paired_bootstrap(counts, counts, "miou", resamples=2000, confidence=0.95, seed=0)
    assert comparison.diff == 0 and comparison.lo == 0 and comparison.hi == 0
    promote, reason = decide_paired_promotion(comparison, margin=0.0)
    assert not promote and "champion kept" in reason and "95% CI [+0.0000, +0.0000]" in reason


def test_a_clearly_better_model_is_promoted() -> None:
    rng = np.random.default_rng(2)
    images = _images(rng, 40)
    champion = _counts(images)
    better = _counts(images, extra_miss=[-100] * 40)  # 100 more hair pixels found on every image
    comparison = paired_bootstrap(better, champion, "miou", resamples=2000, confidence=0.95, seed=0)
    assert comparison.lo > 0.01, comparison
    promote, reason = decide_paired_promotion(comparison, margin=0.005)
    assert promote and "promoted" in reason
    assert comparison.lo <= comparison.diff_mean <= comparison.hi
    tags = promotion_tags(comparison)
    assert tags["hairseg.promotion.images"] == 40 and tags["hairseg.promotion.resamples"] == 2000
    assert float(tags["hairseg.promotion.ci_lo"]) == pytest.approx(comparison.lo, abs=1e-6)


def test_better_on_average_by_noise_on_few_images_is_not_promoted() -> None:
    """8 images, the new model far better on some and far worse on others: mean +, interval spans 0."""
    rng = np.random.default_rng(4)
    images = _images(rng, 8)
    champion = _counts(images)
    swings = [-100, 90, -100, 80, -100, 85, -100, 80]  # 100 fewer misses (-) or ~85 more (+) per image
    noisy = _counts(images, extra_miss=swings)
    comparison = paired_bootstrap(noisy, champion, "miou", resamples=2000, confidence=0.95, seed=0)
    assert comparison.diff > 0.001, "better on average: the old point rule would have promoted it"
    assert comparison.lo < 0 < comparison.hi
    promote, reason = decide_paired_promotion(comparison, margin=0.0)
    assert not promote and "champion kept" in reason


def test_first_model_is_promoted_without_an_interval() -> None:
    promote, reason = decide_paired_promotion(None, margin=0.0)
    assert promote and "first registered model" in reason
    assert "hairseg.promotion.ci_lo" not in promotion_tags(None)


def test_paired_bootstrap_refuses_different_images() -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="different images"):
        paired_bootstrap(_counts(_images(rng, 5)), _counts(_images(rng, 6)))


def test_table5_intervals_from_shared_resamples() -> None:
    rng = np.random.default_rng(6)
    images = _images(rng, 30)
    counts = {"baseline": _counts(images), "crf": _counts(images, extra_miss=[-50] * 30)}
    table = [{"method": "baseline", "miou": metric_value(counts["baseline"])}, {"method": "crf"}]
    add_intervals(table, counts, bootstrap_weights(30, 1000, 0), confidence=0.95)
    for row in table:
        assert row["miou_lo"] < row["miou_hi"]
    assert table[0]["miou_lo"] < table[0]["miou"] < table[0]["miou_hi"]
    assert table[1]["miou_lo"] > table[0]["miou_lo"], "the better variant's interval sits higher"


def test_finalize_settings_bootstrap_bounds() -> None:
    settings = FinalizeSettings()
    assert (settings.promote_confidence, settings.bootstrap_resamples) == (0.95, 2000)
    with pytest.raises(ValidationError):
        FinalizeSettings(bootstrap_resamples=100)
    with pytest.raises(ValidationError):
        FinalizeSettings(promote_confidence=1.0)
