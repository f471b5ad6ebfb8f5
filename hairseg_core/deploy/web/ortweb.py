"""ONNX Runtime Web for the browser page: the pinned version, its vendored WASM build, the WebGPU build cache.

Why two ways, decided per build by size and by what must work offline:

* **WebAssembly, SIMD + threads (vendored, ~15 MB).** ``ort.wasm.min.mjs`` and
  ``ort-wasm-simd-threaded.{mjs,wasm}`` of the pinned release live in ``hairseg_core/deploy/web/vendor/`` and are
  installed with the package: ``pip install`` is the only install step, the page works with no network at
  all (tests and CI included), and nothing is fetched from a CDN at run time. Each file's sha256 is pinned
  below and checked when the server starts, so a truncated or edited copy fails loudly.
* **WebGPU (fetched on first use, ~29 MB).** ``ort.webgpu.min.mjs`` and ``ort-wasm-simd-threaded.asyncify.*``
  would double the repository for a back-end that headless CI never has. ``hairseg web fetch`` downloads the
  pinned tarball once from the npm registry, checks it against npm's ``dist.integrity`` (sha512) and each
  extracted file against its sha256, and keeps only those files in a user cache
  (``$HAIRSEG_CACHE`` or ``~/.cache/hairseg/onnxruntime-web-<version>``). Without them the page says WebGPU is
  not installed and runs on WebAssembly.

``hairseg web refresh VERSION`` re-vendors another release (prints the new pins to paste
here). Licence: ONNX Runtime is MIT (``vendor/onnxruntime-web/LICENSE``; ``ThirdPartyNotices.txt`` lists the
bundled third-party code; both copied from the ONNX Runtime distribution).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import urllib.request
from pathlib import Path

ORT_WEB_VERSION = "1.31.1"
TARBALL_URL = f"https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-{ORT_WEB_VERSION}.tgz"
#: npm's ``dist.integrity`` of the tarball (``npm view onnxruntime-web@1.31.1 dist.integrity``).
TARBALL_INTEGRITY = "sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="

VENDOR_DIR = Path(__file__).resolve().parent / "vendor" / "onnxruntime-web"
#: The vendored WebAssembly build (``package/dist/<name>`` in the tarball) and its sha256.
WASM_FILES: dict[str, str] = {
    "ort.wasm.min.mjs": "c21d9c326d453a4a61398270c804d5979e118540597cb0c07f7b3d64e6098234",
    "ort-wasm-simd-threaded.mjs": "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3",
    "ort-wasm-simd-threaded.wasm": "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d",
}
#: The WebGPU build, fetched into the cache by ``hairseg web fetch``.
WEBGPU_FILES: dict[str, str] = {
    "ort.webgpu.min.mjs": "329cd956772397a1aedd668e911195d39afefb182f6fc14aafa4f08ac8d8f379",
    "ort-wasm-simd-threaded.asyncify.mjs": "59cf781530e1a16df2a291d78798e3ec1152467edaec402d6f9599d85047c302",
    "ort-wasm-simd-threaded.asyncify.wasm": "ca319e9539cd0f1e291cf56074760121eaf39650f5dbf84b6e52c07f4b2944ec",
}
LICENSE_FILES = ("LICENSE", "ThirdPartyNotices.txt")


class OrtWebError(RuntimeError):
    """The ONNX Runtime Web files are missing, corrupt or cannot be fetched."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_files(directory: Path, pins: dict[str, str]) -> list[str]:
    """Problems (missing file, sha256 mismatch) of ``directory`` against ``pins``; empty when all is well."""
    problems = []
    for name, want in pins.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif _sha256(path) != want:
            problems.append(f"{path}: sha256 differs from the pinned {want[:12]}...")
    return problems


def vendored_dir() -> Path:
    """The vendored WASM build, verified; raises :class:`OrtWebError` naming what is wrong."""
    problems = verify_files(VENDOR_DIR, WASM_FILES)
    if problems:
        raise OrtWebError(
            "the vendored ONNX Runtime Web build is damaged (reinstall hairseg, or "
            "`hairseg web refresh VERSION`): " + "; ".join(problems)
        )
    return VENDOR_DIR


def cache_dir(version: str = ORT_WEB_VERSION) -> Path:
    root = os.environ.get("HAIRSEG_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "hairseg"
    return base / f"onnxruntime-web-{version}"


def webgpu_dir() -> Path | None:
    """The cached WebGPU build when it is present and intact, else None (the page then runs WebAssembly)."""
    directory = cache_dir()
    return directory if directory.is_dir() and not verify_files(directory, WEBGPU_FILES) else None


def check_integrity(data: bytes, integrity: str) -> None:
    """Raise :class:`OrtWebError` unless ``data`` matches an npm ``sha512-<base64>`` integrity string."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512":
        raise OrtWebError(f"unsupported integrity algorithm {algorithm!r} (expected sha512)")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != expected:
        raise OrtWebError(f"tarball integrity mismatch: got sha512-{got}, npm says {integrity}")


def download_tarball(url: str | None = None, integrity: str | None = None, timeout: float = 120.0) -> bytes:
    """The pinned npm tarball, checked against its sha512 integrity (``HAIRSEG_ORT_WEB_TARBALL``: a local file)."""
    url, integrity = url or TARBALL_URL, integrity or TARBALL_INTEGRITY
    local = os.environ.get("HAIRSEG_ORT_WEB_TARBALL")
    if local:
        data = Path(local).read_bytes()
    else:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a pinned https URL)
                data = response.read()
        except OSError as exc:
            raise OrtWebError(f"cannot download {url}: {exc}") from exc
    check_integrity(data, integrity)
    return data


def extract(data: bytes, names: dict[str, str], target: Path) -> list[Path]:
    """Write ``package/dist/<name>`` of the tarball for each pinned name to ``target``, each sha256-checked."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name, want in names.items():
            try:
                member = archive.extractfile(f"package/dist/{name}")
            except KeyError:
                member = None
            if member is None:
                raise OrtWebError(f"the tarball has no package/dist/{name}")
            content = member.read()
            got = hashlib.sha256(content).hexdigest()
            if want and got != want:
                raise OrtWebError(f"{name}: sha256 {got} differs from the pinned {want}")
            partial = target / f".{name}.part"
            partial.write_bytes(content)
            partial.replace(target / name)
            written.append(target / name)
    return written


def fetch_webgpu(force: bool = False) -> Path:
    """Download and verify the WebGPU build into :func:`cache_dir` (a no-op when it is already there)."""
    directory = cache_dir()
    if not force and webgpu_dir() is not None:
        return directory
    extract(download_tarball(), WEBGPU_FILES, directory)
    for name in LICENSE_FILES:  # the same licence travels with the cached copy
        (directory / name).write_bytes((VENDOR_DIR / name).read_bytes())
    return directory


def refresh_vendor(version: str) -> dict[str, object]:
    """Re-vendor another release: fetch its tarball (integrity from ``npm view``), replace the vendored WASM
    files, and return the pins to paste into this module (the new files are not trusted until pinned)."""
    with urllib.request.urlopen(f"https://registry.npmjs.org/onnxruntime-web/{version}", timeout=60) as response:
        dist = json.load(response)["dist"]
    data = download_tarball(dist["tarball"], dist["integrity"])
    extract(data, dict.fromkeys(WASM_FILES, ""), VENDOR_DIR)
    scratch = cache_dir(version)
    extract(data, dict.fromkeys(WEBGPU_FILES, ""), scratch)
    return {
        "ORT_WEB_VERSION": version,
        "TARBALL_INTEGRITY": dist["integrity"],
        "WASM_FILES": {name: _sha256(VENDOR_DIR / name) for name in WASM_FILES},
        "WEBGPU_FILES": {name: _sha256(scratch / name) for name in WEBGPU_FILES},
    }
