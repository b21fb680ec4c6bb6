"""Preprocessing of the reference pipeline and its inverse (reference doc §5.2 and §5.5).

The network sees the volume resampled to 1.5 mm (bilinear), cropped to the voxels above
0 with a 10-voxel margin, scaled to [0, 1] and turned to RAS axis order. Results go back
through the exact inverse: axes restored, the crop padded with background, and a
nearest-neighbour resample to the input grid. What differs between models (the intensity
scaling, the windows of automatic segmentation) is a model's ``Preprocessing``: the VISTA3D
bundle maps a fixed HU range to [0, 1]; NV-Segment-CTMR maps the 1st..99th percentiles, so
that MR works too, and slides 192 x 192 x 128 windows.

These are MONAI's own invertible transforms, in the bundle's order and with its settings,
so the geometry is the reference's by construction; MONAI records every step on the
``MetaTensor`` and ``Invertd`` replays them backwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import VISTA3DError
from .geometry import Image

if TYPE_CHECKING:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, MapTransform

#: Side of the click windows, voxels of the network grid: a click runs the window centred on it
#: (the bundle's point inferer, whose roi is 128³ for every model that takes clicks).
CLICK_WINDOW = 128
#: Foreground crop: voxels above 0, with this margin in voxels.
CROP_MARGIN = 10


@dataclass(frozen=True)
class IntensityRange:
    """``ScaleIntensityRanged``: the range ``a_min .. a_max`` (HU) mapped to [0, 1], clipped."""

    a_min: float
    a_max: float

    def transform(self) -> "MapTransform":
        from monai.transforms import ScaleIntensityRanged

        return ScaleIntensityRanged(keys="image", a_min=self.a_min, a_max=self.a_max, b_min=0.0, b_max=1.0, clip=True)

    def __str__(self) -> str:
        return f"{self.a_min:.0f} to {self.a_max:.0f} HU scaled to 0..1"


@dataclass(frozen=True)
class IntensityPercentiles:
    """``ScaleIntensityRangePercentilesd``: the volume's ``lower``..``upper`` percentiles mapped to
    [0, 1], clipped (for any modality: nothing assumes Hounsfield units)."""

    lower: float
    upper: float

    def transform(self) -> "MapTransform":
        from monai.transforms import ScaleIntensityRangePercentilesd

        return ScaleIntensityRangePercentilesd(keys="image", lower=self.lower, upper=self.upper, b_min=0.0, b_max=1.0,
                                               clip=True)

    def __str__(self) -> str:
        return f"percentiles {self.lower:g} to {self.upper:g} scaled to 0..1"


@dataclass(frozen=True)
class Preprocessing:
    """How a model's bundle prepares its input and slides its windows (its ``inference.json``)."""

    #: Target voxel size of the network, mm.
    spacing_mm: float = 1.5
    #: The windows of automatic segmentation, voxels per axis (the bundle's ``patch_size``).
    window: tuple[int, int, int] = (128, 128, 128)
    #: Their overlap: ``SlidingWindowInfererAdapt``'s default, which the bundle runs (reference doc
    #: §5.4 B: the configured overlap 0.3 never reaches it).
    overlap: float = 0.25
    intensity: "IntensityRange | IntensityPercentiles" = IntensityRange(-963.8247715525971, 1053.678477684517)


#: The VISTA3D bundle's (and NV-Segment-CT's).
VISTA3D_PREPROCESSING = Preprocessing()


def preprocessing_transform(preprocessing: Preprocessing = VISTA3D_PREPROCESSING) -> "Compose":
    """A bundle's image preprocessing after loading (``inference.json``), as an invertible chain."""
    from monai.transforms import CastToTyped, Compose, CropForegroundd, Orientationd, Spacingd

    return Compose(
        [
            Spacingd(keys="image", pixdim=[preprocessing.spacing_mm] * 3, mode="bilinear"),
            CropForegroundd(keys="image", source_key="image", margin=CROP_MARGIN, allow_smaller=True),
            preprocessing.intensity.transform(),
            Orientationd(keys="image", axcodes="RAS"),
            CastToTyped(keys="image", dtype=np.float32),
        ]
    )


@dataclass
class Preprocessed:
    """The network's input ``[1, X, Y, Z]`` with the record of how it was made from the input image."""

    tensor: "MetaTensor"
    transform: "Compose"
    source_shape: tuple[int, int, int]

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.tensor.shape[1:])  # type: ignore[return-value]

    def restore(self, volume: "torch.Tensor") -> np.ndarray:
        """Map a volume ``[X, Y, Z]`` on the network grid back to the input grid (nearest neighbour).

        Values are carried as they are (NaN included); the voxels outside the foreground crop,
        which the network never saw, come back as 0, as in the reference.
        """
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        prediction = MetaTensor(volume[None].float(), affine=self.tensor.affine, meta=dict(self.tensor.meta))
        invert = Invertd(keys="pred", transform=self.transform, orig_keys="image", nearest_interp=True)
        restored = invert({"image": self.tensor, "pred": prediction})["pred"]
        array = restored[0].detach().cpu().numpy()
        if array.shape != self.source_shape:  # a broken inverse would be a bug, never the user's fault
            raise AssertionError(f"inverse produced {array.shape}, expected {self.source_shape}")
        return array

    def to_network_points(self, indices: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``[N, 3]`` of the input array mapped onto the network grid.

        The bundle's evaluator does the same (``inv(final affine) @ original affine``, float64,
        not rounded), so the clicks land where the reference puts them.
        """
        to_network = np.linalg.inv(np.asarray(self.tensor.affine, dtype=np.float64)) @ np.asarray(
            self.tensor.meta["original_affine"], dtype=np.float64
        )
        indices = np.asarray(indices, dtype=np.float64).reshape(-1, 3)
        return indices @ to_network[:3, :3].T + to_network[:3, 3]

    def to_network_grid(self, mask: np.ndarray, source_affine: np.ndarray) -> "torch.Tensor":
        """A mask on the input grid resampled (nearest) onto the network grid, as float ``[X, Y, Z]``."""
        import torch
        from monai.data import MetaTensor
        from monai.transforms import SpatialResample

        source = MetaTensor(torch.as_tensor(mask[None], dtype=torch.float32), affine=torch.as_tensor(source_affine))
        resampled = SpatialResample(mode="nearest", padding_mode="zeros")(
            source, dst_affine=self.tensor.affine, spatial_size=self.spatial_shape
        )
        return torch.as_tensor(resampled[0]).to(self.tensor.device)


def preprocess(image: Image, device: "torch.device | str" = "cpu",
               preprocessing: Preprocessing = VISTA3D_PREPROCESSING) -> Preprocessed:
    """Turn an input image into the network's input on ``device`` (reference doc §5.2)."""
    import torch
    from monai.data import MetaTensor

    if 1 in image.shape:
        # The network sees 3D context; a single slice padded to a window gives confident nonsense.
        raise VISTA3DError(
            f"The volume is a single slice ({' x '.join(map(str, image.shape))} voxels); VISTA3D segments 3D CT "
            "volumes. Load the whole series (the DICOM folder or the 3D file), not one slice."
        )
    values = np.asarray(image.array, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise VISTA3DError(
            "The volume has NaN or infinite voxels; VISTA3D needs finite Hounsfield units. "
            "Fix or mask those voxels (e.g. set them to -1024) and try again."
        )
    tensor = MetaTensor(
        torch.as_tensor(values[None], device=device),
        affine=torch.as_tensor(image.affine, dtype=torch.float64),
        meta={"original_affine": image.affine.copy(), "spatial_shape": np.array(image.shape)},
    )
    transform = preprocessing_transform(preprocessing)
    result = transform({"image": tensor})["image"]
    if min(result.shape[1:]) == 0:
        raise VISTA3DError(
            "No voxel of the volume is above 0 HU, so there is no body to segment. VISTA3D is a CT model: "
            "check that this is a CT in Hounsfield units (not MR, not a mask, not rescaled to 0..1)."
        )
    return Preprocessed(tensor=result, transform=transform, source_shape=image.shape)
