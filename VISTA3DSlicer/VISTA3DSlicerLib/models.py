"""The segmentation models VISTA3DSlicer runs, as data: one description per published model.

Every model here is the ``vista3d132`` network with the MONAI bundle's pipeline (reference doc
§5): NV-Segment-CT is NVIDIA's later release of the same network and recipe, published apart
from the MONAI bundle with its own weights and licence; NV-Segment-CTMR is that network
fine-tuned on CT and MR (345 classes, automatic only) with its own windows, intensity scaling
and label table. A description says where the weights come from, under which licence, which
prompts and modalities the model takes, its label space and preprocessing, and which
environment variable names a local copy; ``weights`` downloads and finds them, and the engine,
the command line (``--model``, ``vista3d models``) and the panel read these descriptions rather
than assuming one model.

This module imports no torch or monai: Slicer imports it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional
from urllib.parse import urlparse

from .errors import VISTA3DError
from .labels import CTMR_LABELS, VISTA3D_LABELS, LabelSpace
from .preprocessing import VISTA3D_PREPROCESSING, IntensityPercentiles, Preprocessing

__all__ = ["WeightsSource", "Licence", "SegmentationModel", "MODELS", "DEFAULT_MODEL", "get_model"]


@dataclass(frozen=True)
class WeightsSource:
    """One place a checkpoint can be downloaded from, and how to recognise a good copy."""

    name: str
    url: str
    filename: str  #: file name in the cache folder
    sha256: Optional[str] = None
    md5: Optional[str] = None
    size: Optional[int] = None  #: bytes, where the publisher gives it
    licence_note: str = ""
    title: str = "VISTA3D weights"  #: what the file is, in messages
    offline_option: str = "`--weights FILE` or set VISTA3D_WEIGHTS=FILE"  #: how to use a copy made elsewhere
    download_command: str = "vista3d weights download"  #: the command line that fetches it, in messages
    #: The file is on the Hugging Face hub and no checksum is pinned here: the download checks it
    #: against the SHA-256 and size the hub reports for the stored file (its ``X-Linked-Etag``).
    hub_checksum: bool = False

    @property
    def checksum(self) -> Optional[tuple[str, str]]:
        """``(algorithm, hex digest)`` to check against, the strongest one known, or None."""
        if self.sha256:
            return "sha256", self.sha256.lower()
        if self.md5:
            return "md5", self.md5.lower()
        return None

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or self.url

    @property
    def size_text(self) -> Optional[str]:
        """The file's size for messages ("872 MB"), or None where the publisher gives none."""
        return f"{self.size / 1e6:,.0f} MB" if self.size else None

    def with_checksum(self, sha256: str, size: Optional[int]) -> "WeightsSource":
        """This source with a SHA-256 (and size) learnt from the hub."""
        return replace(self, sha256=sha256, size=size if size is not None else self.size)


@dataclass(frozen=True)
class Licence:
    """The licence the weights come under (this project's code is Apache-2.0 either way)."""

    name: str
    url: str
    commercial_use: str  #: "no", "yes", or what the publisher's sources say when they disagree

    @property
    def note(self) -> str:
        return (f"These weights are NVIDIA's, under the {self.name} ({self.url}), not this project's Apache-2.0 "
                f"licence. Commercial use: {self.commercial_use}. Check that the licence fits your use before "
                "you use them.")


@dataclass(frozen=True)
class SegmentationModel:
    """One published model: what it does, under which licence, and where its weights are."""

    key: str  #: the ``--model`` value
    title: str
    summary: str
    modalities: tuple[str, ...]
    prompts: tuple[str, ...]  #: "automatic", "points" (+/− clicks), "zero-shot"
    licence: Licence
    sources: tuple[WeightsSource, ...]  #: the first is the default download
    environment: str  #: the environment variable that names a local copy of the checkpoint
    #: The bundle's preprocessing and windows (its ``inference.json``).
    preprocessing: Preprocessing = VISTA3D_PREPROCESSING
    labels: LabelSpace = VISTA3D_LABELS  #: class IDs, names, terminology, groups, "everything" lists
    #: What the user should know when choosing the model, beyond its summary (shown where it is chosen).
    caveat: str = ""

    @property
    def classes(self) -> int:
        """Trained class IDs: 1..classes."""
        return self.labels.classes

    @property
    def takes_clicks(self) -> bool:
        return "points" in self.prompts

    def check_clicks(self) -> None:
        """Refuse clicks on an automatic-only model, saying which models take them."""
        if not self.takes_clicks:
            others = ", ".join(model.key for model in MODELS.values() if model.takes_clicks)
            raise VISTA3DError(f"{self.title} segments automatically only: it takes no clicks, so its results cannot "
                               f"be corrected or extended with clicks. Clicks need another model ({others}).")

    @property
    def default_source(self) -> WeightsSource:
        return self.sources[0]

    def source(self, name: Optional[str] = None) -> WeightsSource:
        """The source called ``name`` (default: the first)."""
        if name is None:
            return self.default_source
        for source in self.sources:
            if source.name == name:
                return source
        raise VISTA3DError(f"Unknown weights source {name!r} for {self.title}: use one of "
                           f"{', '.join(s.name for s in self.sources)}.")


_MONAI_BUNDLE_LICENCE = Licence(
    "NVIDIA OneWay Noncommercial License (NCLS v1)", "https://huggingface.co/MONAI/vista3d", commercial_use="no")
# NVIDIA's sources disagree (reference doc §1): the VISTA README's model table calls the
# NV-Segment-CT weights "commercial friendly" (NVIDIA Open Model License), while the LICENSE file
# of NV-Segment-CT in NVIDIA-Medtech/NV-Segment-CTMR limits the weights to non-commercial research
# and evaluation (its §3.3). The user is told both and sent to the model card.
_NV_SEGMENT_CT_LICENCE = Licence(
    "NVIDIA Open Model License", "https://huggingface.co/nvidia/NV-Segment-CT",
    commercial_use="yes according to the VISTA README's model table, but the LICENSE file of NV-Segment-CT in "
    "github.com/NVIDIA-Medtech/NV-Segment-CTMR allows non-commercial research and evaluation only; read the "
    "model card before any commercial use")


def _vista3d_source(name: str, **fields) -> WeightsSource:
    return WeightsSource(name=name, licence_note=_MONAI_BUNDLE_LICENCE.note, **fields)


VISTA3D = SegmentationModel(
    key="vista3d",
    title="VISTA3D (MONAI bundle)",
    summary="The MONAI model-zoo bundle of the CVPR 2025 paper: 127 CT structures, clicks, zero-shot.",
    modalities=("CT",),
    prompts=("automatic", "points", "zero-shot"),
    licence=_MONAI_BUNDLE_LICENCE,
    sources=(
        _vista3d_source(
            "huggingface",
            # Pinned to a commit so that the file behind the URL cannot change under its checksum.
            url="https://huggingface.co/MONAI/vista3d/resolve/c6dbe159632a4767696e09f91d74d729b82e73e6/models/model.pt",
            filename="vista3d_model.pt",
            sha256="c92bab26d00b4a5d89fa8a383900cdeb88302fd318e5e816df0bbec7106d9a1b",
            size=871_970_895,
        ),
        _vista3d_source(
            "nvidia",
            url="https://developer.download.nvidia.com/assets/Clara/monai/tutorials/model_zoo/model_vista3d.pt",
            # A different upload from the Hugging Face one (only an md5 is published for it), so it
            # gets its own name in the cache.
            filename="vista3d_model_nvidia.pt",
            md5="6ce45a8edde4400c5d28d5e74d7b61d5",
            download_command="vista3d weights download --source nvidia",
        ),
    ),
    environment="VISTA3D_WEIGHTS",
)

def _nvidia_hub_source(key: str, repository: str, environment: str, licence: Licence) -> WeightsSource:
    """The checkpoint of NVIDIA's Hugging Face repository ``nvidia/<repository>``. No commit or checksum
    of these files could be read from here (no access to the hub when this was written), so the
    download follows ``main`` and checks the SHA-256 the hub reports for the file."""
    return WeightsSource(
        name="huggingface",
        url=f"https://huggingface.co/nvidia/{repository}/resolve/main/vista3d_pretrained_model/model.pt",
        filename=f"{key.replace('-', '_')}_model.pt",
        licence_note=licence.note,
        title=f"{repository} weights",
        offline_option=f"`--weights FILE` or set {environment}=FILE",
        download_command=f"vista3d weights download --model {key}",
        hub_checksum=True,
    )


# The same network, classes and prompts as the bundle: only what it is, its licence and its weights differ.
NV_SEGMENT_CT = replace(
    VISTA3D,
    key="nv-segment-ct",
    title="NV-Segment-CT",
    summary="NVIDIA's release of the VISTA3D network and recipe (NVIDIA-Medtech/NV-Segment-CTMR): "
    "the same 127 CT structures, clicks and zero-shot, with its own weights and licence.",
    licence=_NV_SEGMENT_CT_LICENCE,
    sources=(_nvidia_hub_source("nv-segment-ct", "NV-Segment-CT", "NV_SEGMENT_CT_WEIGHTS", _NV_SEGMENT_CT_LICENCE),),
    environment="NV_SEGMENT_CT_WEIGHTS",
)

# Its docs/README.md: weights under the NCLS v1 licence, "non-commercial and needs future discussion"
# (its LICENSE file is empty); the VISTA README's table also says non-commercial.
_CTMR_LICENCE = Licence(
    "NVIDIA OneWay Noncommercial License (NCLS v1)", "https://huggingface.co/nvidia/NV-Segment-CTMR",
    commercial_use="no")

NV_SEGMENT_CTMR = SegmentationModel(
    key="nv-segment-ctmr",
    title="NV-Segment-CTMR",
    summary="The VISTA3D network fine-tuned on over 30,000 CT and MR scans: 345 classes of CT and MR, body "
    "and brain (NVIDIA-Medtech/NV-Segment-CTMR); automatic segmentation only.",
    modalities=("CT", "MR"),
    prompts=("automatic",),
    licence=_CTMR_LICENCE,
    sources=(_nvidia_hub_source("nv-segment-ctmr", "NV-Segment-CTMR", "NV_SEGMENT_CTMR_WEIGHTS", _CTMR_LICENCE),),
    environment="NV_SEGMENT_CTMR_WEIGHTS",
    # configs/inference.json: 192x192x128 windows, intensities scaled between the 1st and 99th percentiles.
    preprocessing=Preprocessing(window=(192, 192, 128), intensity=IntensityPercentiles(1, 99)),
    labels=CTMR_LABELS,
    caveat="Brain MR (mri-brain): the model was trained on skull-stripped T1 volumes registered to the LUMIR "
    "template with normalised intensities (the bundle's brain_t1_preprocess). VISTA3DSlicer segments the volume "
    "as it is: skull-strip and normalise a brain T1 first for the results the bundle reports.",
)

#: Every model by its ``--model`` value.
MODELS: dict[str, SegmentationModel] = {model.key: model for model in (VISTA3D, NV_SEGMENT_CT, NV_SEGMENT_CTMR)}
DEFAULT_MODEL = VISTA3D.key


def get_model(key: str) -> SegmentationModel:
    """The model called ``key``, refusing an unknown one with the list."""
    try:
        return MODELS[key]
    except KeyError:
        raise VISTA3DError(f"Unknown model {key!r}: use one of {', '.join(MODELS)} (`vista3d models` lists them)."
                           ) from None
