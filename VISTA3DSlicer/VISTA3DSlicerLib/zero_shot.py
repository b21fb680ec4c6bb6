"""Zero-shot segmentation: a structure outside VISTA3D's classes, from clicks, optionally snapped to
SAM supervoxels (the paper's zero-shot tool). The one workflow behind ``vista3d zeroshot``, the
panel's click editor and the Slicer Logic's supervoxels.

The pieces, in the order a user meets them: ``load_sam`` (the SAM backbone, its checkpoint found by
``weights.resolve``), a ``SupervoxelMaker`` (SAM on this machine, ``on_this_machine``, or on the
server that holds the session's volume, ``on_the_server``), ``supervoxels_around`` (supervoxels in
the box that snapping needs: the mask and its clicks with a margin), ``snap_to_clicks`` (whole
supervoxels, those under the clicks added or removed by their sign), and ``segment_zero_shot``, all
of them for one structure in one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from .progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    import os

    import torch

    from .engine import Engine
    from .geometry import Image
    from .interactive import Click
    from .supervoxels import Box

__all__ = ["check_request", "load_sam", "SupervoxelMaker", "on_this_machine", "on_the_server", "supervoxels_around",
           "snap_to_clicks", "segment_zero_shot"]

#: Supervoxels of a session's volume: ``maker(session, roi, n_segments=, progress=, cancel=)`` gives
#: an ``Image`` of labels on the volume's grid (0 outside ``roi``; ``roi`` None: the whole volume).
SupervoxelMaker = Callable[..., "Image"]


def check_request(label_id: int, clicks: Sequence, snap_fraction: Optional[float] = None) -> None:
    """Refuse, before anything is loaded, a zero-shot request that cannot run, saying what to change."""
    from .errors import VISTA3DError
    from .labels import ZERO_SHOT_IDS

    if label_id not in ZERO_SHOT_IDS:
        raise VISTA3DError(f"{label_id}: a zero-shot structure takes an ID from 133 to 254.")
    if not clicks:
        raise VISTA3DError("Give at least one click on the structure.")
    if snap_fraction is not None and not 0 < snap_fraction <= 1:
        raise VISTA3DError(f"Snap fraction {snap_fraction}: give a fraction in (0, 1], e.g. 0.5.")


def load_sam(kind: str = "vit_b", weights: Union[str, "os.PathLike", None] = None,
             device: str = "auto") -> tuple[object, "torch.device"]:
    """SAM ``kind`` ("vit_b", "vit_l", "vit_h") on ``device``, from ``weights`` or, without it, the
    checkpoint ``weights.resolve("sam_<kind>")`` finds. Returns the model and the device it is on."""
    from .model import resolve_device
    from .supervoxels import build_sam
    from .weights import resolve

    resolved = resolve_device(device)
    return build_sam(kind, str(resolve(f"sam_{kind}", weights)), resolved), resolved


def on_this_machine(sam, device: Union["torch.device", str] = "cpu", precision: str = "fp32") -> SupervoxelMaker:
    """Supervoxels made here, with ``sam`` (``load_sam``) on ``device``."""

    def make(session, roi: Optional["Box"], *, n_segments: Optional[int] = None,
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> "Image":
        from .supervoxels import N_SEGMENTS, compute_supervoxels

        return compute_supervoxels(sam, session.image, roi, device=device, precision=precision,
                                   n_segments=n_segments or N_SEGMENTS, progress=progress, cancel=cancel)

    return make


def on_the_server(session, roi: Optional["Box"], *, n_segments: Optional[int] = None,
                  progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> "Image":
    """Supervoxels made by the server that holds the ``remote.RemoteSession``'s volume, with its own SAM:
    nothing is loaded here and only the ROI's labels travel."""
    from .supervoxels import N_SEGMENTS

    return session.supervoxels(roi, n_segments=n_segments or N_SEGMENTS, progress=progress, cancel=cancel)


def supervoxels_around(make: SupervoxelMaker, session, mask: np.ndarray, clicks: Sequence["Click"], *,
                       n_segments: Optional[int] = None, progress: Optional[ProgressCallback] = None,
                       cancel: Optional[CancelToken] = None) -> "Image":
    """Supervoxels of the ``session``'s volume in the box snapping needs for ``mask`` and its ``clicks``
    (0 elsewhere), made by ``make``."""
    from .supervoxels import snap_roi

    return make(session, snap_roi(mask, [click.index for click in clicks]), n_segments=n_segments,
                progress=progress, cancel=cancel)


def snap_to_clicks(mask: np.ndarray, supervoxels: np.ndarray, fraction: float,
                   clicks: Sequence["Click"]) -> np.ndarray:
    """``mask`` made of whole supervoxels (``supervoxels.snap``): those it covers for at least
    ``fraction``, plus the one under each positive click, less the one under each negative click."""
    from .supervoxels import snap

    return snap(mask, supervoxels, fraction,
                positive=[click.index for click in clicks if click.positive],
                negative=[click.index for click in clicks if not click.positive])


def segment_zero_shot(engine: "Engine", image: "Image", label_id: int, clicks, point_space: str = "index", *,
                      supervoxels: Optional[SupervoxelMaker] = None, snap_fraction: Optional[float] = None,
                      n_segments: Optional[int] = None, progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """The mask of one zero-shot structure (``label_id`` in 133..254) from ``clicks`` (``(coordinates,
    positive)`` pairs in ``point_space``: "index" or "ras"), snapped to the supervoxels ``supervoxels``
    makes when it and ``snap_fraction`` are given. ``engine``: a local ``Engine`` or a ``RemoteEngine``."""
    check_request(label_id, clicks, snap_fraction)
    session = engine.session(image)
    structure = session.structure(label_id, mask=np.zeros(image.shape, dtype=bool))
    mask = structure.add_clicks(clicks, point_space, progress=progress).mask
    if supervoxels is None or snap_fraction is None:
        return mask
    labels = supervoxels_around(supervoxels, session, mask, structure.clicks, n_segments=n_segments,
                                progress=progress)
    return snap_to_clicks(mask, labels.array, snap_fraction, structure.clicks)
