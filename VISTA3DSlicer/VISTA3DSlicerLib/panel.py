"""What the Slicer panel does, without Qt or MRML: the part pytest drives.

- ``ClickEditor``: the + / − points of the interactive and zero-shot tools turned into edits
  of one segment, with undo, redo and clear, optional snapping to supervoxels, and the region
  to rewrite.
- ``EngineSettings``, ``EngineCache`` and ``ClickSession``: the one network the panel keeps
  loaded, and the click editor of one volume with the settings it was made for.
- ``WEIGHTS_MODELS``, ``weights_status``, ``missing_weights`` and ``locate_checkpoint``: the Model
  section's weights row, and where a job's checkpoint comes from (a download only when allowed).

The Slicer module reads nodes into ``Image``s and masks (``slicer_adapter``), runs these on its
worker thread, and writes what they return back into MRML on the main thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from . import labels as label_table
from .errors import VISTA3DError
from .geometry import Image
from .models import DEFAULT_MODEL, MODELS as SEGMENTATION_MODELS
from .interactive import Click, Edit, Structure, changed_box
from .progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from .engine import Engine
    from .interactive import Session
    from .weights import WeightsSource

__all__ = [
    "PointPrompt", "ClickEditor", "EngineSettings", "EngineCache", "ClickSession", "WeightsModel", "WEIGHTS_MODELS", "WeightsStatus", "weights_status",
    "missing_weights", "locate_checkpoint", "click_session_for",
]

# ---------------------------------------------------------------------------------- the clicks


@dataclass(frozen=True)
class PointPrompt:
    """A + or − point as the viewer holds it: RAS millimetres."""

    ras: tuple[float, float, float]
    positive: bool = True


class ClickEditor:
    """The points placed on one volume's segments, turned into edits of those segments.

    A segment is edited through a ``Structure`` made on its first click from what the segment
    holds then (an automatic result, something drawn, or nothing). The segment's VISTA3D label
    (from its tag) decides the prompt: a class uses the class head with the clicks, a zero-shot
    ID the zero-shot embedding, no label the clicks alone. If the segment was changed by other
    means since this editor last wrote it (painted, say), its history no longer describes it:
    the editor starts again from what the segment holds, and the points apply to that.

    ``set_points`` takes all the points of the segment as the viewer has them (added, moved or
    removed since the last call), so a viewer needs no bookkeeping of what changed.

    Where supervoxels are set (``set_supervoxels``) and ``snap_fraction`` > 0, a zero-shot
    segment's mask is snapped to them after each edit (``supervoxels.snap``).

    Not thread-safe: the panel calls it from its one worker thread only.
    """

    def __init__(self, session: "Session"):
        self.session = session
        self.snap_fraction = 0.0
        self._supervoxels: Optional[np.ndarray] = None
        self._structures: dict[str, Structure] = {}
        self._shown: dict[str, np.ndarray] = {}  # the mask last written into each segment

    # -- points ---------------------------------------------------------------------------------

    def points(self, segment_id: str) -> list[PointPrompt]:
        """The segment's points after the last edit, undo or redo, for the viewer to show."""
        structure = self._structures.get(segment_id)
        if structure is None:
            return []
        image = self.session.image
        return [PointPrompt(tuple(float(v) for v in image.index_to_ras(np.asarray(click.index))), click.positive)
                for click in structure.clicks]

    def set_points(
        self,
        segment_id: str,
        label: Optional[int],
        points: Sequence[PointPrompt],
        current_mask: Optional[np.ndarray],
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Edit:
        """Make ``points`` the segment's points and return its new mask and the changed box.

        ``current_mask``: what the segment holds now (bool ``[i, j, k]`` on the volume's grid), or
        None when it is unchanged since this editor last wrote it (saves the viewer a read).
        A point outside the volume (or the body) raises ``VISTA3DError`` and changes nothing.
        """
        structure = self._structure(segment_id, label, current_mask)
        clicks = [Click(self.session.to_index(point.ras, "ras"), point.positive) for point in points]
        structure.set_clicks(clicks, progress=progress, cancel=cancel)
        return self._show(segment_id)

    def undo(self, segment_id: str) -> Edit:
        return self._history_step(segment_id, "undo")

    def redo(self, segment_id: str) -> Edit:
        return self._history_step(segment_id, "redo")

    def can_undo(self, segment_id: str) -> bool:
        return segment_id in self._structures and self._structures[segment_id].can_undo

    def can_redo(self, segment_id: str) -> bool:
        return segment_id in self._structures and self._structures[segment_id].can_redo

    def forget_all(self) -> None:
        """Drop every segment's points and history (a run rewrote the segments)."""
        self._structures.clear()
        self._shown.clear()

    # -- supervoxels ----------------------------------------------------------------------------

    def set_supervoxels(self, supervoxels: Optional[Image]) -> None:
        """Supervoxels of the session's volume (0 where none), used to snap zero-shot segments."""
        if supervoxels is not None and supervoxels.shape != self.session.image.shape:
            raise VISTA3DError(
                f"The supervoxels ({supervoxels.shape}) are not on the volume's grid ({self.session.image.shape}): "
                "compute them again for this volume."
            )
        self._supervoxels = None if supervoxels is None else np.asarray(supervoxels.array)

    def snap_box(self, segment_id: str, margin: int) -> tuple[slice, slice, slice]:
        """The region to compute supervoxels in for this segment: its mask and points, with a margin."""
        from .supervoxels import snap_roi

        structure = self._structures.get(segment_id)
        if structure is None or not (structure.clicks or structure.mask.any()):
            raise VISTA3DError("Place a point on the structure first: supervoxels are computed around the points.")
        return snap_roi(structure.mask, [click.index for click in structure.clicks], margin)

    def reshow(self, segment_id: str) -> Edit:
        """The segment's mask again after the snap fraction or the supervoxels changed."""
        if segment_id not in self._structures:
            raise VISTA3DError("This segment has no points yet: place a point on it first.")
        return self._show(segment_id)

    # -- internals ------------------------------------------------------------------------------

    def _structure(self, segment_id: str, label: Optional[int], current_mask: Optional[np.ndarray]) -> Structure:
        structure = self._structures.get(segment_id)
        shown = self._shown.get(segment_id)
        edited_elsewhere = current_mask is not None and (shown is None or not np.array_equal(current_mask, shown))
        if structure is None or structure.label != label or edited_elsewhere:
            if current_mask is None:
                current_mask = np.zeros(self.session.image.shape, dtype=bool)
            structure = self.session.structure(label, mask=np.asarray(current_mask, dtype=bool))
            self._structures[segment_id] = structure
            self._shown[segment_id] = structure.mask.copy()
        return structure

    def _history_step(self, segment_id: str, step: str) -> Edit:
        structure = self._structures.get(segment_id)
        if structure is None:
            raise VISTA3DError("This segment has no points to undo or redo.")
        getattr(structure, step)()  # "undo" or "redo", of a local or a server's structure
        return self._show(segment_id)

    def _show(self, segment_id: str) -> Edit:
        """The mask the segment should show (snapped where that applies) and the box that changes."""
        structure = self._structures[segment_id]
        mask = structure.mask
        if self._snaps(structure):
            from .zero_shot import snap_to_clicks

            mask = snap_to_clicks(mask, self._supervoxels, self.snap_fraction, structure.clicks)
        before = self._shown[segment_id]
        region = changed_box(before, mask)
        self._shown[segment_id] = mask.copy()
        return Edit(mask.copy(), region)

    def _snaps(self, structure: Structure) -> bool:
        return (self._supervoxels is not None and self.snap_fraction > 0
                and structure.label in label_table.ZERO_SHOT_IDS and bool(structure.clicks))


# ---------------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class EngineSettings:
    """What decides the network that runs: the model, its checkpoint file, the device, the precision
    and the runtime; or the ``vista3d serve`` server (URL and token) that runs it instead."""

    weights: Optional[Path]
    device: str
    precision: str
    runtime: str
    model: str = DEFAULT_MODEL
    server: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)  # never in a log line

    @classmethod
    def locate(cls, weights: Union[str, Path, None], device: str, precision: str, runtime: str,
               allow_download: bool, model: str = DEFAULT_MODEL, server: Optional[str] = None,
               token: Optional[str] = None
               ) -> tuple[Optional["EngineSettings"], Callable[[ProgressCallback, CancelToken], "EngineSettings"]]:
        """The settings of a job: ``(settings, settings_of)``, the settings when ``model``'s checkpoint
        is here (None while it is still to be downloaded) and a function for the worker giving them,
        downloading the checkpoint first where that is allowed (``locate_checkpoint``). With a
        ``server`` nothing is looked for here: the server has its weights."""
        if server:
            remote = cls(None, device, precision, runtime, model, server, token)
            return remote, lambda report, cancel: remote
        path, path_of = locate_checkpoint(model, weights, allow_download)
        settings = cls(path, device, precision, runtime, model) if path is not None else None
        return settings, lambda report, cancel: settings or cls(path_of(report, cancel), device, precision, runtime,
                                                                model)


class EngineCache:
    """The one network the panel keeps loaded, for the settings it was last asked for.

    A full VISTA3D takes about 1 GB and seconds to load, so it is kept between runs; asked for
    other settings, the cache lets the old network go before it loads the new one (two full
    networks do not fit on many GPUs). The network is freed only once nothing else holds it: the
    Logic drops its click session (which holds the network it was made with) first.
    Thread-safe: the worker thread loads, any thread may ``drop``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings: Optional[EngineSettings] = None
        self._engine: Optional["Engine"] = None

    def get(self, settings: EngineSettings) -> "Engine":
        """The engine for ``settings``: loaded here, or a server's (``remote.RemoteEngine``, same interface)."""
        from .engine import Engine

        with self._lock:
            if settings != self._settings:
                self._settings = self._engine = None
                if settings.server:
                    from .remote import RemoteEngine

                    self._engine = RemoteEngine(settings.server, settings.token or "", model=settings.model)
                else:
                    self._engine = Engine.from_weights(settings.weights, device=settings.device,
                                                       precision=settings.precision, runtime=settings.runtime,
                                                       model=settings.model)
                self._settings = settings
            return self._engine

    def drop(self) -> None:
        with self._lock:
            self._settings = self._engine = None


@dataclass(frozen=True)
class ClickSession:
    """The click editor of one volume and what it was made for: the volume (its node ID and the
    modification time of its voxels) and the engine settings. A click with other settings, or on
    another or changed volume, needs a new session."""

    volume: tuple[str, int]
    settings: EngineSettings
    editor: ClickEditor


def click_session_for(current: Optional[ClickSession], volume: tuple[str, int], settings: Optional[EngineSettings],
                      settings_of: Callable[[ProgressCallback, CancelToken], EngineSettings],
                      read_image: Callable[[], Image], engines: EngineCache
                      ) -> tuple[Optional[ClickSession], Callable[[ProgressCallback, CancelToken], ClickSession]]:
    """The session clicks on ``volume`` with these settings use: ``(keep, session_of)``, the session
    to keep now and a function for the worker giving the one to use. The current session when it
    matches; else None now (so that its network can be freed before the worker loads another) and a
    new session made on the worker, on the image ``read_image`` reads now (on the calling thread:
    the Slicer Logic reads MRML there). ``settings`` is None while a checkpoint is to be downloaded."""
    if current is not None and (current.volume, current.settings) == (volume, settings):
        return current, lambda report, cancel: current
    image = read_image()

    def make(report: ProgressCallback, cancel: CancelToken) -> ClickSession:
        chosen = settings_of(report, cancel)
        # The engine of automatic segmentation, whatever its runtime (clicks run its PyTorch network),
        # or the server's: its session has the same interface.
        return ClickSession(volume, chosen, ClickEditor(engines.get(chosen).session(image)))

    return None, make


# --------------------------------------------------------------------------------- the weights


def segments_replaced(segments: Sequence[tuple[str, Optional[int]]], label_ids: Sequence[int]) -> list[str]:
    """Names of the ``segments`` (name, the VISTA3D ID it was made from or None) that an automatic
    result for ``label_ids`` replaces: those made from one of its classes, groups expanded. Segments
    the user drew (None) are never replaced, whatever their names."""
    wanted = set(label_table.expand_subclasses(label_ids))
    return [name for name, label in segments if label is not None and label in wanted]


@dataclass(frozen=True)
class WeightsModel:
    """One entry of the panel's weights row: which checkpoint, and how it is found."""

    title: str
    model: str  # one of weights.MODELS: "vista3d", "sam_vit_b", ...

    @property
    def source(self) -> "WeightsSource":
        from . import weights

        return weights.source_for(self.model)


WEIGHTS_MODELS: tuple[WeightsModel, ...] = tuple(
    WeightsModel(model.title, model.key) for model in SEGMENTATION_MODELS.values()) + (
    WeightsModel("SAM ViT-B (zero-shot supervoxels)", "sam_vit_b"),
    WeightsModel("SAM ViT-L (zero-shot supervoxels)", "sam_vit_l"),
    WeightsModel("SAM ViT-H (zero-shot supervoxels)", "sam_vit_h"),
)


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a checkpoint is ready, and the line the panel shows about it."""

    ready: bool
    path: Optional[Path]
    in_cache: bool  # the file is the download cache's (so Delete applies to it)
    text: str


def weights_status(model: WeightsModel, explicit: Optional[str | Path] = None) -> WeightsStatus:
    """Where ``model``'s checkpoint would be loaded from (a file the user chose, the environment
    variable, or the cache), or why there is none yet. Hashes a cached file only the first time
    (a stamp remembers the check)."""
    from . import weights

    source = model.source
    try:
        path = weights.resolve(model.model, explicit)
    except weights.WeightsNotFoundError:
        size = f" ({source.size_text})" if source.size else ""
        return WeightsStatus(False, None, False,
                             f"Not downloaded yet{size}. Download them from {source.host}, or use a file you have.")
    except VISTA3DError as error:  # a chosen file that is gone, say
        return WeightsStatus(False, None, False, str(error))
    in_cache = path.parent == weights.cache_dir() and path.name == source.filename
    origin = "downloaded" if in_cache else "your file"
    return WeightsStatus(True, path, in_cache, f"Ready ({origin}): {path}")


def missing_weights(model: str = "vista3d", explicit: Union[str, Path, None] = None) -> Optional["WeightsSource"]:
    """The source that a permitted download would fetch for ``model`` (one of ``weights.MODELS``),
    or None when its checkpoint is here (or a file was named)."""
    from . import weights

    try:
        weights.resolve(model, explicit)
    except weights.WeightsNotFoundError:
        return weights.source_for(model)
    return None


def locate_checkpoint(model: str, explicit: Union[str, Path, None], allow_download: bool
                      ) -> tuple[Optional[Path], Callable[[ProgressCallback, CancelToken], Path]]:
    """Where ``model``'s checkpoint is: ``(path, fetch)``, the file found now (None when there is
    none) and a function for the worker giving the file: that one or, with ``allow_download``, the
    download made within the job. Without ``allow_download`` a missing checkpoint is refused here,
    with what to do in the panel and from Python."""
    from . import weights

    try:
        path = weights.resolve(model, explicit)
    except weights.WeightsNotFoundError:
        source = weights.source_for(model)
        if not allow_download:
            size = source.size_text or "about 0.4 to 2.6 GB"
            raise VISTA3DError(
                f"The {source.title} are not on this computer. Download them (Model > Download), choose a "
                "checkpoint you have (Model > Use a file...), or, from Python, pass allowDownload=True "
                f"to download them ({size}) from {source.host}.") from None
        return None, lambda report, cancel: weights.download(source, progress=report, cancel=cancel)
    return path, lambda report, cancel: path
