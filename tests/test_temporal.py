"""Flicker metrics, shake videos and temporal smoothers (``hairseg_core.deploy.temporal``), and the app's
``--smoothing``.

The metrics are checked on decision sequences whose flips are counted by hand; the smoothers on a noisy
probability sequence of a shaking scene whose ground truth is known; the app end to end on a real ONNX file
of a controlled "dark pixels are hair" model.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from webcam_helpers import DarkPixelsAreHair, load_webcam_app

from hairseg_core.builders import UnknownNameError
from hairseg_core.cli import build_parser
from hairseg_core.deploy.temporal import (
    DEFAULT_SMOOTHER,
    SMOOTHERS,
    GatedEmaSmoother,
    HysteresisSmoother,
    NoSmoothing,
    ShakeSettings,
    ShakeVideo,
    boundary_band,
    build_smoother,
    compare_smoothers,
    flicker_scores,
    flip_rate,
    ground_truth_floor,
    relative_transform,
    shake_video,
    true_motion,
    video_stability,
)
from hairseg_core.deploy.webcam import make_smoother
from hairseg_core.final.export import export_torchscript, write_metadata

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


# ------------------------------------------------------------------------------------------------- metrics


def test_flip_rate_counts_flips_by_hand() -> None:
    d0 = np.array([[0, 0, 1], [0, 1, 1]], bool)
    d1 = np.array([[0, 1, 1], [0, 1, 1]], bool)  # 1 of 6 flips
    d2 = np.array([[1, 1, 1], [0, 0, 1]], bool)  # 2 of 6 flip
    d3 = d2.copy()  # none
    assert flip_rate([d0, d1, d2, d3]) == pytest.approx((1 / 6 + 2 / 6 + 0) / 3)
    # in a region (the later frame's coordinates): only the first row counts
    row = np.array([[1, 1, 1], [0, 0, 0]], bool)
    assert flip_rate([d0, d1, d2, d3], regions=[row] * 4) == pytest.approx((1 / 3 + 1 / 3 + 0) / 3)
    # an empty region skips the pair; no countable pair at all is NaN
    empty = np.zeros_like(row)
    assert flip_rate([d0, d1, d2], regions=[row, empty, row]) == pytest.approx(1 / 3)
    assert math.isnan(flip_rate([d0, d1], regions=[row, empty]))
    with pytest.raises(ValueError, match="two frames"):
        flip_rate([d0])


def test_motion_compensation_counts_decision_changes_not_motion() -> None:
    """A square moving 1 px per frame, segmented perfectly: raw flips are the moving edges, compensated 0."""
    truths, transforms = [], []
    for t in range(4):
        mask = np.zeros((10, 10), bool)
        mask[3:7, 2 + t : 6 + t] = True
        truths.append(mask)
        transforms.append(np.array([[1.0, 0.0, t], [0.0, 1.0, 0.0]]))
    assert flip_rate(truths) == pytest.approx(8 / 100)  # one column enters, one leaves: 2 x 4 pixels
    assert flip_rate(truths, transforms) == 0.0
    # one wrong pixel in frame 2 flips on, then off; column 0 was outside the previous frame: 90 pixels count
    noisy = [m.copy() for m in truths]
    noisy[2][8, 5] = True
    assert flip_rate(noisy, transforms) == pytest.approx((0 + 1 / 90 + 1 / 90) / 3)
    # a mask frozen in place while the scene moves slides over the hair: both its edges count
    assert flip_rate([truths[0]] * 4, transforms) == pytest.approx(8 / 90)
    # the relative transform undoes the previous frame's own motion
    np.testing.assert_allclose(relative_transform(transforms[1], transforms[3]), transforms[2])
    video = ShakeVideo(frames=[np.zeros((10, 10, 3), np.uint8)] * 4, masks=truths, transforms=transforms)
    assert true_motion([video], band_px=1)["motion"] == pytest.approx(8 / 100)


def test_boundary_band_is_dilation_minus_erosion() -> None:
    mask = np.zeros((11, 11), bool)
    mask[3:8, 3:8] = True  # 5x5 square
    band = boundary_band(mask, 1)  # 3x3 disk = a cross: dilation 25 + 4*5, erosion 3x3
    assert band.sum() == 45 - 9
    assert band[5, 2] and band[5, 3] and not band[5, 5] and not band[0, 0]
    with pytest.raises(ValueError, match="band_px"):
        boundary_band(mask, 0)


def test_flicker_scores_of_ground_truth_and_iou() -> None:
    mask = np.zeros((40, 40), np.uint8)
    cv2.circle(mask, (20, 20), 10, 1, -1)
    image = np.repeat(mask[..., None] * 200, 3, axis=2).astype(np.uint8)
    video = shake_video(image, mask, 8, ShakeSettings(max_shift_px=1.5), seed=3)
    perfect = flicker_scores(video.coverage, video, band_px=3)  # a perfect soft segmenter: the floor
    assert perfect.iou == 1.0 and len(perfect.pairs_all) == 7
    assert perfect.flicker < 0.01 and perfect.flicker_boundary < 0.05
    assert ground_truth_floor([video], 3).summary() == perfect.summary()
    motion = true_motion([video], 3)
    assert motion["motion_boundary"] > 2 * perfect.flicker_boundary  # compensation removes most true motion
    empty = flicker_scores([np.zeros((40, 40), np.float32)] * 8, video, band_px=3)
    assert empty.iou == 0.0 and empty.flicker == 0.0  # stable, but wrong: IoU tells them apart
    # a decision blinking every other frame in the circle's upper half, where the truth is hair throughout
    blink = [np.where((np.arange(40)[:, None] < 18) & (t % 2 == 1), 0.0, c) for t, c in enumerate(video.coverage)]
    blinking = flicker_scores(blink, video, band_px=3)
    assert blinking.flicker > 0.05 and blinking.iou < 1.0


# ----------------------------------------------------------------------------------------------- shake video


def test_shake_mask_warp_matches_frame_warp_and_is_seeded() -> None:
    mask = np.zeros((64, 80), np.uint8)
    cv2.ellipse(mask, (40, 30), (22, 15), 20, 0, 360, 1, -1)
    image = np.repeat(mask[..., None] * 255, 3, axis=2).astype(np.uint8)
    video = shake_video(image, mask, 10, seed=7)
    assert len(video) == 10
    for frame, warped in zip(video.frames, video.masks, strict=True):
        # the frame shows the mask (white on black): the same warp gives the same region
        assert np.mean((frame[..., 0] >= 128) != warped) < 0.002
    for matrix in video.transforms:  # within the documented bounds
        scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
        angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
        assert abs(scale - 1) <= 0.01 + 1e-9 and abs(angle) <= 1.0 + 1e-9
    # the matrix is where the frame's content went: a bright dot lands at A @ (x, y, 1)
    dot = np.zeros((64, 80, 3), np.uint8)
    dot[20:23, 50:53] = 255
    dot_video = shake_video(dot, np.zeros((64, 80)), 6, seed=7)
    for frame, matrix in zip(dot_video.frames, dot_video.transforms, strict=True):
        weights = frame[..., 0].astype(np.float64)
        ys, xs = np.mgrid[0:64, 0:80]
        centre = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
        np.testing.assert_allclose(centre, matrix @ np.array([51.0, 21.0, 1.0]), atol=0.1)
    again = shake_video(image, mask, 10, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(video.frames, again.frames, strict=True))
    assert not np.array_equal(shake_video(image, mask, 10, seed=8).transforms[3], video.transforms[3])
    noisy = shake_video(image, mask, 10, ShakeSettings(noise_std=3.0), seed=7)
    assert 1.0 < np.std(noisy.frames[1].astype(float) - video.frames[1]) < 5.0
    with pytest.raises(ValueError, match="2 frames"):
        shake_video(image, mask, 1)


# -------------------------------------------------------------------------------------------------- smoothers


def test_smoothers_by_hand() -> None:
    # EMA: the app's historic smoothing
    ema = build_smoother("ema")
    ema(np.full((1, 1), 0.2, np.float32))
    assert ema(np.full((1, 1), 0.6, np.float32))[0, 0] == pytest.approx(0.4)
    # hysteresis: around 0.5 the decision holds; the output's >= 0.5 is that decision
    hysteresis, plain = HysteresisSmoother(0.35, 0.65), NoSmoothing()
    sequence = [0.6, 0.45, 0.55, 0.45, 0.55, 0.3, 0.6, 0.7]
    held = [bool(hysteresis(np.full((1, 1), p, np.float32))[0, 0] >= 0.5) for p in sequence]
    raw = [bool(plain(np.full((1, 1), p, np.float32))[0, 0] >= 0.5) for p in sequence]
    assert held == [True, True, True, True, True, False, False, True]
    assert raw == [True, False, True, False, True, False, True, True]
    assert flip_rate([np.array([[d]]) for d in held]) == pytest.approx(2 / 7)
    assert flip_rate([np.array([[d]]) for d in raw]) == pytest.approx(6 / 7)
    probs = np.linspace(0, 1, 101, dtype=np.float32)[None, :]
    out = HysteresisSmoother(0.35, 0.65)(probs)  # first frame: threshold 0.5, remap is the identity
    np.testing.assert_allclose(out, probs, atol=1e-6)
    # gated EMA: a big change is followed at once, a small one damped
    gated = GatedEmaSmoother(min_alpha=0.25, gate=0.5)
    gated(np.full((1, 2), 0.5, np.float32))
    step = gated(np.array([[0.6, 1.0]], np.float32))
    np.testing.assert_allclose(step, [[0.5 + 0.4 * 0.1, 1.0]], atol=1e-6)  # alpha 0.25 + 0.75 * 0.1 / 0.5
    # reset and a new frame size start over
    gated.reset()
    np.testing.assert_allclose(gated(np.full((1, 2), 0.1, np.float32)), 0.1)
    assert gated(np.full((3, 3), 0.9, np.float32)).shape == (3, 3)
    # flow EMA: the state follows the motion of the frame before it is averaged
    flow = build_smoother("flow_ema", momentum=0.5)
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[10:30, 10:30] = 200  # a bright square: its probability is 1 there
    square = (frame[..., 0] > 0).astype(np.float32)
    flow(square, frame)
    moved_frame, moved_square = np.roll(frame, 4, axis=1), np.roll(square, 4, axis=1)
    out = flow(moved_square, moved_frame)
    plain = build_smoother("ema")
    plain(square)
    lagging = plain(moved_square)
    # inside the moved square (away from flow edge effects) the state came along: full hair, no lag
    assert out[12:28, 16:32].min() > 0.9 and lagging[12:28, 10:14].max() == pytest.approx(0.5)
    assert ((out >= 0.5) != (moved_square >= 0.5)).sum() < ((lagging >= 0.5) != (moved_square >= 0.5)).sum()
    assert set(SMOOTHERS.names()) >= {"none", "ema", "hysteresis", "gated", "gated_hysteresis", "flow_ema"}
    assert DEFAULT_SMOOTHER in SMOOTHERS
    with pytest.raises(UnknownNameError, match="gated_hysteresis"):
        build_smoother("kalman")
    with pytest.raises(ValueError, match="low"):
        HysteresisSmoother(0.6, 0.7)


def _noisy_shaking_scene(
    n_frames: int = 24, noise: float = 0.2, shake: bool = True
) -> tuple[list[np.ndarray], ShakeVideo]:
    """A hair disk under camera shake; the 'network' is its soft edge, moved with the camera, plus noise."""
    height, width = 72, 96
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (48, 34), (28, 20), 0, 0, 360, 1, -1)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, 3) - cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3)
    clean = (1.0 / (1.0 + np.exp(-inside / 1.5))).astype(np.float32)
    image = np.repeat(mask[..., None] * 200, 3, axis=2).astype(np.uint8)
    still = ShakeSettings(max_shift_px=0, max_rotation_deg=0, max_scale=0)
    video = shake_video(image, mask, n_frames, None if shake else still, seed=11)
    rng = np.random.default_rng(5)
    probs = []
    for matrix in video.transforms:
        moved = cv2.warpAffine(
            clean, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        probs.append(np.clip(moved + rng.normal(0, noise, moved.shape), 0, 1).astype(np.float32))
    return probs, video


SMOOTHER_NAMES = ["none", "ema", "hysteresis", "gated", "gated_hysteresis", "flow_ema"]


def test_smoothers_cut_flicker_of_a_noisy_still_scene_and_keep_iou() -> None:
    probs, video = _noisy_shaking_scene(shake=False)
    assert all(np.array_equal(m, IDENTITY) for m in video.transforms)
    results = compare_smoothers([probs], [video], SMOOTHER_NAMES, 3)
    none = results["none"].scores
    assert none.flicker_boundary > 0.1  # the noise makes the raw decision flicker at the edge
    for name in SMOOTHER_NAMES[1:]:
        scores = results[name].scores
        assert scores.flicker_boundary < 0.7 * none.flicker_boundary, (name, scores.summary(), none.summary())
        assert scores.flicker < none.flicker and scores.iou >= none.iou - 0.005, (name, scores.summary())
        assert results[name].ms_per_frame > 0


def test_under_camera_shake_motion_compensated_smoothing_wins() -> None:
    """With motion, every smoother that averages a pixel with what was there before lags the edge; the one
    that follows the optical flow keeps the noise reduction and gains IoU."""
    probs, video = _noisy_shaking_scene(shake=True)
    results = compare_smoothers([probs], [video], SMOOTHER_NAMES, 3)
    none, flow = results["none"].scores, results["flow_ema"].scores
    for name in ("ema", "hysteresis", "gated", "gated_hysteresis"):
        assert results[name].scores.flicker_boundary < none.flicker_boundary, name
        assert results[name].scores.flicker_boundary > flow.flicker_boundary, name
    assert flow.flicker_boundary < 0.5 * none.flicker_boundary and flow.iou > none.iou + 0.02
    assert DEFAULT_SMOOTHER == "flow_ema"


def test_video_stability_of_a_predictor() -> None:
    """A rule 'network' (dark = hair) on shake videos: keys, a perfect predictor sits at the floor."""
    mask = np.zeros((48, 64), np.uint8)
    cv2.ellipse(mask, (32, 20), (20, 14), 0, 0, 360, 1, -1)
    image = np.where(mask[..., None] > 0, 30, 210).astype(np.uint8).repeat(3, axis=2)

    def predictor(frame: np.ndarray) -> np.ndarray:  # soft, like a network: 1 at hair grey, 0 at background
        return np.clip((210 - frame.mean(axis=2)) / 180, 0, 1).astype(np.float32)

    metrics = video_stability(predictor, [(image, mask), (image[:, ::-1].copy(), mask[:, ::-1].copy())], n_frames=6)
    assert {"flicker", "flicker_boundary", "video_iou", "flicker_none", "flicker_boundary_none"} <= set(metrics)
    assert metrics["video_iou_none"] > 0.99 and metrics["video_iou"] > 0.98
    assert metrics["flicker_none"] < 0.01 and metrics["motion_boundary"] > 0.03
    assert all(np.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="at least one"):
        video_stability(predictor, [])


# ------------------------------------------------------------------------------------------------- the app


webcam = load_webcam_app()


def test_app_smoothing_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "rule"
    # TorchScript, not ONNX: tracing this one-op model takes milliseconds, the ONNX export seconds
    export_torchscript(DarkPixelsAreHair(sharpness=3.0), model / "model.ts", example_size=64)
    write_metadata(
        model / "model.json", input_size=64, model_config=DarkPixelsAreHair().config, files={"torchscript": "model.ts"}
    )
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 64), np.uint8)
    cv2.ellipse(mask, (32, 20), (20, 14), 0, 0, 360, 1, -1)
    still = np.where(mask[..., None] > 0, 60, 190).astype(np.float32).repeat(3, axis=2)
    video = tmp_path / "clip.mkv"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (64, 48))
    for _ in range(5):
        writer.write(np.clip(still + rng.normal(0, 25, still.shape), 0, 255).astype(np.uint8))
    writer.release()

    base = ["--model", str(model / "model.ts"), "--source", str(video), "--headless"]

    def run(name: str, *flags: str) -> list[np.ndarray]:
        out = tmp_path / name
        code = webcam.main([*base, "--output", str(out), "--quiet", *flags])
        assert code == 0, capsys.readouterr().err
        return [cv2.imread(str(p)) for p in sorted(out.glob("*.png"))]

    none = run("none", "--smoothing", "none")
    assert len(none) == 5
    assert all(np.array_equal(a, b) for a, b in zip(none, run("smooth0", "--smooth", "0"), strict=True))
    for name in ("hysteresis", "ema", "flow_ema"):
        other = run(name, "--smoothing", name)
        assert np.array_equal(other[0], none[0])  # no history yet: the first frame is the network's
        assert not all(np.array_equal(a, b) for a, b in zip(other, none, strict=True)), name
    # the default is the measured best; --smooth keeps its EMA meaning and refuses other methods
    assert build_parser().parse_args(["webcam", "--model", "m"]).smoothing is None
    assert isinstance(make_smoother(None, None), type(build_smoother(DEFAULT_SMOOTHER)))
    assert make_smoother(None, 0.7).momentum == 0.7
    assert isinstance(make_smoother(None, 0.0), NoSmoothing)
    assert make_smoother("ema", 0.3).momentum == 0.3
    code = webcam.main([*base, "--output", str(tmp_path / "x"), "--smoothing", "hysteresis", "--smooth", "0.5"])
    assert code == 2 and "--smooth sets the EMA momentum" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["webcam", "--model", "m", "--smoothing", "kalman"])
