"""Options several commands share: ``--threads``, the page server's options, a positive-integer type."""

from __future__ import annotations

import argparse

from hairseg_core.threads import available_cpus


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a thread or worker count)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_threads(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads N`` (default: the CPUs this process may use; docs/threads-and-gpu.md)."""
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help=f"torch / OpenCV / ONNX Runtime threads (default: the CPUs this process may use, here "
        f"{available_cpus()}); never more than the cores you have (docs/threads-and-gpu.md)",
    )


def add_web_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--port/--host/--no-browser/--web-threads`` of the page server (``hairseg web serve``, ``webcam --web``)."""
    p.add_argument("--port", type=int, default=8000, help="port of the page server (default 8000; 0: any free)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: the camera needs a secure context, which localhost is)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument(
        "--web-threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="ONNX Runtime WASM threads in the page (default: min(4, the browser's cores))",
    )
