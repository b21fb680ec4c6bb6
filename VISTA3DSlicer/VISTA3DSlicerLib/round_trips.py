"""``vista3d bench --server URL``: what a session on a ``vista3d serve`` server costs over the link.

One session as the panel makes it: the volume uploaded once, an automatic segmentation, a first
click (the server preprocesses the volume and computes a window), a second click near it, and,
when the server makes them, the supervoxels around that structure. For each request: the bytes
sent and received (bodies: Zstandard-compressed arrays and JSON), the client's round trip and the
server's own work; their difference is the overhead of the link, the encoding and HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import VISTA3DError
from .geometry import Image

if TYPE_CHECKING:
    from .remote import Exchange, RemoteEngine

__all__ = ["phantom_ct", "measure_round_trips", "describe"]

_NAMES = {"upload": "upload (the volume, once)", "clicks": "click", "supervoxels": "supervoxels around the structure"}


def phantom_ct(shape: Sequence[int], spacing: float = 1.0) -> Image:
    """A CT-like volume of ``shape`` voxels at ``spacing`` mm: an ellipsoid body of soft tissue in
    air, with a denser organ and a bone. Timing does not depend on the content beyond the body's
    extent (the crop to the body)."""
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    grid = [(np.arange(n, dtype=np.float32) - c) / (n / 2) for n, c in zip(shape, centre)]
    x, y, z = np.meshgrid(*grid, indexing="ij", sparse=True)
    body = (x / 0.9) ** 2 + (y / 0.75) ** 2 + (z / 1.2) ** 2 <= 1
    organ = (x - 0.3) ** 2 + (y + 0.1) ** 2 + z**2 <= 0.1
    bone = x**2 + (y - 0.5) ** 2 <= 0.01
    hu = np.where(body, 40.0, -1000.0) + np.where(organ & body, 60.0, 0.0) + np.where(bone & body, 660.0, 0.0)
    return Image(hu.astype(np.float32), np.diag([spacing, spacing, spacing, 1.0]))


def measure_round_trips(engine: "RemoteEngine", image: Image, labels: str = "liver") -> list["Exchange"]:
    """The requests of one session on ``engine``'s server with ``image``, in order (the session is
    closed after). ``labels``: the automatic segmentation's prompt."""
    from .supervoxels import snap_roi

    if not engine.model.takes_clicks:
        raise VISTA3DError(f"The server runs {engine.model.title}, which takes no clicks: run it with a model that "
                           "does (vista3d, nv-segment-ct).")
    session = engine.session(image)
    try:
        session.segment(engine.labels.automatic_prompt(labels))
        structure = session.structure(None, np.zeros(image.shape, dtype=bool))
        centre = [n // 2 for n in image.shape]
        structure.add_clicks([(centre, True)])  # the first click: the session is preprocessed, a new window
        structure.add_clicks([([centre[0] + 3, centre[1] + 3, centre[2]], True)])  # a click in the same window
        if engine.info.get("supervoxels"):
            session.supervoxels(snap_roi(structure.mask, [click.index for click in structure.clicks]))
    finally:
        session.close()
    return list(session.exchanges)


def describe(exchanges: Sequence["Exchange"], labels: str) -> list[tuple[str, str]]:
    """One ``(request, figures)`` row per exchange, for a table."""
    names = {**_NAMES, "segment": f"automatic segmentation ({labels})"}
    rows, seen = [], {}
    for exchange in exchanges:
        seen[exchange.what] = seen.get(exchange.what, 0) + 1
        what = names.get(exchange.what, exchange.what) + (f" #{seen['clicks']}" if exchange.what == "clicks" else "")
        server = exchange.server_seconds or 0.0
        rows.append((what, f"sent {exchange.sent / 1e3:,.1f} kB, received {exchange.received / 1e3:,.1f} kB; "
                           f"round trip {exchange.seconds:.3f} s, server {server:.3f} s, overhead "
                           f"{exchange.seconds - server:.3f} s"))
    return rows
