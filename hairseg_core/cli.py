"""The ``hairseg`` console script: single runs and tools around the library.

This is the one module of ``hairseg_core`` that parses a command line; it only composes
library calls. The sweep itself is ``python pipelines/sweep.py``.

    hairseg train --config configs/mobilenet.yaml [--output runs/m1] [--set epochs=3 ...]
    hairseg evaluate --model runs/m1/checkpoint.pt --data ../shared/data/figaro1k [--split test]
    hairseg validate search_spaces/paper.yaml
    hairseg data download figaro1k --dest ~/data
    hairseg data prepare celebamask_hq --root ~/data/CelebAMask-HQ [--check]
    hairseg data synthetic [--root DIR]
    hairseg weights fetch [BACKBONE ...] [--space search_spaces/paper.yaml] [--mirror URL] [--offline]
    hairseg weights list
    hairseg tracking-server --host 127.0.0.1 --port 5000 [--env-file FILE] [--artifacts-destination s3://...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from hairseg_core.cluster_config import ClusterConfigError, validate_cluster_config
from hairseg_core.config import ConfigError, load_search_space, load_train_config, train_config_from_dict
from hairseg_core.search.overrides import parse_set
from hairseg_core.text_table import format_table
from hairseg_core.threads import available_cpus, configure_threads


def cmd_train(args: argparse.Namespace) -> int:
    # Deferred here and in every command: `hairseg --help` and the light commands must not import torch.
    from hairseg_core.artifact import CHECKPOINT_FILE, CheckpointError
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


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            space = load_search_space(path)
            print(f"{path}: ok ({len(space.params)} searched parameters, {space.num_samples} trials)")
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            status = 2
    return status


def cmd_validate_cluster(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            validate_cluster_config(path, require_filled=args.require_filled)
            print(f"{path}: ok")
        except ClusterConfigError as exc:
            print(str(exc), file=sys.stderr)
            status = 2
    return status


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "download":
        from hairseg_core.data.download import download_dataset  # deferred: hairseg_core.data imports torch
        from hairseg_core.data.errors import DownloadError  # deferred: hairseg_core.data imports torch

        try:
            path = download_dataset(args.name, args.dest, url=args.url, mirror=args.mirror)
        except DownloadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(path)
        return 0
    if args.data_cmd == "prepare":
        return _prepare_celebamask_hq(args)
    if args.data_cmd == "cache":
        return _data_cache(args)
    from hairseg_core.data.synthetic import ensure_synthetic  # deferred: hairseg_core.data imports torch

    print(ensure_synthetic(root=args.root, size=args.size, seed=args.seed))
    return 0


def _data_cache(args: argparse.Namespace) -> int:
    """List this node's data caches (the streaming input path's), or delete those unused for a while."""
    from hairseg_core.data.input_path import data_cache_dir  # deferred: hairseg_core.data imports torch
    from hairseg_core.data.node_cache import STORE_SLACK, list_caches, prune_caches

    folder = data_cache_dir(args.dir)
    if args.prune_days is not None:
        removed = prune_caches(folder, args.prune_days * 86400)
        freed = sum(c["nbytes"] for c in removed) / 2**30
        print(f"removed {len(removed)} cache(s) unused for {args.prune_days} days from {folder}: {freed:.2f} GiB")
        return 0
    caches = list_caches(folder)
    print(f"data caches in {folder}: {len(caches)}")
    for c in caches:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["last_used"]))
        side = "native size" if not c["store_short_side"] else f"short side <= {STORE_SLACK * c['store_short_side']} px"
        print(
            f"  {Path(c['folder']).name}  {c['count']} images  {c['nbytes'] / 2**30:.2f} GiB  {side}  last used {used}"
        )
    return 0


_MAX_PROBLEMS_SHOWN = 20


def _prepare_celebamask_hq(args: argparse.Namespace) -> int:
    """Check the folder file by file, then (unless --check) write its split file and print how to use it."""
    from hairseg_core.data.errors import DataError  # deferred: hairseg_core.data imports torch
    from hairseg_core.data.prepare import (  # deferred: hairseg_core.data imports torch
        DEFAULT_SPLIT_FILE,
        check_celebamask_hq,
        check_split_file,
        format_report,
        usage_lines,
        write_split_file,
    )

    root = Path(args.root).expanduser()
    split_file = Path(args.split_file).expanduser() if args.split_file else root / DEFAULT_SPLIT_FILE
    try:
        check = check_celebamask_hq(
            root,
            split_scheme=args.split_scheme,
            partition_file=args.partition_file,
            split_seed=args.split_seed,
            mask_size=args.mask_size,
            threads=args.threads or available_cpus(),
            progress=not args.quiet,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_report(check)))
    if not check.ok:
        for problem in check.problems[:_MAX_PROBLEMS_SHOWN]:
            print(f"error: {problem}", file=sys.stderr)
        if len(check.problems) > _MAX_PROBLEMS_SHOWN:
            print(f"error: ... and {len(check.problems) - _MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)
        print(
            f"{root}: not usable as it is; nothing was written (fix the files above, then run again)", file=sys.stderr
        )
        return 2
    try:
        if args.check:
            if split_file.is_file():
                print(f"  split file   {split_file}: {check_split_file(check, split_file)}")
            else:
                print(f"  split file   {split_file}: not there yet (run without --check to write it)")
                split_file = None
        else:
            print(f"  split file   {split_file} ({write_split_file(check, split_file)})")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print("\n".join(usage_lines(check, split_file)))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    # deferred: hairseg_core.models imports torch
    from hairseg_core.models.fetch import cached_imagenet_weights, ensure_imagenet_weights
    from hairseg_core.models.weights import WeightsNotFoundError  # deferred: hairseg_core.models imports torch
    from hairseg_core.search.weights import imagenet_backbones

    if args.weights_cmd == "list":
        from hairseg_core.models.backbones import PRETRAINED_SOURCES  # deferred: imports torch

        for backbone, source in PRETRAINED_SOURCES.items():
            cached = cached_imagenet_weights(backbone)
            print(f"{backbone}\t{source.file_names[0]}\t{source.url}\t{cached if cached else 'not cached'}")
        return 0

    backbones = list(args.backbones)
    for path in args.space or []:
        try:
            space = load_search_space(path)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        found = imagenet_backbones(space)
        if not found:
            print(f"{path}: no trial uses pretrained: imagenet, nothing to fetch")
        backbones += found
    if not backbones and not args.space:
        print("error: name at least one backbone or pass --space FILE", file=sys.stderr)
        return 2
    status = 0
    for backbone in dict.fromkeys(backbones):  # go on after a failure: one run lists every missing file
        try:
            path = ensure_imagenet_weights(
                backbone, mirror=args.mirror, offline=True if args.offline else None, timeout=args.timeout
            )
        except (WeightsNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{backbone}: {path}", flush=True)
    return status


def cmd_tracking_server(args: argparse.Namespace) -> int:
    """MLflow's tracking server with its basic-auth login; secrets from the environment or --env-file only."""
    from hairseg_core.track.server import TrackingServerError, exec_server, plan_server, server_environment

    try:
        plan = plan_server(
            host=args.host,
            port=args.port,
            state_dir=args.state_dir,
            environ=server_environment(args.env_file),
            artifacts_destination=args.artifacts_destination,
            workers=args.workers,
            admin_username=args.admin_username,
            default_permission=args.default_permission,
            allow_public=args.allow_public,
        )
    except TrackingServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"starting {plan.describe()}", flush=True)
    if args.print_only:
        return 0
    exec_server(plan)
    return 0  # pragma: no cover - exec does not return


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help=f"torch / OpenCV / ONNX Runtime threads (default: the CPUs this process may use, here "
        f"{available_cpus()}); never more than the cores you have (README, Threads)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hairseg", description="DeepLabv3+ hair segmentation tools")
    sub = parser.add_subparsers(dest="command", required=True)

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
    _add_threads(p)
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
    _add_threads(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("validate", help="validate search-space YAML files without running anything")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "validate-cluster", help="check `ray up` configs / KubeRay RayJob manifests offline (Ray's schema + ours)"
    )
    p.add_argument("files", nargs="+")
    p.add_argument(
        "--require-filled", action="store_true", help="also reject REPLACE_ME placeholders (before `ray up`)"
    )
    p.set_defaults(func=cmd_validate_cluster)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    d = dsub.add_parser(
        "download",
        help="download and unpack a public dataset (needs internet); for celebamask_hq, say what to fetch by hand",
    )
    d.add_argument("name", choices=["lfw_parts", "figaro1k", "celebamask_hq"])
    d.add_argument("--dest", required=True)
    d.add_argument(
        "--url", action="append", help="the file(s) to fetch instead of the built-in sources (repeat for several)"
    )
    d.add_argument(
        "--mirror", help="base URL (http(s)://, file://) or folder holding the files by name, tried before the defaults"
    )
    d = dsub.add_parser(
        "prepare",
        help="check a hand-downloaded dataset file by file and write its split file (CelebAMask-HQ)",
    )
    d.add_argument("name", choices=["celebamask_hq"])
    d.add_argument(
        "--root", required=True, help="the unzipped CelebAMask-HQ folder (CelebA-HQ-img/, CelebAMask-HQ-mask-anno/)"
    )
    d.add_argument("--check", action="store_true", help="only verify and report; write nothing")
    d.add_argument("--split-file", metavar="PATH", help="where to write the split (default ROOT/hairseg-split.txt)")
    d.add_argument(
        "--split-scheme",
        choices=["auto", "official", "seeded"],
        default="auto",
        help="auto (default): CelebA's official split when CelebA-HQ-to-CelebA-mapping.txt is in ROOT, else seeded",
    )
    d.add_argument(
        "--partition-file",
        metavar="PATH",
        help="CelebA's Eval/list_eval_partition.txt (default ROOT/list_eval_partition.txt when present; "
        "without it CelebA's partition ranges are used, same result)",
    )
    d.add_argument("--split-seed", type=int, default=0, help="seed of the seeded 80/10/10 fallback split")
    d.add_argument("--mask-size", type=_positive_int, default=512, help="side of the hair masks (512 as published)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(d)
    d = dsub.add_parser("cache", help="list this node's data caches (streaming input path), or prune unused ones")
    d.add_argument("--dir", help="cache folder (default $HAIRSEG_DATA_CACHE or ~/.cache/hairseg/data)")
    d.add_argument("--prune-days", type=float, metavar="DAYS", help="delete caches unused for this many days")
    d = dsub.add_parser("synthetic", help="generate the built-in synthetic dataset into the cache")
    d.add_argument("--root")
    d.add_argument("--size", type=int, default=257)
    d.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("weights", help="pretrained ImageNet backbone weights in the torch hub cache")
    wsub = p.add_subparsers(dest="weights_cmd", required=True)
    w = wsub.add_parser(
        "fetch", help="download (and verify) the ImageNet weights of backbones, or of every one a search space uses"
    )
    w.add_argument("backbones", nargs="*", metavar="BACKBONE")
    w.add_argument(
        "--space", action="append", metavar="FILE", help="search-space YAML: fetch what its imagenet trials need"
    )
    w.add_argument("--mirror", help="base URL or folder holding the files (default $HAIRSEG_WEIGHTS_MIRROR)")
    w.add_argument("--offline", action="store_true", help="never download; only report what is cached")
    w.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per network operation")
    wsub.add_parser("list", help="each backbone's weights file, URL and cached path")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser(
        "tracking-server",
        help="start MLflow's tracking server behind its basic-auth login (secrets from the environment / --env-file)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; never 0.0.0.0 unasked)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument(
        "--state-dir",
        default="~/.hairseg/tracking-server",
        help="folder (mode 0700) for the auth settings, the user database, the Flask key and the default sqlite store",
    )
    p.add_argument(
        "--env-file",
        help="file (mode 0600) of KEY=VALUE lines: MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY, "
        "MLFLOW_BACKEND_STORE_URI; given to the server process alone",
    )
    p.add_argument("--artifacts-destination", help="proxied artifact store, e.g. s3://bucket/hairseg/mlflow-artifacts")
    p.add_argument("--workers", type=_positive_int, default=2)
    p.add_argument("--admin-username", default="admin")
    p.add_argument(
        "--default-permission",
        default="READ",
        help="what a user may do with experiments and models others created: READ (default), EDIT, MANAGE, "
        "NO_PERMISSIONS",
    )
    p.add_argument("--allow-public", action="store_true", help="accept --host 0.0.0.0 (then put TLS in front)")
    p.add_argument("--print-only", action="store_true", help="write the auth settings and print the command only")
    p.set_defaults(func=cmd_tracking_server)

    p = sub.add_parser("web", help="the exported model in a web page (ONNX Runtime Web on the user's camera)")
    websub = p.add_subparsers(dest="web_cmd", required=True)
    s = websub.add_parser("serve", help="serve the hair-colouring page for an export (no frame leaves the browser)")
    s.add_argument("--model", required=True, help="export dir, .onnx file or models:/hairseg@champion")
    add_web_arguments(s)
    websub.add_parser("fetch", help="download the pinned WebGPU build of onnxruntime-web (sha512-checked) once")
    websub.add_parser("verify", help="check the vendored WASM build and the WebGPU cache against their pins")
    p.set_defaults(func=cmd_web)
    return parser


def add_web_arguments(p: argparse.ArgumentParser) -> None:
    """``--port/--host/--no-browser/--web-threads`` of the page server (also used by pipelines/webcam.py)."""
    p.add_argument("--port", type=int, default=8000, help="port of the page server (default 8000; 0: any free)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: the camera needs a secure context, which localhost is)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument(
        "--web-threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="ONNX Runtime WASM threads in the page (default: min(4, the browser's cores))",
    )


def cmd_web(args: argparse.Namespace) -> int:
    from hairseg_core.deploy.web import ortweb

    if args.web_cmd != "serve":
        return ortweb.main([args.web_cmd])
    from hairseg_core.deploy.web.server import serve_forever

    try:
        serve_forever(
            args.model, host=args.host, port=args.port, open_browser=not args.no_browser, threads=args.web_threads
        )
    except (FileNotFoundError, ValueError, ortweb.OrtWebError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
