"""Find, download and verify the checkpoints of the segmentation models and the SAM checkpoints
of the zero-shot tool.

Which models exist, and where each one's weights come from, is ``models.py``'s data. Where the
weights of a model are taken from, in order (``resolve``):

1. a file the user names (``--weights FILE`` on the command line, a path in the Slicer panel);
2. the model's environment variable (``VISTA3D_WEIGHTS``, ``NV_SEGMENT_CT_WEIGHTS``);
3. a checksum-verified file in the cache folder (``cache_dir()``), put there by ``download``.

Files the user names are theirs and are not checksummed. Cached files are: hashing 872 MB takes
seconds, so a successful check leaves a small sidecar stamp (size, mtime, digest) next to the
file, and the hash is recomputed only when the file no longer matches its stamp. A source with
no pinned checksum (``WeightsSource.hub_checksum``) is checked against the SHA-256 the Hugging
Face hub reports for the file when it is downloaded, and the stamp keeps that digest.

The weights are published by NVIDIA under NVIDIA's own licences, not under this project's
Apache-2.0 licence; see ``WeightsSource.licence_note``.

SAM's checkpoints (``SAM_SOURCES``, for the supervoxels) follow the same rules with
``--sam-weights FILE`` and ``VISTA3D_SAM_WEIGHTS``, from SAM's official URLs and their md5s.

This module does not import torch: loading the checkpoint into a network is ``model.py``'s job.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .errors import VISTA3DError
from .models import DEFAULT_MODEL, MODELS as SEGMENTATION_MODELS, WeightsSource, get_model
from .progress import CancelToken, ProgressCallback, check_cancelled, report

__all__ = [
    "WeightsSource", "SAM_SOURCES", "cache_dir", "cached_path", "MODELS", "source_for",
    "resolve",
    "download", "verify", "mismatch", "file_digest", "delete_cached", "WeightsNotFoundError", "DownloadError", "ChecksumError",
]

_SAM_LICENCE = "SAM's weights are Meta's, published under the Apache-2.0 licence."
#: SAM's official checkpoints (segment-anything README); the md5s are the publisher's, and the
#: file names carry their first six digits.
SAM_SOURCES: dict[str, WeightsSource] = {
    kind: WeightsSource(
        name=f"sam_{kind}",
        url=f"https://dl.fbaipublicfiles.com/segment_anything/{filename}",
        filename=filename,
        md5=md5,
        licence_note=_SAM_LICENCE,
        title=f"SAM {kind} weights",
        offline_option="`--sam-weights FILE` or set VISTA3D_SAM_WEIGHTS=FILE",
        download_command=f"vista3d weights download --model sam_{kind}",
    )
    for kind, filename, md5 in (
        ("vit_b", "sam_vit_b_01ec64.pth", "01ec64d29a2fca3f0661936605ae66f8"),
        ("vit_l", "sam_vit_l_0b3195.pth", "0b3195507c641ddb6910d2bb5adee89c"),
        ("vit_h", "sam_vit_h_4b8939.pth", "4b8939a88964f0f4ff5f5b2642c598a6"),
    )
}

#: Connection attempts in a row that may fail without any new bytes before ``download`` gives
#: up. An attempt that brings new bytes resets the count: a long download on a flaky line goes on.
_ATTEMPTS = 4
#: Seconds to wait before the n-th retry of an attempt that brought nothing (tests set 0).
_RETRY_DELAY = 1.0
_LOCK_POLL = 0.2  # seconds between cancel checks while another process holds the lock


class WeightsNotFoundError(VISTA3DError):
    """No weights file was named and none is in the cache."""


class DownloadError(VISTA3DError):
    """The download failed: no network, the host is unreachable or answered with an error."""


class ChecksumError(VISTA3DError):
    """A downloaded file is not the published one (wrong size or checksum)."""


def cache_dir() -> Path:
    """The folder downloaded weights live in: ``$VISTA3D_HOME``, else ``$XDG_CACHE_HOME/vista3d``,
    else ``~/.cache/vista3d``. It may not exist yet."""
    if os.environ.get("VISTA3D_HOME"):
        return Path(os.environ["VISTA3D_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vista3d"
    return Path.home() / ".cache" / "vista3d"


def cached_path(source: Optional[WeightsSource] = None) -> Path:
    """Where ``source`` (default: the default model's first source) is kept in the cache; may not exist."""
    return cache_dir() / _source(source).filename


#: Every checkpoint by the name the command line (``--model``), the panel and the Slicer Logic use
#: for it: each segmentation model's (``models.MODELS``) and each SAM backbone's (the zero-shot
#: supervoxels).
MODELS: tuple[str, ...] = tuple(SEGMENTATION_MODELS) + tuple(f"sam_{kind}" for kind in SAM_SOURCES)


def source_for(model: str = DEFAULT_MODEL, source: Optional[str] = None) -> WeightsSource:
    """Where ``model``'s checkpoint is downloaded from: for a segmentation model ``source`` (the
    name of one of its sources, default its first); a SAM model has one source."""
    if model in SEGMENTATION_MODELS:
        return SEGMENTATION_MODELS[model].source(source)
    kind = _sam_kind(model)
    if source is not None:
        raise VISTA3DError(f"A source chooses where a segmentation model's weights come from; {model} has one.")
    return SAM_SOURCES[kind]


def resolve(model: str = DEFAULT_MODEL, explicit: Union[str, os.PathLike, None] = None) -> Path:
    """The checkpoint of ``model`` (one of ``MODELS``) to load: ``explicit``, else the file its
    environment variable names (``VISTA3D_WEIGHTS``, ``NV_SEGMENT_CT_WEIGHTS``;
    ``VISTA3D_SAM_WEIGHTS`` for SAM), else a verified file of the download cache.

    Raises ``VISTA3DError`` if a named file does not exist or a cached one cannot be read,
    ``WeightsNotFoundError`` if nothing was named and the cache holds no good copy of any known source.
    """
    if model in SEGMENTATION_MODELS:
        described = SEGMENTATION_MODELS[model]
        command = described.default_source.download_command
        return _resolve(
            explicit, described.environment, list(described.sources), described.default_source.title,
            f"Run `{command}` to fetch them into {{cache}} (or use the Download button in Slicer), or, for "
            f"offline use, pass `--weights FILE` or set {described.environment}=FILE to a checkpoint you "
            "already have.",
        )
    kind = _sam_kind(model)
    return _resolve(
        explicit, "VISTA3D_SAM_WEIGHTS", [SAM_SOURCES[kind]], f"SAM {kind} weights",
        f"Run `vista3d weights download --model {model}` to fetch them into {{cache}}, or, for offline use, "
        "pass `--sam-weights FILE` or set VISTA3D_SAM_WEIGHTS=FILE to a checkpoint you already have.",
    )


def _sam_kind(model: str) -> str:
    """"sam_vit_b" -> "vit_b", refusing a model that is not one of ``MODELS``."""
    kind = model.removeprefix("sam_")
    if model == kind or kind not in SAM_SOURCES:
        raise VISTA3DError(f"Unknown model {model!r}: use one of {', '.join(MODELS)}.")
    return kind


def _resolve(
    explicit: Union[str, os.PathLike, None],
    environment: str,
    sources: list[WeightsSource],
    what: str,
    advice: str,
) -> Path:
    for path, origin in ((explicit, "The weights file"), (os.environ.get(environment),
                                                          f"The file named by {environment},")):
        if path:
            path = Path(path).expanduser()
            if not path.is_file():
                raise VISTA3DError(f"{origin} {path} does not exist or is not a file.")
            return path

    rejected = []
    for source in sources:
        path = cached_path(source)
        if path.is_file():
            if _is_verified(path, source):
                return path
            rejected.append(path)
    bad = "".join(f" The cached file {p} failed its checksum (damaged or incomplete)." for p in rejected)
    raise WeightsNotFoundError(f"No {what} found.{bad} " + advice.format(cache=cache_dir()))


def delete_cached(source: Optional[WeightsSource] = None) -> list[Path]:
    """Delete ``source``'s downloaded file from the cache, with its checksum stamp and any
    unfinished ``.part``; returns what was deleted. Files the user named elsewhere (``--weights``,
    ``$VISTA3D_WEIGHTS``) are never touched: they are not in the cache."""
    final = cached_path(source)
    deleted = []
    for path in (final, _stamp_path(final), final.with_name(final.name + ".part")):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise VISTA3DError(f"Could not delete {path}: {error.strerror or error}. Close what uses it and retry.") from None
        deleted.append(path)
    return deleted


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file's contents, read in chunks (the checkpoint is ~870 MB)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, source: WeightsSource) -> bool:
    """``mismatch(path, source) is None``: whether ``path`` is ``source``'s file (stamped if it is)."""
    return mismatch(path, source) is None


def mismatch(path: Path, source: WeightsSource) -> Optional[str]:
    """Fully check ``path`` against ``source`` (size, then checksum) and stamp it if it is good.
    Returns why it is not ``source``'s file ("has the wrong sha256 checksum"...), or None.

    Raises ``VISTA3DError`` if there is no such file or it cannot be read: "wrong checksum" would
    send the user to download a file that may be fine.
    """
    path = Path(path)
    if not path.is_file():
        raise VISTA3DError(
            f"The {source.title} file {path} does not exist or is not a file. Check the path, or run "
            f"`{source.download_command}` to fetch the weights."
        )
    source = _with_stamped_checksum(path, source)
    problem = _mismatch(path, source)
    if problem is None:
        _write_stamp(path, source)
    else:
        try:
            _stamp_path(path).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder: the stamp stays, trusted only while the file keeps its size and time
    return problem


def download(
    source: Optional[WeightsSource] = None,
    *,
    dest_dir: Optional[Path] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``source`` (default: the default model's first source) into ``dest_dir`` (default:
    ``cache_dir()``), verify it and return its path.

    The weights are NVIDIA's and come under NVIDIA's licence (``source.licence_note``), not this
    project's Apache-2.0; callers should show that note to the user.

    - A verified file already in place is returned at once, without network.
    - Bytes go to ``<file>.part``; an existing ``.part`` (an earlier cut or cancelled download) is
      resumed with an HTTP Range request, and a cut connection is resumed a few times before
      giving up. Only a file that passed its size and checksum check is moved into place
      (atomically), so a partial or wrong file is never picked up by ``resolve``.
    - ``progress(done_bytes, total_bytes, message)`` is called per chunk (``total_bytes`` is 0
      when unknown); ``cancel`` is checked between chunks. A cancelled download raises
      ``Cancelled`` and keeps its ``.part`` for a later resume.
    - An inter-process lock in the folder lets two processes ask at once: the second waits and
      then finds the file.

    Raises ``DownloadError`` (no network, HTTP error), ``ChecksumError`` (wrong file; its
    ``.part`` is deleted), ``VISTA3DError`` (the folder cannot be written, the disk is full: the
    ``.part`` is kept; a cached file cannot be read), ``Cancelled``.
    """
    from filelock import FileLock, Timeout  # imported here: Slicer imports this module at start-up

    source = _source(source)
    folder = Path(dest_dir) if dest_dir is not None else cache_dir()
    final = folder / source.filename
    if _already_there(final, source, progress):
        return final

    _make_writable_folder(folder)
    lock = FileLock(str(final) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # another process is downloading it: wait, but stay cancellable (Timeout is an OSError)
        report(progress, 0, source.size or 0, "Waiting for another download of the weights")
        while True:
            check_cancelled(cancel)
            try:
                lock.acquire(timeout=_LOCK_POLL)
                break
            except Timeout:
                pass
    except OSError as error:  # a folder that says it is writable and is not (read-only share, ACLs)
        raise _unwritable(folder, error.strerror or str(error)) from None
    try:
        if _already_there(final, source, progress):  # the process we waited for got it
            return final
        part = final.with_name(final.name + ".part")
        if source.hub_checksum and source.checksum is None:
            source = _with_hub_checksum(source, timeout)
        _fetch_with_retries(_Transfer(source, part, progress, cancel, timeout, chunk_size))

        report(progress, part.stat().st_size, part.stat().st_size, "Verifying the weights")
        problem = _mismatch(part, source)
        if problem:
            part.unlink(missing_ok=True)  # a resume would only append to the wrong bytes
            raise ChecksumError(
                f"The file downloaded from {source.url} {problem}; it was deleted. Try the "
                f"download again; if it keeps failing, download the file elsewhere and pass {source.offline_option}."
            )
        os.replace(part, final)  # atomic: readers see no file or the whole, verified file
        _fsync_dir(folder)
        _write_stamp(final, source)
        return final
    finally:
        lock.release()


# --- internals ------------------------------------------------------------------------------


def _source(source: Optional[WeightsSource]) -> WeightsSource:
    return source if source is not None else get_model(DEFAULT_MODEL).default_source


def _already_there(final: Path, source: WeightsSource, progress: Optional[ProgressCallback]) -> bool:
    if not (final.is_file() and _is_verified(final, source)):
        return False
    size = final.stat().st_size
    report(progress, size, size, "The weights are already downloaded")
    return True


def _make_writable_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK | os.X_OK)
        reason = "it is read-only"
    except OSError as exc:
        writable, reason = False, exc.strerror or str(exc)
    if not writable:
        raise _unwritable(folder, reason)


def _unwritable(folder: Path, reason: str) -> VISTA3DError:
    return VISTA3DError(
        f"Cannot write the weights to {folder} ({reason}). Set VISTA3D_HOME to a writable "
        "folder, or download the file yourself and pass it with --weights (or --sam-weights) FILE."
    )


def _mismatch(path: Path, source: WeightsSource) -> Optional[str]:
    """Why ``path`` is not ``source``'s file, or None if it is (a full hash).

    Raises ``VISTA3DError`` if the file cannot be read (permissions, a disk error).
    """
    try:
        size = path.stat().st_size
        if source.size is not None and size != source.size:
            return f"has {size:,} bytes instead of {source.size:,}"
        if source.checksum is not None:
            algorithm, expected = source.checksum
            if file_digest(path, algorithm) != expected:
                return f"has the wrong {algorithm} checksum"
        elif source.hub_checksum:
            return ("has no checksum to be checked against: only a copy that `vista3d weights download` made "
                    "has one (the hub's, kept beside it)")
    except OSError as error:
        raise VISTA3DError(
            f"Cannot read the {source.title} file {path} ({error.strerror or error}). Make it readable for this "
            f"user (check its permissions and owner), or delete it and run `{source.download_command}` again."
        ) from error
    return None


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stamp_for(path: Path, source: WeightsSource) -> dict:
    stat = path.stat()
    algorithm, digest = source.checksum or (None, None)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "algorithm": algorithm, "digest": digest}


def _write_stamp(path: Path, source: WeightsSource) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(json.dumps(_stamp_for(path, source)), encoding="utf-8")
        os.replace(tmp, stamp)
    except OSError:
        pass  # a read-only cache still works; it is only re-hashed at every start


def _read_stamp(path: Path) -> Optional[dict]:
    try:
        stamp = json.loads(_stamp_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no stamp, or an unreadable one
    return stamp if isinstance(stamp, dict) else None


def _with_stamped_checksum(path: Path, source: WeightsSource) -> WeightsSource:
    """A hub source pins no checksum: the one the hub reported at its download, kept in the stamp."""
    stamp = _read_stamp(path) if source.hub_checksum and source.checksum is None else None
    if stamp and stamp.get("algorithm") == "sha256" and isinstance(stamp.get("digest"), str):
        return source.with_checksum(stamp["digest"], None)
    return source


def _is_verified(path: Path, source: WeightsSource) -> bool:
    """True if the stamp still matches the file and ``source``'s checksum; else a full ``verify``."""
    if _read_stamp(path) == _stamp_for(path, _with_stamped_checksum(path, source)):
        return True
    return verify(path, source)


#: A SHA-256 in hex, as the hub's ``X-Linked-Etag`` gives it for a file stored with Git LFS.
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _with_hub_checksum(source: WeightsSource, timeout: float) -> WeightsSource:
    """``source`` with the SHA-256 and size the Hugging Face hub reports for its file: the hub
    answers a HEAD on a ``resolve`` URL with a redirect carrying ``X-Linked-Etag`` (the file's
    SHA-256) and ``X-Linked-Size``."""
    import requests

    try:
        response = requests.head(source.url, allow_redirects=False, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as error:
        raise _download_error(source, error) from error
    digest = response.headers.get("X-Linked-Etag", "").strip('"').lower()
    size = response.headers.get("X-Linked-Size", "")
    if not _SHA256.fullmatch(digest):
        raise DownloadError(
            f"{source.host} did not report a SHA-256 for {source.url}, so the download could not be checked "
            f"and was not made. Download the file yourself and pass {source.offline_option}.")
    return source.with_checksum(digest, int(size) if size.isdigit() else None)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); directories cannot be opened this way on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Retry(Exception):
    """A transient failure: try again from where the ``.part`` file ends."""


@dataclass(frozen=True)
class _Transfer:
    """One download: what is fetched, into which ``.part`` file, and how."""

    source: WeightsSource
    part: Path
    progress: Optional[ProgressCallback]
    cancel: Optional[CancelToken]
    timeout: float
    chunk_size: int


def _fetch_with_retries(transfer: _Transfer) -> None:
    import requests

    source, part = transfer.source, transfer.part
    failures = 0
    while True:
        check_cancelled(transfer.cancel)
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_once(transfer)
            return
        except (_Retry, requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            error = exc
        except requests.RequestException as exc:  # HTTP 4xx, bad URL, ...: retrying will not help
            raise _download_error(source, exc) from exc
        after = part.stat().st_size if part.exists() else 0
        failures = 0 if after > before else failures + 1
        if failures >= _ATTEMPTS:
            raise _download_error(source, error) from error
        if failures:
            time.sleep(_RETRY_DELAY * failures)


def _fetch_once(transfer: _Transfer) -> None:
    """One HTTP request: append to the ``.part`` file from where it ends (or restart it)."""
    import requests

    source, part, progress, cancel = transfer.source, transfer.part, transfer.progress, transfer.cancel

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(source.url, headers=headers, stream=True, timeout=transfer.timeout) as response:
        if response.status_code == 416:  # nothing left after `have`: complete, or not this file
            length = response.headers.get("Content-Range", "").rpartition("/")[2]
            if (length.isdigit() and int(length) == have) or source.size == have:
                return  # complete; the checksum has the last word
            part.unlink()
            raise _Retry("the partial file does not match the server's file; starting over")
        if response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}")
        response.raise_for_status()
        start = have if response.status_code == 206 else 0  # 200: the server ignored Range
        if start and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            raise _Retry("the server resumed at another offset than asked")
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else (source.size or 0)
        done = start
        message = f"Downloading the {source.title} from {source.host}"
        report(progress, done, total, message)
        try:
            with open(part, "ab" if start else "wb") as f:
                # If the connection is cut, the chunk being read is lost (requests does not hand
                # out a short read): a resume repeats at most one chunk.
                for chunk in response.iter_content(transfer.chunk_size):
                    f.write(chunk)
                    done += len(chunk)
                    report(progress, done, total, message)
                    check_cancelled(cancel)  # on Cancelled, `with` closes the file: the .part is kept
                f.flush()
                os.fsync(f.fileno())
        except requests.RequestException:
            raise  # requests' errors are OSErrors too: a network failure, for the caller to retry
        except OSError as error:  # the disk: full, over quota, gone read-only
            raise _write_error(source, part, error) from error
        if length and done < total:  # the server closed early without an error
            raise _Retry(f"connection closed after {done:,} of {total:,} bytes")


#: errnos of a disk without room; Windows has no EDQUOT (quota exceeded).
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _write_error(source: WeightsSource, part: Path, error: OSError) -> VISTA3DError:
    # The .part is kept: what reached the disk is a correct start of the file, and resumes.
    if error.errno in _DISK_FULL:
        need = f" (the whole file is {source.size / 1e6:,.1f} MB)" if source.size else ""
        fix = f"Free some space on that disk{need}"
    else:
        fix = "Check that the disk works and that you may write there"
    return VISTA3DError(
        f"Could not save the {source.title} in {part.parent} ({error.strerror or error}). {fix} and download "
        f"again, which resumes from what was saved ({part.name}); or set VISTA3D_HOME to a folder on another disk."
    )


def _download_error(source: WeightsSource, error: Exception) -> DownloadError:
    return DownloadError(
        f"Could not download the {source.title} from {source.host} ({_describe(error)}). "
        f"If this computer is offline or cannot reach {source.host}, download {source.url} on "
        f"another computer, copy it to this one and pass {source.offline_option}."
    )


def _describe(error: Exception) -> str:
    import requests

    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} {error.response.reason}"
    if isinstance(error, requests.ConnectionError):
        return "cannot connect: no network, or the host is unreachable"
    if isinstance(error, requests.Timeout):
        return "the connection timed out"
    return str(error) or type(error).__name__
