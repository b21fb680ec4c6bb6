"""The client of ``vista3d serve``: a ``RemoteEngine`` and its sessions, with the local engine's interface.

``RemoteEngine.segment(image, label_ids)`` returns a labelmap as ``Engine.segment`` does, and
``RemoteEngine.session(image)`` a session whose ``structure(label, mask)`` gives structures with
``add_clicks``, ``set_clicks``, ``undo`` and ``redo`` returning ``interactive.Edit``s, as a local
``interactive.Session`` does; the command line, batch and the panel use either without knowing
which. ``RemoteSession.supervoxels`` has the server's SAM make them (``zero_shot.on_the_server``). The volume is uploaded once per session; each reply is the box that changed.

While the server works on a request, the client asks for its progress every ``POLL_SECONDS`` and
hands it to the caller's ``progress`` callback (on the caller's thread, as the local engine does);
a ``CancelToken`` set meanwhile cancels the request on the server, which stops at its next step.

A session that expired on the server (or a server that restarted) is opened again by itself: the
volume is sent again and each structure re-made from its mask before its first click and its
clicks (its undo history starts again there). Every failure is one ``VISTA3DError`` saying what to
do: the server unreachable or stopped mid-request, a refused token, a version mismatch.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import __version__, wire
from .errors import Cancelled, VISTA3DError
from .geometry import Image
from .interactive import Click, Edit, PointSpace, click_index
from .models import MODELS
from .progress import CancelToken, ProgressCallback, check_cancelled, report
from .supervoxels import N_SEGMENTS

TOKEN_VARIABLE = "VISTA3D_SERVER_TOKEN"
#: The protocol this client speaks (the server says its own in /v1/info).
CLIENT_PROTOCOL = wire.PROTOCOL
#: How often the progress of a request under way is asked for.
POLL_SECONDS = 0.5


class ServerError(VISTA3DError):
    """The server refused a request, with its reason."""

    def __init__(self, message: str, status: int, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.code = status, code


def read_token(token_file: Optional[str | os.PathLike] = None) -> str:
    """The token: from ``token_file`` (its first line), else ``$VISTA3D_SERVER_TOKEN``."""
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").split()
        except OSError as error:
            raise VISTA3DError(f"The token file {token_file} cannot be read ({error.strerror}).") from None
        if lines:
            return lines[-1] if len(lines) == 2 else lines[0]  # a users-file line "NAME TOKEN" works too
    token = os.environ.get(TOKEN_VARIABLE, "").strip()
    if not token:
        raise VISTA3DError(f"A server needs a token: set {TOKEN_VARIABLE} or pass --token-file FILE (the server's "
                           "operator gives it).")
    return token


class _Connection:
    """HTTP to one server with one token; every failure becomes one ``VISTA3DError``."""

    def __init__(self, url: str, token: str, timeout: float):
        import requests

        self.url, self.timeout, self._token = url.rstrip("/"), timeout, token
        self.http = requests.Session()
        self.http.headers.update({wire.TOKEN_HEADER: f"Bearer {token}",
                                  wire.CLIENT_HEADER: f"vista3dslicer {__version__} protocol {CLIENT_PROTOCOL}"})

    def another(self, timeout: float) -> "_Connection":
        """A connection of its own to the same server (a requests session is not shared between threads)."""
        return _Connection(self.url, self._token, timeout)

    def request(self, method: str, path: str, **kwargs: Any):
        import requests

        try:
            response = self.http.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as error:
            raise VISTA3DError(
                f"The server {self.url} did not answer or stopped mid-request ({type(error).__name__}): check that "
                "`vista3d serve` runs there and that the URL and port are right, then try again.") from None
        except requests.Timeout:
            raise VISTA3DError(f"The server {self.url} did not answer within {self.timeout:g} s: it may be busy "
                               "with other users' work; try again.") from None
        if response.status_code >= 400:
            try:
                body = response.json()
                detail, code = str(body.get("detail")), body.get("code")
            except ValueError:
                detail, code = response.text[:300] or response.reason, None
            raise ServerError(f"The server refused the request ({response.status_code}): {detail}",
                              response.status_code, code)
        return response


def _reply(response, shape: tuple[int, ...]) -> tuple[Optional[wire.Box], Optional[np.ndarray], dict]:
    """The box, its values and the fields of a box reply."""
    try:
        fields = json.loads(response.headers[wire.REPLY_HEADER])
    except (KeyError, ValueError):
        raise VISTA3DError("The server's reply has no description: is the URL a vista3d server?") from None
    if fields.get("box") is None:
        return None, None, fields
    box = wire.Box.from_json(fields["box"], shape)
    return box, wire.decompress(response.content, box.shape, fields["dtype"]), fields


@dataclass(frozen=True)
class Exchange:
    """One request of a session: bytes each way (bodies), the client's round trip and the server's work."""

    what: str
    sent: int
    received: int
    seconds: float
    server_seconds: Optional[float]


class RemoteEngine:
    """A server's engine: ``segment`` and ``session`` as the local ``engine.Engine`` has them."""

    def __init__(self, url: str, token: str, *, model: Optional[str] = None, timeout: float = 3600.0):
        self.connection = _Connection(url, token, timeout)
        try:
            self.info = self.connection.request("GET", "/v1/info").json()
        except ServerError as error:
            if error.status == 404:
                raise VISTA3DError(f"{url} is not a vista3d server (no /v1/info).") from None
            raise
        protocol = self.info.get("protocol")
        if protocol != CLIENT_PROTOCOL:
            side = "this client (pip install -U vista3dslicer, or update the Slicer extension)" \
                if isinstance(protocol, int) and protocol > CLIENT_PROTOCOL else "the server"
            raise VISTA3DError(f"The server speaks protocol {protocol} (vista3dslicer {self.info.get('version')}), this "
                               f"client {CLIENT_PROTOCOL} ({__version__}): update {side}.")
        served = self.info.get("model")
        if served not in MODELS:
            raise VISTA3DError(f"The server runs the model {served!r}, which this client does not know: update this "
                               "client.")
        if model is not None and model != served:
            raise VISTA3DError(f"The server runs {served}, not {model}: choose --model {served}, or a server "
                               f"that runs {model}.")
        self.model = MODELS[served]
        self.labels = self.model.labels
        self.preprocessing = self.model.preprocessing
        self.device = f"{self.info.get('device')} on {url}"
        self.precision = self.info.get("precision")
        self._last: Optional[tuple[Image, RemoteSession]] = None
        self._opened: list[RemoteSession] = []
        #: Progress and cancel requests, sent while ``connection`` waits for a reply.
        self.watcher = self.connection.another(timeout=30.0)

    def session(self, image: Image) -> "RemoteSession":
        """A session on ``image`` (uploaded now), for clicks as ``interactive.Session``."""
        self.model.check_clicks()
        session = RemoteSession(self, image)
        self._opened.append(session)
        return session

    def close(self) -> None:
        """Close the sessions this engine opened, freeing their memory on the server now rather than
        at their idle timeout (and the user's share of sessions with it)."""
        for session in self._opened:
            session.close()
        self._opened.clear()
        self._last = None

    def segment(self, image: Image, label_ids: Optional[Sequence[int]] = None, *,
                progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> Image:
        """``Engine.segment`` on the server: the labelmap on the input's grid."""
        self.labels.automatic_prompt(label_ids)  # a bad prompt is refused here, before the upload
        if self._last is None or self._last[0] is not image:  # the same image again is not sent again
            if self._last is not None:  # a batch's previous case: its session is done with
                self._last[1].close()
                self._opened.remove(self._last[1])
            self._last = (image, RemoteSession(self, image, progress=progress, cancel=cancel))
            self._opened.append(self._last[1])
        return self._last[1].segment(label_ids, progress=progress, cancel=cancel)


class RemoteSession:
    """One volume on the server: automatic segmentation and click structures."""

    def __init__(self, engine: RemoteEngine, image: Image, *, progress: Optional[ProgressCallback] = None,
                 cancel: Optional[CancelToken] = None):
        self.engine, self.image, self.labels = engine, image, engine.labels
        self._structures: list[RemoteStructure] = []
        #: Per request: what went each way and how long the server worked (``vista3d``'s bench reads them).
        self.exchanges: list[Exchange] = []
        self._open(progress, cancel)

    def _open(self, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> None:
        check_cancelled(cancel)
        report(progress, 0, 1, "Sending the volume")
        started = time.perf_counter()
        body = wire.compress(self.image.array)
        reply = self.engine.connection.request("POST", "/v1/sessions", data=body, headers={
            wire.ARRAY_HEADER: wire.volume_header(self.image.array, self.image.affine),
            "Content-Type": "application/octet-stream"})
        fields = reply.json()
        self.id = fields["session"]
        self.exchanges.append(Exchange("upload", len(body), len(reply.content), time.perf_counter() - started,
                                       fields.get("server_seconds")))

    def watched(self, method: str, path: str, progress: Optional[ProgressCallback],
                cancel: Optional[CancelToken], **kwargs: Any):
        """``call``, sent from a helper thread while this one hands the server's progress to ``progress``
        and, once ``cancel`` is set, asks the server to cancel (the reply is then ``Cancelled``)."""
        check_cancelled(cancel)
        if progress is None and cancel is None:
            return self.call(method, path, **kwargs)
        cancelling = False
        with ThreadPoolExecutor(1, thread_name_prefix="vista3d-request") as pool:
            reply = pool.submit(self.call, method, path, **kwargs)
            while True:
                try:
                    return reply.result(timeout=POLL_SECONDS)
                except ServerError as error:
                    if error.code == wire.CANCELLED:
                        raise Cancelled() from None
                    raise
                except TimeoutError:
                    pass
                try:
                    if cancel is not None and cancel.cancelled and not cancelling:
                        self.engine.watcher.request("POST", f"/v1/sessions/{self.id}/cancel")
                        cancelling = True
                    if progress is not None and not cancelling:
                        state = self.engine.watcher.request("GET", f"/v1/sessions/{self.id}/progress").json()
                        report(progress, int(state["done"]), int(state["total"]), str(state["message"]))
                except (VISTA3DError, KeyError, ValueError):
                    pass  # progress is a courtesy: the reply, or its error, is what counts

    def call(self, method: str, path: str, **kwargs: Any):
        """A request on this session; a session gone from the server is opened again, once."""
        started = time.perf_counter()
        try:
            response = self.engine.connection.request(method, f"/v1/sessions/{self.id}{path}", **kwargs)
        except ServerError as error:
            if error.code != wire.SESSION_GONE:
                raise
            self._open()
            for structure in self._structures:
                structure.recreate()
            response = self.engine.connection.request(method, f"/v1/sessions/{self.id}{path}", **kwargs)
        sent = len(kwargs.get("data") or b"") + len(json.dumps(kwargs["json"]) if "json" in kwargs else "")
        server = json.loads(response.headers.get(wire.REPLY_HEADER, "{}")).get("server_seconds")
        self.exchanges.append(Exchange(path.rsplit("/", 1)[-1], sent, len(response.content),
                                       time.perf_counter() - started, server))
        return response

    def segment(self, label_ids=None, *, progress: Optional[ProgressCallback] = None,
                cancel: Optional[CancelToken] = None) -> Image:
        report(progress, 0, 1, "Segmenting on the server")
        labels = None if label_ids is None else (label_ids if isinstance(label_ids, str) else list(label_ids))
        box, values, _ = _reply(self.watched("POST", "/segment", progress, cancel, json={"labels": labels}),
                                self.image.shape)
        labelmap = np.zeros(self.image.shape, dtype=self.labels.labelmap_dtype)
        if box is not None:
            labelmap[box.slices] = values
        report(progress, 1, 1, "Done")
        return self.image.with_array(labelmap)

    def supervoxels(self, roi: Optional[tuple[slice, slice, slice]] = None, *, n_segments: int = N_SEGMENTS,
                    progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> Image:
        """SAM supervoxels of the volume inside ``roi`` (None: all of it), made by the server with its
        own SAM (``supervoxels.compute_supervoxels``): labels on the volume's grid, 0 outside ``roi``."""
        report(progress, 0, 1, "Supervoxels on the server")
        if not self.engine.info.get("supervoxels"):
            raise VISTA3DError("This server makes no supervoxels (it has no SAM checkpoint): ask its operator to "
                               "start it with --sam-weights, or compute them on this computer.")
        box = wire.Box.of(roi)
        body = {"box": None if box is None else box.to_json(), "n_segments": int(n_segments)}
        found, values, _ = _reply(self.watched("POST", "/supervoxels", progress, cancel, json=body), self.image.shape)
        labels = np.zeros(self.image.shape, dtype=np.int32)
        if found is not None:
            labels[found.slices] = values
        report(progress, 1, 1, "Done")
        return self.image.with_array(labels)

    def to_index(self, point: Sequence[float], space: PointSpace = "index") -> tuple[float, float, float]:
        """A click as a voxel index, refused here when outside the volume (the server refuses one
        outside the body region when it computes)."""
        return click_index(self.image, point, space)

    def structure(self, label: int | str | None = None, mask: Optional[np.ndarray] = None) -> "RemoteStructure":
        """A structure to edit with clicks, as ``interactive.Session.structure``."""
        if label is not None:
            label = self.labels.validate_click_label(label)
        structure = RemoteStructure(self, label, None if mask is None else np.asarray(mask, dtype=bool))
        self._structures.append(structure)
        return structure

    def close(self) -> None:
        try:
            self.engine.connection.request("DELETE", f"/v1/sessions/{self.id}")
        except VISTA3DError:
            pass  # gone already, or the server is: either way nothing is left to free


class RemoteStructure:
    """One structure on the server, with ``interactive.Structure``'s methods; its mask is kept here
    up to date from the boxes the server sends."""

    def __init__(self, session: RemoteSession, label: Optional[int], mask: Optional[np.ndarray]):
        self.session, self.label = session, label
        self._given_mask = mask
        self.clicks: list[Click] = []
        self.can_undo = self.can_redo = False
        self.recreate()

    def recreate(self) -> None:
        """Make the structure on the server: from the mask it started with, then its clicks."""
        shape = self.session.image.shape
        header: dict = {"label": self.label, "box": None}
        body = b""
        if self._given_mask is not None:
            if self._given_mask.shape != shape:
                raise VISTA3DError(f"The structure's mask has shape {self._given_mask.shape}, the image {shape}.")
            from .geometry import bounding_box

            box = wire.Box.of(bounding_box(self._given_mask)) or wire.Box((0, 0, 0), (0, 0, 0))
            header["box"] = box.to_json()
            body = wire.compress(self._given_mask[box.slices].astype(np.uint8))
        response = self.session.engine.connection.request(
            "POST", f"/v1/sessions/{self.session.id}/structures", data=body,
            headers={wire.ARRAY_HEADER: json.dumps(header), "Content-Type": "application/octet-stream"})
        box, values, fields = _reply(response, shape)
        self.id = fields["structure"]
        self.initial_mask = np.zeros(shape, dtype=bool)
        if box is not None:
            self.initial_mask[box.slices] = values > 0
        self._given_mask = self.initial_mask  # what it is re-made from after an expiry
        self.mask = self.initial_mask.copy()
        if self.clicks:
            self.set_clicks(self.clicks)

    def _edit(self, response) -> Edit:
        box, values, fields = _reply(response, self.session.image.shape)
        if box is not None:
            self.mask = self.mask.copy()
            self.mask[box.slices] = values > 0
        self.clicks = [Click(tuple(click[:3]), bool(click[3])) for click in fields["clicks"]]
        self.can_undo, self.can_redo = fields["can_undo"], fields["can_redo"]
        return Edit(self.mask, None if box is None else box.slices)

    def click(self, point: Sequence[float], positive: bool = True, space: PointSpace = "index", **kwargs) -> Edit:
        return self.add_clicks([(point, positive)], space, **kwargs)

    def add_clicks(self, clicks: Sequence[tuple[Sequence[float], bool]], space: PointSpace = "index", *,
                   progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> Edit:
        """Add ``(point, positive)`` clicks: one computation on the server, one undo step."""
        if not clicks:
            raise VISTA3DError("No clicks were given.")
        given = [[*map(float, point), bool(positive)] for point, positive in clicks]
        return self._edit(self.session.watched("POST", f"/structures/{self.id}/clicks", progress, cancel,
                                               json={"clicks": given, "space": space}))

    def set_clicks(self, clicks: Sequence[Click], *, progress: Optional[ProgressCallback] = None,
                   cancel: Optional[CancelToken] = None) -> Edit:
        given = [[*map(float, click.index), bool(click.positive)] for click in clicks]
        return self._edit(self.session.watched("POST", f"/structures/{self.id}/clicks", progress, cancel,
                                               json={"clicks": given, "space": "index", "replace": True}))

    def undo(self) -> Edit:
        return self._edit(self.session.call("POST", f"/structures/{self.id}/undo"))

    def redo(self) -> Edit:
        return self._edit(self.session.call("POST", f"/structures/{self.id}/redo"))
