"""The click windows of one volume: the bundle's ``point_based_window_inferer`` with
``VISTA3D.forward`` (reference doc §4), with the image encoder's output cached per window.

One 128³ window is centred on every click of a structure (clamped to the volume, the volume
zero-padded to 128 where it is smaller), each window is run with all the clicks, and
overlapping windows' logits are summed (not averaged). ``interactive.Session`` turns clicks
into network points and the stitched logits into a structure's mask; this module only runs the
windows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from .feature_cache import FeatureCache
from .preprocessing import CLICK_WINDOW
from .progress import CancelToken, ProgressCallback, check_cancelled, report

if TYPE_CHECKING:
    import torch

    from .engine import Engine

#: Logit the network uses for "no prompt, nothing here" (VISTA3D.NINF_VALUE).
NO_PREDICTION = -9999.0
#: Logit magnitude that stands for the structure's existing mask when it is given as ``prev_mask``.
#: Small on purpose: where windows overlap their logits are summed, and a click's own prediction
#: must win over the old mask there, while the sign (inside / outside) of the old mask is kept
#: wherever no click changes it.
PREVIOUS_MASK_LOGIT = 0.01

Box = tuple[slice, slice, slice]


def window_start(point: float, size: int) -> int:
    """Start of the 128-voxel window centred on a click, as the reference computes it.

    ``point_based_window_inferer``: clamped to the volume, else ``int(point) - 64``.
    """
    half = CLICK_WINDOW // 2
    if point - half < 0:
        return 0
    if point + half > size:
        return size - CLICK_WINDOW
    return int(point) - half


class PointWindowInferer:
    """Runs click windows over one preprocessed volume (``[1, 1, X, Y, Z]`` on the network grid)."""

    def __init__(self, engine: "Engine", volume: "torch.Tensor", cache: FeatureCache) -> None:
        import torch

        self.engine = engine
        self.cache = cache
        self.spatial_shape = tuple(volume.shape[2:])
        # The point inferer zero-pads axes shorter than a window, half before and half after.
        self._pad_before = [max(CLICK_WINDOW - n, 0) // 2 for n in self.spatial_shape]
        torch_pad: list[int] = []
        for before, n in reversed(list(zip(self._pad_before, self.spatial_shape))):
            torch_pad += [before, max(CLICK_WINDOW - n, 0) - before]
        self._padded = torch.nn.functional.pad(volume, torch_pad, mode="constant", value=0.0)

    def previous_logits(self, inside: "torch.Tensor") -> "torch.Tensor":
        """A structure's mask on the network grid (``bool [X, Y, Z]``) as the model's ``prev_mask``
        logits on the padded grid."""
        import torch

        logits = torch.where(inside, PREVIOUS_MASK_LOGIT, -PREVIOUS_MASK_LOGIT)
        padded = torch.full(self._padded.shape[2:], -PREVIOUS_MASK_LOGIT, device=logits.device)
        padded[self._unpadded_region()] = logits
        return padded[None, None]

    def logits(
        self,
        points: np.ndarray,
        point_labels: Sequence[int],
        label: Optional[int],
        class_id: Optional[int],
        previous_logits: Optional["torch.Tensor"],
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> "torch.Tensor":
        """Stitched logits ``[X, Y, Z]`` of the click windows on the network grid, NaN outside them.

        ``points``: the clicks on the network grid; ``label`` the prompt class (None for none);
        ``class_id`` the class whose class-head logits are merged in (None: point head only);
        ``previous_logits`` from ``previous_logits`` or None.
        """
        import torch

        device = self.engine.device
        padded_points = torch.as_tensor(points + np.asarray(self._pad_before), dtype=torch.float64, device=device)
        coords = padded_points[None]
        labels = torch.as_tensor([point_labels], device=device)
        size = self._padded.shape[2:]
        # One window per click; a window shared by several clicks counts once per click, as in the
        # reference's sum, so compute it once and weight it.
        windows: dict[tuple[int, int, int], int] = {}
        for point in padded_points.tolist():
            start = tuple(window_start(p, s) for p, s in zip(point, size))
            windows[start] = windows.get(start, 0) + 1
        stitched = torch.zeros(size, dtype=torch.float32, device="cpu")
        covered = torch.zeros(size, dtype=torch.bool, device="cpu")
        for done, (start, count) in enumerate(windows.items()):
            check_cancelled(cancel)
            report(progress, done, len(windows), f"Click window {done + 1}/{len(windows)}")
            box = tuple(slice(s, s + CLICK_WINDOW) for s in start)
            previous = None if previous_logits is None else previous_logits[(slice(None), slice(None)) + box].clone()
            output = self._window_logits(start, box, coords, labels, label, class_id, previous)
            stitched[box] += count * output.float().cpu()
            covered[box] = True
        report(progress, len(windows), len(windows), "Clicks done")
        stitched[~covered] = torch.nan
        return stitched[self._unpadded_region()]

    def _unpadded_region(self) -> Box:
        return tuple(slice(b, b + n) for b, n in zip(self._pad_before, self.spatial_shape))  # type: ignore

    def _window_logits(
        self,
        start: tuple[int, int, int],
        box: Box,
        coords: "torch.Tensor",
        labels: "torch.Tensor",
        label: Optional[int],
        class_id: Optional[int],
        previous: Optional["torch.Tensor"],
    ) -> "torch.Tensor":
        """``VISTA3D.forward`` for one window and one object, with the encoder output cached."""
        import torch

        from .model import autocast

        network = self.engine.network
        patch = (slice(None), slice(None)) + box
        window_coords, window_labels = network.update_point_to_patch(patch, coords, labels)
        prompt_class = None if label is None else torch.as_tensor([[label]], device=coords.device)
        with autocast(self.engine.device, self.engine.precision):
            features, class_logits = self._features(start, class_id)
            if window_coords is None:  # no click strictly inside this window (a click on its first voxel)
                if class_logits is not None:
                    return class_logits[0, 0]
                return torch.full((CLICK_WINDOW,) * 3, NO_PREDICTION)
            point_logits = network.point_head(features, window_coords, window_labels, class_vector=prompt_class)
            mapping_index = torch.ones(1, dtype=torch.bool, device=point_logits.device)
            if class_logits is not None:
                # connected_components_combine writes into its first argument: never the cached tensor.
                logits = network.connected_components_combine(
                    class_logits.clone(), point_logits, window_coords, window_labels, mapping_index
                )
            elif previous is not None:
                logits = network.connected_components_combine(
                    previous.to(point_logits.device), point_logits, window_coords, window_labels, mapping_index
                )
            else:
                logits = point_logits
        return logits[0, 0]

    def _features(
        self, start: tuple[int, int, int], class_id: Optional[int]
    ) -> tuple["torch.Tensor", Optional["torch.Tensor"]]:
        """The point branch's features of a window and, for a class, its class-head logits.

        Both come from the cache when they are there; what is missing takes one encoder pass.
        Class logits (``[1, 1, 128, 128, 128]``, 8 MB) are cached rather than the class
        branch's 400 MB of features, since a structure keeps its class.
        """
        import torch

        point_key = ("point-features", start)
        class_key = None if class_id is None else ("class-logits", start, class_id)
        features = self.cache.get(point_key)
        class_logits = None if class_key is None else self.cache.get(class_key)
        need_class = class_key is not None and class_logits is None
        if features is None or need_class:
            box = (slice(None), slice(None)) + tuple(slice(s, s + CLICK_WINDOW) for s in start)
            encoded, class_features = self.engine.network.image_encoder(
                self._padded[box], with_point=features is None, with_label=need_class
            )
            if features is None:
                features = encoded
                self.cache.put(point_key, features)
            if need_class:
                class_vector = torch.as_tensor([[class_id]], device=class_features.device)
                class_logits, _ = self.engine.network.class_head(class_features, class_vector)
                self.cache.put(class_key, class_logits)
        return features, class_logits
