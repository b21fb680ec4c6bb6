"""Building the VISTA3D network, loading its weights, and choosing device and precision.

The default network is MONAI's ``vista3d132`` (218 M parameters, reference doc §3). Smaller
networks of the same design (fewer filters, fewer blocks) are built from the same code; the
architecture of a checkpoint is read from its tensor shapes, so one loader serves the real
weights, fine-tuned variants and the small random checkpoints the tests make.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ContextManager, Mapping

from .errors import VISTA3DError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
#: What runs the network of automatic segmentation: PyTorch (the reference's arithmetic, any device)
#: or OpenVINO (the CPU only; faster there, and not bit-identical: ``openvino_runtime``).
RUNTIMES = ("torch", "openvino")


@dataclass(frozen=True)
class ModelSpec:
    """The size of a VISTA3D network: encoder filters (= feature size of both heads) and blocks per level."""

    embed_dim: int = 48
    blocks_down: tuple[int, ...] = (1, 2, 2, 4, 4)


#: ``monai.networks.nets.vista3d132``, the network of the released weights.
VISTA3D132 = ModelSpec()


def build_network(spec: ModelSpec = VISTA3D132) -> "torch.nn.Module":
    """A VISTA3D network with random weights, wired as ``vista3d132`` (reference doc §3)."""
    from monai.networks.nets.segresnet_ds import SegResNetDS2
    from monai.networks.nets.vista3d import VISTA3D, ClassMappingClassify, PointMappingSAM

    encoder = SegResNetDS2(
        in_channels=1,
        blocks_down=spec.blocks_down,
        norm="instance",
        out_channels=spec.embed_dim,
        init_filters=spec.embed_dim,
        dsdepth=1,
    )
    point_head = PointMappingSAM(feature_size=spec.embed_dim, n_classes=512, last_supported=132)
    class_head = ClassMappingClassify(n_classes=512, feature_size=spec.embed_dim, use_mlp=True)
    return VISTA3D(image_encoder=encoder, class_head=class_head, point_head=point_head)


def _not_vista3d(reason: str, path: str | Path | None = None) -> VISTA3DError:
    return VISTA3DError(
        f"{path if path is not None else 'This file'} is not a VISTA3D checkpoint ({reason}). Use the bundle's "
        "models/model.pt (`vista3d weights download`) or a checkpoint saved from monai.networks.nets.vista3d132."
    )


def spec_from_state_dict(state_dict: Mapping[str, "torch.Tensor"], path: str | Path | None = None) -> ModelSpec:
    """Read the network size from a checkpoint's tensor names and shapes (``path`` names it in errors)."""
    key = "image_encoder.encoder.conv_init.weight"
    if key not in state_dict:
        raise _not_vista3d("it has no image encoder", path)
    shape = tuple(state_dict[key].shape)
    # A 3-D convolution from the one CT channel: (filters, 1, k, k, k), with at least one filter.
    if len(shape) != 5 or shape[0] == 0:
        raise _not_vista3d(f"{key} has shape {shape}, not (filters, 1, 3, 3, 3)", path)
    filters = shape[0]
    if not _holds_data(state_dict[key]):
        raise _not_vista3d(f"{key} is {_kind(state_dict[key])}, not a dense tensor with data", path)
    block = re.compile(r"image_encoder\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.conv1\.weight$")
    blocks: dict[int, set[int]] = {}
    for name in state_dict:
        match = block.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        raise _not_vista3d("its image encoder has no image_encoder.encoder.layers.*.blocks.*.conv1 tensors", path)
    # The network is built from these counts before its tensors are compared with the file's: each
    # block counted must be in the file with its shape, or a file of a few bytes naming blocks.99999
    # (or levels.40) would make us build a network of any size.
    if sorted(blocks) != list(range(len(blocks))):
        raise _not_vista3d(f"its encoder levels are {sorted(blocks)[:6]}, not 0, 1, 2, ...", path)
    for level, indices in sorted(blocks.items()):
        if sorted(indices) != list(range(len(indices))):
            gaps = sorted(set(range(max(indices) + 1)) - indices)
            raise _not_vista3d(f"encoder level {level} lacks blocks {gaps[:3]}{' ...' if len(gaps) > 3 else ''}", path)
        width = filters * 2**level
        for index in sorted(indices):
            name = f"image_encoder.encoder.layers.{level}.blocks.{index}.conv1.weight"
            if tuple(state_dict[name].shape) != (width, width, 3, 3, 3) or not _holds_data(state_dict[name]):
                raise _not_vista3d(
                    f"{name} is {_kind(state_dict[name])} of shape {tuple(state_dict[name].shape)}, not a dense "
                    f"tensor of shape ({width}, {width}, 3, 3, 3)", path
                )
    return ModelSpec(embed_dim=filters, blocks_down=tuple(len(blocks[level]) for level in sorted(blocks)))


def read_state_dict(path: str | Path) -> dict[str, "torch.Tensor"]:
    """Tensors of a checkpoint: a bare state dict or ``{"model": ...}`` (``torch.save``), or safetensors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise VISTA3DError(f"Weights file not found: {path}. Check the path given to --weights or VISTA3D_WEIGHTS.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: a checkpoint is data; never run code from a downloaded pickle.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:  # the file is there (checked above) but cannot be read
        raise VISTA3DError(
            f"Cannot read the weights file {path} ({error.strerror or error}). Make it readable for this user "
            "(check its permissions and owner)."
        ) from error
    except Exception as error:  # torch and safetensors raise many types for damaged files
        raise VISTA3DError(
            f"Could not read the weights file {path} ({type(error).__name__}: {error}). It may be truncated "
            "or not a PyTorch/safetensors checkpoint: download it again with `vista3d weights download`."
        ) from error
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # the bundle's CheckpointLoader format
    if not isinstance(state, Mapping):
        raise _not_vista3d(f"it holds a {type(state).__name__}, not a state dict", path)
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise _not_vista3d("its entries are not all tensors with names", path)
    return dict(state)


def _loadable_into(tensor: "torch.Tensor", like: "torch.Tensor") -> bool:
    """Whether ``tensor`` can stand for ``like``: dense, with data, and a float for a float.

    ``load_state_dict`` would silently cast integers or complex numbers into the float weights,
    and fails with a message thousands of lines long on sparse or data-less (meta) tensors.
    """
    if not _holds_data(tensor):
        return False
    return tensor.dtype == like.dtype or (tensor.is_floating_point() and like.is_floating_point())


def _holds_data(tensor: "torch.Tensor") -> bool:
    """Dense with data: a meta or sparse tensor may declare any shape without holding it."""
    import torch

    return tensor.layout == torch.strided and not tensor.is_meta


def _kind(tensor: "torch.Tensor") -> str:
    """What a tensor holds, for messages: ``meta`` (no data), its layout if not dense, else its dtype."""
    import torch

    if tensor.is_meta:
        return "meta (no data)"
    return str(tensor.layout if tensor.layout != torch.strided else tensor.dtype)


def load_network(path: str | Path, device: "torch.device | str" = "cpu") -> "torch.nn.Module":
    """The network of a checkpoint, strictly loaded, in eval mode on ``device``."""
    state = read_state_dict(path)
    spec = spec_from_state_dict(state, path)
    try:
        network = build_network(spec)
    except ValueError as error:  # MONAI refuses some sizes, e.g. filters its attention heads do not divide
        raise _not_vista3d(f"no VISTA3D network has {spec.embed_dim} filters: {error}", path) from error
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = set(expected) & set(state)
    wrong_shape = sorted(k for k in common if expected[k].shape != state[k].shape)
    wrong_type = sorted(k for k in common - set(wrong_shape) if not _loadable_into(state[k], expected[k]))
    problems = [
        f"{len(keys)} {what} {keys[:3]}"
        for what, keys in (("missing tensors", missing), ("unexpected tensors", unexpected),
                           ("of another shape", wrong_shape))
        if keys
    ]
    if wrong_type:
        problems.append(f"{len(wrong_type)} not dense floating-point tensors "
                        f"[{', '.join(f'{k}: {_kind(state[k])}' for k in wrong_type[:3])}]")
    if missing or unexpected:
        problems.append("the research code's model_monai1.3.pt uses other names")
    if problems:
        raise _not_vista3d("against the MONAI >= 1.4 layout: " + ", ".join(problems), path)
    network.load_state_dict(state, strict=True)
    return network.eval().to(device)


def resolve_device(device: str = "auto") -> "torch.device":
    """``auto`` picks the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise VISTA3DError(f"Unknown device {device!r}: use one of {', '.join(DEVICES)}.")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VISTA3DError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU (a CPU-only torch build, or no driver). "
            "Use --device cpu, or install a CUDA build of PyTorch (in Slicer: the PyTorch extension)."
        )
    return torch.device(device)


def describe_device(device: str = "auto") -> str:
    """One line for the panel: the GPU a device choice runs on and its free memory, or the CPU
    with a warning about speed. Never raises: a choice that cannot run says why."""
    import torch

    try:
        resolved = resolve_device(device)
    except VISTA3DError as error:
        return str(error).split(". ")[0] + "."
    if resolved.type != "cuda":
        reason = "" if device == "cpu" else "No GPU found: "
        return f"{reason}CPU: minutes per volume (a 128³ window takes ~20 s on 2 cores); a GPU is far faster."
    free, total = torch.cuda.mem_get_info(resolved)
    return f"{torch.cuda.get_device_name(resolved)}, {free / 2**30:.1f} of {total / 2**30:.1f} GB free"


def check_runtime(runtime: str, device: "torch.device") -> None:
    """Refuse an unknown runtime, or OpenVINO anywhere but on the CPU, saying what to do instead."""
    if runtime not in RUNTIMES:
        raise VISTA3DError(f"Unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}.")
    if runtime == "openvino" and device.type != "cpu":
        raise VISTA3DError(
            f"The OpenVINO runtime runs on the CPU, not on {device}: on a GPU use --runtime torch (far faster "
            "there), or run on the CPU with --device cpu."
        )


def autocast(device: "torch.device", precision: str) -> ContextManager:
    """The autocast context for a precision; fp32 (the reference) runs without autocast."""
    import torch

    if precision not in PRECISIONS:
        raise VISTA3DError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise VISTA3DError("fp16 is a GPU precision; on the CPU use --precision bf16 (or fp32, the reference).")
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)
