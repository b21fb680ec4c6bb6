"""The reference pipeline: the VISTA3D bundle's ``configs/inference.json`` wired with MONAI components.

The tests' oracle and what ``benchmarks/bench.py --reference`` times the engine against; it lives
outside the installed package. This follows the reference doc §5 step by step (LoadImaged with nibabel, Spacing, crop to
HU > 0, VistaPreTransformd, intensity scaling, RAS, the bundle inferer's sliding window,
VistaPostTransformd, Invertd with nearest, NaN -> 255). It is deliberately written out as
the bundle wires it, independent of the engine's code, so that the engine can be checked
against it. With points it follows the bundle's evaluator and inferer (§5.3-5.4 A): points
mapped into the preprocessed image, ``point_based_window_inferer``, zero-shot IDs dropped
from ``class_vector``, and ``VistaPostTransformd`` keeping the components of positive clicks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from VISTA3DSlicerLib.model import autocast

if TYPE_CHECKING:
    import torch

# The bundle's inference.json values (reference doc §2.2 and §5).
EVERYTHING_LABELS = sorted(
    set(range(1, 133)) - {2, 16, 18, 20, 21, 23, 24, 25, 26, 27, 128, 129, 130, 131, 132}
)
SUBCLASS = {
    "2": [14, 5],
    "20": [28, 29, 30, 31, 32],
    "21": list(range(33, 57)) + list(range(63, 98)) + [114, 120, 122],
}
#: What differs between the bundles' ``configs/inference.json`` (NVIDIA-Medtech/NV-Segment-CTMR): the
#: automatic windows (``patch_size``) and the intensity transform, as the config names them.
BUNDLE_CONFIGS = {
    "vista3d": {
        "patch_size": [128, 128, 128],
        "intensity": ("ScaleIntensityRanged", {"a_min": -963.8247715525971, "a_max": 1053.678477684517}),
    },
    "nv-segment-ctmr": {
        "patch_size": [192, 192, 128],
        "intensity": ("ScaleIntensityRangePercentilesd", {"lower": 1, "upper": 99}),
    },
}


def run_reference(
    image_path: str | Path,
    network: "torch.nn.Module",
    label_prompt: Sequence[int] | None,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    *,
    device: "torch.device | str" = "cpu",
    precision: str = "fp32",
    config: str = "vista3d",
) -> np.ndarray:
    """Labelmap (float array on the input grid, nibabel's [i, j, k]) that the bundle produces.

    ``points`` are voxel indices of the input array; ``point_labels`` 1 positive, 0 negative.
    Voxels outside every point window are 255, as the bundle writes them. ``device`` holds the
    image from its loading on (the bundle's ``EnsureTyped(device=@device)``) and the network;
    ``precision`` other than fp32 runs the network under autocast (the bundle's ``amp: true``
    is fp16 on a GPU). ``config`` is the bundle whose windows and intensity scaling are wired
    (``BUNDLE_CONFIGS``; NV-Segment-CT's are the VISTA3D bundle's).
    """
    import torch
    from monai.apps.vista3d.transforms import VistaPreTransformd
    from monai.inferers import SlidingWindowInfererAdapt
    from monai.transforms import (
        CastToTyped,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        Spacingd,
    )
    from monai import transforms
    from monai.utils import set_determinism

    bundle = BUNDLE_CONFIGS[config]
    intensity_target, intensity_arguments = bundle["intensity"]

    set_determinism(seed=123)
    preprocessing = Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys="image", device=device, track_meta=True),
            Spacingd(keys="image", pixdim=[1.5, 1.5, 1.5], mode="bilinear"),
            CropForegroundd(keys="image", source_key="image", margin=10, allow_smaller=True),
            VistaPreTransformd(keys="image", subclass=SUBCLASS, labels_dict=None),
            getattr(transforms, intensity_target)(keys="image", b_min=0, b_max=1, clip=True, **intensity_arguments),
            Orientationd(keys="image", axcodes="RAS"),
            CastToTyped(keys="image", dtype=torch.float32),
        ]
    )
    data = {"image": str(image_path)}
    # Evaluator.check_prompts_format: no prompt and no points -> everything_labels.
    if label_prompt is not None:
        data["label_prompt"] = list(label_prompt)
    elif points is None:
        data["label_prompt"] = list(EVERYTHING_LABELS)
    if points is not None:
        data["points"] = [list(p) for p in points]
        data["point_labels"] = list(point_labels)
    data = preprocessing(data)  # VistaPreTransformd turns click labels 0/1 into 2/3 for its special IDs

    inputs = data["image"][None]
    network = network.eval().to(device)
    if points is not None:
        with autocast(torch.device(device), precision):
            return _reference_points(data, inputs, network, preprocessing)
    class_vector = torch.as_tensor([data["label_prompt"]], device=device)[0].unsqueeze(-1)
    with torch.no_grad(), autocast(torch.device(device), precision):
        # Vista3dInferer without points: SlidingWindowInfererAdapt with its defaults (overlap 0.25,
        # constant blending), replicate padding and patch coordinates.
        inferer = SlidingWindowInfererAdapt(
            roi_size=bundle["patch_size"], sw_batch_size=1, with_coord=True, padding_mode="replicate"
        )
        pred = inferer(
            inputs,
            network,
            transpose=True,
            point_coords=None,
            point_labels=None,
            class_vector=class_vector,
            prompt_class=class_vector,
            prev_mask=None,
            labels=None,
            label_set=None,
        )
    data["pred"] = pred[0]
    data["label_prompt"] = class_vector
    return _postprocess(data, preprocessing)


def _reference_points(data: dict, inputs: "torch.Tensor", network: "torch.nn.Module", preprocessing) -> np.ndarray:
    """Vista3dEvaluator + Vista3dInferer with points (``use_point_window=True``)."""
    import torch
    from monai.apps.vista3d.inferer import point_based_window_inferer

    label_prompt = data.get("label_prompt")
    device = inputs.device
    class_vector = torch.as_tensor([label_prompt], device=device)[0].unsqueeze(-1) if label_prompt is not None else None
    # Evaluator: points from the original array's indices into the preprocessed image, not rounded.
    image = data["image"]  # not collated here, so its affines carry no batch axis
    to_network = np.linalg.inv(np.asarray(image.affine, dtype=np.float64)) @ np.asarray(
        image.meta["original_affine"], dtype=np.float64
    )
    homogeneous = np.concatenate([np.asarray(data["points"], dtype=np.float64), np.ones((len(data["points"]), 1))], 1)
    points = torch.from_numpy((homogeneous @ to_network.T)[None, :, :3]).to(device)
    point_labels = torch.as_tensor([data["point_labels"]], device=device)
    # Inferer: prompt_class keeps the ID; a zero-shot ID leaves the class head out.
    prompt_class = None if class_vector is None else class_vector.clone()
    if class_vector is not None and bool((class_vector > 132).any()):
        class_vector = None
    with torch.no_grad():
        pred = point_based_window_inferer(
            inputs=inputs,
            roi_size=[128, 128, 128],
            predictor=network,
            point_coords=points,
            point_labels=point_labels,
            class_vector=class_vector,
            prompt_class=prompt_class,
            prev_mask=None,
            transpose=True,
            with_coord=True,
        )
    data["pred"] = pred[0]
    data["label_prompt"] = None if label_prompt is None else torch.as_tensor([label_prompt])[0].unsqueeze(-1)
    data["points"] = points
    data["point_labels"] = point_labels
    return _postprocess(data, preprocessing)


def _postprocess(data: dict, preprocessing) -> np.ndarray:
    import torch
    from monai.apps.vista3d.transforms import VistaPostTransformd
    from monai.transforms import Compose, Invertd, Lambdad

    postprocessing = Compose(
        [
            VistaPostTransformd(keys="pred"),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
            Lambdad(keys="pred", func=lambda x: torch.nan_to_num(x, nan=255)),
        ]
    )
    data = postprocessing(data)
    return data["pred"][0].cpu().numpy()
