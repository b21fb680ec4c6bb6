"""Automatic segmentation: class prompts over a sliding window (reference doc §5.4 B and §5.5).

``Engine`` holds one loaded network on one device and segments any number of images with
it. The windowing, blending and post-processing are MONAI's own components with the
bundle's effective settings (128³ windows, overlap 0.25, constant weights, replicate
padding, argmax/threshold then global IDs), so an fp32 run reproduces the reference; the
engine adds progress, cancellation, prompt checking and the input's own geometry.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from . import labels as label_table
from .geometry import Image
from .preprocessing import Preprocessed, preprocess
from .progress import CancelToken, ProgressCallback, report

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Sliding-window settings the bundle's ``SlidingWindowInfererAdapt`` runs with (reference doc §5.4 B):
#: the configured overlap 0.3 never reaches it, so its defaults apply.
WINDOW = 128
OVERLAP = 0.25


def windows_per_axis(size: int) -> int:
    """How many windows MONAI's sliding window puts along an axis of ``size`` voxels (after padding)."""
    size = max(size, WINDOW)  # smaller axes are padded up to one window
    if size == WINDOW:
        return 1
    interval = int(WINDOW * (1 - OVERLAP))
    return math.ceil((size - WINDOW) / interval) + 1


def count_windows(shape: Sequence[int]) -> int:
    """Number of 128³ windows for a preprocessed volume of ``shape`` (for progress reporting)."""
    return math.prod(windows_per_axis(n) for n in shape)


class Engine:
    """One VISTA3D network on one device, ready to segment images.

    ``network`` is any module with ``VISTA3D.forward``'s signature (the tests pass small ones).
    """

    def __init__(self, network: "torch.nn.Module", device: "torch.device | str" = "cpu", precision: str = "fp32"):
        import torch

        from .model import autocast

        self.device = torch.device(device)
        self.precision = precision
        autocast(self.device, precision)  # rejects an unknown precision or fp16 on a CPU now, not mid-run
        self.network = network.to(self.device).eval()

    @classmethod
    def from_weights(
        cls, weights: str | Path | None = None, device: str = "auto", precision: str = "fp32"
    ) -> "Engine":
        """Load a checkpoint (``--weights``, ``VISTA3D_WEIGHTS`` or the verified cached download)."""
        from .model import load_network, resolve_device
        from .weights import resolve_weights

        resolved = resolve_device(device)
        path = resolve_weights(weights)
        logger.info("Loading VISTA3D weights from %s onto %s", path, resolved)
        return cls(load_network(path, resolved), resolved, precision)

    def segment(
        self,
        image: Image,
        label_ids: Optional[Sequence[int]] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Image:
        """Segment ``label_ids`` (VISTA3D global IDs; None = everything, 117 classes) automatically.

        Returns a labelmap on the input's grid: VISTA3D global IDs, 0 for background.
        Group IDs (2 kidney, 20 lung, 21 bone) are expanded to their members, as the bundle does.
        """
        import torch

        if label_ids is not None:
            label_table.validate_automatic_prompt(label_ids)  # before the preprocessing, not after it
        report(progress, 0, 1, "Preprocessing")
        with torch.inference_mode():
            prepared = preprocess(image, self.device)
        return image.with_array(self.segment_prepared(prepared, label_ids, progress=progress, cancel=cancel))

    def segment_prepared(
        self,
        prepared: Preprocessed,
        label_ids: Optional[Sequence[int]] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> np.ndarray:
        """``segment`` on an image already preprocessed (an interactive session keeps one): IDs on the input grid."""
        import torch

        prompt = list(label_table.EVERYTHING if label_ids is None else label_ids)
        label_table.validate_automatic_prompt(prompt)
        class_ids = label_table.expand_subclasses(prompt)
        with torch.inference_mode():
            logits = self._sliding_window(prepared.tensor, class_ids, progress, cancel)
            labels = _logits_to_labels(logits, class_ids)
            del logits
            restored = prepared.restore(labels)
        return np.rint(restored).astype(np.uint8)

    def _sliding_window(
        self,
        image: "torch.Tensor",
        class_ids: Sequence[int],
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
    ) -> "torch.Tensor":
        """Class-head logits ``[B, X, Y, Z]`` of the whole preprocessed image (B = len(class_ids))."""
        import torch
        from monai.inferers import SlidingWindowInfererAdapt

        from .model import autocast

        total = count_windows(image.shape[1:])
        done = 0

        def predict(window: torch.Tensor, patch_coords, **kwargs) -> torch.Tensor:
            nonlocal done
            if cancel is not None:
                cancel.raise_if_cancelled()  # stops between windows: at most one window late
            with autocast(self.device, self.precision):
                output = self.network(window, patch_coords, **kwargs)
            done = min(done + 1, total)  # an out-of-memory retry replays windows; never count past the end
            report(progress, done, total, f"Window {done}/{total}")
            return output

        class_vector = torch.as_tensor(class_ids, device=self.device).unsqueeze(-1)
        inferer = SlidingWindowInfererAdapt(
            roi_size=[WINDOW] * 3,
            sw_batch_size=1,
            overlap=OVERLAP,
            mode="constant",
            padding_mode="replicate",
            with_coord=True,
        )
        logits = inferer(
            image[None],
            predict,
            transpose=True,
            class_vector=class_vector,
            prompt_class=class_vector,
            point_coords=None,
            point_labels=None,
            prev_mask=None,
            labels=None,
            label_set=None,
        )
        return logits[0].float()


def _logits_to_labels(logits: "torch.Tensor", class_ids: Sequence[int]) -> "torch.Tensor":
    """Global IDs from per-class logits ``[B, X, Y, Z]`` as the bundle's ``VistaPostTransformd``.

    Each class is an independent sigmoid: a voxel is background when no logit is above 0,
    else it takes the class of the largest logit (the first one on a tie, as ``argmax``).
    """
    import torch

    best, index = logits.max(dim=0)
    ids = torch.as_tensor(class_ids, dtype=torch.int32, device=logits.device)
    return torch.where(best > 0, ids[index], torch.zeros_like(index, dtype=torch.int32))

