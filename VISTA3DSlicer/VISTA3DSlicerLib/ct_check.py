"""Whether an image looks like a CT in Hounsfield units: VISTA3D is a CT model, and on MR, PET or
unscaled values it gives confident nonsense, so the panel and the command line warn.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .geometry import Image

#: HU below which a voxel is air; a CT of a body has some around it (or in the lungs and bowel).
_AIR_HU = -900.0
#: Values a CT in Hounsfield units stays within (padding values of -3024 and metal up to ~30000
#: occur, so the bounds are wide: they catch 0..65535 raw scanner values and 0..1 normalised images).
_HU_RANGE = (-3100.0, 32000.0)


def ct_warning(image: Image) -> Optional[str]:
    """Why ``image`` does not look like a CT in Hounsfield units, or None when it does.

    VISTA3D is a CT model: on MR, PET or a CT stored without its rescale it gives confident
    nonsense, so the panel warns (and still lets the user run: the check is a heuristic).
    """
    values = np.asarray(image.array)
    finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    if finite.size == 0:
        return "The volume has no finite voxel values; VISTA3D needs a CT in Hounsfield units."
    low, high = float(finite.min()), float(finite.max())
    if low < _HU_RANGE[0] or high > _HU_RANGE[1]:
        return (f"Voxel values run from {low:g} to {high:g}, outside the Hounsfield range: this looks like a CT "
                "without its rescale slope/intercept, or not a CT. VISTA3D is a CT model; results may be wrong.")
    if float(np.percentile(finite, 1)) > _AIR_HU:
        return ("This does not look like a CT: there is no air (about -1000 HU) in it. VISTA3D is a CT model; on MR, "
                "PET or normalised images its results are unreliable.")
    return None
