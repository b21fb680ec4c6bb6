"""``vista3d serve``: one GPU machine's engine for several users (Slicer on laptops, scripts).

FastAPI on uvicorn. A client uploads a volume once (``wire``: Zstandard-compressed, with its
IJK->RAS geometry) and gets a session; automatic segmentation, click structures, undo and redo
and supervoxels (the server's own SAM, loaded at the first request) then work on it, and each reply
carries only the box of voxels that changed (or the supervoxels' box); while one works, the client may ask for
its progress and cancel it. The model is loaded
once; every network call runs on one worker thread (the engine's memory and cuDNN caches are
per thread), and users take turns on it, so one user's large request does not hold up another's
click for longer than one call. Sessions expire after an idle time and free their memory.

Security: every request but ``GET /health`` needs a token (``Authorization: Bearer``) from the
users file the operator controls (a line ``NAME TOKEN`` per user; edit it to add or revoke a
user: it is read again when it changes). Tokens are compared in constant time. A session belongs
to the user who opened it: another user's token gets 403. Uploads, volume sizes, clicks per
request and sessions per user are limited, each with its own message. The server binds to
127.0.0.1 unless told otherwise; TLS through uvicorn (``--tls-cert/--tls-key``) or a reverse
proxy. Only numbers reach the engine: nothing of a request becomes a path, a command or a pickle.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations (Request,
# Depends) at run time, and their classes are imported inside ``create_app``.
import asyncio
import collections
import hmac
import json
import logging
import os
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

import numpy as np

from . import wire
from .errors import Cancelled, VISTA3DError
from .geometry import Image
from .interactive import MAX_CLICKS
from .progress import CancelToken

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .engine import Engine
    from .interactive import Session, Structure

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True)
class ServerLimits:
    """What one request and one user may ask of the server."""

    max_upload_mb: float = 1024.0
    max_voxels: int = 2 * 512**3  #: a 512 x 512 x 1024 CT
    max_sessions_per_user: int = 4
    max_sessions: int = 32
    idle_timeout_s: float = 1800.0
    max_clicks: int = MAX_CLICKS  #: per request (and per structure)
    max_supervoxels: int = 5000  #: ``n_segments`` of one supervoxel request (SLIC's time grows with it)


class Users:
    """The users file: ``NAME TOKEN`` per line (``#`` starts a comment), read again when it changes."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: Optional[tuple[int, int]] = None
        self._tokens: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._reload()
        if not self._tokens:
            raise VISTA3DError(f"The users file {self.path} lists no user: add a line NAME TOKEN.")

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as error:
            raise VISTA3DError(f"The users file {self.path} cannot be read ({error.strerror}).") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        tokens = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2 or len(words[1]) < 16:
                logger.warning("%s line %d is not NAME TOKEN (a token of 16 characters or more): ignored",
                               self.path, number)
                continue
            tokens.append((words[0], words[1].encode()))
        self._tokens, self._stamp = tokens, stamp

    def who(self, token: str) -> Optional[str]:
        """The user whose token this is, or None. Every token is compared, in constant time each,
        so the time taken says nothing about which one nearly matched."""
        with self._lock:
            try:
                self._reload()  # a revoked user is refused from the next request on
            except VISTA3DError:
                logger.exception("Keeping the users read last")
            found = None
            for name, known in self._tokens:
                if hmac.compare_digest(known, token.encode()):
                    found = name
            return found


def new_users_file(path: Path) -> str:
    """Write a users file with one generated token (readable by its owner only) and return the token."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(f"# vista3d serve users: one line NAME TOKEN per user; edit to add or revoke.\ndefault {token}\n")
    return token


class FairWorker:
    """One thread that runs every network call, the users taking turns (round robin)."""

    def __init__(self) -> None:
        self._queues: "collections.OrderedDict[str, collections.deque]" = collections.OrderedDict()
        self._ready = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="vista3d-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, owner: str, function: Callable[[], T]) -> "Future[T]":
        future: Future = Future()
        with self._ready:
            self._queues.setdefault(owner, collections.deque()).append((function, future))
            self._ready.notify()
        return future

    def _next(self):
        with self._ready:
            while not self._stopped and not self._queues:
                self._ready.wait()
            if self._stopped:
                return None
            owner, queue = next(iter(self._queues.items()))
            item = queue.popleft()
            del self._queues[owner]
            if queue:  # the owner goes to the back of the line
                self._queues[owner] = queue
            return item

    def _run(self) -> None:
        while (item := self._next()) is not None:
            function, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except BaseException as error:  # reaches the request that asked for it
                    future.set_exception(error)

    def stop(self) -> None:
        with self._ready:
            self._stopped = True
            self._ready.notify_all()


@dataclass
class HostedSession:
    """One uploaded volume and what its user made on it."""

    id: str
    owner: str
    image: Image
    last_used: float
    clicks: "Optional[Session]" = None  # preprocessed on the first structure
    structures: "dict[int, Structure]" = field(default_factory=dict)
    #: The last progress its work reported (done, total, message), for ``GET .../progress``.
    progress: tuple[int, int, str] = (0, 0, "")
    #: The tokens of its requests queued or running: ``POST .../cancel`` sets them.
    jobs: "list[CancelToken]" = field(default_factory=list)

    def report(self, done: int, total: int, message: str) -> None:
        self.progress = (done, total, message)


class SessionGone(VISTA3DError):
    """The session expired or never existed: the client opens a new one."""


class Forbidden(VISTA3DError):
    """Another user's session."""


class TooMany(VISTA3DError):
    """A user or the server has as many sessions as allowed (429)."""


class SessionStore:
    """The live sessions; expired ones are dropped (their memory with them)."""

    def __init__(self, limits: ServerLimits, clock: Callable[[], float] = time.monotonic):
        self.limits, self.clock = limits, clock
        self._sessions: dict[str, HostedSession] = {}
        self._lock = threading.Lock()

    def open(self, owner: str, image: Image) -> HostedSession:
        with self._lock:
            self._expire()
            mine = sum(session.owner == owner for session in self._sessions.values())
            if mine >= self.limits.max_sessions_per_user:
                raise TooMany(f"You have {mine} sessions open, the most this server allows per user: close one "
                              "(or let it expire) first.")
            if len(self._sessions) >= self.limits.max_sessions:
                raise TooMany("The server holds as many sessions as it may: try again when one has expired.")
            session = HostedSession(secrets.token_urlsafe(16), owner, image, self.clock())
            self._sessions[session.id] = session
            return session

    def get(self, session_id: str, owner: str) -> HostedSession:
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionGone(f"Session {session_id} is gone (it expired after {self.limits.idle_timeout_s:g} s "
                                  "idle, or the server restarted): upload the volume again.")
            if session.owner != owner:
                raise Forbidden("This session belongs to another user.")
            session.last_used = self.clock()
            return session

    def close(self, session_id: str, owner: str) -> None:
        self.get(session_id, owner)
        with self._lock:
            self._sessions.pop(session_id, None)

    def expire(self) -> None:
        with self._lock:
            self._expire()

    def _expire(self) -> None:
        limit = self.clock() - self.limits.idle_timeout_s
        for session_id in [s.id for s in self._sessions.values() if s.last_used < limit]:
            logger.info("Session %s expired", session_id)
            del self._sessions[session_id]

    def __len__(self) -> int:
        return len(self._sessions)


def _box_reply(values: Optional[np.ndarray], region, **fields: Any):
    """A reply carrying ``values[region]`` (compressed) and a JSON header with the box and ``fields``."""
    from fastapi import Response

    box = wire.Box.of(region)
    body = b"" if box is None else wire.compress(values[region])
    header = {"box": None if box is None else box.to_json(), "dtype": None if values is None else values.dtype.name,
              **fields}
    return Response(body, media_type="application/octet-stream", headers={wire.REPLY_HEADER: json.dumps(header)})


def _structure_fields(structure: "Structure", structure_id: int) -> dict:
    return {"structure": structure_id, "clicks": [[*click.index, click.positive] for click in structure.clicks],
            "can_undo": structure.can_undo, "can_redo": structure.can_redo}


def create_app(engine: "Engine", users: Users, limits: ServerLimits = ServerLimits(), *,
               weights_sha256: Optional[str] = None, sam: Optional[Callable[[], tuple[Any, Any]]] = None,
               clock: Callable[[], float] = time.monotonic) -> "FastAPI":
    """The server's application around a loaded ``engine`` (run it with uvicorn, one process).

    ``sam()`` returns SAM and its device (``zero_shot.load_sam``) for supervoxels; it is called on the
    worker at the first supervoxel request and its result kept. None: this server makes no supervoxels.
    """
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    from . import __version__
    from .geometry import bounding_box
    from .interactive import Session

    store = SessionStore(limits, clock)
    worker = FairWorker()

    @asynccontextmanager
    async def lifespan(app):
        async def sweep() -> None:
            while True:
                await asyncio.sleep(min(limits.idle_timeout_s, 30.0))
                store.expire()

        sweeper = asyncio.create_task(sweep())
        yield
        sweeper.cancel()
        worker.stop()

    app = FastAPI(title="VISTA3D server", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(SessionGone)
    async def gone(request: Request, error: SessionGone):
        return JSONResponse({"detail": str(error), "code": wire.SESSION_GONE}, status_code=410)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden):
        return JSONResponse({"detail": str(error)}, status_code=403)

    @app.exception_handler(TooMany)
    async def too_many(request: Request, error: TooMany):
        return JSONResponse({"detail": str(error)}, status_code=429)

    @app.exception_handler(Cancelled)
    async def cancelled(request: Request, error: Cancelled):
        return JSONResponse({"detail": str(error), "code": wire.CANCELLED}, status_code=409)

    @app.exception_handler(VISTA3DError)
    async def refused(request: Request, error: VISTA3DError):  # the user can fix it: one clear message
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception):
        logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": f"The server failed ({type(error).__name__}: {error}); its log has the "
                                       "details. Other requests are not affected."}, status_code=500)

    def user(request: Request) -> str:
        scheme, _, token = request.headers.get(wire.TOKEN_HEADER, "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "This server needs a token: send 'Authorization: Bearer TOKEN' (the operator "
                                     "gives it; vista3d reads it from VISTA3D_SERVER_TOKEN or --token-file).",
                                headers={"WWW-Authenticate": "Bearer"})
        name = users.who(token.strip())
        if name is None:
            raise HTTPException(401, "The token is not one of this server's users (mistyped, or revoked): ask the "
                                     "operator for yours.", headers={"WWW-Authenticate": "Bearer"})
        return name

    async def on_worker(owner: str, function: Callable[[], T]) -> tuple[T, float]:
        """``function()`` on the worker, and the seconds it ran (for the client's overhead figures)."""

        def timed():
            started = time.perf_counter()
            return function(), time.perf_counter() - started

        return await asyncio.wrap_future(worker.submit(owner, timed))

    async def session_job(session: HostedSession, function: Callable[[CancelToken], T]) -> tuple[T, float]:
        """``function(cancel)`` on the worker for ``session``: it reports to ``session.report`` and stops
        (``Cancelled``) at its next step once ``POST .../cancel`` sets ``cancel``."""
        token = CancelToken()
        session.jobs.append(token)
        session.report(0, 0, "Waiting for the server's worker")
        try:
            return await on_worker(session.owner, lambda: function(token))
        finally:
            session.jobs.remove(token)

    async def body_within_limit(request: Request) -> bytes:
        limit = int(limits.max_upload_mb * 1e6)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"The upload is {int(declared) / 1e6:,.0f} MB, more than this server's "
                                     f"{limits.max_upload_mb:g} MB: crop the volume.")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"The upload is more than this server's {limits.max_upload_mb:g} MB: "
                                         "crop the volume.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def json_body(request: Request) -> dict:
        try:
            value = json.loads(await body_within_limit(request) or b"{}")
        except ValueError:
            raise HTTPException(400, "The request body must be JSON.") from None
        if not isinstance(value, dict):
            raise HTTPException(400, "The request body must be a JSON object.")
        return value

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info(request: Request, owner: str = Depends(user)) -> dict:
        client = request.headers.get(wire.CLIENT_HEADER, "")
        return {"protocol": wire.PROTOCOL, "version": __version__, "model": engine.model.key,
                "weights_sha256": weights_sha256, "device": str(engine.device), "precision": engine.precision,
                "user": owner, "client": client[:100], "supervoxels": sam is not None,
                "limits": {"max_upload_mb": limits.max_upload_mb, "max_voxels": limits.max_voxels,
                           "max_clicks": limits.max_clicks, "idle_timeout_s": limits.idle_timeout_s,
                           "max_supervoxels": limits.max_supervoxels}}

    @app.post("/v1/sessions")
    async def open_session(request: Request, owner: str = Depends(user)) -> dict:
        data = await body_within_limit(request)
        started = time.perf_counter()
        array, affine = wire.read_volume(request.headers.get(wire.ARRAY_HEADER), data, limits.max_voxels)
        session = store.open(owner, Image(array, affine))
        return {"session": session.id, "idle_timeout_s": limits.idle_timeout_s,
                "server_seconds": time.perf_counter() - started}

    @app.delete("/v1/sessions/{session_id}")
    async def close_session(session_id: str, owner: str = Depends(user)) -> dict:
        store.close(session_id, owner)
        return {"closed": session_id}

    @app.post("/v1/sessions/{session_id}/segment")
    async def segment(session_id: str, request: Request, owner: str = Depends(user)):
        session = store.get(session_id, owner)
        labels = (await json_body(request)).get("labels")
        if labels is not None and not isinstance(labels, (str, list)):
            raise HTTPException(400, "labels must be a prompt string, a list of names and IDs, or null.")
        labelmap, seconds = await session_job(session, lambda cancel: engine.segment(
            session.image, labels, progress=session.report, cancel=cancel).array)
        return _box_reply(labelmap, bounding_box(labelmap > 0), server_seconds=seconds)

    def click_session(session: HostedSession) -> "Session":
        if session.clicks is None:
            session.clicks = Session(engine, session.image)  # preprocessed once, on the worker
        return session.clicks

    @app.post("/v1/sessions/{session_id}/structures")
    async def new_structure(session_id: str, request: Request, owner: str = Depends(user)):
        session = store.get(session_id, owner)
        try:
            header = json.loads(request.headers.get(wire.ARRAY_HEADER) or "{}")
            label = header.get("label")
        except (ValueError, AttributeError):
            raise HTTPException(400, f"The {wire.ARRAY_HEADER} header must be JSON: label, and box of the mask.")
        mask = None
        if header.get("box") is not None:
            box = wire.Box.from_json(header["box"], session.image.shape)
            mask = np.zeros(session.image.shape, dtype=bool)
            mask[box.slices] = wire.decompress(await body_within_limit(request), box.shape, "uint8") > 0

        def make() -> tuple["Structure", int]:
            structure = click_session(session).structure(label, mask)
            structure_id = max(session.structures, default=0) + 1
            session.structures[structure_id] = structure
            return structure, structure_id

        (structure, structure_id), seconds = await on_worker(owner, make)
        initial = structure.mask.astype(np.uint8)
        return _box_reply(initial, bounding_box(structure.mask), server_seconds=seconds,
                          **_structure_fields(structure, structure_id))

    def structure_of(session: HostedSession, structure_id: int) -> "Structure":
        if structure_id not in session.structures:
            raise HTTPException(404, f"Structure {structure_id} does not exist in this session.")
        return session.structures[structure_id]

    @app.post("/v1/sessions/{session_id}/structures/{structure_id}/clicks")
    async def clicks(session_id: str, structure_id: int, request: Request, owner: str = Depends(user)):
        session = store.get(session_id, owner)
        structure = structure_of(session, structure_id)
        fields = await json_body(request)
        given = fields.get("clicks")
        if not isinstance(given, list) or not all(isinstance(c, list) and len(c) == 4 for c in given):
            raise HTTPException(400, "clicks must be a list of [i, j, k, positive].")
        if len(given) > limits.max_clicks:
            raise HTTPException(400, f"{len(given)} clicks in one request is more than this server's "
                                     f"{limits.max_clicks}.")
        space = fields.get("space", "index")
        if space not in ("index", "ras"):
            raise HTTPException(400, "space must be 'index' or 'ras'.")
        try:
            points = [([float(v) for v in click[:3]], bool(click[3])) for click in given]
        except (TypeError, ValueError):
            raise HTTPException(400, "A click is three numbers and true or false.") from None

        def edit(cancel: CancelToken):
            from .interactive import Click

            if fields.get("replace"):
                return structure.set_clicks([Click(session.clicks.to_index(point, space), positive)
                                             for point, positive in points], progress=session.report, cancel=cancel)
            return structure.add_clicks(points, space, progress=session.report, cancel=cancel)

        result, seconds = await session_job(session, edit)
        return _box_reply(result.mask.astype(np.uint8), result.changed, server_seconds=seconds,
                          **_structure_fields(structure, structure_id))

    @app.post("/v1/sessions/{session_id}/structures/{structure_id}/{step}")
    async def history(session_id: str, structure_id: int, step: str, owner: str = Depends(user)):
        if step not in ("undo", "redo"):
            raise HTTPException(404, f"No such step {step!r}: undo or redo.")
        session = store.get(session_id, owner)
        structure = structure_of(session, structure_id)
        result, seconds = await on_worker(owner, getattr(structure, step))
        return _box_reply(result.mask.astype(np.uint8), result.changed, server_seconds=seconds,
                          **_structure_fields(structure, structure_id))

    @app.get("/v1/sessions/{session_id}/progress")
    async def progress(session_id: str, owner: str = Depends(user)) -> dict:
        session = store.get(session_id, owner)
        done, total, message = session.progress
        return {"done": done, "total": total, "message": message, "running": len(session.jobs)}

    @app.post("/v1/sessions/{session_id}/cancel")
    async def cancel(session_id: str, owner: str = Depends(user)) -> dict:
        session = store.get(session_id, owner)
        for token in session.jobs:
            token.cancel()
        return {"cancelled": len(session.jobs)}

    loaded_sam: list = []  # SAM and its device, once loaded (on the worker, like the engine)

    @app.post("/v1/sessions/{session_id}/supervoxels")
    async def supervoxels(session_id: str, request: Request, owner: str = Depends(user)):
        from .supervoxels import N_SEGMENTS, compute_supervoxels

        session = store.get(session_id, owner)
        if sam is None:
            raise HTTPException(400, "This server makes no supervoxels (it has no SAM checkpoint): its operator can "
                                     "start it with --sam-weights FILE, or compute them on your computer.")
        fields = await json_body(request)
        n_segments = fields.get("n_segments", N_SEGMENTS)
        if not isinstance(n_segments, int) or isinstance(n_segments, bool) or not 1 <= n_segments <= limits.max_supervoxels:
            raise HTTPException(400, f"n_segments must be a whole number from 1 to {limits.max_supervoxels}.")
        roi = None if fields.get("box") is None else wire.Box.from_json(fields["box"], session.image.shape).slices

        def make(cancel: CancelToken) -> np.ndarray:
            if not loaded_sam:
                session.report(0, 0, "Loading SAM")
                loaded_sam.append(sam())
            model, device = loaded_sam[0]
            return compute_supervoxels(model, session.image, roi, n_segments=n_segments, device=device,
                                       precision=engine.precision, progress=session.report, cancel=cancel).array

        labels, seconds = await session_job(session, make)
        whole = tuple(slice(0, n) for n in session.image.shape)
        return _box_reply(labels, roi or whole, server_seconds=seconds)

    app.state.sessions = store
    return app


def serve(*, model: str, weights: Optional[str], users_path: Optional[str], host: str = DEFAULT_HOST,
          port: int = DEFAULT_PORT, device: str = "auto", precision: str = "fp32",
          limits: ServerLimits = ServerLimits(), tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
          sam_kind: str = "vit_b", sam_weights: Optional[str] = None, say: Callable[[str], None] = print) -> None:
    """Load the model once and serve it until interrupted (``vista3d serve``). Supervoxels use SAM
    ``sam_kind`` from ``sam_weights`` or the download cache; without either, the server makes none."""
    import uvicorn

    from .engine import Engine
    from .weights import WeightsNotFoundError, cache_dir, file_digest, resolve
    from .zero_shot import load_sam

    if bool(tls_cert) != bool(tls_key):
        raise VISTA3DError("TLS needs both --tls-cert and --tls-key.")
    if users_path is None:
        path = cache_dir() / "server-users.txt"
        if not path.exists():
            token = new_users_file(path)
            say(f"No --users file: made {path} (readable by you only) with one user, 'default'. Its token, shown "
                f"this once:\n\n    {token}\n\nClients set VISTA3D_SERVER_TOKEN to it (or pass --token-file). Add users "
                "as lines NAME TOKEN in that file; delete a line to revoke one.")
        users = Users(path)
    else:
        users = Users(Path(users_path))
    checkpoint = resolve(model, weights)
    engine = Engine.from_weights(checkpoint, device=device, precision=precision, model=model)
    try:
        sam_checkpoint = resolve(f"sam_{sam_kind}", sam_weights)  # a named file that is missing fails now
    except WeightsNotFoundError:
        sam_checkpoint = None
    sam = None if sam_checkpoint is None else (lambda: load_sam(sam_kind, sam_checkpoint, str(engine.device)))
    app = create_app(engine, users, limits, weights_sha256=file_digest(checkpoint, "sha256"), sam=sam)
    scheme = "https" if tls_cert else "http"
    supervoxels = (f"supervoxels with SAM {sam_kind}" if sam_checkpoint else
                   f"no supervoxels (no SAM checkpoint: `vista3d weights download --model sam_{sam_kind}` or --sam-weights)")
    say(f"{engine.model.title} on {engine.device} ({precision}), {supervoxels}; serving {scheme}://{host}:{port} "
        f"(users: {users.path}). Ctrl+C stops it.")
    uvicorn.run(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, log_level="info",
                workers=1, timeout_keep_alive=30)
