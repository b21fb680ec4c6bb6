"""Writing a labelmap as a DICOM Segmentation (SEG), so that a cohort's results can go back into a PACS.

The labelmap must be on the grid of the DICOM series it was segmented from: the series
``io.read_image`` reads from the folder (the one with the most files), whose files, in ITK's
slice order, are the labelmap's slices ``k``. The SEG references that series, image by image,
and holds one BINARY segment per label present (segment numbers 1..n in increasing label
order) with the label table's name, colour and SNOMED CT codes. BINARY rather than the newer
LABELMAP SOP class, because validators and PACS of 2022 and earlier do not know the latter.

highdicom and pydicom are imported inside the functions: 3D Slicer imports this module at
start-up, and only this output format needs them.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from . import __version__
from .atomic_write import write_atomically
from .dependencies import require
from .errors import VISTA3DError
from .geometry import LPS_TO_RAS, Image

if TYPE_CHECKING:
    import highdicom
    import pydicom

    from .labels import Code, LabelInfo, LabelSpace

#: What to tell a user whose input cannot have a DICOM SEG.
_OTHER_FORMATS = "choose --format nii.gz|nrrd|seg.nrrd|mha for it"
#: Attributes without which the SEG could not reference the source images or place its frames.
_REQUIRED_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                        "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
#: A labelmap read with ``read_image`` matches the series' grid to ~1e-5 mm; a flipped, shifted or
#: resampled one is off by a voxel or more. A tenth of a voxel tells them apart and leaves room for
#: the rounding of other readers (NIfTI's float32 matrix, Slicer).
_GRID_TOLERANCE = 0.1
_SERIES_DESCRIPTION = "VISTA3D segmentation"
_CONTENT_LABEL = "VISTA3D"  # a DICOM CS: upper case, at most 16 characters
#: A PACS shows series in SeriesNumber order: the SEG follows its CT (its number plus 1000), or 999
#: when the CT has no usable number.
_SERIES_NUMBER_OFFSET = 1000
_DEFAULT_SERIES_NUMBER = 999


def source_series_files(folder: Path) -> list[Path]:
    """The files of the series the library reads from ``folder`` (the one with the most slices), in ITK's order."""
    from .io import dicom_series_files

    folder = Path(folder)
    if not folder.is_dir():
        what = "a file, not a folder of DICOM files" if folder.exists() else "not found"
        raise VISTA3DError(f"DICOM SEG output needs a DICOM series as input: {folder} is {what}; {_OTHER_FORMATS}.")
    files = dicom_series_files(folder)
    if not files:
        raise VISTA3DError(
            f"DICOM SEG output needs a DICOM series as input: {folder} is a folder without DICOM files "
            f"(subfolders are not searched); {_OTHER_FORMATS}."
        )
    return [Path(name) for name in files]


def write_dicom_seg(labelmap: Image, series: Path, output: Path, *, label_space: Optional["LabelSpace"] = None,
                    overwrite: bool = False) -> Path:
    """Write ``labelmap`` (on the grid of the DICOM series in the folder ``series``) as a DICOM SEG at ``output``.

    One BINARY segment per label present, numbered 1..n in increasing label order, described by
    ``label_space`` (default VISTA3D's): name, colour, category, type (and modifier) and anatomic
    region (and modifier). Frames of slices where a segment is empty are left out. The SEG is a new
    series in the source's study and references every source image. An existing ``output`` is
    replaced only with ``overwrite``. Returns ``output``.
    """
    from .io import _labelmap_integers
    from .labels import VISTA3D_LABELS

    require("dicom")  # highdicom: one message naming what to install
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    series, output = Path(series), Path(output)
    space = label_space or VISTA3D_LABELS
    files = source_series_files(series)
    # The headers are enough for highdicom; the CT's pixels would take as much memory as the volume.
    sources = [pydicom.dcmread(name, stop_before_pixels=True) for name in files]
    _check_sources(series, sources)
    _check_grid(labelmap, series, sources)

    # Frame k is source file k; a frame's rows are j and its columns i: the [k, j, i] order.
    labels = np.transpose(_labelmap_integers(labelmap.array, output, space), (2, 1, 0))
    # bincount rather than np.unique, over the voxels in memory order: no copy of the whole volume.
    present = np.flatnonzero(np.bincount(np.ravel(labels, order="K")))
    present = present[present > 0]
    if not len(present):
        raise VISTA3DError(
            f"Nothing was segmented in {series}: no DICOM SEG written, as a DICOM SEG needs at least one "
            "segment. Check the label prompt and that the series shows the structures asked for."
        )
    # Label value -> segment number, the label-map style array highdicom splits into binary segments.
    segment_numbers = np.zeros(int(present[-1]) + 1, np.uint8 if len(present) <= 255 else np.uint16)
    segment_numbers[present] = np.arange(1, len(present) + 1)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=space.title, family=codes.cid7162.ArtificialIntelligence, version=__version__,
    )
    descriptions = [_segment_description(hd, number, space.label_info(int(value)), algorithm)
                    for number, value in enumerate(present, start=1)]
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=segment_numbers[labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=_series_number(sources[0]),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="VISTA3DSlicer",
        manufacturer_model_name="VISTA3D",
        software_versions=__version__,
        device_serial_number="VISTA3DSlicer",
        series_description=_SERIES_DESCRIPTION,
        content_label=_CONTENT_LABEL,
        content_description=f"{space.title} automatic segmentation",
        omit_empty_frames=True,
    )
    return write_atomically(output, ".dcm", overwrite, lambda temporary: segmentation.save_as(temporary))


def _check_sources(series: Path, sources: Sequence["pydicom.Dataset"]) -> None:
    """Refuse a series a SEG cannot reference or describe frame by frame."""
    missing = sorted({keyword for source in sources for keyword in _REQUIRED_ATTRIBUTES if not source.get(keyword)})
    if missing:
        raise VISTA3DError(
            f"The DICOM series in {series} lacks {', '.join(missing)} (anonymisation may have removed them), "
            "and a DICOM SEG must name the study, series and images it segments. Export the series again with "
            f"its UIDs and image positions, or {_OTHER_FORMATS}."
        )
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames") or 1) > 1:
        raise VISTA3DError(
            f"The DICOM series in {series} is one multi-frame (enhanced) image; DICOM SEG output supports "
            f"series of one file per slice. Export the series as single-frame images, or {_OTHER_FORMATS}."
        )


def _check_grid(labelmap: Image, series: Path, sources: Sequence["pydicom.Dataset"]) -> None:
    """Refuse a labelmap whose voxels are not the pixels of the series' images."""
    shape = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    fix = ("Write the labelmap segmented from this very series, on the grid read_image gave it (not resampled, "
           "cropped or reoriented), or pass the DICOM folder it was segmented from.")
    if labelmap.shape != shape:
        raise VISTA3DError(
            f"The labelmap is not on the grid of the DICOM series in {series}: it has "
            f"{' x '.join(map(str, labelmap.shape))} voxels, the series {' x '.join(map(str, shape))}. {fix}"
        )
    series_affine = _series_affine(sources, labelmap)
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1).T
    expected = corners @ series_affine[:3, :3].T + series_affine[:3, 3]
    deviation = float(np.linalg.norm(labelmap.index_to_ras(corners) - expected, axis=1).max())
    if deviation > _GRID_TOLERANCE * labelmap.spacing.min():
        raise VISTA3DError(
            f"The labelmap is not on the grid of the DICOM series in {series}: its corner voxels are up to "
            f"{deviation:.3g} mm from the series' pixels (another series, or a flipped or shifted grid). {fix}"
        )


def _series_affine(sources: Sequence["pydicom.Dataset"], labelmap: Image) -> np.ndarray:
    """The voxel-to-RAS matrix ITK gives the series: origin and slice step from the first and last image
    positions. A single slice has no slice step: the labelmap's own is taken."""
    first = np.asarray(sources[0].ImagePositionPatient, dtype=np.float64)
    last = np.asarray(sources[-1].ImagePositionPatient, dtype=np.float64)
    row, column = np.asarray(sources[0].ImageOrientationPatient, dtype=np.float64).reshape(2, 3)
    row_spacing, column_spacing = (float(value) for value in sources[0].PixelSpacing)  # between rows, columns
    lps = np.eye(4)
    lps[:3, 0] = row / np.linalg.norm(row) * column_spacing  # i runs along a row
    lps[:3, 1] = column / np.linalg.norm(column) * row_spacing
    lps[:3, 2] = (last - first) / (len(sources) - 1) if len(sources) > 1 else (LPS_TO_RAS @ labelmap.affine)[:3, 2]
    lps[:3, 3] = first
    return LPS_TO_RAS @ lps


def _series_number(source: "pydicom.Dataset") -> int:
    number = source.get("SeriesNumber")
    if not number or not 0 < int(number) < 2**31 - _SERIES_NUMBER_OFFSET:  # IS holds 32-bit integers
        return _DEFAULT_SERIES_NUMBER
    return int(number) + _SERIES_NUMBER_OFFSET


def _segment_description(hd: ModuleType, number: int, info: "LabelInfo",
                         algorithm: "highdicom.AlgorithmIdentificationSequence") -> "highdicom.seg.SegmentDescription":
    """One segment described by its label's entry. Zero-shot IDs (no trained class) get the label space's
    generic entry: "Zero-shot structure <ID>" with category and type "Tissue", Slicer's default for a new
    segment, since nothing is known about what the clicks outlined."""
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=info.display_name,
        segmented_property_category=_coded(hd, info.category),
        segmented_property_type=_coded(hd, info.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[_coded(hd, info.region)] if info.region else None,
        display_color=hd.color.CIELabColor.from_rgb(*info.color),
    )
    # highdicom takes no modifiers; the standard puts each in the item of the code it modifies.
    if info.type_modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            _coded(hd, info.type_modifier)]
    if info.region and info.region_modifier:
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [_coded(hd, info.region_modifier)]
    return description


def _coded(hd: ModuleType, code: "Code") -> "highdicom.sr.CodedConcept":
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
