"""Automatic segmentation: class prompts over a sliding window (reference doc §5.4 B and §5.5).

``Engine`` holds one loaded network on one device and segments any number of images with
it. The windowing, blending and post-processing are MONAI's own components with the
bundle's effective settings (128³ windows, overlap 0.25, constant weights, replicate
padding, argmax/threshold then global IDs), so an fp32 run reproduces the reference; the
engine adds progress, cancellation, prompt checking and the input's own geometry.

Memory: with more classes than the class head has features (48), the features are stitched
instead of the logits, and the logits are made a chunk of voxels at a time: memory stops growing
with the classes. A volume whose stitched channels cannot fit is refused before anything is allocated
(``memory_needed`` against ``available_memory``), and a GPU that runs out of memory mid-run
falls back to stitching on the CPU, then to running the network there (``placements``).
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, TypeVar

import numpy as np

from . import labels as label_table
from .errors import VISTA3DError
from .geometry import Image
from .preprocessing import SPACING_MM, Preprocessed, preprocess
from .progress import CancelToken, ProgressCallback, check_cancelled, report

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Sliding-window settings the bundle's ``SlidingWindowInfererAdapt`` runs with (reference doc §5.4 B):
#: the configured overlap 0.3 never reaches it, so its defaults apply.
WINDOW = 128
OVERLAP = 0.25

GIB = 2**30
#: Voxels whose logits for every class are made at once from stitched features (117 classes: 117 MiB).
LOGIT_CHUNK_VOXELS = 2**18


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


def network_grid(shape: Sequence[int], affine: np.ndarray) -> tuple[int, int, int]:
    """The shape the preprocessing resamples an image of ``shape`` and ``affine`` to (1.5 mm, before
    the foreground crop), computed from the geometry alone as MONAI's ``Spacing`` does, so that
    nothing is allocated."""
    from monai.data.utils import compute_shape_offset, zoom_affine

    affine = np.asarray(affine, dtype=np.float64)
    resampled = zoom_affine(affine, [SPACING_MM] * 3, diagonal=False)
    grid, _ = compute_shape_offset(list(shape), affine, resampled, scale_extent=False)
    return tuple(int(n) for n in grid)  # type: ignore[return-value]


def memory_needed(source_shape: Sequence[int], grid: Sequence[int], channels: int) -> int:
    """Bytes a segmentation allocates at its peak, from the volume's sizes alone.

    Counts the allocations that grow with the volume (the network's own working memory for one
    window is fixed and not counted): ``source_shape`` is the input grid, ``grid`` the 1.5 mm one,
    ``channels`` what is stitched: one per class, or the class head's features when there are
    more classes than features (``Engine.stitched_channels``).
    """
    source = math.prod(source_shape)
    voxels = math.prod(grid)
    padded = math.prod(max(n, WINDOW) for n in grid)  # MONAI pads a short axis to a whole window
    # The float32 copy of the input and the resampled image exist together.
    preprocessing = 4 * source + 4 * voxels
    # The stitched float32 channels and MONAI's count map, the (padded) image and one window's
    # output (weighted in place); then, with the stitched channels still held, argmax's float32 maxima
    # and int64 indices and the int32 IDs picked from them.
    windows = 4 * (channels + 2) * padded + 4 * channels * WINDOW**3 + (4 + 8 + 4) * voxels
    # The labels resampled (float32) to the input grid, and np.rint's copy of them.
    restoring = 2 * 4 * source
    return max(preprocessing, windows, restoring)


def _host_memory_available() -> Optional[int]:
    """Bytes of RAM free for a new allocation, or None where this system does not say."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except OSError:
        pass
    return None  # Windows or macOS without psutil


def available_memory(device: "torch.device") -> Optional[int]:
    """Bytes a segmentation on ``device`` can use, or None when unknown (then nothing is refused).

    On a GPU this is the larger of its free memory and the host's: the stitched logits may go
    to either, since an out-of-memory GPU falls back to the CPU. Tests replace this function.
    """
    import torch

    host = _host_memory_available()
    if device.type != "cuda":
        return host
    free, _ = torch.cuda.mem_get_info(device)
    # Blocks PyTorch's caching allocator holds unused are free for this run; the driver counts them as used.
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(host or 0, free + cached)


@dataclass(frozen=True)
class Placement:
    """Where one attempt at a segmentation runs: the network's device, where the windows' logits are
    stitched (None: MONAI's adaptive inferer decides, as the bundle does), and the precision."""

    network: "torch.device"
    stitching: "Optional[torch.device]"
    precision: str
    #: What the warning says was done when this placement is a fallback that succeeded.
    fallback: str = ""


def placements(device: "torch.device", precision: str) -> list[Placement]:
    """The attempts an engine on ``device`` makes, in order, each after the previous ran out of memory.

    On a GPU the adaptive inferer already moves the stitching to the CPU when the GPU runs out inside
    it, but not when the labels or the restoring run out afterwards; stitching on the CPU from the
    start keeps those on the CPU too. Last, the network itself runs on the CPU.
    """
    import torch

    first = Placement(device, None, precision)
    if device.type != "cuda":
        return [first]
    cpu = torch.device("cpu")
    return [
        first,
        Placement(device, cpu, precision, "stitched the windows on the CPU"),
        # fp16 is a GPU precision (``model.autocast`` refuses it on the CPU), so the CPU runs the reference fp32.
        Placement(cpu, cpu, "fp32" if precision == "fp16" else precision, "finished on the CPU"),
    ]


def _is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure of the GPU, the CPU or numpy, which a smaller run may avoid."""
    import torch

    if isinstance(error, (MemoryError, torch.cuda.OutOfMemoryError, getattr(torch, "OutOfMemoryError", ()))):
        return True
    # torch's CPU allocator raises a plain RuntimeError ("can't allocate memory" on POSIX, "not enough
    # memory" on Windows); both name the allocator.
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator" in str(error)


def _release_memory() -> None:
    """Give the memory of a failed attempt back, to the GPU driver too, before the next attempt."""
    import torch

    gc.collect()  # the failed attempt's frames may sit in reference cycles, holding tensors
    torch.cuda.empty_cache()


def _format_shape(shape: Sequence[int]) -> str:
    return "×".join(str(n) for n in shape)


class Engine:
    """One VISTA3D network on one device, ready to segment images.

    ``network`` is any module with ``VISTA3D.forward``'s signature (the tests pass small ones); one
    with VISTA3D's ``image_encoder`` and ``class_head`` also stitches class features for many classes.
    """

    def __init__(self, network: "torch.nn.Module", device: "torch.device | str" = "cpu", precision: str = "fp32"):
        import torch

        from .model import autocast

        self.device = torch.device(device)
        self.precision = precision
        autocast(self.device, precision)  # rejects an unknown precision or fp16 on a CPU now, not mid-run
        self.network = network.to(self.device).eval()
        # The class-feature path needs VISTA3D's parts, not only its forward (which test networks may be alone).
        head = getattr(network, "class_head", None)
        self.feature_channels = head.class_embeddings.embedding_dim if head is not None else math.inf

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

        class_ids = _class_ids(label_ids)  # before the preprocessing, not after it
        grid = network_grid(image.shape, image.affine)
        self._check_memory(image.shape, grid, len(class_ids))
        prepared: Optional[Preprocessed] = None

        def attempt(placement: Placement) -> np.ndarray:
            nonlocal prepared
            # Preprocessing is part of the retry: it may be what ran out, and the CPU fallback needs its input there.
            if prepared is None or prepared.tensor.device.type != placement.network.type:
                prepared = None  # frees the GPU copy before the CPU one is made
                check_cancelled(cancel)
                report(progress, 0, 1, "Preprocessing")
                with torch.inference_mode():
                    prepared = preprocess(image, placement.network)
            return self._segment_once(prepared, class_ids, placement, progress, cancel)

        return image.with_array(self._with_fallback(attempt, grid, len(class_ids)))

    def segment_prepared(
        self,
        prepared: Preprocessed,
        label_ids: Optional[Sequence[int]] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> np.ndarray:
        """``segment`` on an image already preprocessed (an interactive session keeps one): IDs on the input grid."""
        class_ids = _class_ids(label_ids)
        self._check_memory(prepared.source_shape, prepared.spatial_shape, len(class_ids))
        return self._with_fallback(
            lambda placement: self._segment_once(prepared, class_ids, placement, progress, cancel),
            prepared.spatial_shape,
            len(class_ids),
        )

    def stitched_channels(self, classes: int) -> int:
        """Channels stitched over the volume for ``classes`` classes: the logits, or the class head's
        image features when there are fewer of them (48 in vista3d132, against 117 classes for everything)."""
        return min(classes, self.feature_channels)

    def _check_memory(self, source_shape: Sequence[int], grid: Sequence[int], classes: int) -> None:
        """Refuse, before anything is allocated, a segmentation that cannot fit in the memory available."""
        needed = memory_needed(source_shape, grid, self.stitched_channels(classes))
        available = available_memory(self.device)
        if available is not None and needed > available:
            raise VISTA3DError(
                f"The volume is too large for the memory available: {_format_shape(source_shape)} voxels are "
                f"{_format_shape(grid)} = {math.prod(grid):,} voxels at {SPACING_MM} mm, and segmenting {classes} "
                f"classes needs about {needed / GIB:.1f} GB, but only {available / GIB:.1f} GB is free. Segment "
                "fewer labels, crop the volume to the region of interest, or use a machine with more memory."
            )

    def _with_fallback(self, attempt: Callable[[Placement], T], grid: Sequence[int], classes: int) -> T:
        """Run ``attempt`` at each of ``placements`` in turn until one does not run out of memory."""
        ladder = placements(self.device, self.precision)
        try:
            for placement in ladder:
                self.network.to(placement.network)
                try:
                    result = attempt(placement)
                except Exception as error:  # anything but an out-of-memory is raised again below
                    if not _is_out_of_memory(error):
                        raise  # a cancellation or a bug: a retry would not help
                    logger.info("Out of memory with %s: %s", placement, error)
                else:
                    if placement.fallback:
                        logger.warning(
                            "GPU out of memory: %s, which is slower; fewer labels or a smaller volume fit the GPU.",
                            placement.fallback,
                        )
                    return result
                _release_memory()  # here, past the except block, the error and the tensors its traceback held are gone
        finally:
            self.network.to(self.device)  # the next image may fit the engine's device again
        raise VISTA3DError(
            f"Out of memory segmenting a volume of {math.prod(grid):,} voxels ({_format_shape(grid)} at "
            f"{SPACING_MM} mm) with {classes} classes: segment fewer labels, crop the volume, or use a machine "
            "with more memory."
        )

    def _segment_once(
        self,
        prepared: Preprocessed,
        class_ids: Sequence[int],
        placement: Placement,
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
    ) -> np.ndarray:
        """One attempt at ``segment_prepared`` at ``placement``: IDs on the input grid."""
        import torch

        with torch.inference_mode():
            image = prepared.tensor.to(placement.network)
            if self.stitched_channels(len(class_ids)) < len(class_ids):
                features = self._sliding_window(image, self._window_features, {}, placement, progress, cancel)
                del image
                check_cancelled(cancel)  # the logits, argmax and resampling back take seconds on a large volume
                labels = self._features_to_labels(features, class_ids, placement)
                del features
            else:
                class_vector = torch.as_tensor(class_ids, device=placement.network).unsqueeze(-1)
                logits = self._sliding_window(image, self.network, _class_prompt(class_vector), placement, progress,
                                              cancel)
                del image
                check_cancelled(cancel)
                labels = _logits_to_labels(logits, class_ids)
                del logits
            restored = prepared.restore(labels)
        return np.rint(restored).astype(np.uint8)

    def _window_features(self, window: "torch.Tensor", patch_coords=None) -> "torch.Tensor":
        """The class head's image features of one window (``ClassMappingClassify.image_post_mapping``)."""
        _, auto_features = self.network.image_encoder(window, with_point=False, with_label=True)
        return self.network.class_head.image_post_mapping(auto_features)

    def _features_to_labels(self, features: "torch.Tensor", class_ids: Sequence[int], placement: Placement) -> "torch.Tensor":
        """Global IDs from stitched class-head features ``[C, X, Y, Z]``, as ``_logits_to_labels`` from the logits.

        The class head's logits are its class embeddings times these features, and the stitching is
        a weighted mean of windows, so stitching the features and then taking the product gives the
        stitched logits. They are made a chunk of voxels at a time, so that the classes x volume logits
        never exist at once.
        """
        import torch

        from .model import autocast

        head = self.network.class_head
        with autocast(placement.network, placement.precision):  # as the head runs inside the network
            embeddings = head.class_embeddings(torch.as_tensor(class_ids, device=placement.network).unsqueeze(-1))
            if head.use_mlp:
                embeddings = head.mlp(embeddings)
        embeddings = embeddings[:, 0, :]  # [classes, C]
        flat = features.reshape(features.shape[0], -1)
        labels = torch.empty(flat.shape[1], dtype=torch.int32, device=features.device)
        for start in range(0, flat.shape[1], LOGIT_CHUNK_VOXELS):
            chunk = flat[:, start : start + LOGIT_CHUNK_VOXELS].to(placement.network)
            with autocast(placement.network, placement.precision):
                logits = embeddings @ chunk
            labels[start : start + LOGIT_CHUNK_VOXELS] = _logits_to_labels(logits.float(), class_ids).to(features.device)
        return labels.reshape(features.shape[1:])

    def _sliding_window(
        self,
        image: "torch.Tensor",
        forward: Callable[..., "torch.Tensor"],
        arguments: dict,
        placement: Placement,
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
    ) -> "torch.Tensor":
        """``forward(window, patch_coords, **arguments)`` stitched over the whole preprocessed image: ``[B, X, Y, Z]``."""
        import torch
        from monai.inferers import SlidingWindowInfererAdapt

        from .model import autocast

        total = count_windows(image.shape[1:])
        done = 0

        def predict(window: torch.Tensor, patch_coords, **kwargs) -> torch.Tensor:
            nonlocal done
            check_cancelled(cancel)  # stops between windows: at most one window late
            with autocast(placement.network, placement.precision):
                output = forward(window, patch_coords, **kwargs)
            done = min(done + 1, total)  # an out-of-memory retry replays windows; never count past the end
            report(progress, done, total, f"Window {done}/{total}")
            return output

        inferer = SlidingWindowInfererAdapt(
            roi_size=[WINDOW] * 3,
            sw_batch_size=1,
            overlap=OVERLAP,
            mode="constant",
            padding_mode="replicate",
            with_coord=True,
            sw_device=placement.network,
            device=placement.stitching,  # given, it turns the inferer's own adaptation off
        )
        return inferer(image[None], predict, **arguments)[0].float()


def _class_prompt(class_vector: "torch.Tensor") -> dict:
    """``VISTA3D.forward``'s arguments for class prompts alone, as the bundle's inferer passes them."""
    return {
        "transpose": True,
        "class_vector": class_vector,
        "prompt_class": class_vector,
        "point_coords": None,
        "point_labels": None,
        "prev_mask": None,
        "labels": None,
        "label_set": None,
    }


def _class_ids(label_ids: Optional[Sequence[int]]) -> list[int]:
    """The classes the class head predicts for a prompt (None = everything), group IDs expanded."""
    prompt = list(label_table.EVERYTHING if label_ids is None else label_ids)
    label_table.validate_automatic_prompt(prompt)
    return label_table.expand_subclasses(prompt)


def _logits_to_labels(logits: "torch.Tensor", class_ids: Sequence[int]) -> "torch.Tensor":
    """Global IDs from per-class logits ``[B, X, Y, Z]`` as the bundle's ``VistaPostTransformd``.

    Each class is an independent sigmoid: a voxel is background when no logit is above 0,
    else it takes the class of the largest logit (the first one on a tie, as ``argmax``).
    """
    import torch

    best, index = logits.max(dim=0)
    ids = torch.as_tensor(class_ids, dtype=torch.int32, device=logits.device)
    return torch.where(best > 0, ids[index], torch.zeros_like(index, dtype=torch.int32))
