"""``hairseg data ...``: download, check and prepare datasets, the synthetic set, this node's data caches."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hairseg_core.cli.options import add_threads, positive_int
from hairseg_core.threads import available_cpus


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    d.add_argument("--mask-size", type=positive_int, default=512, help="side of the hair masks (512 as published)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads(d)
    d = dsub.add_parser("cache", help="list this node's data caches (streaming input path), or prune unused ones")
    d.add_argument("--dir", help="cache folder (default $HAIRSEG_DATA_CACHE or ~/.cache/hairseg/data)")
    d.add_argument("--prune-days", type=float, metavar="DAYS", help="delete caches unused for this many days")
    d = dsub.add_parser("synthetic", help="generate the built-in synthetic dataset into the cache")
    d.add_argument("--root")
    d.add_argument("--size", type=int, default=257)
    d.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)


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
