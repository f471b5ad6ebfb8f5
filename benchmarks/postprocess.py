"""Speed of the post-processing steps (paper Table 5) at the paper's 250x250 resolution.

Times, per image: dense CRF with 5 and 10 mean-field iterations, the trimap, Mishima matting
and closed-form matting; prints median and p90 milliseconds with ratios side by side.

Inputs are Figaro-1k test images resized to 250x250 (``--data``, folder layout
``<data>/test/images/*.jpg`` + ``<data>/test/masks/*.png``) or, when absent, synthetic
hair-like images. The "network output" is the ground-truth mask shifted by 3 px and blurred
(a realistic soft border): speed depends on the image and on the band size, not on which model
produced the probabilities, so no trained model is needed.

    .venv/bin/python benchmarks/postprocess.py --data /work/shared/data/figaro1k
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from hairseg_core.deploy.latency import interleaved_times, latency_stats
from hairseg_core.postprocess import DenseCRF, closed_form_matting, make_trimap, mishima_matting

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, probs, trimap


def soft_prediction(mask: np.ndarray, shift: int = 3, sigma: float = 4.0) -> np.ndarray:
    """[2,H,W] float32 softmax-like output: the mask displaced and blurred, kept off 0/1."""
    moved = np.roll(mask.astype(np.float32), (shift, shift), axis=(0, 1))
    hair = 0.05 + 0.9 * cv2.GaussianBlur(moved, (0, 0), sigma)
    return np.stack([1.0 - hair, hair]).astype(np.float32)


def load_figaro(root: Path, size: int, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    images = sorted((root / "test" / "images").glob("*.jpg"))[:limit]
    pairs = []
    for path in images:
        mask_path = root / "test" / "masks" / f"{path.stem}.png"
        bgr, mask = cv2.imread(str(path)), cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if bgr is None or mask is None:
            raise FileNotFoundError(f"cannot read {path} or its mask {mask_path}")
        rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
        pairs.append((rgb, cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 127))
    return pairs


def synthetic(size: int, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dark textured blob with a wavy border on a noisy light background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    pairs = []
    for _ in range(count):
        angle = np.arctan2(yy - 0.45, xx - 0.5)
        radius = 0.3 + 0.04 * np.sin(7 * angle + rng.uniform(0, 6.3))
        mask = np.hypot(yy - 0.45, xx - 0.5) < radius
        hair = rng.normal([60, 40, 25], 15, (size, size, 3))
        back = rng.normal([180, 170, 150], 25, (size, size, 3))
        img = np.where(mask[..., None], hair, cv2.GaussianBlur(back, (0, 0), 3))
        pairs.append((np.clip(img, 0, 255).astype(np.uint8), mask))
    return pairs


def time_methods(
    methods: dict[str, Callable[[Sample], object]], samples: list[Sample], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds per call (``hairseg_core.deploy.latency.interleaved_times``, in a fixed order): every method
    runs on one image, then all on the next, so background load hits all of them alike. The untimed
    first calls (at least one) cover numba JIT / cache load in pymatting and OpenCV thread pool start-up."""
    calls = {name: (lambda i, fn=fn: fn(samples[i % len(samples)])) for name, fn in methods.items()}
    return interleaved_times(calls, repeats * len(samples), warmup=max(warmup, 1), shuffle_seed=None)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line)
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/figaro1k"))
    parser.add_argument("--size", type=int, default=250, help="square side in pixels (paper: 250)")
    parser.add_argument("--images", type=int, default=10, help="number of test images")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over all images")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per method before timing")
    parser.add_argument("--trimap-width", type=int, default=10)
    args = parser.parse_args()

    if (args.data / "test" / "images").is_dir():
        pairs, source = load_figaro(args.data, args.size, args.images), f"{args.data} test split"
    else:
        pairs, source = synthetic(args.size, args.images), "synthetic (no --data folder found)"
    samples = []
    for image, mask in pairs:
        probs = soft_prediction(mask)
        samples.append((image, probs, make_trimap(probs[1] > probs[0], width=args.trimap_width)))

    crf5, crf10 = DenseCRF(iterations=5), DenseCRF(iterations=10)
    methods: dict[str, Callable[[Sample], object]] = {
        "dense CRF, 5 iterations": lambda s: crf5(s[0], s[1]),
        "dense CRF, 10 iterations": lambda s: crf10(s[0], s[1]),
        f"trimap (width {args.trimap_width})": lambda s: make_trimap(s[1][1] > s[1][0], width=args.trimap_width),
        "Mishima matting": lambda s: mishima_matting(s[0], s[2]),
        "closed-form matting": lambda s: closed_form_matting(s[0], s[2]),
    }
    load_before = os.getloadavg()[0]
    times = time_methods(methods, samples, args.repeats, args.warmup)
    load_after = os.getloadavg()[0]

    unknown = np.mean([(s[2] == 128).mean() for s in samples]) * 100
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), OpenCV threads: {cv2.getNumThreads()}")
    print(f"input: {len(samples)} images from {source}, {args.size}x{args.size}, unknown band {unknown:.1f}%")
    print(f"timing: {args.repeats} passes x {len(samples)} images = {args.repeats * len(samples)} calls each")
    # Other processes on the machine inflate the figures; the 1-min load average makes that visible.
    print(f"1-min load average before/after: {load_before:.2f} / {load_after:.2f}\n")
    stats = {name: latency_stats(values) for name, values in times.items()}
    base_crf = stats["dense CRF, 5 iterations"].median_ms
    base_mishima = stats["Mishima matting"].median_ms
    header = f"{'step':<26}{'median ms':>11}{'p90 ms':>10}{'x CRF-5':>10}{'x Mishima':>11}"
    print(header)
    print("-" * len(header))
    for name, stat in stats.items():
        median, p90 = stat.median_ms, stat.p90_ms
        print(f"{name:<26}{median:>11.2f}{p90:>10.2f}{median / base_crf:>10.3f}{median / base_mishima:>11.1f}")


if __name__ == "__main__":
    main()
