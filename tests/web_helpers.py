"""What the browser-page tests and benchmarks/web_fps.py share: a DeepLabv3+ export, a portrait, a Y4M clip,
and Debian's Chromium driven by Playwright (as tests/test_mlflow_ui.py does; skips when either is missing)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from hairseg_core.artifact import normalize_image, synthetic_portrait
from hairseg_core.deploy.temporal import ShakeSettings, shake_video
from hairseg_core.final.export import export_onnx, write_metadata
from hairseg_core.models import build_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HAIRSEG_CHROMIUM", "/usr/bin/chromium")
SHARED_DATA = Path(os.environ.get("HAIRSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
PORTRAITS = SHARED_DATA / "celeb1k" / "test" / "images"


def chromium_path() -> str | None:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    return shutil.which("chromium")


def playwright_or_reason() -> tuple[Any, str | None]:
    """(sync_playwright, None), or (None, why the browser cannot run here)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None, "playwright is not installed: pip install -e '.[test]' (bash .ci/run installs it)"
    if chromium_path() is None:
        return None, f"no chromium at {CHROMIUM}: apt-get install chromium (bash .ci/run installs it)"
    return sync_playwright, None


def export_deeplab(directory: Path, input_size: int = 129, seed: int = 0) -> Path:
    """A small DeepLabv3+ (MobileNetV2, the webcam space's architecture) exported as the final stage does:
    ``model.onnx`` (dynamo exporter, softmax in the graph) and ``model.json``. Untrained, but with
    trained-like BatchNorm statistics and a wide classifier, so its probabilities spread over (0, 1)."""
    torch.manual_seed(seed)
    net = build_model(
        backbone="mobilenet_v2", output_stride=16, pretrained="none", aspp_channels=16, decoder_channels=16
    )
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    batch = torch.cat([normalize_image(synthetic_portrait(129, 129, seed=s)) for s in range(4)])
    with torch.no_grad():
        net.train()(batch)
        net.classifier.weight.normal_(0.0, 0.15)
    net.eval()
    directory.mkdir(parents=True, exist_ok=True)
    info = export_onnx(net, directory / "model.onnx", example_size=input_size)
    write_metadata(
        directory / "model.json",
        input_size=input_size,
        train_scale=input_size,
        model_config=getattr(net, "config", {"backbone": "mobilenet_v2"}),
        files={"onnx": "model.onnx"},
        onnx_opset=info.opset,
        onnx_exporter=info.exporter,
    )
    return directory


def portrait(height: int = 480, width: int = 640) -> tuple[np.ndarray, str]:
    """A real celeb1k portrait (RGB) letterboxed into ``width x height`` when the shared data is here,
    else the deterministic synthetic one; with where it came from."""
    files = sorted(PORTRAITS.glob("*.jpg")) if PORTRAITS.is_dir() else []
    if not files:
        return synthetic_portrait(height, width, seed=1), "synthetic"
    rgb = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    scale = min(height / rgb.shape[0], width / rgb.shape[1])
    small = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = small[:, :1].mean(axis=(0, 1)).astype(np.uint8)  # extend the photo's own background colour
    top, left = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame, files[0].name


def write_y4m(path: Path, frames_rgb: list[np.ndarray], fps: int = 30) -> Path:
    """A Y4M (4:2:0) clip Chromium's fake camera plays in a loop (--use-file-for-fake-video-capture)."""
    height, width = frames_rgb[0].shape[:2]
    with path.open("wb") as handle:
        handle.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames_rgb:
            handle.write(b"FRAME\n")
            handle.write(cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def portrait_clip(path: Path, n_frames: int = 20) -> tuple[Path, str]:
    """A hand-held-camera clip of :func:`portrait` (temporal.shake_video: small seeded shake)."""
    frame, source = portrait()
    video = shake_video(frame, np.zeros(frame.shape[:2], bool), n_frames, ShakeSettings(noise_std=1.0), seed=0)
    return write_y4m(path, video.frames), source


def launch_chromium(pw: Any, y4m: Path | None = None, extra_args: tuple[str, ...] = ()) -> Any:
    args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", *extra_args]
    if y4m is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={y4m}",
        ]
    return pw.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
