"""Supervoxels from 2D SAM features: the VISTA3D paper's method (reference doc §7).

Every slice of the volume, along each of the three axes, goes through SAM's image encoder and
SAM's own output upscaling with no prompt (32 channels at 256²). The features are resized back
to the slice, the three views are summed into one 32-channel feature volume, and SLIC clusters
it into supervoxels. Air around the body gets no supervoxel.

The recipe, as the VISTA authors' ``slic_process_sam.py`` runs it:

- intensity: HU window [-1000, 1000] mapped to [0, 255], clipped;
- per slice: zero-pad to a square (after the data, as SAM pads), resize to 1024² (bilinear),
  three identical channels, SAM's pixel mean and std;
- features: ``image_encoder`` then ``mask_decoder.output_upscaling``; resize back to the padded
  square slice (bilinear) and crop the padding away;
- the three views (slices along axis 2, 1 and 0, each slice's axes in increasing order) summed;
- ``skimage.segmentation.slic(features, channel_axis=0, compactness=0.01, n_segments=400,
  sigma=3)``; air = the largest connected region below -800 HU, closed (dilate 3, erode 3).

Supervoxels are computed over a region of interest (a box around the clicks, or the whole
volume): a CPU takes 10-20 s per SAM ViT-B slice, so whole volumes are for GPUs. Slices go
through the encoder in batches, under bf16/fp16 autocast on a GPU when asked. Results are
cached per volume and ROI by ``SupervoxelCache``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from .errors import VISTA3DError
from .geometry import Image
from .progress import CancelToken, ProgressCallback, check_cancelled, report

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAM_KINDS = ("vit_b", "vit_l", "vit_h")
DEFAULT_SAM_KIND = "vit_b"
#: SAM's input side, pixel mean and std (``segment_anything.modeling.Sam``).
SAM_INPUT_SIZE = 1024
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: The reference's intensity window (HU) mapped to SAM's 0..255 pixel range.
HU_WINDOW = (-1000.0, 1000.0)
#: The reference's SLIC parameters.
N_SEGMENTS = 400
COMPACTNESS = 0.01
SIGMA = 3.0
#: Voxels below this (HU), connected to the largest such region, are the air around the body.
AIR_HU = -800.0
#: Slices per encoder batch (the reference uses 8).
SLICE_BATCH = 8

Box = tuple[slice, slice, slice]


def sam_model_registry() -> dict[str, Callable]:
    """``segment_anything``'s model builders, whether or not torchvision can be imported.

    ``import segment_anything`` runs the package's ``__init__``, which imports its predictor and
    automatic mask generator, and those need torchvision. In Slicer the PyTorch extension
    installs a torchvision that matches torch, and the plain import works. Elsewhere
    torchvision may be missing or built for another torch (it is on the project's CI machine).
    The model builders (``build_sam``, ``modeling``) use torch alone, so when the plain import
    fails they are loaded without running the package's ``__init__``.
    """
    try:
        from segment_anything import sam_model_registry as registry

        return registry
    except ModuleNotFoundError as error:
        if error.name == "segment_anything":
            raise VISTA3DError(
                "The zero-shot tool needs the segment-anything package: pip install segment-anything"
            ) from None
        logger.info("segment_anything's predictor cannot be imported (%s); loading its model code alone", error)
    except (ImportError, RuntimeError) as error:  # RuntimeError: torchvision built for another torch
        logger.info("segment_anything's predictor cannot be imported (%s); loading its model code alone", error)
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or not spec.submodule_search_locations:
        raise VISTA3DError("The zero-shot tool needs the segment-anything package: pip install segment-anything")
    for name in [n for n in sys.modules if n == "segment_anything" or n.startswith("segment_anything.")]:
        del sys.modules[name]  # whatever a failed import left half-initialised
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["segment_anything"] = package
    from segment_anything.build_sam import sam_model_registry as registry

    return registry


def build_sam(kind: str = DEFAULT_SAM_KIND, checkpoint: Optional[str] = None, device: "torch.device | str" = "cpu"):
    """A SAM model of ``kind`` (vit_b, vit_l, vit_h), with the weights of ``checkpoint`` if given."""
    import torch

    if kind not in SAM_KINDS:
        raise VISTA3DError(f"Unknown SAM model {kind!r}: use one of {', '.join(SAM_KINDS)}.")
    sam = sam_model_registry()[kind](checkpoint=None)
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file: say which file, not a pickle trace
            raise VISTA3DError(f"Cannot read the SAM checkpoint {checkpoint}: {error}") from None
        try:
            sam.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as error:  # other keys, other shapes, not a dict
            first = str(error).strip().splitlines()[0]
            raise VISTA3DError(
                f"{checkpoint} is not a SAM {kind} checkpoint ({first}). Pass the file that matches "
                "--sam-model, or let vista3d download it."
            ) from None
    return sam.to(device).eval()


# ---------------------------------------------------------------------------------------- features


def to_sam_pixels(hu: np.ndarray) -> np.ndarray:
    """HU mapped to SAM's 0..255 pixel range with the reference's window, clipped (float32)."""
    low, high = HU_WINDOW
    return (np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.float32)


def slice_features(sam, slices: "torch.Tensor") -> "torch.Tensor":
    """SAM's upscaled, prompt-free features ``[B, 32, h, w]`` of ``B`` slices ``[B, h, w]`` (0..255)."""
    import torch.nn.functional as F

    height, width = slices.shape[-2:]
    side = max(height, width)
    square = F.pad(slices[:, None], (0, side - width, 0, side - height))  # zeros after the data, as SAM pads
    pixels = F.interpolate(square, size=(SAM_INPUT_SIZE, SAM_INPUT_SIZE), mode="bilinear", align_corners=False)
    mean = pixels.new_tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1)
    std = pixels.new_tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    pixels = (pixels.expand(-1, 3, -1, -1) - mean) / std
    features = sam.mask_decoder.output_upscaling(sam.image_encoder(pixels))
    features = F.interpolate(features.float(), size=(side, side), mode="bilinear", align_corners=False)
    return features[:, :, :height, :width]


def volume_features(
    sam,
    hu: np.ndarray,
    *,
    device: "torch.device | str" = "cpu",
    precision: str = "fp32",
    batch: int = SLICE_BATCH,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> "torch.Tensor":
    """The summed three-view SAM feature volume ``[32, X, Y, Z]`` (float32, on the CPU) of ``hu[i, j, k]``."""
    import torch

    from .model import autocast

    device = torch.device(device)
    volume = torch.as_tensor(to_sam_pixels(hu), device=device)
    total = sum(volume.shape)
    done = 0
    summed: Optional[torch.Tensor] = None  # [C, X, Y, Z] on the CPU, each view added in place
    with torch.inference_mode():
        for axis in (2, 1, 0):
            # Slices along ``axis``, each slice's two other axes in increasing order.
            stack = volume.movedim(axis, 0)
            for start in range(0, stack.shape[0], batch):
                check_cancelled(cancel)
                with autocast(device, precision):
                    features = slice_features(sam, stack[start : start + batch]).float().cpu()  # [b, C, h, w]
                if summed is None:
                    summed = torch.zeros((features.shape[1],) + tuple(volume.shape))
                # ``movedim`` gives a view of ``summed`` ordered as the slices are: [C, axis, h, w].
                summed.movedim(1 + axis, 1)[:, start : start + len(features)] += features.transpose(0, 1)
                done += len(features)
                report(progress, done, total, f"SAM features, slice {done}/{total}")
    assert summed is not None
    return summed


# ------------------------------------------------------------------------------------- clustering


def air_mask(hu: np.ndarray) -> np.ndarray:
    """The air around the body: the largest connected region below -800 HU, closed by 3 voxels."""
    import torch
    from monai.transforms.utils import get_largest_connected_component_mask
    from monai.transforms.utils_morphological_ops import dilate, erode

    low = torch.as_tensor(np.asarray(hu) < AIR_HU)
    if not low.any():
        return np.zeros(np.shape(hu), dtype=bool)
    largest = get_largest_connected_component_mask(low[None])[0]
    closed = erode(dilate(largest[None, None].float(), filter_size=3), filter_size=3)[0, 0]
    return np.asarray(closed > 0.5)


def cluster(
    features: "torch.Tensor | np.ndarray",
    air: np.ndarray,
    *,
    n_segments: int = N_SEGMENTS,
    compactness: float = COMPACTNESS,
    sigma: float = SIGMA,
) -> np.ndarray:
    """SLIC supervoxels of a feature volume ``[C, X, Y, Z]``; 0 in ``air``; each label one connected region.

    SLIC keeps its segments connected; removing the air can still cut one in pieces, so the
    pieces are numbered apart afterwards (labels 1..N).
    """
    from skimage.measure import label as connected_regions
    from skimage.segmentation import slic

    if n_segments < 1:
        raise VISTA3DError(f"The number of supervoxels must be at least 1, got {n_segments}.")
    array = np.asarray(features, dtype=np.float64)
    segments = slic(array, n_segments=n_segments, compactness=compactness, sigma=sigma, channel_axis=0, start_label=1)
    segments[air] = 0
    return connected_regions(segments, background=0, connectivity=1).astype(np.int32)


def parse_roi(text: str, shape: Sequence[int]) -> Box:
    """``i0,j0,k0,i1,j1,k1`` (voxel indices, ends exclusive) as a box inside ``shape``."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise VISTA3DError(f"A ROI is six integers i0,j0,k0,i1,j1,k1 (ends exclusive), got {text!r}.")
    return roi_box(values[:3], values[3:], shape)


def roi_box(start: Sequence[int], stop: Sequence[int], shape: Sequence[int]) -> Box:
    """A box of voxel indices, refused when empty or outside the volume."""
    for axis, (a, b, n) in enumerate(zip(start, stop, shape)):
        if not 0 <= a < b <= n:
            raise VISTA3DError(
                f"The ROI's axis {axis} runs {a}..{b} (end exclusive), which is empty or outside the volume "
                f"(0..{n}). Give 0 <= start < end <= size on every axis."
            )
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))  # type: ignore[return-value]


def box_around(points: Sequence[Sequence[float]], margin: Sequence[int], shape: Sequence[int]) -> Box:
    """The box holding ``points`` (voxel indices) with ``margin`` voxels around, clipped to the volume."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    low = np.floor(points.min(axis=0)).astype(int) - np.asarray(margin)
    high = np.ceil(points.max(axis=0)).astype(int) + 1 + np.asarray(margin)
    return roi_box(np.maximum(low, 0), np.minimum(high, shape), shape)


#: Voxels of margin around a zero-shot mask and its clicks for the supervoxels that snap it.
SNAP_MARGIN = 8


def snap_roi(mask: np.ndarray, clicks: Sequence[Sequence[float]], margin: int = SNAP_MARGIN) -> Box:
    """The box that snapping needs supervoxels for: the mask and the clicks, with a margin."""
    corners = [tuple(c) for c in clicks]
    if mask.any():
        where = np.argwhere(mask)
        corners += [tuple(where.min(axis=0)), tuple(where.max(axis=0))]
    if not corners:
        raise VISTA3DError("Nothing to snap: the mask is empty and there are no clicks.")
    return box_around(corners, [margin] * 3, mask.shape)


def compute_supervoxels(
    sam,
    image: Image,
    roi: Optional[Box] = None,
    *,
    n_segments: int = N_SEGMENTS,
    device: "torch.device | str" = "cpu",
    precision: str = "fp32",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Image:
    """Supervoxels of ``image`` inside ``roi`` (default: the whole volume), on the input grid.

    Labels 1..N are connected regions; 0 outside the ROI and in the air around the body.
    """
    box = roi if roi is not None else tuple(slice(0, n) for n in image.shape)
    hu = np.asarray(image.array[box], dtype=np.float32)
    if min(hu.shape) < 1:
        raise VISTA3DError("The ROI is empty.")
    features = volume_features(sam, hu, device=device, precision=precision, progress=progress, cancel=cancel)
    report(progress, 0, 1, "Clustering supervoxels")
    labels = cluster(features, air_mask(hu), n_segments=n_segments)
    output = np.zeros(image.shape, dtype=np.int32)
    output[box] = labels
    return image.with_array(output)


class SupervoxelCache:
    """Supervoxel maps of one volume by ROI and number of segments (a SAM pass is slow: keep them).

    Whoever changes the volume calls ``clear``, as for the session's feature cache.
    """

    def __init__(self, sam, *, device: "torch.device | str" = "cpu", precision: str = "fp32"):
        self.sam = sam
        self.device = device
        self.precision = precision
        self._maps: dict[tuple, Image] = {}

    def get(
        self,
        image: Image,
        roi: Optional[Box] = None,
        *,
        n_segments: int = N_SEGMENTS,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Image:
        box = roi if roi is not None else tuple(slice(0, n) for n in image.shape)
        key = (tuple((s.start, s.stop) for s in box), n_segments)
        if key not in self._maps:
            self._maps[key] = compute_supervoxels(
                self.sam, image, box, n_segments=n_segments, device=self.device, precision=self.precision,
                progress=progress, cancel=cancel,
            )
        return self._maps[key]

    def clear(self) -> None:
        self._maps.clear()


# --------------------------------------------------------------------------------------- snapping


def snap(
    mask: np.ndarray,
    supervoxels: np.ndarray,
    fraction: float,
    positive: Sequence[Sequence[float]] = (),
    negative: Sequence[Sequence[float]] = (),
) -> np.ndarray:
    """A mask made of whole supervoxels.

    Keeps every supervoxel that ``mask`` covers for at least ``fraction`` of its voxels, adds
    the supervoxel under each positive click, and removes the one under each negative click
    (clicks are voxel indices, rounded to the nearest voxel). Voxels without a supervoxel
    (label 0: outside the ROI, air) keep the mask's value.
    """
    if not 0.0 < fraction <= 1.0:
        raise VISTA3DError(f"The snap fraction must be in (0, 1], got {fraction}.")
    if mask.shape != supervoxels.shape:
        raise VISTA3DError(f"The mask ({mask.shape}) and the supervoxels ({supervoxels.shape}) differ in shape.")
    labels = supervoxels.ravel()
    counts = np.bincount(labels)
    covered = np.bincount(labels, weights=mask.ravel().astype(np.float64), minlength=len(counts))
    keep = covered >= fraction * np.maximum(counts, 1)
    for point in positive:
        keep[_label_at(supervoxels, point)] = True
    for point in negative:
        keep[_label_at(supervoxels, point)] = False
    keep[0] = False
    return np.where(supervoxels > 0, keep[supervoxels], mask)


def _label_at(supervoxels: np.ndarray, point: Sequence[float]) -> int:
    index = tuple(int(np.clip(np.rint(p), 0, n - 1)) for p, n in zip(point, supervoxels.shape))
    return int(supervoxels[index])
