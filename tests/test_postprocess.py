"""Post-processing: dense CRF, trimap, Mishima / closed-form matting and the Table 5 pipelines.

All inputs are synthetic with a known answer (a sharp colour edge, a known α ramp), so each
test checks a measurable property of the real libraries' output rather than that code ran.
"""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from hairseg_core.builders import UnknownNameError
from hairseg_core.postprocess import (
    MATTING,
    POSTPROCESSORS,
    DenseCRF,
    build_postprocessor,
    closed_form_matting,
    make_trimap,
    mishima_matting,
)

HAIR_RGB = np.array([90.0, 60.0, 30.0])
BACK_RGB = np.array([170.0, 190.0, 210.0])


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / (pred | truth).sum())


@pytest.fixture(scope="module")
def disc_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two flat colours split by a circular edge (+ noise); probs = GT shifted by (4, 3) px and blurred."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    truth = (yy - 48) ** 2 + (xx - 48) ** 2 < 28**2
    image = np.where(truth[..., None], HAIR_RGB, BACK_RGB) + rng.normal(0, 5, (96, 96, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    soft = cv2.GaussianBlur(np.roll(truth.astype(np.float32), (4, 3), axis=(0, 1)), (0, 0), 6)
    hair = 0.1 + 0.8 * soft
    probs = np.stack([1 - hair, hair]).astype(np.float32)
    return image, probs, truth


def ramp_scene(
    height: int = 64,
    width: int = 96,
    ramp: tuple[int, int] = (30, 70),
    known: tuple[int, int] = (25, 76),
    split_background: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image composited with a known α ramp along x (0 at ramp[0] .. 1 at ramp[1]) + a trimap
    that is background left of known[0], foreground from known[1] on, unknown between.

    ``split_background`` gives the top and bottom halves different background colours, which
    a single global background estimate cannot explain.
    """
    rng = np.random.default_rng(1)
    alpha = np.clip((np.arange(width) - ramp[0]) / (ramp[1] - ramp[0]), 0, 1)[None, :].repeat(height, 0)
    fore = np.array([200.0, 150.0, 60.0])
    back = np.broadcast_to(np.array([40.0, 70.0, 160.0]), (height, width, 3)).copy()
    if split_background:
        back[height // 2 :] = [30.0, 160.0, 60.0]
    image = alpha[..., None] * fore + (1 - alpha[..., None]) * back + rng.normal(0, 2, (height, width, 3))
    trimap = np.full((height, width), 128, np.uint8)
    trimap[:, : known[0]] = 0
    trimap[:, known[1] :] = 255
    return np.clip(np.round(image), 0, 255).astype(np.uint8), trimap, alpha


# ---------------------------------------------------------------- dense CRF


def test_crf_sharpens_a_blurred_shifted_prediction(disc_scene) -> None:
    image, probs, truth = disc_scene
    before = probs[1] > 0.5
    refined = DenseCRF()(image, probs)
    after = refined[1] > 0.5
    assert iou(after, truth) > iou(before, truth) + 0.1
    assert (after == truth).mean() > (before == truth).mean() + 0.03


def test_crf_output_is_a_probability_distribution(disc_scene) -> None:
    image, probs, _ = disc_scene
    out = DenseCRF(iterations=3)(image, probs)
    assert out.dtype == np.float32 and out.shape == probs.shape
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-4)
    # More than two classes works too (the library is multi-label).
    rng = np.random.default_rng(2)
    three = rng.dirichlet([1, 1, 1], size=(96, 96)).transpose(2, 0, 1).astype(np.float32)
    out3 = DenseCRF(iterations=2)(image, three)
    np.testing.assert_allclose(out3.sum(axis=0), 1.0, atol=1e-4)


def test_crf_accepts_non_contiguous_image_views(disc_scene) -> None:
    image, probs, _ = disc_scene
    flipped = image[:, ::-1]  # a view, not C-contiguous
    assert not flipped.flags["C_CONTIGUOUS"]
    crf = DenseCRF(iterations=2)
    np.testing.assert_array_equal(crf(flipped, probs), crf(np.ascontiguousarray(flipped), probs))


@pytest.mark.parametrize(
    ("image_fn", "probs_fn", "error", "message"),
    [
        (lambda im: im.astype(np.float32), lambda p: p, TypeError, "uint8"),
        (lambda im: im[..., 0], lambda p: p, ValueError, "HxWx3"),
        (lambda im: im, lambda p: p[1], ValueError, r"\[C,H,W\]"),
        (lambda im: im, lambda p: p[:, :50], ValueError, "does not match image"),
        (lambda im: im, lambda p: p * 10 - 5, ValueError, "logits"),
        (lambda im: im, lambda p: p.astype(np.int64), TypeError, "floating"),
    ],
)
def test_crf_rejects_bad_inputs_with_clear_errors(disc_scene, image_fn, probs_fn, error, message) -> None:
    image, probs, _ = disc_scene
    with pytest.raises(error, match=message):
        DenseCRF()(image_fn(image), probs_fn(probs))


def test_crf_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="iterations"):
        DenseCRF(iterations=0)
    with pytest.raises(ValueError, match="bilateral_srgb"):
        DenseCRF(bilateral_srgb=0)
    with pytest.raises(TypeError, match="gaussian_sxy"):  # the error lists the valid keys
        DenseCRF.from_params(iteration=5)
    assert DenseCRF.from_params(iterations=7).iterations == 7


# ---------------------------------------------------------------- trimap


@pytest.mark.parametrize("width", [0, 1, 7, 10])
def test_trimap_band_has_the_requested_width(width: int) -> None:
    mask = np.zeros((40, 60), bool)
    mask[:, 30:] = True  # vertical edge between columns 29 and 30
    trimap = make_trimap(mask, width=width)
    assert trimap.dtype == np.uint8 and set(np.unique(trimap)) <= {0, 128, 255}
    unknown_cols = np.flatnonzero((trimap == 128).all(axis=0))
    assert len(unknown_cols) == width and ((trimap == 128).any(axis=0) == (trimap == 128).all(axis=0)).all()
    if width:
        assert unknown_cols.min() == 30 - (width - width // 2) and unknown_cols.max() == 29 + width // 2
    assert (trimap[:, : 30 - (width - width // 2)] == 0).all()
    assert (trimap[:, 30 + width // 2 :] == 255).all()


def test_trimap_band_follows_a_curved_boundary_and_thresholds_probabilities() -> None:
    yy, xx = np.mgrid[:80, :80]
    dist = np.hypot(yy - 40, xx - 40)
    prob = np.clip(1.0 - (dist - 20) / 10, 0, 1).astype(np.float32)  # 0.5 at radius 25
    trimap = make_trimap(prob, width=10, threshold=0.5)
    band = dist[trimap == 128]
    assert band.min() >= 25 - 5 - 1 and band.max() <= 25 + 5 + 1
    assert (trimap[dist < 19] == 255).all() and (trimap[dist > 31] == 0).all()
    # uint8 0/255 masks and bool masks give the same trimap
    mask = prob > 0.5
    np.testing.assert_array_equal(make_trimap(mask.astype(np.uint8) * 255, width=10), trimap)


def test_trimap_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="HxW"):
        make_trimap(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="width"):
        make_trimap(np.zeros((4, 4), np.float32), width=-1)
    with pytest.raises(ValueError, match="threshold"):
        make_trimap(np.zeros((4, 4), np.float32), threshold=2.0)


# ---------------------------------------------------------------- matting


def test_mishima_recovers_a_known_alpha_ramp() -> None:
    image, trimap, truth = ramp_scene()
    alpha = mishima_matting(image, trimap)
    assert alpha.dtype == np.float32 and alpha.shape == truth.shape
    assert (alpha[trimap == 255] == 1.0).all() and (alpha[trimap == 0] == 0.0).all()
    soft = (truth > 0.1) & (truth < 0.9)
    assert (alpha[soft] > 0).all() and (alpha[soft] < 1).all()
    assert np.abs(alpha - truth)[trimap == 128].mean() < 0.02


def test_mishima_uses_local_colours_where_the_background_changes() -> None:
    # A 24 px band and 31 px windows: every unknown pixel sees known pixels of both classes.
    image, trimap, truth = ramp_scene(128, 96, ramp=(40, 56), known=(36, 60), split_background=True)
    rows = np.abs(np.arange(128) - 64) > 16  # windows there see a single backdrop
    band = (trimap == 128) & rows[:, None]
    local_error = np.abs(mishima_matting(image, trimap, window=31) - truth)[band].mean()
    global_error = np.abs(mishima_matting(image, trimap, window=401) - truth)[band].mean()
    assert local_error < 0.04
    assert global_error > 3 * local_error  # one global background sphere cannot fit two backdrops


def test_closed_form_agrees_with_the_known_ramp_and_with_mishima() -> None:
    image, trimap, truth = ramp_scene()
    alpha = closed_form_matting(image, trimap)
    assert alpha.dtype == np.float32
    assert (alpha[trimap == 255] == 1.0).all() and (alpha[trimap == 0] == 0.0).all()
    band = trimap == 128
    assert np.abs(alpha - truth)[band].mean() < 0.04
    assert np.abs(alpha - mishima_matting(image, trimap))[band].mean() < 0.04


@pytest.mark.parametrize("method", ["mishima", "closed_form"])
def test_matting_degenerate_trimaps(method: str) -> None:
    matte = MATTING.get(method)
    image, _, _ = ramp_scene(32, 48)
    no_band = np.zeros((32, 48), np.uint8)
    no_band[:, 24:] = 255
    np.testing.assert_array_equal(matte(image, no_band), (no_band == 255).astype(np.float32))
    no_foreground = np.full((32, 48), 128, np.uint8)
    no_foreground[:, :10] = 0
    assert (matte(image, no_foreground) == 0).all()
    far_foreground = no_foreground.copy()  # foreground not adjacent to the band
    far_foreground[:, 30:] = 0
    far_foreground[:, 40:] = 255
    far = matte(image, far_foreground)
    assert (far[far_foreground == 255] == 1).all() and np.isfinite(far).all()
    with pytest.raises(ValueError, match="no known pixels"):
        matte(image, np.full((32, 48), 128, np.uint8))


@pytest.mark.parametrize("method", ["mishima", "closed_form"])
def test_matting_rejects_bad_inputs(method: str) -> None:
    matte = MATTING.get(method)
    image, trimap, _ = ramp_scene(32, 48)
    with pytest.raises(TypeError, match="uint8"):
        matte(image, trimap.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="may only hold"):
        matte(image, np.where(trimap == 128, 100, trimap).astype(np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        matte(image, trimap[:, :40])
    with pytest.raises(TypeError, match="uint8"):
        matte(image.astype(np.float64), trimap)


def test_mishima_parameters_are_validated() -> None:
    image, trimap, _ = ramp_scene(32, 48)
    with pytest.raises(ValueError, match="window"):
        mishima_matting(image, trimap, window=10)
    with pytest.raises(ValueError, match="max_fill"):
        mishima_matting(image, trimap, max_fill=1.5)


def test_matting_registry() -> None:
    assert MATTING.names() == ["closed_form", "mishima"]
    with pytest.raises(UnknownNameError, match="closed_form, mishima"):
        MATTING.get("bayesian")


# ---------------------------------------------------------------- pipelines


def test_every_postprocessor_runs_and_returns_a_probability_map(disc_scene) -> None:
    image, probs, truth = disc_scene
    assert POSTPROCESSORS.names() == ["baseline", "crf", "crf+matting", "matting"]
    scores = {}
    for name in POSTPROCESSORS:
        out = build_postprocessor(name)(image, probs)
        assert out.dtype == np.float32 and out.shape == truth.shape, name
        assert out.min() >= 0 and out.max() <= 1, name
        scores[name] = iou(out > 0.5, truth)
    np.testing.assert_array_equal(build_postprocessor("baseline")(image, probs), probs[1])
    # On a sharp two-colour edge every refinement must beat the blurred, shifted baseline.
    for name in ("crf", "matting", "crf+matting"):
        assert scores[name] > scores["baseline"] + 0.05, scores


def test_postprocessor_parameters_reach_their_stages(disc_scene) -> None:
    image, probs, _ = disc_scene
    pipeline = build_postprocessor("crf+matting", iterations=2, bilateral_srgb=20, method="closed_form", trimap_width=6)
    assert pipeline.crf == DenseCRF(iterations=2, bilateral_srgb=20)
    assert pipeline.matting == "closed_form" and pipeline.trimap_width == 6
    tuned = build_postprocessor("matting", matting_params={"window": 51, "sphere_scale": 0.5})
    assert tuned.matting_params == {"window": 51, "sphere_scale": 0.5}
    # Frozen dataclasses pickle, so Ray can ship a configured pipeline to workers.
    clone = pickle.loads(pickle.dumps(tuned))
    np.testing.assert_array_equal(clone(image, probs), tuned(image, probs))


def test_postprocessor_errors_are_raised_at_build_time_or_name_the_input(disc_scene) -> None:
    image, probs, _ = disc_scene
    with pytest.raises(UnknownNameError, match="baseline"):
        build_postprocessor("crf+mating")
    with pytest.raises(UnknownNameError, match="mishima"):
        build_postprocessor("matting", method="knn")
    with pytest.raises(TypeError, match="matting_params"):
        build_postprocessor("matting", matting_params={"epsilon": 1e-6})  # closed-form's key, not Mishima's
    with pytest.raises(TypeError, match="unknown parameter"):
        build_postprocessor("crf", iteration=3)
    three = np.concatenate([probs, np.zeros_like(probs[:1])])
    with pytest.raises(ValueError, match=r"\[2,H,W\]"):
        build_postprocessor("baseline")(image, three)
    with pytest.raises(ValueError, match="does not match image"):
        build_postprocessor("matting")(image[:50], probs)
