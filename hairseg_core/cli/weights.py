"""``hairseg weights fetch|list``: pretrained ImageNet backbone weights in the torch hub cache."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub: argparse._SubParsersAction) -> None:
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


def cmd_weights(args: argparse.Namespace) -> int:
    # deferred: pydantic (`hairseg --help` stays fast); hairseg_core.models imports torch
    from hairseg_core.config import ConfigError, load_search_space
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
