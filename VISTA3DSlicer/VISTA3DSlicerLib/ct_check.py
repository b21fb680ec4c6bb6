"""Whether an image looks like a CT in Hounsfield units, and which modality to segment it as.

VISTA3D and NV-Segment-CT are CT models: on MR, PET or unscaled values they give confident
nonsense, so the panel and the command line warn. NV-Segment-CTMR also segments MR (body and
brain): for it, an image that does not look like a CT is segmented as MR unless the user says
otherwise (``choose_modality``, the one place the command line and the Slicer Logic decide it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from .errors import VISTA3DError
from .geometry import Image

if TYPE_CHECKING:
    from .models import SegmentationModel

#: What each modality key means (``--modality``; NV-Segment-CTMR's CT_BODY, MRI_BODY, MRI_BRAIN).
MODALITY_TITLES = {"ct": "CT", "mri-body": "MR of the body", "mri-brain": "MR of the brain (T1)"}

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


@dataclass(frozen=True)
class ModalityChoice:
    """What a volume is segmented as, and what to tell the user about it (None: nothing)."""

    modality: str  #: a key of ``MODALITY_TITLES``
    message: Optional[str] = None
    warning: bool = False  #: the message says the results may be wrong (else it only informs)


def choose_modality(model: "SegmentationModel", image: Image, requested: Optional[str] = None) -> ModalityChoice:
    """The modality to segment ``image`` as with ``model``, and what to tell the user.

    ``requested``: the user's choice (``ct``, ``mri-body``, ``mri-brain``) or None to infer it. A
    CT-only model refuses an MR modality (naming the model that takes MR) and warns on an image
    that does not look like a CT. An MR-capable model takes the choice as given (warning only on
    "ct" for a non-CT image, and saying what brain MR needs); without one it segments a CT-looking
    image as CT and anything else as body MR, and says so.
    """
    available = model.labels.modalities
    if requested is not None and requested not in MODALITY_TITLES:
        raise VISTA3DError(f"Unknown modality {requested!r}: use one of {', '.join(MODALITY_TITLES)}.")
    if requested is not None and requested not in available:
        from .models import MODELS

        others = [m.key for m in MODELS.values() if requested in m.labels.modalities]
        raise VISTA3DError(f"{model.title} segments {', '.join(MODALITY_TITLES[m] for m in available)} only, not "
                           f"{MODALITY_TITLES[requested]}: use --model {' or '.join(others)} for it.")
    warning = ct_warning(image)
    if available == ("ct",) or requested == "ct":
        return ModalityChoice("ct", warning, warning=warning is not None)
    if requested == "mri-brain":
        return ModalityChoice(requested, model.caveat or None)
    if requested == "mri-body":
        return ModalityChoice(requested)
    if warning is None:
        return ModalityChoice("ct", "The volume looks like a CT: segmenting it as CT (choose the modality mri-body "
                                    "or mri-brain for MR).")
    # Said in words that fit the command line (--modality) and the panel (its Modality box) alike.
    return ModalityChoice("mri-body", "The volume does not look like a CT in Hounsfield units: segmenting it as MR "
                                      "of the body (choose the modality mri-brain for a brain T1, ct for a CT).")
