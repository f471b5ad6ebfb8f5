"""``hairseg validate`` and ``hairseg validate-cluster``: check configuration files without running anything."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub: argparse._SubParsersAction) -> None:
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


def cmd_validate(args: argparse.Namespace) -> int:
    from hairseg_core.config import ConfigError, load_search_space  # deferred: pydantic (`hairseg --help` stays fast)

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
    from hairseg_core.cluster_config import (  # deferred: `hairseg --help` stays fast
        ClusterConfigError,
        validate_cluster_config,
    )

    status = 0
    for path in args.files:
        try:
            validate_cluster_config(path, require_filled=args.require_filled)
            print(f"{path}: ok")
        except ClusterConfigError as exc:
            print(str(exc), file=sys.stderr)
            status = 2
    return status
