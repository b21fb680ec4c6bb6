"""Interactive correction: positive and negative clicks on one structure (reference doc §4-5).

A ``Session`` holds one volume, preprocessed once, and its click windows
(``point_windows.PointWindowInferer``, which caches the image encoder's output per 128³ window). A ``Structure`` is one target (a VISTA3D class, a
zero-shot ID, or an unnamed structure found by clicks alone) with its clicks, its mask and
an undo/redo history. Each click returns an ``Edit``: the structure's new mask and the box
of voxels that changed, so a viewer rewrites only that region.

What a click computes is the reference's (the bundle's ``point_based_window_inferer`` with
``VISTA3D.forward``):

- one 128³ window centred on every click of the structure (clamped to the volume, the image
  zero-padded to 128 where smaller), each window run with all the clicks;
- a known class (1..132): the class head's logits of the window, merged with the point head's
  by connected components around the clicks (``connected_components_combine``);
- no class: the point head with its "supported" embedding; the bundle then keeps only the
  components that hold a positive click (``keep_components_with_positive_points``);
- a zero-shot ID (133..254): the point head with its zero-shot embedding, no class head;
- overlapping windows' logits are summed (not averaged), then thresholded at 0.

Outside the union of the windows the reference writes 255 ("not processed"). Here those
voxels keep what the structure had before the click (its auto result, a mask the user
drew, or nothing): a click never touches what it did not compute.

Where the structure already has voxels and has no class head (no class, or zero-shot), its
mask is given to the network as the previous mask (``prev_mask``), as the VISTA3D authors'
interactive demo does: inside each window the click's components are merged into it by
``connected_components_combine``, so parts of the structure that no click touches stay as
they were. With an empty structure this is exactly the bundle's computation.

The click computation is a function of (the structure's mask before its first click, the
clicks), evaluated from scratch on each click; the cache only makes it faster, and a run
without cache gives identical output.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import numpy as np

from .labels import SPECIAL_BUNDLE
from .errors import VISTA3DError
from .feature_cache import FeatureCache, default_budget
from .geometry import Image, bounding_box
from .point_windows import PointWindowInferer
from .preprocessing import preprocess
from .progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    import torch

    from .engine import Engine

logger = logging.getLogger(__name__)

#: Clicks one structure may have. Each click opens its own 128³ window (as in the reference), so
#: 100 clicks spread out cost 100 network passes per edit: seconds on a GPU, half an hour on a CPU.
MAX_CLICKS = 100

PointSpace = Literal["index", "ras"]


@dataclass(frozen=True)
class Click:
    """A click at continuous voxel index ``(i, j, k)`` of the input array; positive adds, negative removes."""

    index: tuple[float, float, float]
    positive: bool = True


@dataclass(frozen=True)
class Edit:
    """The result of a click, undo or redo on one structure.

    ``mask`` is the whole structure afterwards (``bool [i, j, k]`` on the input grid);
    ``changed`` the smallest box holding every voxel that differs from before, or None.
    """

    mask: np.ndarray
    changed: Optional[tuple[slice, slice, slice]]


@dataclass(frozen=True)
class _Step:
    """One step: the structure's clicks after it and the change it made, stored so that undo and
    redo restore it exactly."""

    clicks: tuple[Click, ...]
    region: Optional[tuple[slice, slice, slice]]
    before: Optional[np.ndarray]
    after: Optional[np.ndarray]


def changed_box(before: np.ndarray, after: np.ndarray) -> Optional[tuple[slice, slice, slice]]:
    """Smallest box of voxels where two masks differ (None when they are equal)."""
    return bounding_box(before != after)


def click_index(image: Image, point: Sequence[float], space: PointSpace = "index") -> tuple[float, float, float]:
    """A click (voxel index ``(i, j, k)`` or RAS mm) as a continuous voxel index of ``image``,
    refused when it lies outside the volume: what a click means, here and on a server's client."""
    values = np.asarray(point, dtype=np.float64).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)):
        raise VISTA3DError(f"A click needs three finite coordinates, got {list(point)!r}.")
    if space == "ras":
        # Rounded to a millionth of a voxel: the inverse affine gives 34.9999999 for voxel 35,
        # and the window rule truncates (int(point) - 64), which would move the window by one.
        index = np.round(image.ras_to_index(values), 6)
    elif space == "index":
        index = values
    else:
        raise VISTA3DError(f'Unknown point space {space!r}: use "index" (voxel i,j,k) or "ras" (millimetres).')
    shape = np.asarray(image.shape)
    if np.any(index < -0.5) or np.any(index > shape - 0.5):
        where = "RAS (%.1f, %.1f, %.1f) mm" % tuple(values) if space == "ras" else "voxel (%g, %g, %g)" % tuple(values)
        raise VISTA3DError(
            f"The click at {where} is outside the volume (voxel indices 0..{shape[0] - 1}, 0..{shape[1] - 1}, "
            f"0..{shape[2] - 1}). Click inside the image."
        )
    return tuple(float(v) for v in index)  # type: ignore[return-value]


class Session:
    """One volume ready for clicks: preprocessed once; its click windows (``point_windows``) keep a
    cache of encoder features per window."""

    def __init__(self, engine: "Engine", image: Image, *, cache_budget_bytes: Optional[int] = None):
        import torch

        engine.model.check_clicks()  # an automatic-only model (NV-Segment-CTMR) is refused before any work
        self.engine = engine
        self.labels = engine.labels
        self.image = image
        cache = FeatureCache(
            default_budget(engine.device) if cache_budget_bytes is None else cache_budget_bytes, engine.device
        )
        with torch.inference_mode():
            self.prepared = preprocess(image, engine.device, engine.preprocessing)
            self.point_windows = PointWindowInferer(engine, self.prepared.tensor.as_tensor()[None], cache)

    # -- clicks in the user's coordinates -----------------------------------------------------------

    def to_index(self, point: Sequence[float], space: PointSpace = "index") -> tuple[float, float, float]:
        """A click as a continuous voxel index ``(i, j, k)``, refused when it lies outside the volume
        (``click_index``) or outside the body region the network sees."""
        index = np.asarray(click_index(self.image, point, space))
        network = self.prepared.to_network_points(index)[0]
        if np.any(network < -0.5) or np.any(network >= np.asarray(self.prepared.spatial_shape) - 0.5):
            raise VISTA3DError(
                "The click is outside the body region VISTA3D analyses (voxels above 0 HU and a 10-voxel margin "
                "around them). Click on the body."
            )
        return tuple(float(v) for v in index)  # type: ignore[return-value]

    def structure(self, label: int | str | None = None, mask: Optional[np.ndarray] = None) -> "Structure":
        """A structure to edit with clicks.

        ``label``: a VISTA3D class (1..132; groups are refused), a zero-shot ID (133..254),
        or None for a structure defined by the clicks alone. ``mask``: what the structure
        has now (``[i, j, k]`` on the input grid); None means the automatic result for a
        class the model segments automatically, and nothing otherwise.
        """
        if label is not None:
            label = self.labels.validate_click_label(label)
        if mask is None:
            if label is not None and label in self.labels.supported:
                mask = self.automatic_mask(label)
            else:
                mask = np.zeros(self.image.shape, dtype=bool)
        mask = np.asarray(mask)
        if mask.shape != self.image.shape:
            raise VISTA3DError(f"The structure's mask has shape {mask.shape}, the image {self.image.shape}.")
        return Structure(self, label, mask.astype(bool))

    def automatic_mask(
        self, label: int, *, progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None
    ) -> np.ndarray:
        """The automatic (class head, sliding window) result of one class, as a mask on the input grid."""
        labels = self.engine.segment_prepared(self.prepared, [label], progress=progress, cancel=cancel)
        return labels == label

    # -- the network ----------------------------------------------------------------------------

    def compute(
        self,
        label: Optional[int],
        clicks: Sequence[Click],
        previous: Optional[np.ndarray] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The reference's result of ``clicks`` for one structure, on the input grid.

        Returns ``(computed, inside)``: ``computed`` marks the voxels inside the union of
        the click windows (elsewhere the reference writes 255), ``inside`` the structure
        there. ``previous`` is the structure's mask before its first click; it is used as
        the network's previous mask when there is no class head and it is not empty.
        """
        import torch

        if not clicks:
            raise VISTA3DError("No clicks were given.")
        zero_shot = label is not None and label in self.labels.zero_shot_ids
        class_id = label if label is not None and not zero_shot else None
        with torch.inference_mode():
            points = self.prepared.to_network_points([c.index for c in clicks])
            point_labels = [self._click_label(label, c) for c in clicks]
            previous_logits = None
            if class_id is None and previous is not None and previous.any():
                on_grid = self.prepared.to_network_grid(previous.astype(np.float32), self.image.affine) > 0.5
                previous_logits = self.point_windows.previous_logits(on_grid)
            logits = self.point_windows.logits(points, point_labels, label, class_id, previous_logits, progress, cancel)
            if label is None and previous_logits is None:
                logits = self._keep_clicked_components(logits, points, point_labels)
            values = torch.where(torch.isnan(logits), torch.nan, (logits > 0).float() + 1.0)
            restored = self.prepared.restore(values)  # 0 outside the crop, NaN outside the windows
        computed = np.isfinite(restored) & (restored > 0)
        return computed, computed & (restored > 1.5)

    @staticmethod
    def _click_label(label: Optional[int], click: Click) -> int:
        # Special classes (tumours, vessels...) take 3 / 2 for positive / negative. The list is the
        # bundle's SPECIAL_BUNDLE, the one its VistaPreTransformd applies, because the bundle is the
        # reference we reproduce (reference doc §2.2); labels.py explains the two lists.
        special = label is not None and label in SPECIAL_BUNDLE
        return (3 if click.positive else 2) if special else int(click.positive)

    @staticmethod
    def _keep_clicked_components(logits: "torch.Tensor", points: np.ndarray, point_labels: Sequence[int]) -> "torch.Tensor":
        """The bundle's post-processing without a class: keep the components that hold a positive click."""
        import torch
        from monai.transforms.utils import keep_components_with_positive_points

        return keep_components_with_positive_points(
            logits[None, None].clone(),
            point_coords=torch.as_tensor(points, dtype=torch.float64)[None],
            point_labels=torch.as_tensor([point_labels]),
        )[0, 0]


class Structure:
    """One structure being edited by clicks, with undo and redo.

    Every change of its clicks recomputes the structure from its mask before the first click
    and all its clicks (as the stateless reference does), inside the click windows; outside
    them the structure has its mask from before the first click. So adding, moving or removing
    a click gives the same mask as placing the final clicks in one go.
    """

    def __init__(self, session: Session, label: Optional[int], mask: np.ndarray):
        self.session = session
        self.label = label
        self.initial_mask = mask.copy()
        self.mask = mask.copy()
        self._done: list[_Step] = []
        self._undone: list[_Step] = []

    @property
    def clicks(self) -> list[Click]:
        return list(self._done[-1].clicks) if self._done else []

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    def click(
        self,
        point: Sequence[float],
        positive: bool = True,
        space: PointSpace = "index",
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Edit:
        """Add a click (voxel index ``(i, j, k)`` or RAS mm) and return the structure's new mask.

        A click that is refused (outside the volume) or cancelled changes nothing.
        """
        return self.add_clicks([(point, positive)], space, progress=progress, cancel=cancel)

    def add_clicks(
        self,
        clicks: Sequence[tuple[Sequence[float], bool]],
        space: PointSpace = "index",
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Edit:
        """Add several ``(point, positive)`` clicks at once: one computation, one undo step."""
        if not clicks:
            raise VISTA3DError("No clicks were given.")
        new_clicks = [Click(self.session.to_index(point, space), bool(positive)) for point, positive in clicks]
        return self.set_clicks(self.clicks + new_clicks, progress=progress, cancel=cancel)

    def set_clicks(
        self,
        clicks: Sequence[Click],
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Edit:
        """Make ``clicks`` the structure's clicks (points added, moved or removed): one undo step.

        Clicks are voxel indices of the input grid (``Session.to_index`` makes them from RAS and
        refuses those outside the volume). No clicks gives the mask from before the first click.
        A click given twice counts once (a double click is not a stronger click; the reference
        would add its window twice). Refused, changing nothing: a positive and a negative click on
        the same voxel, and only negative clicks on an empty structure without a class (there is
        nothing for them to remove).
        """
        clicks = tuple(dict.fromkeys(Click(self.session.to_index(click.index), click.positive) for click in clicks))
        self._check_clicks(clicks)
        if clicks:
            computed, inside = self.session.compute(
                self.label, list(clicks), self.initial_mask, progress=progress, cancel=cancel
            )
            after = np.where(computed, inside, self.initial_mask)
        else:
            after = self.initial_mask
        region = changed_box(self.mask, after)
        step = _Step(
            clicks,
            region,
            None if region is None else self.mask[region].copy(),
            None if region is None else after[region].copy(),
        )
        self._done.append(step)
        self._undone.clear()
        return self._apply(region, step.after)

    def _check_clicks(self, clicks: Sequence[Click]) -> None:
        if len(clicks) > MAX_CLICKS:
            raise VISTA3DError(
                f"{len(clicks)} clicks on one structure is more than the {MAX_CLICKS} it takes: each click opens its "
                "own window, so every edit would recompute them all. Undo or remove some clicks, or split the "
                "structure into several segments."
            )
        polarity: dict[tuple[int, ...], bool] = {}
        for click in clicks:
            voxel = tuple(int(round(v)) for v in click.index)
            if polarity.setdefault(voxel, click.positive) != click.positive:
                raise VISTA3DError(
                    f"Voxel {voxel} has both a positive and a negative click: remove one of them."
                )
        has_class = self.label is not None and self.label in self.session.labels.supported
        if clicks and not any(click.positive for click in clicks) and not has_class and not self.initial_mask.any():
            raise VISTA3DError(
                "There are only negative clicks, on a structure that is empty: they have nothing to remove. "
                "Add a positive click on the structure."
            )

    def undo(self) -> Edit:
        """Take the last step of clicks back: the mask returns exactly to what it was before it."""
        if not self._done:
            raise VISTA3DError("There is no click to undo.")
        step = self._done.pop()
        self._undone.append(step)
        return self._apply(step.region, step.before)

    def redo(self) -> Edit:
        """Put the last undone click back."""
        if not self._undone:
            raise VISTA3DError("There is no click to redo.")
        step = self._undone.pop()
        self._done.append(step)
        return self._apply(step.region, step.after)

    def _apply(self, region: Optional[tuple[slice, slice, slice]], values: Optional[np.ndarray]) -> Edit:
        if region is not None:
            self.mask[region] = values
        return Edit(self.mask.copy(), region)
