"""The test oracle: the VISTA3D bundle's ``configs/inference.json`` wired with MONAI components.

This follows the reference doc §5 step by step (LoadImaged with nibabel, Spacing, crop to
HU > 0, VistaPreTransformd, intensity scaling, RAS, the bundle inferer's sliding window,
VistaPostTransformd, Invertd with nearest, NaN -> 255). It is deliberately written out as
the bundle wires it, independent of the engine's code, so that the engine can be checked
against it. Only the automatic (class prompt) path is here so far.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
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


def run_reference(image_path: str | Path, network: torch.nn.Module, label_prompt: Sequence[int] | None) -> np.ndarray:
    """Labelmap (float array on the input grid, nibabel's [i, j, k]) that the bundle produces, fp32 on CPU."""
    from monai.apps.vista3d.transforms import VistaPostTransformd, VistaPreTransformd
    from monai.inferers import SlidingWindowInfererAdapt
    from monai.transforms import (
        CastToTyped,
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        Lambdad,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )
    from monai.utils import set_determinism

    set_determinism(seed=123)
    preprocessing = Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            EnsureTyped(keys="image", device="cpu", track_meta=True),
            Spacingd(keys="image", pixdim=[1.5, 1.5, 1.5], mode="bilinear"),
            CropForegroundd(keys="image", source_key="image", margin=10, allow_smaller=True),
            VistaPreTransformd(keys="image", subclass=SUBCLASS, labels_dict=None),
            ScaleIntensityRanged(
                keys="image", a_min=-963.8247715525971, a_max=1053.678477684517, b_min=0, b_max=1, clip=True
            ),
            Orientationd(keys="image", axcodes="RAS"),
            CastToTyped(keys="image", dtype=torch.float32),
        ]
    )
    data = {"image": str(image_path)}
    # Evaluator.check_prompts_format: no prompt -> everything_labels.
    data["label_prompt"] = list(label_prompt) if label_prompt is not None else list(EVERYTHING_LABELS)
    data = preprocessing(data)

    inputs = data["image"][None]
    class_vector = torch.as_tensor([data["label_prompt"]])[0].unsqueeze(-1)
    network = network.eval()
    with torch.no_grad():
        # Vista3dInferer without points: SlidingWindowInfererAdapt with its defaults (overlap 0.25,
        # constant blending), replicate padding and patch coordinates.
        inferer = SlidingWindowInfererAdapt(
            roi_size=[128, 128, 128], sw_batch_size=1, with_coord=True, padding_mode="replicate"
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
    postprocessing = Compose(
        [
            VistaPostTransformd(keys="pred"),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
            Lambdad(keys="pred", func=lambda x: torch.nan_to_num(x, nan=255)),
        ]
    )
    data = postprocessing(data)
    return data["pred"][0].cpu().numpy()
