"""OpenVINO as the CPU runtime of automatic segmentation (``--runtime openvino``), an opt-in speed-up.

What runs in OpenVINO is the part of every window that costs: the image encoder and the class
head's image-feature mapping (``ClassMappingClassify.image_post_mapping``), from a 128³ window to
its class features. Everything else stays the engine's (MONAI's windows and stitching, the class
embeddings, the labels), so only the features' rounding differs from PyTorch's.

Why opt-in: on the 2-core AMD EPYC of BENCHMARKS.md one vista3d132 window takes 21 s at fp32 and
11 s at bf16 in OpenVINO against 31 s and 14 s in PyTorch, but OpenVINO's convolutions round
differently (about 3e-4 of a feature's range), so its labels agree with the reference on nearly,
not all, voxels. PyTorch stays the default because its fp32 reproduces the reference exactly.

The network is converted once per set of weights: minutes for vista3d132 on 2 cores, then the
converted model is read from ``cache_dir()/openvino`` in a second. The cache is keyed by a digest
of the weights and by the versions that made it, so new weights or a new OpenVINO convert again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .errors import VISTA3DError
from .progress import ProgressCallback, report

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: OpenVINO's ``INFERENCE_PRECISION_HINT`` for each of the engine's CPU precisions.
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}

WindowFunction = Callable[["torch.Tensor"], "torch.Tensor"]


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise VISTA3DError(
            "The OpenVINO runtime needs the openvino package, which is not installed: run "
            "`pip install openvino` (in Slicer: slicer.util.pip_install('openvino')), or use --runtime torch."
        ) from None
    return openvino


def weights_digest(network: "torch.nn.Module") -> str:
    """SHA-256 of the network's parameters and buffers (names, dtypes, shapes and values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class OpenVINOWindows:
    """``window_features`` (a function of ``network`` from windows to features) computed by OpenVINO on the CPU.

    ``features(precision, batch)`` gives the function the engine calls on each batch of windows
    ``[batch, 1, *window]``; it returns what ``window_features`` returns, in float32.
    Compiled models are kept per (precision, batch).
    """

    def __init__(
        self,
        network: "torch.nn.Module",
        window_features: WindowFunction,
        window: tuple[int, int, int],
        cache_folder: Optional[Path] = None,
    ):
        openvino = _import_openvino()
        from .weights import cache_dir

        self.network = network
        self.window_features = window_features
        self.window = window
        self.cache_folder = Path(cache_folder) if cache_folder is not None else cache_dir() / "openvino"
        self._core = openvino.Core()
        self._digest: Optional[str] = None
        self._compiled: dict[tuple[str, int], Any] = {}

    def features(
        self, precision: str, batch: int, progress: Optional[ProgressCallback] = None
    ) -> WindowFunction:
        """The features of a batch of ``batch`` windows at ``precision`` (fp32 or bf16)."""
        import torch

        if precision not in _PRECISION_HINTS:
            raise VISTA3DError(f"The OpenVINO runtime runs at fp32 or bf16, not {precision!r}.")
        key = (precision, batch)
        if key not in self._compiled:
            self._compiled[key] = self._core.compile_model(
                self._model_path(batch, progress),
                "CPU",
                {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"},
            )
        request = self._compiled[key].create_infer_request()

        def window_features(windows: torch.Tensor) -> torch.Tensor:
            # share_inputs reads the windows in place; the output is copied out of the request,
            # whose buffer the next window overwrites.
            inputs = windows.detach().to(torch.float32).contiguous().numpy()
            return torch.from_numpy(request.infer({0: inputs}, share_inputs=True)[0])

        return window_features

    def _model_path(self, batch: int, progress: Optional[ProgressCallback]) -> Path:
        """The converted model for windows of ``batch``: from the cache, or converted and cached now."""
        import monai
        import openvino
        from filelock import FileLock

        if self._digest is None:
            self._digest = weights_digest(self.network)
        versions = f"openvino {openvino.__version__}, monai {monai.__version__}"
        name = hashlib.sha256(f"{self._digest} {versions} batch {batch} window {self.window}".encode()).hexdigest()[:24]
        folder = self.cache_folder / name
        model = folder / "class_features.xml"
        try:
            self.cache_folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VISTA3DError(
                f"Cannot write the OpenVINO model's cache folder {self.cache_folder} ({error.strerror}): set "
                "VISTA3D_HOME to a writable folder, or use --runtime torch."
            ) from None
        with FileLock(str(folder) + ".lock"):  # another process converting the same weights waits, then reads
            if model.exists():
                return model
            report(progress, 0, 1, "Converting the network for OpenVINO (once for these weights; minutes on a CPU)")
            logger.info("Converting the network for OpenVINO (%s, batch %d) into %s", versions, batch, folder)
            partial = folder.with_name(folder.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # a conversion interrupted earlier
            partial.mkdir()
            # fp16 compression of the stored weights would change what fp32 computes.
            openvino.save_model(self._convert(batch), partial / model.name, compress_to_fp16=False)
            os.replace(partial, folder)
        return model

    def _convert(self, batch: int) -> Any:
        """OpenVINO's model of ``window_features`` for windows of ``batch``, traced from PyTorch.

        Tracing (OpenVINO's default for a module) takes minutes for vista3d132 on 2 cores where
        ``torch.export`` takes seconds, but its model ran a window 10 % faster and nearer PyTorch's
        values (largest difference 0.003 against 0.008) here; the conversion is cached, the windows are not.
        """
        import openvino
        import torch

        class Traced(torch.nn.Module):
            """``window_features`` as a module holding the network's weights: OpenVINO converts modules."""

            def __init__(self, network: torch.nn.Module, window_features: WindowFunction) -> None:
                super().__init__()
                self.network = network
                self.window_features = window_features

            def forward(self, windows: torch.Tensor) -> torch.Tensor:
                return self.window_features(windows)

        example = torch.zeros(batch, 1, *self.window)
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer's notes on Python branches concern shapes, and every window has the same shape.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=DeprecationWarning)
            return openvino.convert_model(Traced(self.network, self.window_features), example_input=example)
