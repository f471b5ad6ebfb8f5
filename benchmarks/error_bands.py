"""Where a hair model's mistakes lie: near the hair's border or far from it, and which images hold them.

Decides which lever to pull next. If most wrong pixels sit in a thin band along the true border, the model
finds the hair but places its edge badly (a higher training scale, an IoU-shaped loss, matting help); if they
sit far from it, the model misses or invents whole regions (more or other data, longer training help). Also
prints the data set's mIoU at several probability thresholds: a best threshold far from 0.5 says the loss
trades hair against background differently from the IoU the product is judged on.

    .venv/bin/python benchmarks/error_bands.py --model /path/checkpoint.pt --data ../shared/data/celeb1k --threads 2

The network runs at the scale the model was trained at; metrics are on the full-resolution masks, as in the
final stage. The band's width is given in pixels of a 512 px image and scaled with each image's short side.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from hairseg_core.data import build_dataset
from hairseg_core.deploy.inference import load_predictor
from hairseg_core.progress import progress_bar
from hairseg_core.threads import configure_threads
from hairseg_core.train.metrics import ConfusionMatrix

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="checkpoint, export file or export folder")
    p.add_argument("--data", required=True, help="a folder-layout data set root")
    p.add_argument("--split", default="test")
    p.add_argument("--band", type=float, default=8.0, help="border band half-width, px at a 512 px short side")
    p.add_argument("--worst", type=int, default=10, help="list this many images with the most wrong pixels")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    threads = configure_threads(args.threads)
    predictor = load_predictor(str(args.model), device="cpu", intra_op_threads=threads, scale="auto")
    dataset = build_dataset("folder", args.split, root=args.data)
    near = far = 0
    by_threshold = [ConfusionMatrix(num_classes=2) for _ in THRESHOLDS]
    per_image: list[tuple[int, float, str]] = []
    for i in progress_bar(range(len(dataset)), desc="scoring"):
        sample = dataset[i]
        truth = np.asarray(sample["mask"]).astype(bool)
        prob = np.asarray(predictor(np.asarray(sample["image"])))
        wrong = (prob >= 0.5) != truth
        border = cv2.morphologyEx(truth.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        distance = cv2.distanceTransform((1 - border).astype(np.uint8), cv2.DIST_L2, 3)
        in_band = distance <= args.band * min(truth.shape) / 512
        near += int((wrong & in_band).sum())
        far += int((wrong & ~in_band).sum())
        for matrix, t in zip(by_threshold, THRESHOLDS, strict=True):
            matrix.update((prob >= t).astype(np.int64), truth.astype(np.int64))
        hair_union = int((truth | (prob >= 0.5)).sum())
        hair_iou = float(((prob >= 0.5) & truth).sum() / hair_union) if hair_union else 1.0
        per_image.append((int(wrong.sum()), hair_iou, str(sample.get("name", i))))

    total = max(near + far, 1)
    print(f"\n{Path(args.data).name} {args.split}: {len(dataset)} images, {args.model}")
    print(f"wrong pixels within {args.band:g} px (at 512 px) of the true border: {100 * near / total:.1f} %")
    print(f"wrong pixels farther away:                               {100 * far / total:.1f} %")
    print(
        "data set mIoU by probability threshold: "
        + "  ".join(f"{t:.2f}: {m.compute()['miou']:.4f}" for m, t in zip(by_threshold, THRESHOLDS, strict=True))
    )
    per_image.sort(reverse=True)
    cumulative = 0
    print(f"\nthe {args.worst} images with the most wrong pixels (hair IoU, share of all wrong pixels so far):")
    for count, hair_iou, name in per_image[: args.worst]:
        cumulative += count
        print(f"  {name:<16} hair IoU {hair_iou:.3f}  {count:>8} px  {100 * cumulative / total:5.1f} %")


if __name__ == "__main__":
    main()
