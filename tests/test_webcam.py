"""Hair recolouring, temporal smoothing and the webcam app run headless on synthetic video and images.

The app is driven by a controlled model whose hair probability is known: "dark pixels are hair", exported
to a real ONNX file with ``export_onnx`` and described by ``write_metadata``, so the whole path (letterbox,
onnxruntime, mapping back, colouring, video I/O) is exercised and every pixel's expected fate is known.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from webcam_helpers import DarkPixelsAreHair, load_webcam_app

from hairseg_core.deploy.coloring import NAMED_COLORS, parse_color, recolor
from hairseg_core.deploy.inference import load_predictor
from hairseg_core.deploy.temporal import EmaSmoother, probability_change
from hairseg_core.deploy.webcam import describe_model
from hairseg_core.final.export import export_onnx, write_metadata

ROOT = Path(__file__).resolve().parents[1]
H, W = 120, 160
HAIR_BGR = (22, 28, 36)  # dark brown
BACKGROUND_BGR = (205, 200, 196)


webcam = load_webcam_app()


def _export_rule(directory: Path, sharpness: float) -> Path:
    info = export_onnx(DarkPixelsAreHair(sharpness), directory / "model.onnx", example_size=128)
    _describe_rule(directory, input_size=128, onnx_opset=info.opset, onnx_exporter=info.exporter)
    return directory


def _describe_rule(directory: Path, input_size: int, train_scale: int | None = None, **extra) -> Path:
    write_metadata(
        directory / "model.json",
        input_size=input_size,
        train_scale=train_scale,
        model_config=DarkPixelsAreHair().config,
        files={"onnx": "model.onnx"},
        **extra,
    )
    return directory


@pytest.fixture(scope="module")
def rule_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export_rule(tmp_path_factory.mktemp("rule"), sharpness=10.0)


def _hair_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (80, 55), (45, 38), 0, 0, 360, 255, -1)
    return mask > 0


def _scene(seed: int) -> np.ndarray:
    """BGR frame: light background, dark hair blob with strand texture."""
    rng = np.random.default_rng(seed)
    frame = np.empty((H, W, 3), np.float32)
    frame[:] = BACKGROUND_BGR
    texture = 8 * np.sin(np.arange(W) * 0.8)[None, :] + rng.normal(0, 2, (H, W))
    hair = _hair_mask()
    frame[hair] = np.asarray(HAIR_BGR, np.float32) + texture[hair][:, None]
    return np.clip(frame, 0, 255).astype(np.uint8)


def _erode(mask: np.ndarray, pixels: int = 6) -> np.ndarray:
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel) > 0


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """12-frame MJPG video and its frames as OpenCV decodes them (the app sees exactly these)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    for i in range(12):
        writer.write(_scene(i))
    writer.release()
    return path, _read_video(path)


def _read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def _lab(bgr: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2Lab)


def _check_recoloured(inp_bgr: np.ndarray, out_bgr: np.ndarray, exact_background: bool) -> None:
    hair, background = _erode(_hair_mask()), _erode(~_hair_mask())
    background_diff = np.abs(out_bgr.astype(int) - inp_bgr.astype(int))[background]
    if exact_background:
        assert background_diff.max() == 0, "non-hair pixels changed"
    else:  # lossy codec: allow compression noise, not a colour change
        assert background_diff.mean() < 4 and np.percentile(background_diff, 99) <= 12, "non-hair pixels changed"
    lab_in, lab_out = _lab(inp_bgr), _lab(out_bgr)
    assert lab_out[..., 1][hair].mean() > lab_in[..., 1][hair].mean() + 25, "hair did not turn red (a*)"
    assert np.abs(out_bgr.astype(int) - inp_bgr.astype(int))[hair].mean() > 20


# ------------------------------------------------------------------------------------------- colouring


def test_parse_color_forms_and_errors() -> None:
    assert parse_color("red") == NAMED_COLORS["red"]
    assert parse_color("  Blonde ") == NAMED_COLORS["blonde"]
    assert parse_color("#FF8000") == (255, 128, 0)
    assert parse_color("#f80") == (255, 136, 0)
    assert parse_color((1, 2, 3)) == (1, 2, 3)
    for bad in ("blurple", "#12345", "#GGGGGG", ""):
        with pytest.raises(ValueError, match="unknown colour"):
            parse_color(bad)
    with pytest.raises(ValueError, match="0..255"):
        parse_color((0, 0, 300))


def test_recolor_follows_the_probability_softly() -> None:
    rng = np.random.default_rng(0)
    base = np.clip(40 + 25 * np.sin(np.arange(200) * 0.7)[None, :] + rng.normal(0, 4, (100, 200)), 0, 255)
    frame = np.repeat(base[..., None], 3, axis=2).astype(np.uint8)  # dark grey "hair" texture
    prob = np.zeros((100, 200), np.float32)
    prob[:, :80] = 1.0
    prob[:, 80:120] = np.linspace(1.0, 0.0, 40)[None, :]  # soft boundary
    out = recolor(frame, prob, "red", strength=1.0)

    assert np.array_equal(out[:, 121:], frame[:, 121:]), "prob 0 must leave pixels untouched"
    lab_in, lab_out = _lab(frame[..., ::-1]), _lab(out[..., ::-1])
    assert lab_out[:, :80, 1].mean() > 30 and abs(lab_in[:, :80, 1].mean()) < 2
    # texture kept: the hair's lightness pattern survives the colour change
    corr = np.corrcoef(lab_in[:, :80, 0].ravel(), lab_out[:, :80, 0].ravel())[0, 1]
    assert corr > 0.95
    assert np.array_equal(recolor(frame, prob, "red", strength=0.0), frame)
    half = recolor(frame, prob, "red", strength=0.5)
    assert 0.3 < (_lab(half[..., ::-1])[:, :80, 1].mean() / lab_out[:, :80, 1].mean()) < 0.7


def test_recolor_change_is_proportional_to_probability() -> None:
    """Paper §5.7: colour applied in proportion to the hair probability, so no hard edge."""
    frame = np.full((20, 101, 3), (60, 45, 35), np.uint8)  # flat brown hair
    ramp = np.tile(np.linspace(0.0, 1.0, 101, dtype=np.float32), (20, 1))
    full = _lab(recolor(frame, np.ones_like(ramp), "blue", strength=1.0)[..., ::-1])
    soft = _lab(recolor(frame, ramp, "blue", strength=1.0)[..., ::-1])
    lab_in = _lab(frame[..., ::-1])
    ratio = np.linalg.norm(soft - lab_in, axis=-1) / np.linalg.norm(full - lab_in, axis=-1)
    np.testing.assert_allclose(ratio.mean(axis=0), ramp[0], atol=0.04)


def test_recolor_validates_inputs() -> None:
    frame = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        recolor(frame, np.zeros((5, 4), np.float32), "red")
    with pytest.raises(ValueError, match="strength"):
        recolor(frame, np.zeros((4, 5), np.float32), "red", strength=1.5)
    with pytest.raises(ValueError, match="uint8"):
        recolor(frame.astype(np.float32), np.zeros((4, 5), np.float32), "red")


def test_ema_reduces_flicker_of_noisy_probabilities() -> None:
    rng = np.random.default_rng(1)
    still = np.clip(_hair_mask().astype(np.float32) * 0.9 + 0.05, 0, 1)
    raw = [np.clip(still + rng.normal(0, 0.15, still.shape), 0, 1).astype(np.float32) for _ in range(20)]
    smoother = EmaSmoother(0.8)
    smoothed = [smoother(p) for p in raw]
    assert probability_change(smoothed) < 0.5 * probability_change(raw)
    off = EmaSmoother(0.0)
    assert probability_change([off(p) for p in raw]) == pytest.approx(probability_change(raw))
    with pytest.raises(ValueError, match="two"):
        probability_change(raw[:1])
    with pytest.raises(ValueError, match="momentum"):
        EmaSmoother(1.0)


def test_ema_reduces_flicker_of_the_predictor_on_a_still_noisy_video(tmp_path: Path) -> None:
    """Sensor noise on a still scene makes a per-frame model flicker at soft pixels; the EMA calms it."""
    predictor = load_predictor(_export_rule(tmp_path, sharpness=2.0))
    rng = np.random.default_rng(2)
    still = cv2.cvtColor(_scene(0), cv2.COLOR_BGR2RGB).astype(np.float32)
    frames = [np.clip(still + rng.normal(0, 12, still.shape), 0, 255).astype(np.uint8) for _ in range(10)]
    raw = [predictor(f) for f in frames]
    smoother = EmaSmoother(0.7)
    assert probability_change([smoother(p) for p in raw]) < 0.6 * probability_change(raw)


# ------------------------------------------------------------------------------------------------- app


def _run_app(capsys, *args: str) -> tuple[int, str]:
    code = webcam.main([*args, "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_app_headless_video(rule_model: Path, video, tmp_path: Path, capsys, suffix: str) -> None:
    path, frames_in = video
    assert len(frames_in) == 12
    out = tmp_path / f"coloured{suffix}"
    code, err = _run_app(
        capsys, "--model", str(rule_model), "--source", str(path), "--headless", "--output", str(out), "--smooth", "0"
    )
    assert code == 0, err
    frames_out = _read_video(out)
    assert len(frames_out) == 12
    assert all(f.shape == (H, W, 3) for f in frames_out)
    for inp, got in zip(frames_in, frames_out, strict=True):
        # .mkv is FFV1 (lossless): untouched pixels must be bit-identical; mp4v is lossy
        _check_recoloured(inp, got, exact_background=suffix == ".mkv")


def test_app_headless_png_directory_and_max_frames(rule_model: Path, video, tmp_path: Path, capsys) -> None:
    path, frames_in = video
    out = tmp_path / "frames"
    code, err = _run_app(
        capsys, "--model", str(rule_model), "--source", str(path), "--headless", "--output", str(out),
        "--max-frames", "5", "--color", "#c81e2d", "--backend", "onnx",
    )  # fmt: skip
    assert code == 0, err
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == [f"frame_{i:06d}.png" for i in range(5)]
    for inp, png in zip(frames_in, written, strict=False):
        _check_recoloured(inp, cv2.imread(str(png)), exact_background=True)


def test_app_headless_image_directory(rule_model: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"img{i}.png"), _scene(10 + i))
    out = tmp_path / "coloured"
    code, err = _run_app(capsys, "--model", str(rule_model), "--source", str(src), "--headless", "--output", str(out))
    assert code == 0, err
    for i in range(3):
        got = cv2.imread(str(out / f"img{i}.png"))
        _check_recoloured(cv2.imread(str(src / f"img{i}.png")), got, exact_background=True)


def test_app_states_the_model_input_size_at_startup(rule_model: Path, tmp_path: Path, capsys) -> None:
    """The app letterboxes to model.json's input size; it says whether that is the scale the model was trained
    at, since a model run at another scale segments worse."""
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), _scene(3))
    out = str(tmp_path / "out")
    code = webcam.main(["--model", str(rule_model), "--source", str(image), "--headless", "--output", out])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "frames letterboxed to 128 px (the export records no trained scale)" in err
    for input_size, train_scale, expected in [
        (96, 96, "frames letterboxed to 96 px, the scale it was trained at"),
        (128, 96, "letterboxed to 128 px, but it was trained at 96 px"),
    ]:
        directory = tmp_path / f"m{input_size}_{train_scale}"
        directory.mkdir()
        (directory / "model.onnx").write_bytes((rule_model / "model.onnx").read_bytes())
        _describe_rule(directory, input_size=input_size, train_scale=train_scale)
        assert expected in describe_model(str(directory), load_predictor(directory))


def test_app_clear_errors(rule_model: Path, video, tmp_path: Path, capsys) -> None:
    path, _ = video
    base = ["--model", str(rule_model), "--headless", "--output", str(tmp_path / "o.mkv")]

    code, err = _run_app(capsys, *base, "--source", str(tmp_path / "missing.mp4"))
    assert code == 2 and "not found" in err

    start = time.monotonic()
    code, err = _run_app(capsys, *base, "--source", "7")
    assert code == 2 and "camera 7" in err and time.monotonic() - start < 10

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    code, err = _run_app(capsys, *base, "--source", str(junk))
    assert code == 2 and str(junk) in err

    code, err = _run_app(capsys, *base, "--source", str(path), "--color", "blurple")
    assert code == 2 and "unknown colour 'blurple'" in err

    code, err = _run_app(capsys, "--model", str(rule_model), "--source", str(path), "--headless")
    assert code == 2 and "--output" in err

    code, err = _run_app(capsys, *base, "--source", str(path), "--model", str(tmp_path / "nope.onnx"))
    assert code == 2 and "does not exist" in err
