"""``hairseg tracking-server`` and ``hairseg web``: MLflow's server behind its login, and the browser page."""

from __future__ import annotations

import argparse
import sys

from hairseg_core.cli.options import add_web_arguments, positive_int


def add_parsers(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--workers", type=positive_int, default=2)
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
    fetch = websub.add_parser("fetch", help="download the pinned WebGPU build of onnxruntime-web (sha512-checked) once")
    fetch.add_argument("--force", action="store_true", help="download again even if the cache holds it")
    refresh = websub.add_parser("refresh", help="re-vendor another onnxruntime-web release; prints the new pins")
    refresh.add_argument("version", help="onnxruntime-web version on the npm registry, e.g. 1.31.1")
    websub.add_parser("verify", help="check the vendored WASM build and the WebGPU cache against their pins")
    p.set_defaults(func=cmd_web)


def _web_files(args: argparse.Namespace) -> int:
    """``hairseg web fetch|refresh|verify``: the ONNX Runtime Web files of the page."""
    import json

    from hairseg_core.deploy.web import ortweb

    try:
        if args.web_cmd == "fetch":
            print(f"WebGPU build of onnxruntime-web {ortweb.ORT_WEB_VERSION}: {ortweb.fetch_webgpu(args.force)}")
        elif args.web_cmd == "refresh":
            print(json.dumps(ortweb.refresh_vendor(args.version), indent=2))
            print("paste these pins into hairseg_core/deploy/web/ortweb.py", file=sys.stderr)
        else:
            ortweb.vendored_dir()
            cached = ortweb.webgpu_dir()
            print(f"vendored WASM build {ortweb.ORT_WEB_VERSION}: ok ({ortweb.VENDOR_DIR})")
            print(f"WebGPU build: {cached if cached else 'not fetched (hairseg web fetch)'}")
    except ortweb.OrtWebError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


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


def cmd_web(args: argparse.Namespace) -> int:
    from hairseg_core.deploy.web import ortweb

    if args.web_cmd != "serve":
        return _web_files(args)
    from hairseg_core.deploy.web.server import serve_forever

    try:
        serve_forever(
            args.model, host=args.host, port=args.port, open_browser=not args.no_browser, threads=args.web_threads
        )
    except (FileNotFoundError, ValueError, ortweb.OrtWebError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
