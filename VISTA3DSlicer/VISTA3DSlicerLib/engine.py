"""Automatic segmentation: class prompts over a sliding window (reference doc §5.4 B and §5.5).

``Engine`` holds one loaded network on one device and segments any number of images with
it. The preprocessing, windows, blending and post-processing are the bundle's (MONAI's
transforms; MONAI's windows and stitching order with its effective settings: 128³ windows,
overlap 0.25, constant weights, replicate padding; argmax/threshold then global IDs), so an
fp32 run reproduces the reference; the engine adds progress, cancellation, prompt checking and
the input's own geometry.

Memory: the stitched windows are turned into labels slab by slab as soon as no later window
covers them (``sliding_window.stitch_in_slabs``), so the float buffer is about one window deep,
not the volume's depth. With more classes than the class head has features (48) the features
are stitched instead of the logits, and the logits are made a chunk of voxels at a time: memory
stops growing with the classes. A volume that cannot fit is refused before anything is allocated
(``memory_needed`` against ``available_memory``), and a run out of memory midway falls back to
fewer windows at once, then (on a GPU) to stitching on the CPU, then to the CPU (``placements``).

Runtime: PyTorch by default; on a CPU, ``runtime="openvino"`` has OpenVINO compute the windows'
class features (``openvino_runtime``), faster there but not bit-identical to the reference.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Sequence, TypeVar

import numpy as np

from .errors import VISTA3DError
from .geometry import Image
from .memory import GIB, gpu_memory_available, host_memory_available
from .models import DEFAULT_MODEL, VISTA3D, SegmentationModel, get_model
from .preprocessing import VISTA3D_PREPROCESSING, Preprocessed, Preprocessing, preprocess
from .progress import CancelToken, ProgressCallback, check_cancelled, report
from .sliding_window import WindowGrid, stitch_in_slabs

if TYPE_CHECKING:
    import torch

    from .interactive import Session

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: About how many stitched voxels become labels at once (117 classes' logits: 117 MiB).
LOGIT_CHUNK_VOXELS = 2**18


def window_grid(shape: Sequence[int], preprocessing: Preprocessing = VISTA3D_PREPROCESSING) -> WindowGrid:
    """The windows over a preprocessed volume of ``shape``."""
    return WindowGrid(tuple(shape), preprocessing.window, preprocessing.overlap)


def count_windows(shape: Sequence[int], preprocessing: Preprocessing = VISTA3D_PREPROCESSING) -> int:
    """Number of windows for a preprocessed volume of ``shape`` (for progress reporting)."""
    grid = window_grid(shape, preprocessing)
    return math.prod(grid.count(axis) for axis in range(len(shape)))


def network_grid(shape: Sequence[int], affine: np.ndarray, spacing_mm: float = VISTA3D_PREPROCESSING.spacing_mm
                 ) -> tuple[int, int, int]:
    """The shape the preprocessing resamples an image of ``shape`` and ``affine`` to (1.5 mm, before
    the foreground crop), computed from the geometry alone as MONAI's ``Spacing`` does, so that
    nothing is allocated."""
    from monai.data.utils import compute_shape_offset, zoom_affine

    affine = np.asarray(affine, dtype=np.float64)
    resampled = zoom_affine(affine, [spacing_mm] * 3, diagonal=False)
    grid, _ = compute_shape_offset(list(shape), affine, resampled, scale_extent=False)
    return tuple(int(n) for n in grid)  # type: ignore[return-value]


def memory_needed(source_shape: Sequence[int], grid: Sequence[int], channels: int, batch: int = 1,
                  preprocessing: Preprocessing = VISTA3D_PREPROCESSING) -> int:
    """Bytes a segmentation allocates at its peak, from the volume's sizes alone.

    Counts the allocations that grow with the volume (the network's own working memory for one
    window is fixed and not counted): ``source_shape`` is the input grid, ``grid`` the 1.5 mm one,
    ``channels`` what is stitched: one per class, or the class head's features when there are
    more classes than features (``Engine.stitched_channels``); ``batch`` windows per network call.
    """
    source = math.prod(source_shape)
    voxels = math.prod(grid)
    windows = window_grid(grid, preprocessing)
    padded = math.prod(windows.padded_shape)  # MONAI pads a short axis to a whole window
    buffer = windows.buffer_depth(batch) * math.prod(windows.padded_shape[1:])
    outputs = math.prod(preprocessing.window) * batch
    # The float32 copy of the input and the resampled image exist together.
    resampling = 4 * source + 4 * voxels
    # The image (and its padded copy), the int32 labels, the float32 buffer of stitched channels a
    # window or so deep, and the output of one batch of windows.
    stitching = 4 * (voxels + padded) + 4 * voxels + 4 * channels * buffer + 4 * channels * outputs
    # The labels resampled (float32) to the input grid, and np.rint's copy of them.
    restoring = 4 * voxels + 2 * 4 * source
    return max(resampling, stitching, restoring)


def available_memory(device: "torch.device") -> Optional[int]:
    """Bytes a segmentation on ``device`` can use, or None when unknown (then nothing is refused).

    On a GPU this is the larger of its free memory and the host's: the stitched logits may go
    to either, since an out-of-memory GPU falls back to the CPU. Tests replace this function.
    """
    host = host_memory_available()
    if device.type != "cuda":
        return host
    return max(host or 0, gpu_memory_available(device))


@dataclass(frozen=True)
class Placement:
    """Where one attempt at a segmentation runs: the network's device, where the windows are stitched
    (None: on the network's device), the precision, and how many windows go through the network at once."""

    network: "torch.device"
    stitching: "Optional[torch.device]"
    precision: str
    #: What the warning says was done when this placement is a fallback that succeeded.
    fallback: str = ""
    batch: int = 1


def placements(device: "torch.device", precision: str, batch: int = 1) -> list[Placement]:
    """The attempts an engine on ``device`` makes, in order, each after the previous ran out of memory.

    Fewer windows at once first; then, on a GPU, the stitching and the argmax on the CPU (the network's
    working memory stays on the GPU); last, the network itself on the CPU.
    """
    import torch

    ladder = [Placement(device, None, precision, batch=batch)]
    if batch > 1:
        ladder.append(Placement(device, None, precision, "ran the windows one at a time"))
    if device.type != "cuda":
        return ladder
    cpu = torch.device("cpu")
    return ladder + [
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
    return "x".join(str(n) for n in shape)


class Engine:
    """One VISTA3D network on one device, ready to segment images.

    ``network`` is any module with ``VISTA3D.forward``'s signature (the tests pass small ones); one
    with VISTA3D's ``image_encoder`` and ``class_head`` also stitches class features for many classes.
    """

    def __init__(
        self,
        network: "torch.nn.Module",
        device: "torch.device | str" = "cpu",
        precision: str = "fp32",
        window_batch: int = 1,
        runtime: str = "torch",
        model: SegmentationModel = VISTA3D,
    ):
        """``window_batch``: windows per network call (automatic segmentation); more use more memory.
        ``runtime``: what runs the windows of automatic segmentation (``model.RUNTIMES``).
        ``model``: the published model the network's weights are (its preprocessing, windows and labels)."""
        import torch

        from .model import autocast, check_runtime

        if window_batch < 1:
            raise VISTA3DError(f"The window batch must be 1 or more, not {window_batch}.")
        self.device = torch.device(device)
        check_runtime(runtime, self.device)
        self.precision = precision
        self.window_batch = window_batch
        self.model = model
        self.preprocessing = model.preprocessing
        self.labels = model.labels
        if self.device.type == "cuda":
            # Every window has the same shape, so cuDNN's search for the fastest convolutions is paid once.
            torch.backends.cudnn.benchmark = True
        autocast(self.device, precision)  # rejects an unknown precision or fp16 on a CPU now, not mid-run
        self.network = network.to(self.device).eval()
        #: How each window is computed, chosen once: VISTA3D's parts, or its forward alone.
        self.windows: WindowComputation
        if hasattr(network, "class_head"):
            self.windows = ClassHeadWindows(self.network, runtime, self.preprocessing.window)
        elif runtime == "openvino":
            raise VISTA3DError("The OpenVINO runtime needs VISTA3D's image encoder and class head.")
        else:
            self.windows = ForwardWindows(self.network)

    @classmethod
    def from_weights(
        cls, weights: str | Path | None = None, device: str = "auto", precision: str = "fp32", runtime: str = "torch",
        model: str = DEFAULT_MODEL,
    ) -> "Engine":
        """Load ``model``'s checkpoint (``weights``, else the model's environment variable, else the
        verified cached download; ``models.MODELS`` lists the models)."""
        from .model import check_runtime, load_network, resolve_device
        from .weights import resolve

        described = get_model(model)  # an unknown model is refused before anything loads
        resolved = resolve_device(device)
        check_runtime(runtime, resolved)  # before minutes of loading
        path = resolve(model, weights)
        logger.info("Loading the %s weights from %s onto %s", model, path, resolved)
        return cls(load_network(path, resolved), resolved, precision, runtime=runtime, model=described)

    def session(self, image: Image) -> "Session":
        """A click session on ``image`` (preprocessed now): ``interactive.Session``, as a server's
        ``remote.RemoteEngine.session`` gives one."""
        from .interactive import Session

        return Session(self, image)

    def prepare_runtime(self, progress: Optional[ProgressCallback] = None) -> None:
        """Make the runtime ready now rather than in the first segmentation: OpenVINO converts the
        network (minutes, once for these weights; then read from its cache) and compiles it for the
        engine's precision and window batch. PyTorch needs nothing."""
        self.windows.prepare(self.precision, self.window_batch, progress)

    def segment(
        self,
        image: Image,
        label_ids: Optional[Sequence[int]] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> Image:
        """Segment ``label_ids`` (the model's global IDs; None = its default everything, 117 CT classes) automatically.

        Returns a labelmap on the input's grid: global IDs, 0 for background (``uint8``, or ``uint16``
        for a model with more than 255 classes). Group IDs (2 kidney, 20 lung, 21 bone) are expanded
        to their members, as the bundle does.
        """
        import torch

        class_ids = self._class_ids(label_ids)  # before the preprocessing, not after it
        grid = network_grid(image.shape, image.affine, self.preprocessing.spacing_mm)
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
                    prepared = preprocess(image, placement.network, self.preprocessing)
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
        class_ids = self._class_ids(label_ids)
        self._check_memory(prepared.source_shape, prepared.spatial_shape, len(class_ids))
        return self._with_fallback(
            lambda placement: self._segment_once(prepared, class_ids, placement, progress, cancel),
            prepared.spatial_shape,
            len(class_ids),
        )

    def _class_ids(self, label_ids: Optional[Sequence[int]]) -> list[int]:
        """The classes the class head predicts for a prompt (None = everything), group IDs expanded."""
        return self.labels.expand_subclasses(self.labels.automatic_prompt(label_ids))

    def stitched_channels(self, classes: int) -> int:
        """Channels stitched over the volume for ``classes`` classes (``WindowComputation``)."""
        return self.windows.stitched_channels(classes)

    def _check_memory(self, source_shape: Sequence[int], grid: Sequence[int], classes: int) -> None:
        """Refuse, before anything is allocated, a segmentation that cannot fit in the memory available."""
        needed = memory_needed(source_shape, grid, self.stitched_channels(classes), self.window_batch,
                               self.preprocessing)
        available = available_memory(self.device)
        if available is not None and needed > available:
            raise VISTA3DError(
                f"The volume is too large for the memory available: {_format_shape(source_shape)} voxels are "
                f"{_format_shape(grid)} = {math.prod(grid):,} voxels at {self.preprocessing.spacing_mm} mm, and segmenting {classes} "
                f"classes needs about {needed / GIB:.1f} GB, but only {available / GIB:.1f} GB is free. Segment "
                "fewer labels, crop the volume to the region of interest, or use a machine with more memory."
            )

    def _with_fallback(self, attempt: Callable[[Placement], T], grid: Sequence[int], classes: int) -> T:
        """Run ``attempt`` at each of ``placements`` in turn until one does not run out of memory."""
        ladder = placements(self.device, self.precision, self.window_batch)
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
            f"{self.preprocessing.spacing_mm} mm) with {classes} classes: segment fewer labels, crop the volume, or use a machine "
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

        stitching = placement.stitching or placement.network
        with torch.inference_mode():
            image = prepared.tensor.as_tensor().to(placement.network)
            labels = torch.zeros(prepared.spatial_shape, dtype=torch.int32, device=stitching)
            forward, to_labels = self.windows.plan(class_ids, placement, progress)

            def label_slab(slab: torch.Tensor, x0: int) -> None:
                # A few first-axis planes at a time, so that the logits (or the flat copy of the
                # features they are made from) stay the size of a chunk, not of the slab.
                planes = max(LOGIT_CHUNK_VOXELS // math.prod(slab.shape[2:]), 1)
                for start in range(0, slab.shape[1], planes):
                    stop = min(start + planes, slab.shape[1])
                    labels[x0 + start : x0 + stop] = to_labels(slab[:, start:stop])

            stitch_in_slabs(
                image,
                self._counted(forward, placement, count_windows(image.shape[1:], self.preprocessing), progress, cancel),
                label_slab,
                window=self.preprocessing.window,
                overlap=self.preprocessing.overlap,
                batch=placement.batch,
                device=stitching,
            )
            del image
            check_cancelled(cancel)  # resampling the labels back takes seconds on a large volume
            restored = prepared.restore(labels)
        return np.rint(restored).astype(self.labels.labelmap_dtype)

    @staticmethod
    def _counted(
        forward: Callable[["torch.Tensor"], "torch.Tensor"],
        placement: Placement,
        total: int,
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
    ) -> Callable[["torch.Tensor"], "torch.Tensor"]:
        """``forward`` under the placement's autocast, checking for a cancel before and reporting after each call."""
        from .model import autocast

        done = 0

        def predict(windows: "torch.Tensor") -> "torch.Tensor":
            nonlocal done
            check_cancelled(cancel)  # stops between windows: at most one batch of windows late
            with autocast(placement.network, placement.precision):
                output = forward(windows)
            done = min(done + windows.shape[0], total)  # an out-of-memory retry replays windows; never count past the end
            report(progress, done, total, f"Window {done}/{total}")
            return output

        return predict


class WindowComputation(Protocol):
    """How the engine computes each window of automatic segmentation, chosen once per network."""

    def _class_ids(self, label_ids: Optional[Sequence[int]]) -> list[int]:
        """The classes the class head predicts for a prompt (None = everything), group IDs expanded."""
        return self.labels.expand_subclasses(self.labels.automatic_prompt(label_ids))

    def stitched_channels(self, classes: int) -> int:
        """Channels stitched over the volume for ``classes`` classes."""

    def prepare(self, precision: str, batch: int, progress: Optional[ProgressCallback]) -> None:
        """Get ready now rather than in the first segmentation (OpenVINO converts the network)."""

    def plan(self, class_ids: Sequence[int], placement: Placement, progress: Optional[ProgressCallback]
             ) -> tuple[Callable[["torch.Tensor"], "torch.Tensor"], Callable[["torch.Tensor"], "torch.Tensor"]]:
        """What each window computes for ``class_ids`` and how a stitched slab of it becomes global IDs."""


class ForwardWindows:
    """Windows through ``VISTA3D.forward`` alone, for any module with its signature (a wrapper that
    counts or fails calls, a probe): each window gives the logits of the classes asked for."""

    def __init__(self, network: "torch.nn.Module"):
        self.network = network

    def stitched_channels(self, classes: int) -> int:
        return classes

    def prepare(self, precision: str, batch: int, progress: Optional[ProgressCallback]) -> None:
        pass  # nothing to convert

    def plan(self, class_ids, placement, progress):
        import torch

        prompt = _class_prompt(torch.as_tensor(class_ids, device=placement.network).unsqueeze(-1))
        return (lambda windows: self.network(windows, **prompt)), (lambda logits: _logits_to_labels(logits, class_ids))


class ClassHeadWindows:
    """Windows through VISTA3D's image encoder and class head, called directly.

    ``VISTA3D.forward`` empties the CUDA cache after every window, which makes the next window
    allocate its memory from the driver again; the parts do not. With more classes than the class
    head has image features (48 in vista3d132, against 117 classes for everything), the windows
    give the features and a slab's logits are made from them (``features_to_labels``): the stitched
    buffer holds 48 channels, not 117. With OpenVINO (``runtime="openvino"``) the features come
    from OpenVINO and the class head's product is taken here.
    """

    def __init__(self, network: "torch.nn.Module", runtime: str = "torch",
                 window: tuple[int, int, int] = VISTA3D_PREPROCESSING.window):
        self.network = network
        self.feature_channels: int = network.class_head.class_embeddings.embedding_dim
        self.openvino = None
        if runtime == "openvino":
            from .openvino_runtime import OpenVINOWindows

            self.openvino = OpenVINOWindows(network, self.window_features, window)

    def stitched_channels(self, classes: int) -> int:
        return min(classes, self.feature_channels)

    def prepare(self, precision: str, batch: int, progress: Optional[ProgressCallback]) -> None:
        if self.openvino is not None:
            self.openvino.features(precision, batch, progress)

    def plan(self, class_ids, placement, progress):
        import torch

        class_vector = torch.as_tensor(class_ids, device=placement.network).unsqueeze(-1)
        classes = len(class_ids)

        def to_labels(logits: torch.Tensor) -> torch.Tensor:
            return _logits_to_labels(logits, class_ids)

        if self.openvino is None and self.stitched_channels(classes) == classes:

            def window_logits(windows: torch.Tensor) -> torch.Tensor:
                # VISTA3D.forward's automatic branch: the class head's [classes, B, ...] turned to [B, classes, ...].
                return self.network.class_head(self._auto_features(windows), class_vector)[0].transpose(0, 1)

            return window_logits, to_labels
        # The class head taken apart: the windows' image features, then the embeddings' product with them.
        embeddings = self._class_embeddings(class_vector, placement)
        window_features = (
            self.window_features
            if self.openvino is None
            else self.openvino.features(placement.precision, placement.batch, progress)
        )
        if self.stitched_channels(classes) < classes:
            return window_features, lambda slab: self.features_to_labels(slab, embeddings, class_ids, placement)
        return lambda windows: _class_logits(embeddings, window_features(windows)), to_labels

    def _auto_features(self, windows: "torch.Tensor") -> "torch.Tensor":
        """The encoder's features for the automatic (class) branch."""
        return self.network.image_encoder(windows, with_point=False, with_label=True)[1]

    def window_features(self, windows: "torch.Tensor") -> "torch.Tensor":
        """The class head's image features of windows (``ClassMappingClassify.image_post_mapping``)."""
        return self.network.class_head.image_post_mapping(self._auto_features(windows))

    def _class_embeddings(self, class_vector: "torch.Tensor", placement: Placement) -> "torch.Tensor":
        """The class head's embedding of each class ``[classes, C]``, as the head computes it."""
        from .model import autocast

        head = self.network.class_head
        with autocast(placement.network, placement.precision):  # as the head runs inside the network
            embeddings = head.class_embeddings(class_vector)
            if head.use_mlp:
                embeddings = head.mlp(embeddings)
        return embeddings[:, 0, :]

    @staticmethod
    def features_to_labels(
        features: "torch.Tensor", embeddings: "torch.Tensor", class_ids: Sequence[int], placement: Placement
    ) -> "torch.Tensor":
        """Global IDs from stitched class-head features ``[C, X, Y, Z]``, as ``_logits_to_labels`` from the logits.

        The class head's logits are its class embeddings times these features, and the stitching is
        a weighted mean of windows, so stitching the features and then taking the product gives the
        stitched logits (made here for the few voxels of one chunk at a time).
        """
        from .model import autocast

        with autocast(placement.network, placement.precision):
            logits = _class_logits(embeddings, features.to(placement.network))
        return _logits_to_labels(logits.float(), class_ids).to(features.device)


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


def _class_logits(embeddings: "torch.Tensor", features: "torch.Tensor") -> "torch.Tensor":
    """The class head's logits ``[..., K, X, Y, Z]`` from its class embeddings ``[K, C]`` and image
    features ``[..., C, X, Y, Z]`` (``ClassMappingClassify``: the embeddings times the features)."""
    flat = features.reshape(*features.shape[:-3], -1)
    return (embeddings @ flat).reshape(*flat.shape[:-2], embeddings.shape[0], *features.shape[-3:])


def _logits_to_labels(logits: "torch.Tensor", class_ids: Sequence[int]) -> "torch.Tensor":
    """Global IDs from per-class logits ``[B, X, Y, Z]`` as the bundle's ``VistaPostTransformd``.

    Each class is an independent sigmoid: a voxel is background when no logit is above 0,
    else it takes the class of the largest logit (the first one on a tie, as ``argmax``).
    """
    import torch

    best, index = logits.max(dim=0)
    ids = torch.as_tensor(class_ids, dtype=torch.int32, device=logits.device)
    return torch.where(best > 0, ids[index], torch.zeros_like(index, dtype=torch.int32))
