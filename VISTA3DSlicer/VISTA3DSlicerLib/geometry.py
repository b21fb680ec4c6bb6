"""The one image type of the library, and the mapping between voxel indices and RAS.

``Image.array`` is indexed ``[i, j, k]``: the voxel index order of ITK
(``TransformIndexToPhysicalPoint`` takes ``(i, j, k)``), of nibabel and of MONAI. Slicer's
``arrayFromVolume`` and SimpleITK's ``GetArrayFromImage`` give ``[k, j, i]``; the adapters
that read those transpose once, at the boundary.

``Image.affine`` maps a voxel index ``(i, j, k, 1)`` to RAS millimetres (Slicer's
``IJKToRAS``, nibabel's ``affine``). Labelmaps are ``Image``s with an integer array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import VISTA3DError

#: DICOM/ITK physical space is LPS; Slicer, nibabel and MONAI use RAS. One flip converts.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Image:
    """A 3D scalar volume: ``array[i, j, k]`` and the 4x4 ``affine`` from ``(i, j, k)`` to RAS mm."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise VISTA3DError(
                f"Expected a 3D scalar volume, got an array of shape {self.array.shape}. "
                "Pick one volume (one time point, one channel) and try again."
            )
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise VISTA3DError(f"The image's voxel-to-RAS matrix is not a finite 4x4 matrix: {self.affine!r}.")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise VISTA3DError("The image's voxel-to-RAS matrix is singular (a zero spacing or parallel axes).")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """Unit RAS direction of each voxel axis, as columns (3x3)."""
        return self.affine[:3, :3] / self.spacing

    @property
    def origin(self) -> np.ndarray:
        """RAS position of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    def with_array(self, array: np.ndarray) -> "Image":
        """The same grid with other voxel values (a labelmap of this image, say)."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid's {self.array.shape}")
        return Image(array, self.affine)

    def same_grid(self, other: "Image", atol: float = 1e-4) -> bool:
        """True when both images have the same size and voxel-to-RAS matrix."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def ras_to_index(self, ras: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(i, j, k)`` of RAS points (``[..., 3]``)."""
        ras = np.asarray(ras, dtype=np.float64)
        inverse = np.linalg.inv(self.affine)
        return ras @ inverse[:3, :3].T + inverse[:3, 3]

    def index_to_ras(self, index: np.ndarray) -> np.ndarray:
        """RAS millimetres of continuous voxel indices ``(i, j, k)`` (``[..., 3]``)."""
        index = np.asarray(index, dtype=np.float64)
        return index @ self.affine[:3, :3].T + self.affine[:3, 3]


def bounding_box(mask: np.ndarray) -> Optional[tuple[slice, slice, slice]]:
    """The smallest box of a 3D array holding every non-zero voxel, or None when there is none."""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hits):
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]
