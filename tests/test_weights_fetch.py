"""Fetching ImageNet weights against a real HTTP server on 127.0.0.1 (never the internet).

The one real checkpoint on these machines is torchvision's ``mobilenet_v2-b0353104.pth`` in
``../shared/weights``; tests that download it skip when it is absent. Every test gets its own empty torch
hub cache ($TORCH_HOME), so nothing on the host can satisfy a lookup by accident.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from hairseg_core.config import load_search_space
from hairseg_core.models import WeightsNotFoundError, build_model
from hairseg_core.models.fetch import (
    MIRROR_ENV,
    OFFLINE_ENV,
    WeightsFetchError,
    ensure_imagenet_weights,
    resolve_space_weights,
)
from hairseg_core.models.weights import read_state_dict
from hairseg_core.search.weights import imagenet_backbones
from hairseg_core.verified_download import hash_prefix

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
V1 = "mobilenet_v2-b0353104.pth"  # the file in ../shared/weights (torchvision's IMAGENET1K_V1)
V2 = "mobilenet_v2-7ebf99e0.pth"  # torchvision's DEFAULT recipe, the first name looked for
URL_V2 = f"https://download.pytorch.org/models/{V2}"

needs_weights = pytest.mark.skipif(not (SHARED_WEIGHTS / V1).is_file(), reason=f"{SHARED_WEIGHTS / V1} is absent")


@pytest.fixture(scope="module")
def v1_bytes() -> bytes:
    return (SHARED_WEIGHTS / V1).read_bytes()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache for this test; returns its checkpoints/ folder (not created yet)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for name in ("HAIRSEG_WEIGHTS_DIR", OFFLINE_ENV, MIRROR_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


@dataclass
class Server:
    """A localhost server: ``files`` by URL path, ``script`` of canned failures per path, ``requests`` seen."""

    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    script: dict[str, list[str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(base="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            state.requests.append(self.path)
            action = state.script.get(self.path, []).pop(0) if state.script.get(self.path) else "serve"
            body = state.files.get(self.path)
            if action == "503":
                self.send_error(503, "busy")
                return
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if action == "short":  # promise the whole body, send half, hang up
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def free_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_backbone_is(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    assert own, "empty backbone"
    for key, value in own.items():
        assert torch.equal(value, state[key]), f"{key} was not loaded from the file"


# --------------------------------------------------------------------------------------------- unit


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("mobilenet_v2-b0353104.pth", "b0353104"),
        ("resnet101-cd907fc2.pth", "cd907fc2"),
        ("/some/dir/mobilenet_v3_large-5c1a4163.pth", "5c1a4163"),
        ("drn_d_54-0e0534ff.pth", "0e0534ff"),
        ("efficient-net-b0-0123456789abcdef.tar.gz", "0123456789abcdef"),
        ("a-" + "f" * 64 + ".pth", "f" * 64),
        ("xception65.ra3_in1k.safetensors", None),
        ("model.safetensors", None),
        ("lfw-funneled.tgz", None),  # not hex
        ("short-abc1234.pth", None),  # 7 digits: torch requires 8+
        ("upper-ABCDEF12.pth", None),  # torch's convention is lowercase
        ("mixed-b0353104x.pth", None),
        ("noext-b0353104", "b0353104"),
    ],
)
def test_hash_prefix_parsing(name: str, prefix: str | None) -> None:
    assert hash_prefix(name) == prefix


def test_imagenet_backbones_of_a_space(tmp_path: Path) -> None:
    def space(text: str) -> object:
        path = tmp_path / "s.yaml"
        path.write_text("name: t\nfixed: {epochs: 1" + text)
        return load_search_space(path)

    searched = "\nparams:\n  backbone: {type: categorical, choices: [resnet50, mobilenet_v2, resnet50]}\n"
    assert imagenet_backbones(space(", pretrained: imagenet}" + searched)) == ["resnet50", "mobilenet_v2"]
    assert imagenet_backbones(space(", pretrained: none}" + searched)) == []
    assert imagenet_backbones(space(", backbone: xception, pretrained: imagenet}")) == ["xception"]
    assert imagenet_backbones(space("}")) == []  # TrainConfig default: pretrained none
    both = searched + "  pretrained: {type: categorical, choices: [none, imagenet]}\n"
    assert imagenet_backbones(space("}" + both)) == ["resnet50", "mobilenet_v2"]
    assert imagenet_backbones(load_search_space("search_spaces/paper.yaml")) == [
        "resnet101",
        "mobilenet_v2",
        "xception",
        "drn_d_54",
    ]


# ------------------------------------------------------------------------------------------ fetching


@needs_weights
def test_good_hash_is_cached_and_build_model_loads_it_strictly(server: Server, hub: Path, v1_bytes: bytes) -> None:
    server.files[f"/{V1}"] = v1_bytes
    path = ensure_imagenet_weights("mobilenet_v2", mirror=server.base, progress=False, timeout=5)
    assert path == hub / V1 and path.read_bytes() == v1_bytes
    assert listing(hub) == [V1]  # no .part left over
    # on a mirror the file with a recorded full sha256 is asked for first, so a single request
    assert server.requests == [f"/{V1}"]

    model = build_model(backbone="mobilenet_v2", pretrained="imagenet")  # cached now: no network
    assert_backbone_is(model, read_state_dict(SHARED_WEIGHTS / V1))
    assert ensure_imagenet_weights("mobilenet_v2", mirror=server.base) == path
    assert len(server.requests) == 1


@needs_weights
@pytest.mark.parametrize(("name", "expected"), [(V1, "expected sha256 b0353104"), (V2, "starting with 7ebf99e0")])
def test_wrong_file_fails_its_hash_and_leaves_nothing(server: Server, hub: Path, name: str, expected: str) -> None:
    impostor = hub.parent / "impostor.pth"
    hub.parent.mkdir(parents=True)
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, impostor)
    server.files[f"/{name}"] = impostor.read_bytes()
    with pytest.raises(WeightsFetchError, match=expected) as excinfo:
        ensure_imagenet_weights("mobilenet_v2", mirror=server.base, progress=False, timeout=5)
    message = str(excinfo.value)
    assert "checksum mismatch" in message and "mobilenet_v2" in message and "pretrained: none" in message
    assert listing(hub) == []
    assert server.requests.count(f"/{name}") == 1  # a hash mismatch is not retried


def test_server_down_fails_clearly_within_the_timeout(hub: Path) -> None:
    mirror = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(WeightsFetchError) as excinfo:
        ensure_imagenet_weights("mobilenet_v2", mirror=mirror, progress=False, timeout=3.0, retries=2)
    elapsed = time.monotonic() - start  # backoff is capped so that all attempts fit in one timeout
    assert elapsed < 3.0, f"took {elapsed:.1f}s"
    message = str(excinfo.value)
    assert f"cannot download {mirror}/{V1}" in message and "after 2 attempts" in message
    assert str(hub / V2) in message and URL_V2 in message and "pretrained: none" in message
    assert isinstance(excinfo.value, WeightsNotFoundError)
    assert listing(hub) == []


def test_server_that_never_answers_costs_one_timeout_not_one_per_attempt(hub: Path) -> None:
    with socket.socket() as silent:  # the kernel completes the handshake, nobody ever reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        mirror = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(WeightsFetchError, match="timed out"):
            ensure_imagenet_weights("mobilenet_v2", mirror=mirror, progress=False, timeout=1.0, retries=3)
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 2.0, f"took {elapsed:.1f}s"
    assert listing(hub) == []


def test_offline_names_the_destination_and_sends_no_request(
    server: Server, hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")
    monkeypatch.setenv(MIRROR_ENV, server.base)
    with pytest.raises(WeightsNotFoundError) as excinfo:
        build_model(backbone="mobilenet_v2", pretrained="imagenet")
    assert not isinstance(excinfo.value, WeightsFetchError)
    message = str(excinfo.value)
    assert "\n" not in message  # one paragraph
    for part in (
        "'mobilenet_v2'",
        repr(V2),
        str(hub / V2),
        "$HAIRSEG_WEIGHTS_DIR",
        URL_V2,
        "hairseg weights fetch mobilenet_v2",
        "pretrained: none",
    ):
        assert part in message, part
    assert server.requests == []
    monkeypatch.delenv(OFFLINE_ENV)
    with pytest.raises(WeightsNotFoundError):  # the explicit flag works without the environment variable
        ensure_imagenet_weights("mobilenet_v2", offline=True)
    assert server.requests == []


@needs_weights
def test_mirror_from_the_environment_fetches_on_first_use(
    server: Server, hub: Path, v1_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files[f"/{V1}"] = v1_bytes
    monkeypatch.setenv(MIRROR_ENV, server.base + "/")
    model = build_model(backbone="mobilenet_v2", pretrained="imagenet")
    assert listing(hub) == [V1]
    assert_backbone_is(model, read_state_dict(hub / V1))


@needs_weights
@pytest.mark.parametrize("form", ["directory", "file-url"])
def test_local_folder_mirror(hub: Path, form: str) -> None:
    mirror = str(SHARED_WEIGHTS) if form == "directory" else SHARED_WEIGHTS.as_uri()
    assert ensure_imagenet_weights("mobilenet_v2", mirror=mirror, progress=False) == hub / V1
    assert listing(hub) == [V1]


@needs_weights
def test_transient_failures_are_retried(server: Server, hub: Path, v1_bytes: bytes) -> None:
    server.files[f"/{V1}"] = v1_bytes
    server.script[f"/{V1}"] = ["503", "short"]  # busy, then a cut-off body, then the file
    # timeout 1.5 s caps each backoff at 0.5 s (timeout / attempts): keeps the test fast
    path = ensure_imagenet_weights("mobilenet_v2", mirror=server.base, progress=False, timeout=1.5)
    assert path.read_bytes() == v1_bytes and listing(hub) == [V1]
    assert server.requests == [f"/{V1}"] * 3


def test_retries_give_up_with_the_status(server: Server, hub: Path) -> None:
    server.files[f"/{V2}"] = b"never served"
    server.script[f"/{V2}"] = ["503"] * 5
    with pytest.raises(WeightsFetchError, match=r"HTTP 503 .*after 2 attempts"):
        ensure_imagenet_weights("mobilenet_v2", mirror=server.base, progress=False, timeout=1, retries=2)
    assert server.requests == [f"/{V1}", f"/{V2}", f"/{V2}"]  # 404 is final (next name), 503 is retried
    assert listing(hub) == []


def test_a_file_that_is_no_state_dict_is_rejected(server: Server, hub: Path) -> None:
    from hairseg_core.models.fetch import cached_imagenet_weights

    if cached_imagenet_weights("xception") is not None:
        pytest.skip("the host's Hugging Face cache holds xception weights")
    name = "xception65.ra3_in1k.safetensors"  # no hash in the name, no known digest: only the read check
    server.files[f"/{name}"] = b"not safetensors at all"
    with pytest.raises(WeightsFetchError, match="not a loadable state dict"):
        ensure_imagenet_weights("xception", mirror=server.base, progress=False, timeout=5)
    assert listing(hub) == []


def test_unsupported_mirror_scheme_is_a_fetch_error(hub: Path) -> None:
    with pytest.raises(WeightsFetchError, match=r"unsupported scheme 's3'.*HTTP\(S\) endpoint"):
        ensure_imagenet_weights("mobilenet_v2", mirror="s3://bucket/weights", progress=False)


def test_everything_missing_on_the_mirror_lists_each_url(server: Server, hub: Path) -> None:
    with pytest.raises(WeightsFetchError) as excinfo:
        ensure_imagenet_weights("mobilenet_v2", mirror=server.base, progress=False, timeout=5)
    message = str(excinfo.value)
    assert f"{server.base}/{V2} failed: HTTP 404" in message and f"{server.base}/{V1} failed: HTTP 404" in message
    assert server.requests == [f"/{V1}", f"/{V2}"]


@needs_weights
def test_resolve_space_weights_fetches_each_backbone_once(server: Server, hub: Path, v1_bytes: bytes) -> None:
    server.files[f"/{V1}"] = v1_bytes
    paths = resolve_space_weights(["mobilenet_v2", "mobilenet_v2"], mirror=server.base, progress=False)
    assert paths == {"mobilenet_v2": hub / V1}
    assert server.requests.count(f"/{V1}") == 1


# ----------------------------------------------------------------------------------------------- CLI


@needs_weights
def test_cli_fetch_by_name_and_by_space(
    server: Server, hub: Path, v1_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hairseg_core import cli

    server.files[f"/{V1}"] = v1_bytes
    assert cli.main(["weights", "fetch", "mobilenet_v2", "--mirror", server.base]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"mobilenet_v2: {hub / V1}"
    (hub / V1).unlink()

    space = tmp_path / "tiny.yaml"
    space.write_text(
        "name: tiny\nfixed: {pretrained: imagenet, epochs: 1}\n"
        "params:\n  backbone: {type: categorical, choices: [mobilenet_v2]}\n"
    )
    assert cli.main(["weights", "fetch", "--space", str(space), "--mirror", server.base, "--timeout", "5"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [f"mobilenet_v2: {hub / V1}"]
    assert (hub / V1).read_bytes() == v1_bytes

    assert cli.main(["weights", "list"]) == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in capsys.readouterr().out.splitlines()}
    assert rows["mobilenet_v2"] == ["mobilenet_v2", V2, URL_V2, str(hub / V1)]
    assert rows["resnet50"][-1] == "not cached"


def test_cli_fetch_failure_is_one_line_and_exit_2(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hairseg_core import cli

    assert cli.main(["weights", "fetch", "mobilenet_v2", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(hub / V2) in err
    assert cli.main(["weights", "fetch", "no_such_net"]) == 2
    assert "no ImageNet weights known for backbone 'no_such_net'" in capsys.readouterr().err
    assert cli.main(["weights", "fetch"]) == 2
    assert "name at least one backbone" in capsys.readouterr().err
