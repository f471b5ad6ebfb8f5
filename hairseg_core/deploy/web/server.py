"""A local HTTP server for the browser page: the page, ONNX Runtime Web, the exported model; nothing else.

The browser does all the work (camera, network, smoothing, colouring); this server only hands out static
files, so no frame ever leaves the browser. Every response carries ``Cross-Origin-Opener-Policy:
same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp`` (plus ``Cross-Origin-Resource-Policy:
same-origin``): that makes the page cross-origin isolated, which is what lets it use ``SharedArrayBuffer``
and therefore ONNX Runtime's multi-threaded WebAssembly. ``.wasm`` goes out as ``application/wasm`` so the
browser compiles it while it streams in.

Routes: ``/`` (the page), ``/app.js``, ``/config.json`` (what the page needs to know: ONNX Runtime version,
whether the WebGPU build is installed, the default colour / strength / smoothing), ``/model/model.json`` and
``/model/model.onnx`` (the export), ``/ort/<file>`` (the vendored WASM build, or the cached WebGPU build),
``/ort/LICENSE``. The server binds to 127.0.0.1 by default: ``getUserMedia`` needs a secure context, which
``http://localhost`` / ``127.0.0.1`` is and a LAN address is not.
"""

from __future__ import annotations

import json
import threading
import webbrowser
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hairseg_core.artifact import DEFAULT_FILES, ModelMetadata, read_metadata
from hairseg_core.deploy.coloring import NAMED_COLORS, parse_color
from hairseg_core.deploy.web import ortweb

STATIC_DIR = Path(__file__).resolve().parent / "static"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",
}
#: Smoothing methods the page implements (``hairseg_core.deploy.temporal`` names); the first is its default.
PAGE_SMOOTHERS = ("flow_ema", "none", "ema")


@dataclass
class WebModel:
    """The files the page loads: the ONNX file and the ``model.json`` contract that goes with it."""

    onnx: Path
    metadata: ModelMetadata
    metadata_bytes: bytes
    source: str

    @property
    def download_bytes(self) -> int:
        return self.onnx.stat().st_size + len(self.metadata_bytes)


def resolve_web_model(spec: str | Path) -> WebModel:
    """An export directory, a ``.onnx`` file (``model.json`` beside it, else the defaults) or a ``models:/``
    URI. Raises ``FileNotFoundError`` / ``ValueError`` with the reason."""
    text = str(spec)
    if text.startswith("models:/"):
        from hairseg_core.track.registry import resolve_model_uri  # deferred: MLflow is a heavy import

        path = Path(resolve_model_uri(text))
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {path} does not exist (expected an export directory or a .onnx file)")
    if path.is_dir():
        json_path = path / DEFAULT_FILES["metadata"]
        metadata = read_metadata(json_path)
        onnx = path / metadata.files.get("onnx", DEFAULT_FILES["onnx"])
        if not onnx.is_file():
            raise FileNotFoundError(f"{path}: no ONNX file {onnx.name}; the browser page runs the ONNX export")
        return WebModel(onnx, metadata, json_path.read_bytes(), text)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: the browser page runs an .onnx file or an export directory, not {path.suffix!r}")
    sibling = path.parent / DEFAULT_FILES["metadata"]
    if sibling.is_file():
        return WebModel(path, read_metadata(sibling), sibling.read_bytes(), text)
    from hairseg_core.deploy.inference import DEFAULT_INPUT_SIZE

    metadata = ModelMetadata(input_size=DEFAULT_INPUT_SIZE)
    return WebModel(path, metadata, (json.dumps(metadata.to_dict(), indent=2) + "\n").encode(), text)


@dataclass
class PageSettings:
    color: str = "red"
    strength: float = 0.8
    smoothing: str = PAGE_SMOOTHERS[0]
    threads: int | None = None  # ONNX Runtime WASM threads; None: the page picks min(4, cores)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_color(self.color)
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        if self.smoothing not in PAGE_SMOOTHERS:
            raise ValueError(f"the page implements smoothing {', '.join(PAGE_SMOOTHERS)}, not {self.smoothing!r}")


def _hex(color: str) -> str:
    return "#{:02x}{:02x}{:02x}".format(*parse_color(color))


def page_config(model: WebModel, settings: PageSettings, webgpu: bool) -> dict[str, Any]:
    return {
        "ort_version": ortweb.ORT_WEB_VERSION,
        "webgpu_installed": webgpu,
        "model_bytes": model.onnx.stat().st_size,
        "model_name": model.source,
        "color": _hex(settings.color),
        "strength": settings.strength,
        "smoothing": settings.smoothing,
        "smoothers": list(PAGE_SMOOTHERS),
        "threads": settings.threads,
        "named_colors": {name: _hex(name) for name in sorted(NAMED_COLORS)},
        **settings.extra,
    }


class WebApp:
    """The routes, resolved once: a path → (file or bytes, content type)."""

    def __init__(self, model: WebModel, settings: PageSettings | None = None) -> None:
        self.model = model
        self.settings = settings or PageSettings()
        self.wasm_dir = ortweb.vendored_dir()  # OrtWebError when the vendored build is damaged
        self.webgpu_dir = ortweb.webgpu_dir()
        self.config = json.dumps(page_config(model, self.settings, self.webgpu_dir is not None)).encode()

    def lookup(self, path: str) -> tuple[Path | bytes, str] | None:
        if path in ("/", "/index.html"):
            return STATIC_DIR / "index.html", CONTENT_TYPES[".html"]
        if path == "/app.js":
            return STATIC_DIR / "app.js", CONTENT_TYPES[".js"]
        if path == "/config.json":
            return self.config, CONTENT_TYPES[".json"]
        if path == "/model/model.json":
            return self.model.metadata_bytes, CONTENT_TYPES[".json"]
        if path == "/model/model.onnx":
            return self.model.onnx, CONTENT_TYPES[".onnx"]
        if path.startswith("/ort/"):
            name = path[len("/ort/") :]
            if name in ortweb.WASM_FILES or name in ortweb.LICENSE_FILES:
                return self.wasm_dir / name, CONTENT_TYPES[Path(name).suffix]
            if name in ortweb.WEBGPU_FILES and self.webgpu_dir is not None:
                return self.webgpu_dir / name, CONTENT_TYPES[Path(name).suffix]
        return None


def _handler(app: WebApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hairseg-web"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
            pass  # quiet: the page polls nothing, but a test run should not print every request

        def _send(self, head_only: bool) -> None:
            found = app.lookup(urlsplit(self.path).path)
            if found is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            body, content_type = found
            data = body if isinstance(body, bytes) else body.read_bytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-cache")
            for key, value in ISOLATION_HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            if not head_only:
                self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._send(head_only=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._send(head_only=True)

    return Handler


class WebServer:
    """``with WebServer(model) as server: server.url`` — serves on a background thread until closed."""

    def __init__(
        self, model: WebModel | str | Path, host: str = "127.0.0.1", port: int = 0, settings: PageSettings | None = None
    ) -> None:
        self.app = WebApp(model if isinstance(model, WebModel) else resolve_web_model(model), settings)
        self.httpd = ThreadingHTTPServer((host, port), _handler(self.app))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}/"

    def start(self) -> WebServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hairseg-web", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(server: WebServer) -> str:
    app = server.app
    size = app.model.onnx.stat().st_size / 1e6
    gpu = "WebGPU build installed" if app.webgpu_dir else "WebGPU build not installed (hairseg web fetch)"
    return (
        f"hair colouring page: {server.url}  (model {app.model.source}, {size:.1f} MB, letterbox "
        f"{app.model.metadata.input_size} px; onnxruntime-web {ortweb.ORT_WEB_VERSION}, WASM SIMD+threads; {gpu})"
    )


def serve_forever(
    model: str | Path, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = True, **settings: Any
) -> None:
    """Serve until Ctrl-C (the ``--web`` mode of ``pipelines/webcam.py`` and ``hairseg web serve``)."""
    server = WebServer(model, host, port, PageSettings(**settings))
    print(describe(server), flush=True)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
