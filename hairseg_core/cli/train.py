"""``hairseg train`` and ``hairseg evaluate``: one configuration without Ray, and its scores on a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hairseg_core.cli.options import add_threads
from hairseg_core.search.overrides import parse_set
from hairseg_core.text_table import format_table
from hairseg_core.threads import configure_threads


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one configuration (no Ray)")
    p.add_argument("--config", help="YAML of training settings (hairseg_core.config.TrainConfig fields)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings")
    p.add_argument("--output", default="runs/train", help="folder for checkpoint.pt and metrics.json")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --output")
    p.add_argument(
        "--data-input",
        choices=["auto", "memory", "stream"],
        default="auto",
        help="decode the data into memory, or stream it from a memory-mapped cache on local disk "
        "(auto: memory when it fits --memory-budget-gib)",
    )
    p.add_argument("--memory-budget-gib", type=float, default=2.0, help="auto's limit for in-memory data")
    p.add_argument("--cache-dir", default=None, help="node cache folder (default ~/.cache/hairseg/data)")
    add_threads(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint or exported model on a dataset folder")
    p.add_argument("--model", required=True, help="checkpoint .pt, model.onnx, model.ts or an export folder")
    p.add_argument("--data", required=True, help="dataset root, or a split folder holding images/ and masks/")
    p.add_argument("--split", default="test")
    p.add_argument("--dataset", default="folder", help="layout: folder, figaro1k, lfw_parts, celebamask_hq")
    p.add_argument("--max-images", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--scale",
        default="auto",
        metavar="N|native|auto",
        help="short side (px) the network runs at; auto (default): the scale the model was trained at; "
        "native: each image's own size. Metrics are always at the masks' own resolution",
    )
    p.add_argument("--multi-scale", action="store_true", help="average probabilities at 0.75, 1 and 1.25 x --scale")
    p.add_argument("--flip", action="store_true", help="also average over the mirrored image")
    add_threads(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args: argparse.Namespace) -> int:
    # Deferred here and in every command: `hairseg --help` and the light commands must not import torch.
    from hairseg_core.artifact import CHECKPOINT_FILE, CheckpointError
    from hairseg_core.config import (  # deferred: pydantic (`hairseg --help` stays fast)
        ConfigError,
        load_train_config,
        train_config_from_dict,
    )
    from hairseg_core.train.trainer import Trainer  # deferred: imports torch

    threads = configure_threads(args.threads)
    try:
        overrides = parse_set(args.set or [])
    except ValueError as exc:
        print(f"error: --set: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = load_train_config(args.config) if args.config else train_config_from_dict({})
        if overrides:
            cfg = train_config_from_dict({**cfg.model_dump(), **overrides}, source="--set")
    except ConfigError as exc:
        print(f"error: invalid config: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    ckpt = out / CHECKPOINT_FILE
    try:
        if ckpt.is_file() and not args.restart:
            trainer = Trainer.from_checkpoint(ckpt, data=_train_data(cfg, args, threads), cpus=threads, progress=True)
            if trainer.cfg != cfg:
                print(
                    f"{ckpt} holds a run with other settings; pass --restart or another --output",
                    file=sys.stderr,
                )
                return 2
            print(f"resuming {ckpt} after epoch {trainer.epoch}")
        else:
            trainer = Trainer(cfg, data=_train_data(cfg, args, threads), cpus=threads, progress=True)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"training {cfg.backbone} (OS {cfg.output_stride}) on {cfg.dataset}: {len(trainer.train_set)} train / "
        f"{len(trainer.val_set)} val images, device {trainer.device}, {threads} CPU threads"
    )
    for result in trainer.fit():
        trainer.save_checkpoint(ckpt)
        print(
            f"epoch {result['epoch']}/{cfg.epochs}  loss {result['train_loss']:.4f}  val mIoU "
            f"{result['val_miou']:.4f}  fwIoU {result['val_fwiou']:.4f}  boundary F {result['val_boundary_f']:.4f}"
            f"  ({result['epoch_seconds']:.1f}s)",
            flush=True,
        )
    cols = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_acc",
        "val_acc_class",
        "val_miou",
        "val_fwiou",
        "val_boundary_f",
        "epoch_seconds",
    ]
    print()
    print(format_table([{c: r[c] for c in cols} for r in trainer.history], title="metrics per epoch"))
    (out / "metrics.json").write_text(json.dumps(trainer.history, indent=2))
    print(f"\ncheckpoint: {ckpt}")
    return 0


def _train_data(cfg: Any, args: argparse.Namespace, threads: int) -> Any:
    """The run's data by ``--data-input`` (auto: in memory within ``--memory-budget-gib``, else a node cache)."""
    from hairseg_core.config import DataSettings
    from hairseg_core.train.trainer import load_trial_data  # deferred: imports torch

    settings = DataSettings(input=args.data_input, memory_budget_gib=args.memory_budget_gib, cache_dir=args.cache_dir)
    data = load_trial_data(cfg, progress=True, settings=settings, workers=threads)
    print(f"data: {data.input_path} path ({len(data.train)} train / {len(data.val)} val images)")
    return data


def _dataset_for(data: str, split: str, name: str):
    from hairseg_core.data import build_dataset  # deferred: imports torch

    root = Path(data)
    if name == "folder" and (root / "images").is_dir():  # DIR is itself a split directory
        return build_dataset("folder", root.name, root=str(root.parent))
    return build_dataset(name, split, root=str(root))


def cmd_evaluate(args: argparse.Namespace) -> int:
    """One JSON line of metrics; the network runs at ``--scale`` (default: the trained scale), the metrics
    are always computed on the full-resolution masks."""
    from hairseg_core.deploy.inference import load_predictor  # deferred: imports torch
    from hairseg_core.evaluate import evaluate_predictor  # deferred: imports torch
    from hairseg_core.scaling import MULTI_SCALES, parse_scale  # deferred: imports cv2

    threads = configure_threads(args.threads)
    scales = MULTI_SCALES if args.multi_scale else (1.0,)
    try:
        scale = parse_scale(args.scale)
        predictor = load_predictor(
            args.model, device=args.device, scale=scale, scales=scales, flip=args.flip, intra_op_threads=threads
        )
        dataset = _dataset_for(args.data, args.split, args.dataset)
        scores = evaluate_predictor(predictor, dataset, max_images=args.max_images, progress=True)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = ["acc", "acc_class", "miou", "fwiou", "boundary_f", "n_images", "ms_per_image"]
    result: dict[str, Any] = {k: scores[k] for k in keys}
    result.update(
        inference_scale=predictor.inference_scale,  # type: ignore[attr-defined]
        scales=list(scales),
        flip=bool(args.flip),
        metric_resolution="native",
    )
    print(json.dumps(result))
    return 0
