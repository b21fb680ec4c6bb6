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
through the encoder in batches, under bf16/fp16 autocast when asked.

Memory: SAM's global attention holds about 2.5 GB per ViT-B slice in fp32 whatever the ROI's
size, and clustering a whole CT's 32-channel feature volume with SLIC can need tens of GB. In
Slicer an out-of-memory kill loses the user's scene, so ``estimate_memory`` bounds both from
SAM's architecture and the ROI's size, and ``choose_slice_batch`` sizes the batch to the memory
free (one slice at a time if need be) or refuses, before SAM runs, what cannot fit.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from .errors import VISTA3DError
from .geometry import Image
from .memory import format_bytes, gpu_memory_available, host_memory_available
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
#: The most slices per encoder batch (the reference uses 8); fewer when memory is short.
SLICE_BATCH = 8
#: Share of the memory measured free that supervoxels plan to use: the rest is for what other
#: programs allocate meanwhile and what the measurement does not see.
FREE_MEMORY_SHARE = 0.9

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
    memory_budget: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> "torch.Tensor":
    """The summed three-view SAM feature volume ``[32, X, Y, Z]`` (float32, on the CPU) of ``hu[i, j, k]``.

    ``batch`` is the most slices per SAM call: fewer go when the memory cannot hold them, and a
    volume that cannot fit even one slice at a time is refused before SAM runs
    (``choose_slice_batch``; ``memory_budget``: bytes of host memory it may use, None: what is free).
    """
    import torch

    device = torch.device(device)
    estimate = estimate_memory(sam, np.shape(hu), precision=precision, device_type=device.type)
    fitting = choose_slice_batch(estimate, device, memory_budget=memory_budget, most=batch, clustering=False)
    return _summed_features(sam, hu, device, precision, fitting, progress, cancel)


def _summed_features(
    sam,
    hu: np.ndarray,
    device: "torch.device",
    precision: str,
    batch: int,
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
) -> "torch.Tensor":
    """``volume_features`` with ``batch`` slices per SAM call, whatever the memory."""
    import torch

    from .model import autocast

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


# ------------------------------------------------------------------------------------------ memory

#: Attention maps of ``heads x tokens x tokens`` alive at once at a ViT block's peak
#: (``add_decomposed_rel_pos``): the scores, the scores plus the relative-position term along one
#: axis, and that plus the term along the other; the softmax then holds two (input and output).
ATTENTION_MAPS_AT_PEAK = 3
#: Token tensors of the embedding's width alive in a block: the shortcut, the normalised tokens,
#: qkv and its q, k, v copies (attention); and of the MLP's width: its hidden layer and activation.
TOKEN_COPIES_AT_PEAK = 8
MLP_COPIES_AT_PEAK = 2
#: What the terms of ``sam_slice_memory`` are multiplied by to bound the peaks measured, whatever
#: the allocator and oneDNN add on another machine. Measured (growth of max RSS in a fresh process,
#: ViT-B with random weights, 64² slices, 2 CPU threads, torch 2.13): fp32 2500 MiB for one slice,
#: 5037 for two (2537 a slice more); bf16 1378 MiB for one, 2662 for two. The terms alone count
#: 2553 (fp32) and 1401 MiB (bf16) a slice, about 1 % over; with this margin the estimate is
#: 2936 and 1611 MiB a slice: 16-17 % over the measured slice, 17-21 % over the batches of two.
SAM_ESTIMATE_MARGIN = 1.15
#: Host bytes a voxel of the ROI takes while clustering, measured as above (skimage 0.26, monai
#: 1.6), then rounded up: the air mask (monai's connected components and closing) peaks at 130 B a
#: voxel, counted as 144 (+11 %); ``cluster`` (its float64 copy, SLIC's own copy, smoothed and
#: scaled copies, SLIC's distances and the labels) at 8.1x the float32 feature volume, a fit of
#: 32 B per voxel and channel + 16 B per voxel to 1, 8 and 32 channels at 64³ and 32 at 96³,
#: counted as 36 + 24 (+14 % for 32 channels, +18 % for 8, +25 % for 1).
AIR_MASK_BYTES_PER_VOXEL = 144
SLIC_BYTES_PER_VOXEL_AND_CHANNEL = 36
SLIC_BYTES_PER_VOXEL = 24
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class SupervoxelMemory:
    """Bytes that supervoxels of one ROI need (upper bounds): SAM's pass over its slices, then the clustering."""

    shape: tuple[int, ...]  # the ROI's voxels
    precision: str
    channels: int  # of SAM's feature volume
    slice_bytes: int  # SAM's activations for one slice, on SAM's device
    pixels_bytes: int  # the ROI as SAM pixels (float32), on SAM's device while SAM runs
    features_bytes: int  # on the host while SAM runs: the ROI's HU and the summed feature volume
    clustering_bytes: int  # the host's peak once SAM is done: features, air mask, SLIC, labels

    def sam_bytes(self, batch: int) -> int:
        """Bytes on SAM's device while batches of ``batch`` slices go through SAM."""
        return self.pixels_bytes + batch * self.slice_bytes

    def host_bytes(self, batch: int, sam_on_gpu: bool = False) -> int:
        """The host's peak over the whole computation, with batches of ``batch`` slices."""
        sam_phase = self.features_bytes + (0 if sam_on_gpu else self.sam_bytes(batch))
        return max(sam_phase, self.clustering_bytes)


def feature_channels(sam) -> int:
    """Channels of SAM's upscaled features: the last transposed convolution's (32 for ViT-B/L/H)."""
    import torch

    upscaling = [m for m in sam.mask_decoder.output_upscaling if isinstance(m, torch.nn.ConvTranspose2d)]
    return upscaling[-1].out_channels


def sam_slice_memory(
    sam, precision: str = "fp32", *, device_type: str = "cpu", slice_side: int = SAM_INPUT_SIZE
) -> int:
    """Bytes one slice of ``slice_side``² adds through SAM's image encoder and output upscaling
    (an upper bound), read off the model: ViT-B, L and H, or any SAM of that design.

    The largest block dominates: a global-attention block holds ``ATTENTION_MAPS_AT_PEAK`` maps of
    heads x N x N for N = (img_size / patch)² tokens (3 x 12 x 4096² floats, 2.25 GiB, in ViT-B);
    windowed blocks hold one such map per window of window_size² tokens. Then the block's tokens,
    the 1024² input, the neck, the upscaling and the features resized back to the slice.
    """
    import torch

    encoder = sam.image_encoder
    tokens_side = encoder.img_size // encoder.patch_embed.proj.stride[0]
    embed_dim = encoder.patch_embed.proj.out_channels
    attention_elements = 0
    token_floats = 0
    for block in encoder.blocks:
        window = block.window_size or tokens_side  # global attention: one window of every token
        windows = math.ceil(tokens_side / window) ** 2  # the token grid is padded to whole windows
        attention_elements = max(attention_elements, block.attn.num_heads * windows * window**4)
        width = TOKEN_COPIES_AT_PEAK * embed_dim + MLP_COPIES_AT_PEAK * block.mlp.lin1.out_features
        token_floats = max(token_floats, tokens_side**2 * width)
    attention = ATTENTION_MAPS_AT_PEAK * attention_elements * _attention_element_bytes(precision, device_type)
    pixel_floats = 2 * 3 * encoder.img_size**2  # the normalised input and the patch embedding's unfolded copy
    neck_floats = 2 * encoder.neck[0].out_channels * tokens_side**2
    upscaling_floats = 0
    side = tokens_side
    for layer in sam.mask_decoder.output_upscaling:
        if isinstance(layer, torch.nn.ConvTranspose2d):
            side *= layer.stride[0]
            upscaling_floats += 2 * layer.out_channels * side**2  # the convolution and its activation
    output_floats = 2 * feature_channels(sam) * slice_side**2  # resized back to the slice, then on the CPU
    # Other tensors are counted in fp32 even under autocast: layer norms and residuals stay fp32.
    floats = token_floats + pixel_floats + neck_floats + upscaling_floats + output_floats
    return int(SAM_ESTIMATE_MARGIN * (attention + FLOAT32_BYTES * floats))


def _attention_element_bytes(precision: str, device_type: str) -> int:
    """Bytes an element of the attention maps takes at their peak.

    Under bf16 autocast on the CPU the maps stay bf16 (measured: half of fp32's). On a GPU they
    are counted as fp32 at any precision: CUDA's autocast runs the softmax in fp32 (an fp32 copy of
    the half-precision input and an fp32 output beside it: 10 bytes against fp32's 12); not
    measured here, where there is no GPU.
    """
    return 2 if precision in ("bf16", "fp16") and device_type != "cuda" else 4


def estimate_memory(
    sam,
    shape: Sequence[int],
    *,
    precision: str = "fp32",
    device_type: str = "cpu",
    output_shape: Optional[Sequence[int]] = None,
) -> SupervoxelMemory:
    """What supervoxels of a ROI of ``shape`` voxels need, into an ``output_shape`` labelmap (default: the ROI)."""
    voxels = math.prod(shape)
    output_voxels = math.prod(output_shape) if output_shape is not None else voxels
    channels = feature_channels(sam)
    feature_volume = FLOAT32_BYTES * channels * voxels
    held = FLOAT32_BYTES * voxels + feature_volume  # the ROI's HU and its feature volume, until the end
    air = voxels  # the air mask, a bool a voxel
    slic = SLIC_BYTES_PER_VOXEL_AND_CHANNEL * channels * voxels + SLIC_BYTES_PER_VOXEL * voxels
    labels = FLOAT32_BYTES * voxels + FLOAT32_BYTES * output_voxels  # int32, the ROI's and the output's
    return SupervoxelMemory(
        shape=tuple(int(n) for n in shape),
        precision=precision,
        channels=channels,
        slice_bytes=sam_slice_memory(sam, precision, device_type=device_type, slice_side=max(shape)),
        pixels_bytes=FLOAT32_BYTES * voxels,
        features_bytes=held,
        clustering_bytes=held + max(AIR_MASK_BYTES_PER_VOXEL * voxels, air + slic, air + labels),
    )


def usable_host_memory() -> Optional[int]:
    """Bytes of host memory supervoxels plan to use: a share of what is free now (None: unknown)."""
    free = host_memory_available()
    return None if free is None else int(free * FREE_MEMORY_SHARE)


def choose_slice_batch(
    estimate: SupervoxelMemory,
    device: "torch.device",
    *,
    memory_budget: Optional[int] = None,
    most: int = SLICE_BATCH,
    clustering: bool = True,
) -> int:
    """Slices per SAM call, at most ``most``, that fit in the memory free; what cannot fit even one
    slice at a time is refused here, before SAM runs, with what to do.

    ``memory_budget``: bytes of host memory the supervoxels may use; None: ``usable_host_memory``
    (and where the system does not say, nothing is refused). On a GPU, SAM's activations are
    sized to the GPU's free memory. ``clustering``: whether the feature volume is then clustered
    (``compute_supervoxels``) or only computed (``volume_features``).
    """
    host_free = memory_budget if memory_budget is not None else usable_host_memory()
    region = estimate.clustering_bytes if clustering else estimate.features_bytes
    if host_free is not None and region > host_free:
        raise VISTA3DError(_region_refusal(estimate, region, host_free, clustering))
    on_gpu = device.type == "cuda"
    if on_gpu:
        sam_free: Optional[int] = int(gpu_memory_available(device) * FREE_MEMORY_SHARE)
        sam_fixed = estimate.pixels_bytes
    else:
        sam_free = host_free
        sam_fixed = estimate.pixels_bytes + estimate.features_bytes
    if sam_free is None:
        logger.info("The free memory is unknown: SAM runs %d slices at a time", most)
        return most
    fitting = (sam_free - sam_fixed) // estimate.slice_bytes
    if fitting < 1:
        raise VISTA3DError(_sam_refusal(estimate, sam_fixed + estimate.slice_bytes, sam_free, on_gpu))
    batch = int(min(most, fitting))
    where = " on the GPU" if on_gpu else ""
    logger.info(
        "SAM runs %d slice(s) at a time: about %s a slice in %s, %s free%s",
        batch, format_bytes(estimate.slice_bytes), estimate.precision, format_bytes(sam_free), where,
    )
    return batch


def _asked(estimate: SupervoxelMemory) -> str:
    shape = "x".join(str(n) for n in estimate.shape)
    return f"Supervoxels of the {shape} ROI ({math.prod(estimate.shape):,} voxels) in {estimate.precision}"


def _sam_refusal(estimate: SupervoxelMemory, needed: int, free: int, on_gpu: bool) -> str:
    where = " on the GPU" if on_gpu else ""
    remedies = ["Close other programs"]
    if estimate.precision == "fp32":
        remedies.append("use bf16 precision (about half of SAM's memory)")
    remedies.append("free GPU memory" if on_gpu else "use a GPU")
    return (
        f"{_asked(estimate)} need about {format_bytes(needed)}{where} even one slice at a time (SAM's image "
        f"encoder takes about {format_bytes(estimate.slice_bytes)} a slice), but only {format_bytes(free)} "
        f"is free{where}. {', '.join(remedies[:-1])}, or {remedies[-1]}."
    )


def _region_refusal(estimate: SupervoxelMemory, needed: int, free: int, clustering: bool) -> str:
    work = f"hold SAM's {estimate.channels}-channel feature volume" + (" and cluster it (SLIC)" if clustering else "")
    return (
        f"{_asked(estimate)} need about {format_bytes(needed)} to {work}, but only {format_bytes(free)} is "
        "free. Ask for supervoxels of a smaller region (around the points rather than the whole volume), "
        "close other programs, or use a machine with more memory."
    )


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
    memory_budget: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> Image:
    """Supervoxels of ``image`` inside ``roi`` (default: the whole volume), on the input grid.

    Labels 1..N are connected regions; 0 outside the ROI and in the air around the body.
    ``memory_budget``: bytes of host memory this may use (None: what is free now). SAM's slice
    batch is sized to it, and a ROI that cannot fit is refused before SAM runs (``choose_slice_batch``).
    """
    import torch

    device = torch.device(device)
    box = roi if roi is not None else tuple(slice(0, n) for n in image.shape)
    region = image.array[box]  # a view: nothing is copied before the memory is checked
    if min(region.shape) < 1:
        raise VISTA3DError("The ROI is empty.")
    estimate = estimate_memory(
        sam, region.shape, precision=precision, device_type=device.type, output_shape=image.shape
    )
    batch = choose_slice_batch(estimate, device, memory_budget=memory_budget)
    hu = np.asarray(region, dtype=np.float32)
    features = _summed_features(sam, hu, device, precision, batch, progress, cancel)
    report(progress, 0, 1, "Clustering supervoxels")
    labels = cluster(features, air_mask(hu), n_segments=n_segments)
    output = np.zeros(image.shape, dtype=np.int32)
    output[box] = labels
    return image.with_array(output)


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
