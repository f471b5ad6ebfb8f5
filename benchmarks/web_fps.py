#!/usr/bin/env python
"""The browser page's speed: fps in headless Chromium on a fake camera, WASM threads on and off.

For each export (``--model``, repeatable; default: the small DeepLabv3+ fixture of tests/test_web.py) and
each setting, Chromium opens the page (``hairseg_core.deploy.web``) on a fake camera playing a 640x480 Y4M clip of
a real celeb1k portrait (the synthetic one without ../shared/data), runs ``--seconds`` after the first
coloured frame, and reads ``window.hairsegStats``. Settings: ONNX Runtime's WASM threads (``?threads=N``),
and whether the network runs in ORT's proxy worker (overlapping with the page's colouring) or on the main
thread (``?proxy=0``). Reported per row: fps (frames over the last 3 s), frames, the stage times (JS
letterbox + normalisation, network, smoothing, unletterbox + colouring + drawing; EMAs in ms), the time
from navigation to the first coloured frame, and the download (model + ONNX Runtime Web files).

    python benchmarks/web_fps.py --model exports/<sweep> --seconds 15
    python benchmarks/web_fps.py --settings 1:proxy 2:proxy 2:main --json out.json
    python benchmarks/web_fps.py --model exports/<sweep> --webcam-command --settings 1:proxy 1:proxy 1:proxy

``--webcam-command`` serves the page the way a user does, with ``python pipelines/webcam.py --model M --web
--port P --no-browser`` in its own process, instead of an in-process server (the browser issue's done-when).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from web_helpers import export_deeplab, launch_chromium, playwright_or_reason, portrait_clip  # noqa: E402

from hairseg_core.deploy.web import ortweb  # noqa: E402
from hairseg_core.deploy.web.server import WebServer  # noqa: E402


class WebcamCommandServer:
    """``pipelines/webcam.py --web`` in a subprocess: the page as a user starts it; ``url`` once it listens."""

    def __init__(self, model: Path, port: int = 8799) -> None:
        self.model, self.port, self.url = model, port, f"http://127.0.0.1:{port}/"
        meta = json.loads((model / "model.json").read_text()) if (model / "model.json").is_file() else {}
        self.input_size = meta.get("input", {}).get("size")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> WebcamCommandServer:
        command = [sys.executable, str(ROOT / "pipelines" / "webcam.py"), "--model", str(self.model)]
        command += ["--web", "--port", str(self.port), "--no-browser"]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webcam.py --web exited {self.proc.returncode}: {self.proc.stdout.read()[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            time.sleep(0.2)
        raise RuntimeError(f"webcam.py --web did not listen on port {self.port} within 120 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.communicate(timeout=30)


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def measure(
    pw, server: WebServer | WebcamCommandServer, clip: Path, threads: int, proxy: bool, smoothing: str, seconds: float
) -> dict:
    browser = launch_chromium(pw, clip)
    try:
        page = browser.new_page()
        query = f"?threads={threads}&proxy={int(proxy)}&smoothing={smoothing}"
        start = time.monotonic()
        page.goto(server.url + query)
        page.wait_for_function("window.hairsegStats && window.hairsegStats.frames > 0", timeout=120_000)
        first = time.monotonic() - start
        page.wait_for_timeout(seconds * 1000)
        stats = page.evaluate("window.hairsegStats")
    finally:
        browser.close()
    ort_bytes = sum((ortweb.VENDOR_DIR / name).stat().st_size for name in ortweb.WASM_FILES)
    return {
        "threads": threads,
        "proxy": proxy,
        "smoothing": smoothing,
        "fps": stats["fps"],
        "frames": stats["frames"],
        "backend": stats["backend"],
        "hair_fraction": stats["hairFraction"],
        "first_frame_s": stats["firstFrameMs"] / 1000,
        "first_frame_wall_s": first,
        "model_load_ms": stats["modelLoadMs"],
        "timing_ms": stats["timing"],
        "model_mb": stats["modelBytes"] / 1e6,
        "ort_mb": ort_bytes / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="export directory (repeatable); default: the test fixture")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["1:proxy", "2:proxy", "2:main"],
        help="THREADS:proxy|main, each one Chromium run (default: 1:proxy 2:proxy 2:main)",
    )
    parser.add_argument("--smoothing", default="flow_ema", choices=["flow_ema", "ema", "none"])
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds after the first coloured frame")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--webcam-command", action="store_true", help="serve with `pipelines/webcam.py --web` in its own process"
    )
    args = parser.parse_args(argv)
    sync_playwright, reason = playwright_or_reason()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        models = [Path(m) for m in args.model] if args.model else [export_deeplab(Path(scratch) / "fixture")]
        clip, source = portrait_clip(Path(scratch) / "clip.y4m")
        print(f"clip: 640x480 shake video of {source}; load average before: {load_average()}")
        with sync_playwright() as pw:
            for model in models:
                serving = WebcamCommandServer(model) if args.webcam_command else WebServer(model)
                with serving as server:
                    size = server.input_size if args.webcam_command else server.app.model.metadata.input_size
                    for setting in args.settings:
                        threads, _, mode = setting.partition(":")
                        row = measure(pw, server, clip, int(threads), mode != "main", args.smoothing, args.seconds)
                        row.update(model=str(model), input_size=size, load=load_average())
                        rows.append(row)
                        t = row["timing_ms"]
                        print(
                            f"{model.name} {size}px threads={row['threads']} {'proxy' if row['proxy'] else 'main'}: "
                            f"{row['fps']:.1f} fps ({row['frames']} frames), first frame {row['first_frame_s']:.2f} s, "
                            f"pre {t['preMs']:.1f} / net {t['inferMs']:.1f} / smooth {t['smoothMs']:.1f} / "
                            f"colour {t['postMs']:.1f} ms, hair {row['hair_fraction']:.3f}, download "
                            f"{row['model_mb']:.1f} MB model + {row['ort_mb']:.1f} MB runtime, load {row['load']}",
                            flush=True,
                        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
