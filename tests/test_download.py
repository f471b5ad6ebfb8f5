"""Dataset download against a real HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from hairseg_core.data import DownloadError, build_dataset, download_dataset
from hairseg_core.data.download import SOURCES, RemoteFile, fetch


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (``Range: bytes=N-``); records what it served."""

    served: list[tuple[str, str | None, int]] = []

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        requested = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not requested or not path.is_file():
            if path.is_file():
                self.served.append((self.path, None, path.stat().st_size))
            return super().do_GET()
        data = path.read_bytes()
        start = int(requested.removeprefix("bytes=").rstrip("-"))
        if start >= len(data):
            self.send_error(416)
            return
        body = data[start:]
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.served.append((self.path, requested, len(body)))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of a threaded HTTP server on an ephemeral localhost port."""
    root = tmp_path / "www"
    root.mkdir()
    RangeHandler.served = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def png_bytes(array: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, array)
    assert ok
    return buf.tobytes()


def figaro_zip(path: Path) -> str:
    """A two-image Figaro-1k archive in the official layout; returns its sha256."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for part, stem in (("Training", "Frame00001"), ("Testing", "Frame00901")):
            image = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
            mask = np.zeros((16, 12), np.uint8)
            mask[:6] = 255
            zf.writestr(f"Figaro1k/Original/{part}/{stem}-org.jpg", png_bytes(image, ".jpg"))
            zf.writestr(f"Figaro1k/GT/{part}/{stem}-gt.pbm", png_bytes(mask, ".pbm"))
        zf.writestr("__MACOSX/Figaro1k/._junk", b"resource fork")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lfw_files(root: Path) -> None:
    """LFW Part Labels pieces: an images .tgz, a labels .tar.gz and a split list."""
    rng = np.random.default_rng(1)
    members = {
        "lfw_funneled/Zico/Zico_0001.jpg": png_bytes(rng.integers(0, 256, (25, 25, 3), dtype=np.uint8), ".jpg"),
    }
    gt = np.zeros((25, 25, 3), np.uint8)
    gt[..., 0] = 255  # blue background (BGR)
    gt[:8, :, :] = (0, 0, 255)  # red hair on top
    labels = {"parts_lfw_funneled_gt_images/Zico_0001.ppm": png_bytes(gt, ".ppm")}
    for name, content in (("lfw-funneled.tgz", members), ("parts_gt.tar.gz", labels)):
        with tarfile.open(root / name, "w:gz") as tf:
            for member, data in content.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (root / "parts_train.txt").write_text("Zico 1\n")


def test_download_extract_and_load_figaro(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    digest = figaro_zip(www / "Figaro1k.zip")
    dest = download_dataset("figaro1k", tmp_path / "data", url=f"{base}/Figaro1k.zip", sha256=digest, progress=False)
    assert (dest / "Figaro1k.zip").is_file() and not (dest / "Figaro1k.zip.part").exists()
    assert (dest / "Figaro1k" / "GT" / "Testing" / "Frame00901-gt.pbm").is_file()
    sample = build_dataset("figaro1k", "test", root=dest)[0]
    assert sample["name"] == "Frame00901" and sample["mask"][:6].all() and not sample["mask"][6:].any()

    # a second call finds the verified file and does not touch the network (this URL would 404)
    count = len(RangeHandler.served)
    download_dataset("figaro1k", dest, url=f"{base}/gone/Figaro1k.zip", sha256=digest, progress=False)
    assert len(RangeHandler.served) == count


def test_download_several_files_tar_and_text(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    lfw_files(www)
    urls = [f"{base}/lfw-funneled.tgz", f"{base}/parts_gt.tar.gz", f"{base}/parts_train.txt"]
    dest = download_dataset("lfw_parts", tmp_path / "lfw", url=urls, progress=False)
    assert (dest / "parts_train.txt").read_text() == "Zico 1\n"
    ds = build_dataset("lfw_parts", "train", root=dest)
    sample = ds[0]
    assert sample["name"] == "Zico_0001"
    assert sample["mask"][:8].all() and not sample["mask"][8:].any()


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    figaro_zip(www / "Figaro1k.zip")
    url = f"{base}/Figaro1k.zip"
    with pytest.raises(DownloadError, match=rf"checksum mismatch for {url}: expected sha256 0{{64}}"):
        download_dataset("figaro1k", tmp_path / "d", url=url, sha256="0" * 64, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_http_404_names_the_url(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    url = f"{base}/nope/Figaro1k.zip"
    with pytest.raises(DownloadError, match=rf"download of {url} failed: HTTP 404"):
        download_dataset("figaro1k", tmp_path / "d", url=url, progress=False)
    assert not list((tmp_path / "d").glob("*.zip"))


def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:9/Figaro1k\.zip"):
        download_dataset("figaro1k", tmp_path / "d", url="http://127.0.0.1:9/Figaro1k.zip", progress=False)


def test_interrupted_download_resumes_with_range(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    digest = figaro_zip(www / "Figaro1k.zip")
    full = (www / "Figaro1k.zip").read_bytes()
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "Figaro1k.zip.part").write_bytes(full[:100])  # what an interrupted run leaves behind
    download_dataset("figaro1k", dest, url=f"{base}/Figaro1k.zip", sha256=digest, progress=False)
    assert (dest / "Figaro1k.zip").read_bytes() == full
    assert RangeHandler.served == [("/Figaro1k.zip", "bytes=100-", len(full) - 100)]


def test_unsafe_archive_member_is_rejected(server: tuple[str, Path], tmp_path: Path) -> None:
    base, www = server
    with zipfile.ZipFile(www / "evil.zip", "w") as zf:
        zf.writestr("../outside.txt", b"x")
    with pytest.raises(DownloadError, match=r"would be written outside"):
        download_dataset("figaro1k", tmp_path / "d", url=f"{base}/evil.zip", progress=False)
    assert not (tmp_path / "outside.txt").exists()


def test_unknown_dataset_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no download recipe for dataset 'celebamask_hq'"):
        download_dataset("celebamask_hq", tmp_path)
    with pytest.raises(DownloadError, match="2 sha256 values for 1 URLs"):
        download_dataset("figaro1k", tmp_path, url=["http://127.0.0.1:9/a.zip"], sha256=["a", "b"], progress=False)


def test_cli_download_prints_the_dataset_path_or_a_clear_error(
    server: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hairseg_core import cli

    base, www = server
    figaro_zip(www / "Figaro1k.zip")
    dest = tmp_path / "data"
    assert cli.main(["data", "download", "figaro1k", "--dest", str(dest), "--url", f"{base}/Figaro1k.zip"]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(build_dataset("figaro1k", "train", root=str(printed))) == 1

    missing = f"{base}/gone/Figaro1k.zip"
    assert cli.main(["data", "download", "figaro1k", "--dest", str(tmp_path / "d2"), "--url", missing]) == 2
    err = capsys.readouterr().err
    assert f"error: download of {missing} failed: HTTP 404" in err and "Traceback" not in err


# --------------------------------------------------------------------------- sources and mirrors


def _lfw_sources(base: str, digest: str) -> tuple[RemoteFile, ...]:
    """LFW-shaped sources on the local server: each file's first source fails in another way."""
    return (
        # a copy with other bytes (checksum mismatch), then figshare's shape: a URL without a file name
        RemoteFile(
            f"{base}/stale/lfw-funneled.tgz", sha256=digest, mirrors=(f"{base}/files/5976015",), name="lfw-funneled.tgz"
        ),
        # a host that lost the file (404), then one that has it
        RemoteFile(f"{base}/gone/parts_gt.tar.gz", mirrors=(f"{base}/parts_gt.tar.gz",)),
        RemoteFile(f"{base}/parts_train.txt"),
    )


def test_each_file_falls_back_to_its_next_source(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base, www = server
    lfw_files(www)
    digest = hashlib.sha256((www / "lfw-funneled.tgz").read_bytes()).hexdigest()
    (www / "files").mkdir()
    (www / "files" / "5976015").write_bytes((www / "lfw-funneled.tgz").read_bytes())
    (www / "stale").mkdir()
    (www / "stale" / "lfw-funneled.tgz").write_bytes(b"an older, different archive")
    monkeypatch.setitem(SOURCES, "lfw_parts", _lfw_sources(base, digest))

    with caplog.at_level("WARNING", logger="hairseg_core.data.download"):
        dest = download_dataset("lfw_parts", tmp_path / "lfw", progress=False)
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == [
        "lfw-funneled.tgz",
        "lfw-funneled.tgz.extracted",
        "parts_gt.tar.gz",
        "parts_gt.tar.gz.extracted",
        "parts_train.txt",
    ]
    assert build_dataset("lfw_parts", "train", root=dest)[0]["name"] == "Zico_0001"
    assert [path for path, _, _ in RangeHandler.served] == [
        "/stale/lfw-funneled.tgz",
        "/files/5976015",
        "/parts_gt.tar.gz",
        "/parts_train.txt",
    ]
    tried = [record.getMessage() for record in caplog.records]
    assert len(tried) == 2
    assert tried[0].startswith(f"lfw-funneled.tgz: checksum mismatch for {base}/stale/lfw-funneled.tgz")
    assert tried[0].endswith(f"trying {base}/files/5976015")
    assert tried[1].startswith(f"parts_gt.tar.gz: download of {base}/gone/parts_gt.tar.gz failed: HTTP 404")


def test_every_source_failing_names_each(server: tuple[str, Path], tmp_path: Path) -> None:
    base, _ = server
    remote = RemoteFile(f"{base}/a/x.tgz", mirrors=(f"{base}/b/x.tgz",))
    with pytest.raises(DownloadError) as caught:
        fetch(remote, tmp_path / "d" / "x.tgz", progress=False)
    assert str(caught.value) == (
        f"x.tgz: every source failed: download of {base}/a/x.tgz failed: HTTP 404 File not found; "
        f"download of {base}/b/x.tgz failed: HTTP 404 File not found"
    )
    assert list((tmp_path / "d").iterdir()) == [], "no part file is left behind"


def test_cli_mirror_folder_is_tried_before_the_sources(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hairseg_core import cli

    base, www = server
    copy = tmp_path / "copy"
    copy.mkdir()
    lfw_files(copy)  # a local copy of every file, by name; the built-in sources all 404
    digest = hashlib.sha256((copy / "lfw-funneled.tgz").read_bytes()).hexdigest()
    monkeypatch.setitem(SOURCES, "lfw_parts", _lfw_sources(base, digest))
    dest = tmp_path / "lfw"
    assert cli.main(["data", "download", "lfw_parts", "--dest", str(dest), "--mirror", str(copy)]) == 0
    assert Path(capsys.readouterr().out.strip()) == dest
    assert RangeHandler.served == [], "nothing came from the built-in sources"
    assert build_dataset("lfw_parts", "train", root=dest)[0]["mask"][:8].all()
    with pytest.raises(DownloadError, match="either url .* or mirror"):
        download_dataset("lfw_parts", dest, url=f"{base}/x", mirror=str(copy), progress=False)


def test_shipped_lfw_sources_match_the_layout_and_end_with_the_original() -> None:
    files = {remote.filename: remote for remote in SOURCES["lfw_parts"]}
    assert set(files) == {
        "lfw-funneled.tgz",
        "parts_lfw_funneled_gt_images.tgz",
        "parts_train.txt",
        "parts_validation.txt",
        "parts_test.txt",
    }
    for name, remote in files.items():
        assert len(remote.urls) >= 2, f"{name}: the original host is gone, a mirror must come first"
        assert remote.urls[-1].startswith("http://vis-www.cs.umass.edu/lfw/") and remote.urls[-1].endswith(name)
        assert "vis-www.cs.umass.edu" not in urllib.parse.urlparse(remote.urls[0]).netloc
    assert len(files["lfw-funneled.tgz"].sha256 or "") == 64
    assert len(files["parts_lfw_funneled_gt_images.tgz"].md5 or "") == 32
