"""Tests of VISTA3DSlicerLib.weights against a local HTTP server (no internet).

The server serves a small generated checkpoint, honours Range requests and can misbehave on
purpose: cut the connection after N bytes, ignore Range, serve corrupted bytes, go slowly.
"""

from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import pytest

LIB_DIR = Path(__file__).resolve().parents[2] / "VISTA3DSlicer"

from VISTA3DSlicerLib import models, weights
from VISTA3DSlicerLib.cli import _parser, main
from VISTA3DSlicerLib.errors import Cancelled, VISTA3DError
from VISTA3DSlicerLib.progress import CancelToken
from VISTA3DSlicerLib.weights import (
    ChecksumError,
    DownloadError,
    WeightsNotFoundError,
    WeightsSource,
)

CHUNK = 64 * 1024  # small download chunks, so that a 3 MB file gives many progress reports


# --- the local server ---------------------------------------------------------------------------


@dataclass
class Server:
    """What the server serves, how it misbehaves, and a log of the requests it answered."""

    payload: bytes
    url: str = ""
    cut_after: Optional[int] = None  # close the connection after this many body bytes ...
    cuts_left: int = 1  # ... on this many requests, then serve normally
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a Range
    corrupt: bool = False  # serve the payload with one byte flipped
    throttle: float = 0.0  # seconds to sleep per 64 KiB block
    log: list = field(default_factory=list)  # one dict per GET: range, status, sent
    started: threading.Event = field(default_factory=threading.Event)
    on_request: Optional[Callable[[], None]] = None  # called as each GET arrives
    hub_headers: dict = field(default_factory=dict)  # a HEAD's answer: the hub's X-Linked-* headers

    @property
    def bytes_sent(self) -> int:
        return sum(entry["sent"] for entry in self.log)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        state: Server = self.server.state
        if self.path != "/model.pt":
            self.send_error(404)
            return
        data = bytearray(state.payload)
        if state.corrupt:
            data[len(data) // 2] ^= 0xFF
        if state.on_request is not None:
            state.on_request()
        entry = {"range": self.headers.get("Range"), "status": 200, "sent": 0}
        state.log.append(entry)
        state.started.set()

        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", entry["range"] or "")
        if match and not state.ignore_range:
            start = int(match[1])
            if start >= len(data):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            entry["status"] = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()

        body = bytes(data[start:])
        if state.cut_after is not None and state.cuts_left > 0:
            state.cuts_left -= 1
            body = body[: state.cut_after]  # then the connection closes: a cut download
        try:
            for i in range(0, len(body), CHUNK):
                self.wfile.write(body[i : i + CHUNK])
                entry["sent"] += len(body[i : i + CHUNK])
                if state.throttle:
                    threading.Event().wait(state.throttle)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled download)

    def do_HEAD(self) -> None:  # noqa: N802
        """As the Hugging Face hub answers a ``resolve`` URL of a Git LFS file: a redirect to its
        storage with the file's SHA-256 and size."""
        state: Server = self.server.state
        self.send_response(302)
        self.send_header("Location", state.url)
        for name, value in state.hub_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    """A real (small) checkpoint: a state dict made with a fixed seed, about 3 MB."""
    import torch

    generator = torch.Generator().manual_seed(0)
    state = {"encoder.weight": torch.randn(512, 1024, generator=generator),
             "head.weight": torch.randn(256, 1024, generator=generator)}
    path = tmp_path_factory.mktemp("payload") / "model.pt"
    torch.save(state, path)
    return path.read_bytes()


@pytest.fixture
def server(payload):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = Server(payload, url=f"http://127.0.0.1:{httpd.server_address[1]}/model.pt")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd.state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A private cache folder; no retry delays; no weights named in the environment."""
    monkeypatch.setenv("VISTA3D_HOME", str(tmp_path / "cache"))
    for model in models.MODELS.values():
        monkeypatch.delenv(model.environment, raising=False)
    monkeypatch.setattr(weights, "_RETRY_DELAY", 0.0)
    return tmp_path / "cache"


def make_source(server: Server, **overrides) -> WeightsSource:
    fields = dict(name="test", url=server.url, filename="model.pt",
                  sha256=hashlib.sha256(server.payload).hexdigest(), size=len(server.payload))
    fields.update(overrides)
    return WeightsSource(**fields)


def use_only(monkeypatch, source: WeightsSource, model: str = models.DEFAULT_MODEL) -> None:
    """Make ``source`` the only known (and the default) source of ``model``."""
    monkeypatch.setitem(models.MODELS, model, replace(models.MODELS[model], sources=(source,)))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.pt"


# --- the shipped sources ------------------------------------------------------------------------


def test_shipped_sources():
    vista3d = models.MODELS[models.DEFAULT_MODEL]
    hf = vista3d.default_source
    assert models.DEFAULT_MODEL == "vista3d" and hf.name == "huggingface"
    assert "c6dbe159632a4767696e09f91d74d729b82e73e6" in hf.url
    assert hf.checksum == ("sha256", "c92bab26d00b4a5d89fa8a383900cdeb88302fd318e5e816df0bbec7106d9a1b")
    assert hf.size == 871_970_895
    assert vista3d.source("nvidia").checksum == ("md5", "6ce45a8edde4400c5d28d5e74d7b61d5")
    assert vista3d.source("nvidia").download_command == "vista3d weights download --source nvidia"
    for key, repository in (("nv-segment-ct", "NV-Segment-CT"), ("nv-segment-ctmr", "NV-Segment-CTMR")):
        nvidia = models.MODELS[key].default_source
        assert nvidia.hub_checksum and nvidia.checksum is None  # checked against the hub
        assert nvidia.url == f"https://huggingface.co/nvidia/{repository}/resolve/main/vista3d_pretrained_model/model.pt"
    sources = [source for model in models.MODELS.values() for source in model.sources]
    assert len({s.filename for s in sources}) == len(sources)  # one cache file each
    assert all("licen" in s.licence_note for s in sources)
    for source in sources:  # the command that messages give is one the CLI takes
        _parser().parse_args(source.download_command.split()[1:])
    with pytest.raises(VISTA3DError, match="Unknown weights source 'ngc'.*huggingface, nvidia"):
        weights.source_for("vista3d", "ngc")


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "cache"  # VISTA3D_HOME first
    monkeypatch.delenv("VISTA3D_HOME")
    assert weights.cache_dir() == tmp_path / "xdg" / "vista3d"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights.cache_dir() == Path.home() / ".cache" / "vista3d"
    nvidia = models.MODELS["vista3d"].source("nvidia")
    assert weights.cached_path(nvidia).name == nvidia.filename


# --- download -----------------------------------------------------------------------------------


@pytest.mark.parametrize("checks", ["sha256+size", "md5 only"])
def test_download_reports_progress_and_verifies(server, home, checks):
    source = make_source(server)
    if checks == "md5 only":  # like the NVIDIA-hosted file: no sha256, no size published
        source = make_source(server, sha256=None, size=None,
                             md5=hashlib.md5(server.payload).hexdigest())
    calls = []
    path = weights.download(source, progress=lambda *call: calls.append(call), chunk_size=CHUNK)

    assert path == home / "model.pt"
    assert path.read_bytes() == server.payload
    assert not path.with_name("model.pt.part").exists()
    assert weights._stamp_path(path).is_file()
    size = len(server.payload)
    byte_counts = [done for done, total, message in calls if message.startswith("Downloading")]
    assert len(byte_counts) > 10
    assert byte_counts == sorted(byte_counts) and byte_counts[-1] == size
    assert all(total == size for _, total, _ in calls)

    import torch  # the file is the checkpoint that was served

    assert torch.load(path)["encoder.weight"].shape == (512, 1024)


def test_verified_file_is_returned_without_network(server):
    source = make_source(server)
    first = weights.download(source)
    assert weights.download(source) == first
    assert weights.download(make_source(server, url=closed_port_url())) == first
    assert len(server.log) == 1


def test_delete_cached_removes_the_file_its_stamp_and_part_only(server, home, tmp_path, monkeypatch):
    source = make_source(server)
    path = weights.download(source)
    part = path.with_name(path.name + ".part")
    part.write_bytes(b"left over")
    elsewhere = tmp_path / "my_weights.pt"  # a file the user named: never the cache's to delete
    elsewhere.write_bytes(server.payload)
    monkeypatch.setenv("VISTA3D_WEIGHTS", str(elsewhere))

    deleted = weights.delete_cached(source)

    assert sorted(deleted) == sorted([path, weights._stamp_path(path), part])
    assert not any(p.exists() for p in deleted) and elsewhere.is_file()
    assert weights.delete_cached(source) == []  # nothing left: no error


def test_resume_after_cut_connection(server, home):
    server.cut_after = 1_000_000
    part = home / "model.pt.part"
    on_disk = []  # size of the .part when each request arrives
    server.on_request = lambda: on_disk.append(part.stat().st_size if part.exists() else 0)
    path = weights.download(make_source(server), chunk_size=CHUNK)

    assert [entry["status"] for entry in server.log] == [200, 206]
    assert 0 < on_disk[1] <= 1_000_000  # (the chunk being read when the cut came is lost)
    assert server.log[1]["range"] == f"bytes={on_disk[1]}-"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == make_source(server).sha256


def test_flaky_line_keeps_resuming(server):
    server.cut_after, server.cuts_left = 300_000, 100  # every request is cut after 300 kB
    path = weights.download(make_source(server), chunk_size=CHUNK)
    assert path.read_bytes() == server.payload
    assert len(server.log) > weights._ATTEMPTS  # progress resets the retry count


def test_gives_up_when_nothing_arrives(server, home):
    server.cut_after, server.cuts_left = 0, 100  # every request is cut before any byte
    with pytest.raises(DownloadError, match="--weights"):
        weights.download(make_source(server))
    assert len(server.log) == weights._ATTEMPTS
    assert not (home / "model.pt").exists()


def test_resume_part_file_from_earlier_run(server, home):
    home.mkdir()
    (home / "model.pt.part").write_bytes(server.payload[:123_456])
    path = weights.download(make_source(server))

    assert server.log == [{"range": "bytes=123456-", "status": 206,
                           "sent": len(server.payload) - 123_456}]
    assert path.read_bytes() == server.payload


def test_server_ignoring_range_restarts_from_zero(server, home):
    server.ignore_range = True
    home.mkdir()
    (home / "model.pt.part").write_bytes(server.payload[:123_456])
    path = weights.download(make_source(server))

    assert [(e["range"], e["status"]) for e in server.log] == [("bytes=123456-", 200)]
    assert path.read_bytes() == server.payload  # not appended to the old bytes


@pytest.mark.parametrize("extra, statuses", [(b"", [416]), (b"junk", [416, 200])])
def test_range_not_satisfiable(server, home, extra, statuses):
    """416: a complete .part is used as is; one longer than the file is started over."""
    home.mkdir()
    (home / "model.pt.part").write_bytes(server.payload + extra)
    path = weights.download(make_source(server))
    assert [entry["status"] for entry in server.log] == statuses
    assert path.read_bytes() == server.payload


def test_wrong_checksum(server, home):
    server.corrupt = True
    with pytest.raises(ChecksumError, match="wrong sha256"):
        weights.download(make_source(server))
    assert sorted(p.name for p in home.iterdir() if not p.name.endswith(".lock")) == []


def test_wrong_size(server, home):
    with pytest.raises(ChecksumError, match="bytes instead of"):
        weights.download(make_source(server, size=len(server.payload) + 1))
    assert not (home / "model.pt").exists() and not (home / "model.pt.part").exists()


def test_cancel_keeps_part_and_a_second_call_resumes(server, home):
    token = CancelToken()

    def progress(done, total, message):
        if done >= 500_000:
            token.cancel()

    with pytest.raises(Cancelled):
        weights.download(make_source(server), progress=progress, cancel=token, chunk_size=CHUNK)
    part = home / "model.pt.part"
    kept = part.stat().st_size
    assert 500_000 <= kept < len(server.payload)
    assert not (home / "model.pt").exists()

    path = weights.download(make_source(server), chunk_size=CHUNK)
    assert server.log[-1]["range"] == f"bytes={kept}-"
    assert path.read_bytes() == server.payload and not part.exists()


def test_offline_gives_download_error(home):
    source = WeightsSource(name="test", url=closed_port_url(), filename="model.pt", sha256="0" * 64)
    with pytest.raises(DownloadError) as error:
        weights.download(source)
    message = str(error.value)
    assert "127.0.0.1" in message and "--weights" in message and "VISTA3D_WEIGHTS" in message
    assert not (home / "model.pt").exists() and not (home / "model.pt.part").exists()


def test_http_error_gives_download_error(server):
    with pytest.raises(DownloadError, match="HTTP 404.*--weights"):
        weights.download(make_source(server, url=server.url.replace("model.pt", "missing.pt")))


def test_two_threads_download_once(server, home):
    server.throttle = 0.005  # ~0.25 s for the whole file: the second caller arrives mid-way
    source = make_source(server)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=weights.download(source)))
    first.start()
    assert server.started.wait(5)
    messages = []
    results["second"] = weights.download(source, progress=lambda d, t, m: messages.append(m))
    first.join(10)

    assert results["first"] == results["second"] == home / "model.pt"
    assert "Waiting for another download of the weights" in messages  # it waited on the lock
    assert len(server.log) == 1 and server.bytes_sent == len(server.payload)
    assert (home / "model.pt").read_bytes() == server.payload


def test_two_processes_download_once(server, home):
    server.throttle = 0.01  # ~0.5 s for the whole file
    source = make_source(server)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from VISTA3DSlicerLib import weights; "
        "print(weights.download(weights.WeightsSource(name='test', url=sys.argv[2], "
        "filename='model.pt', sha256=sys.argv[3], size=int(sys.argv[4]))))"
    )
    args = [sys.executable, "-c", script, str(LIB_DIR), source.url, source.sha256, str(source.size)]
    processes = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")
                 for _ in range(2)]
    outputs = [p.communicate(timeout=30) for p in processes]

    assert [p.returncode for p in processes] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(home / "model.pt")}
    assert len(server.log) == 1 and server.bytes_sent == len(server.payload)
    assert (home / "model.pt").read_bytes() == server.payload


def test_read_only_cache_dir(server, home):
    home.mkdir()
    home.chmod(0o500)
    try:
        if os.access(home, os.W_OK):
            pytest.skip("running as root: chmod does not make the folder read-only")
        with pytest.raises(VISTA3DError, match=f"{re.escape(str(home))}.*VISTA3D_HOME"):
            weights.download(make_source(server))
    finally:
        home.chmod(0o700)
    assert server.log == []


def test_read_only_cache_dir_as_a_user_sees_it(server, home, monkeypatch):
    """What a user without root sees of a read-only folder (root may write anywhere: simulated here)."""
    home.mkdir()
    monkeypatch.setattr(weights.os, "access", lambda path, mode: Path(path) != home)
    with pytest.raises(VISTA3DError, match=rf"Cannot write the weights to {re.escape(str(home))} \(it is read-only\)"
                                           r"\. Set VISTA3D_HOME"):
        weights.download(make_source(server))
    assert server.log == [] and list(home.iterdir()) == []


def test_a_folder_that_claims_to_be_writable_and_is_not(server, home, monkeypatch):
    """A read-only network share or ACLs: access() says yes and creating the lock fails."""
    import filelock

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(filelock.FileLock, "acquire", read_only)
    with pytest.raises(VISTA3DError, match=rf"Cannot write the weights to {re.escape(str(home))} "
                                           rf"\({os.strerror(errno.EROFS)}\)\. Set VISTA3D_HOME"):
        weights.download(make_source(server))
    assert server.log == []


def test_failed_verify_in_a_read_only_folder_reports_the_mismatch(server, monkeypatch):
    """The stale stamp cannot be deleted there: verify still answers, and nothing raises."""
    path = weights.download(make_source(server))
    stamp = weights._stamp_path(path)
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == stamp:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert not weights.verify(path, make_source(server, sha256="0" * 64))
    assert stamp.exists()


def test_uncreatable_cache_dir(server, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("not a folder")
    monkeypatch.setenv("VISTA3D_HOME", str(tmp_path / "a_file" / "vista3d"))
    with pytest.raises(VISTA3DError, match="a_file/vista3d.*VISTA3D_HOME"):
        weights.download(make_source(server))


class _FillingDisk:
    """A ``.part`` file on a disk that fails after ``room`` bytes: the write that does not fit stores
    what fits, then fails with ``code`` (ENOSPC: the disk is full, as ``write(2)`` does)."""

    def __init__(self, file, room: int, code: int) -> None:
        self.file, self.room, self.code = file, room, code

    def __enter__(self) -> "_FillingDisk":
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()

    def write(self, data: bytes) -> int:
        free = self.room - self.file.tell()
        if len(data) > free:
            self.file.write(data[:free])
            raise OSError(self.code, os.strerror(self.code))
        return self.file.write(data)

    def __getattr__(self, name: str):  # flush, fileno: the real file's
        return getattr(self.file, name)


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "Free some space on that disk (the whole file is 3.1 MB)"),
                                       (errno.EIO, "Check that the disk works")], ids=["ENOSPC", "EIO"])
def test_disk_error_keeps_the_part_releases_the_lock_and_resumes(server, home, monkeypatch, code, fix):
    from filelock import FileLock

    room = 700_000

    def open_on_a_small_disk(file, mode="r", *args, **kwargs):
        opened = open(file, mode, *args, **kwargs)
        return _FillingDisk(opened, room, code) if mode in ("wb", "ab") else opened

    with monkeypatch.context() as patch:
        patch.setattr(weights, "open", open_on_a_small_disk, raising=False)
        with pytest.raises(VISTA3DError) as error:
            weights.download(make_source(server), chunk_size=CHUNK)
    message = str(error.value)
    for hint in (str(home), os.strerror(code), fix, "VISTA3D_HOME", "model.pt.part"):
        assert hint in message
    assert len(server.log) == 1  # a disk error is not retried like a cut connection
    part = home / "model.pt.part"
    assert part.read_bytes() == server.payload[:room]  # what reached the disk is kept for a resume
    assert not (home / "model.pt").exists()
    lock = FileLock(str(home / "model.pt.lock"))
    lock.acquire(timeout=0)  # Timeout if download() kept it
    lock.release()

    path = weights.download(make_source(server), chunk_size=CHUNK)  # once the disk is fixed
    assert server.log[-1]["range"] == f"bytes={room}-"
    assert path.read_bytes() == server.payload and not part.exists()


@pytest.fixture
def unreadable(monkeypatch):
    """Make the given files unreadable to ``weights``: PermissionError on open, as for a file of
    another user (chmod cannot do it: the tests may run as root)."""
    denied: set[Path] = set()

    def guarded_open(file, mode="r", *args, **kwargs):
        if Path(file) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(weights, "open", guarded_open, raising=False)
    return denied.add


def test_unreadable_cached_file_names_the_file_and_the_fix(server, monkeypatch, capsys, unreadable):
    source = make_source(server)
    use_only(monkeypatch, source)
    path = weights.download()
    weights._stamp_path(path).unlink()  # no stamp: the file must be read to be trusted
    unreadable(path)

    for call in (weights.resolve, weights.download, lambda: weights.verify(path, source)):
        with pytest.raises(VISTA3DError) as error:
            call()
        assert not isinstance(error.value, WeightsNotFoundError)
        message = str(error.value)
        for hint in (str(path), os.strerror(errno.EACCES), "permissions", "`vista3d weights download`"):
            assert hint in message
    assert path.is_file() and len(server.log) == 1  # nothing deleted, nothing downloaded again

    assert main(["weights", "verify"]) == 1
    assert f"error: Cannot read the VISTA3D weights file {path}" in capsys.readouterr().err


def test_cli_verify_tells_a_missing_file_from_a_wrong_one(server, monkeypatch, tmp_path, capsys):
    use_only(monkeypatch, make_source(server))
    missing = tmp_path / "missing.pt"
    assert main(["weights", "verify", "--weights", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and "checksum" not in err

    good = weights.download()
    assert main(["weights", "verify", "--weights", str(good)]) == 0
    assert "checksum OK" in capsys.readouterr().out
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(server.payload[:-1] + b"x")
    assert main(["weights", "verify", "--weights", str(wrong)]) == 1
    assert "checksum does NOT match" in capsys.readouterr().err


def test_verify_refuses_a_folder(server, tmp_path):
    with pytest.raises(VISTA3DError, match="is not a file"):
        weights.verify(tmp_path, make_source(server))


# --- resolve and the stamp --------------------------------------------------------------


def test_resolve_precedence(server, tmp_path, monkeypatch):
    source = make_source(server)
    use_only(monkeypatch, source)
    cached = weights.download()
    assert cached == weights.cached_path()
    explicit, from_env = tmp_path / "explicit.pt", tmp_path / "env.pt"
    explicit.write_bytes(b"not checked")  # the user's own files are not checksummed
    from_env.write_bytes(b"not checked either")

    assert weights.resolve() == cached
    monkeypatch.setenv("VISTA3D_WEIGHTS", str(from_env))
    assert weights.resolve() == from_env
    assert weights.resolve("vista3d", explicit) == explicit
    assert weights.resolve("vista3d", str(explicit)) == explicit

    with pytest.raises(VISTA3DError, match="nowhere.pt") as error:
        weights.resolve("vista3d", tmp_path / "nowhere.pt")
    assert not isinstance(error.value, WeightsNotFoundError)
    monkeypatch.setenv("VISTA3D_WEIGHTS", str(tmp_path / "gone.pt"))
    with pytest.raises(VISTA3DError, match="VISTA3D_WEIGHTS.*gone.pt"):
        weights.resolve()


def test_resolve_finds_any_known_source(server, monkeypatch):
    other = make_source(server, name="other", filename="other.pt")
    monkeypatch.setitem(models.MODELS, "vista3d", replace(
        models.VISTA3D, sources=(make_source(server, url=closed_port_url()), other)))
    path = weights.download(other)
    assert weights.resolve() == path


def test_nothing_found_message():
    with pytest.raises(WeightsNotFoundError) as error:
        weights.resolve()
    message = str(error.value)
    for hint in ("vista3d weights download", "--weights FILE", "VISTA3D_WEIGHTS"):
        assert hint in message


def test_each_model_has_its_own_environment_variable(tmp_path, monkeypatch):
    """A file named for one model is never loaded as another's (their licences differ)."""
    mine = tmp_path / "nv.pt"
    mine.write_bytes(b"the user's copy")
    monkeypatch.setenv("NV_SEGMENT_CT_WEIGHTS", str(mine))
    assert weights.resolve("nv-segment-ct") == mine
    with pytest.raises(WeightsNotFoundError):
        weights.resolve("vista3d")
    monkeypatch.delenv("NV_SEGMENT_CT_WEIGHTS")
    with pytest.raises(WeightsNotFoundError) as error:
        weights.resolve("nv-segment-ct")
    for hint in ("NV-Segment-CT weights", "vista3d weights download --model nv-segment-ct", "NV_SEGMENT_CT_WEIGHTS"):
        assert hint in str(error.value)
    monkeypatch.setenv("NV_SEGMENT_CT_WEIGHTS", str(mine))
    with pytest.raises(WeightsNotFoundError, match="NV_SEGMENT_CTMR_WEIGHTS"):
        weights.resolve("nv-segment-ctmr")  # NV-Segment-CT's file is not NV-Segment-CTMR's
    monkeypatch.setenv("NV_SEGMENT_CTMR_WEIGHTS", str(mine))
    assert weights.resolve("nv-segment-ctmr") == mine


# --- a source checked against the SHA-256 the hub reports ----------------------------------------


def hub_source(server: Server) -> WeightsSource:
    return make_source(server, name="hub", filename="hub.pt", sha256=None, size=None, hub_checksum=True)


def hub_reports(server: Server, digest: str) -> None:
    server.hub_headers = {"X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(server.payload))}


def test_a_hub_source_is_checked_against_the_sha256_the_hub_reports(server, home, monkeypatch):
    digest = hashlib.sha256(server.payload).hexdigest()
    hub_reports(server, digest)
    source = hub_source(server)
    use_only(monkeypatch, source, "nv-segment-ct")
    path = weights.download(source)
    assert path.read_bytes() == server.payload
    assert json.loads(path.with_name(path.name + ".verified.json").read_text(encoding="utf-8"))["digest"] == digest
    server.log.clear()
    assert weights.resolve("nv-segment-ct") == path  # later, offline: the stamp keeps the hub's digest
    for touch in (1, 2):  # a file whose time changed is hashed again against that digest, which stays
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + touch * 10**9))
        assert weights.resolve("nv-segment-ct") == path
    assert server.log == []
    path.write_bytes(server.payload[:-1] + bytes([server.payload[-1] ^ 1]))  # same size, other bytes
    with pytest.raises(WeightsNotFoundError, match="failed its checksum"):
        weights.resolve("nv-segment-ct")


def test_the_command_line_downloads_a_hub_model_after_its_licence_and_verifies_it(server, home, monkeypatch,
                                                                                 tmp_path, capsys):
    hub_reports(server, hashlib.sha256(server.payload).hexdigest())
    source = replace(hub_source(server), licence_note=models.NV_SEGMENT_CT.licence.note)
    use_only(monkeypatch, source, "nv-segment-ct")
    assert main(["weights", "download", "--model", "nv-segment-ct"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith(models.NV_SEGMENT_CT.licence.note)  # before anything is fetched
    path = Path(out.strip())
    assert path.read_bytes() == server.payload
    assert main(["weights", "verify", "--model", "nv-segment-ct"]) == 0
    assert "checksum OK" in capsys.readouterr().out
    mine = tmp_path / "copied.pt"  # a copy made elsewhere: no hub digest beside it
    mine.write_bytes(server.payload)
    assert main(["weights", "verify", "--model", "nv-segment-ct", "--weights", str(mine)]) == 1
    assert "has no checksum to be checked against" in capsys.readouterr().err


def test_a_file_other_than_the_one_the_hub_reports_is_refused(server, home):
    hub_reports(server, "0" * 64)
    with pytest.raises(ChecksumError, match="wrong sha256"):
        weights.download(hub_source(server))
    assert not (home / "hub.pt").exists() and not (home / "hub.pt.part").exists()


def test_a_hub_that_reports_no_sha256_gets_no_download(server, home):
    with pytest.raises(DownloadError, match="did not report a SHA-256.*--weights FILE"):
        weights.download(hub_source(server))
    assert server.log == []  # nothing was fetched


def test_stamp_avoids_rehashing_until_the_file_changes(server, monkeypatch):
    source = make_source(server)
    use_only(monkeypatch, source)
    path = weights.download()
    hashed = []
    real_digest = weights.file_digest
    monkeypatch.setattr(weights, "file_digest",
                        lambda p, algorithm: hashed.append(p) or real_digest(p, algorithm))

    assert weights.resolve() == path and weights.resolve() == path
    assert weights.download() == path
    assert hashed == []  # the stamp was trusted

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: re-verify once
    assert weights.resolve() == path and weights.resolve() == path
    assert len(hashed) == 1

    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, other bytes
    with pytest.raises(WeightsNotFoundError, match="failed its checksum"):
        weights.resolve()
    assert len(hashed) == 2
    assert not weights._stamp_path(path).exists()

    assert weights.download() == path  # a download repairs it
    assert path.read_bytes() == server.payload


def test_stamp_of_another_checksum_is_not_trusted(server, monkeypatch):
    path = weights.download(make_source(server))
    stamp = json.loads(weights._stamp_path(path).read_text(encoding="utf-8"))
    assert stamp["digest"] == make_source(server).sha256
    assert weights.verify(path, make_source(server))
    assert not weights.verify(path, make_source(server, sha256="0" * 64))
    assert not weights._stamp_path(path).exists()  # a failed verify drops the stamp


def test_file_digest(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1_000_000)
    assert weights.file_digest(path, "md5") == hashlib.md5(b"abc" * 1_000_000).hexdigest()
    assert weights.file_digest(path, "sha256") == hashlib.sha256(b"abc" * 1_000_000).hexdigest()


def test_cancel_while_waiting_for_another_download(server, home):
    from filelock import FileLock

    home.mkdir()
    token = CancelToken()
    with FileLock(str(home / "model.pt.lock")):  # "another process" is downloading
        with pytest.raises(Cancelled):
            weights.download(make_source(server), cancel=token,
                             progress=lambda done, total, message: token.cancel())
    assert server.log == []


# --- SAM's checkpoints (the zero-shot tool) ---------------------------------------------------------


def test_sam_sources_are_the_official_files():
    for kind, prefix in (("vit_b", "01ec64"), ("vit_l", "0b3195"), ("vit_h", "4b8939")):
        source = weights.SAM_SOURCES[kind]
        assert source.url == f"https://dl.fbaipublicfiles.com/segment_anything/sam_{kind}_{prefix}.pth"
        algorithm, digest = source.checksum
        assert algorithm == "md5" and digest.startswith(prefix) and len(digest) == 32
        assert "--sam-weights" in source.offline_option and "Apache-2.0" in source.licence_note
        assert source.download_command == f"vista3d weights download --model sam_{kind}"
        _parser().parse_args(source.download_command.split()[1:])


def test_sam_download_resolve_and_offline_rules(server, monkeypatch, tmp_path):
    """SAM's file goes through the same downloader: checksum, cache, then the same precedence."""
    monkeypatch.delenv("VISTA3D_SAM_WEIGHTS", raising=False)
    source = make_source(
        server, name="sam_vit_b", filename="sam_vit_b_test.pth", sha256=None, size=None,
        md5=hashlib.md5(server.payload).hexdigest(), title="SAM vit_b weights",
        offline_option="`--sam-weights FILE` or set VISTA3D_SAM_WEIGHTS=FILE",
    )
    monkeypatch.setitem(weights.SAM_SOURCES, "vit_b", source)
    with pytest.raises(WeightsNotFoundError) as error:
        weights.resolve("sam_vit_b")
    for hint in ("--model sam_vit_b", "--sam-weights FILE", "VISTA3D_SAM_WEIGHTS"):
        assert hint in str(error.value)
    path = weights.download(source)
    assert weights.resolve("sam_vit_b") == path
    mine = tmp_path / "my_sam.pth"
    mine.write_bytes(b"the user's file")
    monkeypatch.setenv("VISTA3D_SAM_WEIGHTS", str(mine))
    assert weights.resolve("sam_vit_b") == mine
    with pytest.raises(VISTA3DError, match="Unknown model 'sam_vit_x': use one of vista3d, nv-segment-ct, nv-segment-ctmr, sam_vit_b"):
        weights.resolve("sam_vit_x")


def test_sam_download_failure_names_the_sam_options(home, monkeypatch):
    source = WeightsSource(
        name="sam_vit_b", url=closed_port_url(), filename="sam.pth", md5="0" * 32, title="SAM vit_b weights",
        offline_option="`--sam-weights FILE` or set VISTA3D_SAM_WEIGHTS=FILE",
    )
    with pytest.raises(DownloadError) as error:
        weights.download(source)
    assert "SAM vit_b weights" in str(error.value) and "--sam-weights FILE" in str(error.value)
