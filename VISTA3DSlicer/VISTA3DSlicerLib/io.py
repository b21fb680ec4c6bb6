"""Reading CT volumes and writing labelmaps, with the geometry kept exact.

Everything goes through SimpleITK, whose physical space is LPS; ``Image`` is RAS, so the
two adapters ``image_to_sitk`` / ``image_from_sitk`` flip once and transpose the voxel
array between ITK's ``[i, j, k]`` and SimpleITK's ``[k, j, i]`` numpy order.

Writers never leave a half-written file behind (``atomic_write``) and refuse to replace an
existing file unless asked to; a file ITK would read wrongly without a word (a truncated NIfTI
or MetaImage, a 4D or colour image) is refused first (``file_integrity``). The CT check is
``ct_check``, the PNG previews ``preview``.

Importing this module is cheap and never imports torch; SimpleITK, nibabel, slicerio and
PIL are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional

import numpy as np

from .atomic_write import write_atomically
from .errors import VISTA3DError
from .file_integrity import check_metaimage_complete, check_nifti_complete, check_scalar_volume
from .geometry import LPS_TO_RAS, Image

if TYPE_CHECKING:
    import SimpleITK

    from .labels import LabelInfo, LabelSpace

logger = logging.getLogger(__name__)

#: File endings ``read_image`` reads (longest first, so that ``.nii.gz`` wins over ``.gz``);
#: a DICOM series is a folder.
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Labelmap formats ``write_labelmap`` writes, by file name ending (longest endings first,
#: so that ``x.seg.nrrd`` is a segmentation, not a plain NRRD labelmap).
LABELMAP_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")

# --------------------------------------------------------------------------- SimpleITK adapters


def image_to_sitk(image: Image) -> "SimpleITK.Image":
    """The ``Image`` as a SimpleITK image (LPS geometry, same pixel type; ``bool`` becomes ``uint8``)."""
    import SimpleITK as sitk

    array = image.array.astype(np.uint8) if image.array.dtype == bool else image.array
    # SimpleITK wants [k, j, i]; a transposed view is enough, GetImageFromArray copies.
    sitk_image = sitk.GetImageFromArray(np.transpose(array, (2, 1, 0)), isVector=False)
    lps = LPS_TO_RAS @ image.affine  # LPS_TO_RAS is its own inverse
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    sitk_image.SetSpacing([float(s) for s in spacing])
    sitk_image.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])  # row-major, columns = axes
    sitk_image.SetOrigin([float(o) for o in lps[:3, 3]])
    return sitk_image


def image_from_sitk(sitk_image: "SimpleITK.Image") -> Image:
    """The ``Image`` of a 3D scalar SimpleITK image (RAS geometry, same pixel type).

    The array is a transposed view of SimpleITK's copy, so no voxel data are copied twice.
    """
    import SimpleITK as sitk

    check_scalar_volume("The image", sitk_image.GetDimension(), sitk_image.GetSize(),
                         sitk_image.GetNumberOfComponentsPerPixel())
    direction = np.asarray(sitk_image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(sitk_image.GetSpacing(), dtype=np.float64)
    lps[:3, 3] = sitk_image.GetOrigin()
    array = np.transpose(sitk.GetArrayFromImage(sitk_image), (2, 1, 0))
    return Image(array, LPS_TO_RAS @ lps)


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> Image:
    """Read one 3D scalar volume: a file SimpleITK reads or a folder holding a DICOM series.

    Files: NIfTI (``.nii``, ``.nii.gz``; ITK applies ``scl_slope``/``scl_inter``), NRRD
    (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and the other formats ITK knows.
    A folder is read as a DICOM series; if it holds several, the one with the most slices
    is read and a warning names it. The pixel type is kept.
    """
    path = Path(path)
    if path.is_dir():
        return _read_dicom_series(path)
    if not path.exists():
        raise VISTA3DError(f"Input image not found: {path}. Check the path (a volume file or a DICOM folder).")
    # Opened once here so that a permission problem is reported as one, not as a damaged file.
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise VISTA3DError(
            f"Cannot read {path}: {error.strerror or error}. Make the file readable for this user (check its "
            "permissions and owner), or copy it to a folder of yours and read the copy."
        ) from None
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check_nifti_complete(path)
    elif name.endswith((".mha", ".mhd")):
        check_metaimage_complete(path)

    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # The header alone tells a 4D or colour image apart before its voxels are loaded.
        reader.ReadImageInformation()
        check_scalar_volume(path, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
        sitk_image = reader.Execute()
    except RuntimeError as error:
        raise VISTA3DError(
            f"Could not read {path} as an image ({_itk_reason(error)}). The file may be truncated, corrupted "
            "or in a format ITK does not read: re-export or re-download it as NIfTI (.nii.gz), NRRD or "
            "MetaImage (.mha), or pass the folder of a DICOM series."
        ) from None
    return image_from_sitk(sitk_image)


def dicom_series_files(folder: Path) -> list[str]:
    """The files of the DICOM series ``read_image`` reads from ``folder``, in ITK's slice order; empty
    when the folder holds none. With several series, the one with the most files (a warning names it)."""
    return _dicom_series(folder)[0]


def _dicom_series(folder: Path) -> tuple[list[str], list[str]]:
    """The files of the DICOM series of ``folder`` with the most files (not searching subfolders), and
    the files of all its series: a file in none of them is one GDCM could not read."""
    import SimpleITK as sitk

    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        return [], []
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files[sid]))
    if len(series_ids) > 1:
        others = ", ".join(f"{sid or '(no UID)'} ({len(files[sid])} files)" for sid in series_ids if sid != chosen)
        logger.warning(
            "The folder %s holds %d DICOM series; reading %s (%d files), the one with the most slices. "
            "Other series: %s. Put one series per folder to choose another.",
            folder, len(series_ids), chosen or "(no UID)", len(files[chosen]), others,
        )
    return list(files[chosen]), [name for names in files.values() for name in names]


def _read_dicom_series(folder: Path) -> Image:
    """Read the DICOM series of ``folder`` with the most slices (not searching subfolders)."""
    import SimpleITK as sitk

    chosen, listed_files = _dicom_series(folder)
    if not chosen:
        raise VISTA3DError(
            f"No DICOM series found in the folder {folder}. Pass the folder that directly holds the DICOM "
            "files of one CT series (subfolders are not searched), or a volume file such as .nii.gz."
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen)
    reader.MetaDataDictionaryArrayUpdateOn()  # the slice positions, to describe uneven spacing
    try:
        sitk_image = reader.Execute()
    except RuntimeError as error:
        raise VISTA3DError(
            f"Could not read the DICOM series in {folder} ({_itk_reason(error)}). Some files may be damaged "
            "or the series incomplete; re-export the series, or convert it to NIfTI (.nii.gz) first."
        ) from None
    # GDCM leaves damaged slices out of the series and ITK then spreads the remaining slices evenly
    # (only printing a warning), which would stretch the volume: refuse instead. ITK flags deviations
    # of 0.01% of the spacing, which rounding in the slice positions of real series reaches.
    if sitk_image.HasMetaDataKey("ITK_non_uniform_sampling_deviation"):
        gaps = _slice_gaps(reader)
        spacing = sitk_image.GetSpacing()[2]
        if np.abs(gaps - spacing).max() > _SLICE_GAP_TOLERANCE * spacing:
            listed = {Path(name).name for name in listed_files}
            raise _uneven_slices_error(folder, gaps, spacing, listed)
    check_scalar_volume(f"The DICOM series in {folder}", sitk_image.GetDimension(), sitk_image.GetSize(),
                         sitk_image.GetNumberOfComponentsPerPixel())
    return image_from_sitk(sitk_image)


#: Slices further than this fraction of the slice spacing from an even spacing are refused.
_SLICE_GAP_TOLERANCE = 0.1


def _slice_gaps(reader: "SimpleITK.ImageSeriesReader") -> np.ndarray:
    """Distances (mm) between neighbouring slices of a series just read, from their positions (0020,0032)."""
    positions = np.array([[float(value) for value in reader.GetMetaData(index, "0020|0032").split("\\")]
                          for index in range(len(reader.GetFileNames()))])
    return np.linalg.norm(np.diff(positions, axis=0), axis=1)


def _uneven_slices_error(folder: Path, gaps: np.ndarray, spacing: float, listed: set[str]) -> VISTA3DError:
    """The error for a DICOM series with missing or unevenly spaced slices, naming likely damaged files.

    ``listed`` holds the names of the files GDCM put in some series; the other files of the
    folder are the ones it could not read.
    """
    deviation = float(np.abs(gaps - spacing).max())
    unlisted = sorted(entry.name for entry in folder.iterdir()
                      if entry.is_file() and not entry.name.startswith(".") and entry.name not in listed)
    if unlisted:
        more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
        cause = (f"{len(unlisted)} file(s) of the folder are not part of any DICOM series and are probably "
                 f"damaged slices: {', '.join(unlisted[:3])}{more}. ")
    else:
        cause = "No damaged file was found in the folder, so slices are probably missing from it. "
    return VISTA3DError(
        f"The DICOM series in {folder} has missing or unevenly spaced slices: neighbouring slices are "
        f"{gaps.min():.4g} to {gaps.max():.4g} mm apart, up to {deviation:.3g} mm off the average slice spacing "
        f"of {spacing:.4g} mm, so the volume would be distorted. {cause}Export or copy the series again, "
        "or load it in 3D Slicer (which handles irregular slice spacing) and save it as .nrrd."
    )


def _itk_reason(error: RuntimeError) -> str:
    """The informative last line of a SimpleITK exception (its first lines are source locations)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    for prefix in ("sitk::ERROR: ", "ITK ERROR: "):
        reason = reason.split(prefix)[-1]
    return reason.removeprefix("[nrrd] ")


# --------------------------------------------------------------------------- writing


def write_labelmap(
    labelmap: Image,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    segments: Optional[Mapping[int, "LabelInfo"]] = None,
    label_space: Optional["LabelSpace"] = None,
) -> Path:
    """Write a labelmap of a model's global IDs with exactly the ``Image``'s geometry: ``uint8``, or
    ``uint16`` where a label passes 255 (NV-Segment-CTMR's 345 classes).

    The format follows the file name: ``.nii.gz``/``.nii`` (NIfTI), ``.nrrd`` (plain NRRD
    labelmap), ``.mha`` (MetaImage), or ``.seg.nrrd`` (3D Slicer segmentation: one segment
    per label present, with its name, colour and terminology). ``segments`` describes some
    labels' segments in place of the label table (a structure the user renamed or recoloured):
    a ``.seg.nrrd`` segment takes the ``display_name``, ``color`` and terminology codes of its
    label's entry; the other formats hold no names. ``label_space``: the model's label table
    (default VISTA3D's). Returns the path written.
    """
    from .labels import VISTA3D_LABELS

    path = Path(path)
    extension = labelmap_extension(path)
    space = label_space or VISTA3D_LABELS
    labels = Image(_labelmap_integers(labelmap.array, path, space), labelmap.affine)

    if extension == ".seg.nrrd":
        def write(temporary: Path) -> None:
            _write_segmentation(labels, temporary, segments or {}, space)
    else:
        def write(temporary: Path) -> None:
            _write_compressed(labels, temporary)

    return write_atomically(path, extension, overwrite, write)


def write_supervoxels(supervoxels: Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a supervoxel map (labels 0..N, N may pass 255) as NIfTI, NRRD or MHA, on its exact grid."""
    path = Path(path)
    extension = labelmap_extension(path)
    if extension == ".seg.nrrd":
        raise VISTA3DError(f"Cannot write supervoxels to {path}: use .nii.gz, .nrrd or .mha (one label per supervoxel).")
    array = np.asarray(supervoxels.array)
    if not np.issubdtype(array.dtype, np.integer) or (array.size and array.min() < 0):
        raise VISTA3DError(f"Cannot write {path}: supervoxel labels must be whole numbers from 0.")
    dtype = np.uint16 if not array.size or array.max() <= np.iinfo(np.uint16).max else np.uint32
    labels = Image(array.astype(dtype, copy=False), supervoxels.affine)
    return write_atomically(path, extension, overwrite, lambda temporary: _write_compressed(labels, temporary))


def _write_compressed(image: Image, path: Path) -> None:
    import SimpleITK as sitk

    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)  # gzip for NRRD and MetaImage; .nii.gz is compressed by name
    writer.Execute(image_to_sitk(image))


def labelmap_extension(path: Path) -> str:
    name = path.name.lower()
    for extension in LABELMAP_EXTENSIONS:
        if name.endswith(extension):
            return extension
    raise VISTA3DError(
        f"Cannot tell the labelmap format of {path} from its name. Supported endings: "
        + ", ".join(LABELMAP_EXTENSIONS) + " (.seg.nrrd is a 3D Slicer segmentation)."
    )


def _labelmap_integers(array: np.ndarray, path: Path, space: "LabelSpace") -> np.ndarray:
    """The labels as the label space's integer type (``uint8`` or ``uint16``), refusing values it cannot hold."""
    dtype = np.dtype(space.labelmap_dtype)
    if array.dtype == bool:
        return array.astype(dtype, copy=False)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VISTA3DError(f"Cannot write {path}: labels of type {array.dtype} are not numbers.")
    if array.size:
        low, high = array.min(), array.max()
        whole = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
        if low < 0 or high > np.iinfo(dtype).max or not whole:
            raise VISTA3DError(
                f"Cannot write {path}: label values must be whole numbers from 0 to {np.iinfo(dtype).max} "
                f"({space.title} IDs), found values from {low} to {high}{'' if whole else ' with fractions'}. "
                "Write the labelmap the segmentation produced, not an image."
            )
    return array.astype(dtype, copy=False)


def _write_segmentation(labelmap: Image, path: Path, overrides: Mapping[int, "LabelInfo"], space: "LabelSpace"
                        ) -> None:
    """Write a labelmap as a 3D Slicer ``.seg.nrrd`` with one segment per label present.

    Each segment's name, colour and terminology come from ``overrides`` where it describes the
    label, else from the label space's table.
    """
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    label_info = space.label_info
    array = labelmap.array
    full_extent = [0, array.shape[0] - 1, 0, array.shape[1] - 1, 0, array.shape[2] - 1]
    segments = []
    for value in np.unique(array):
        if value == 0:
            continue
        info = overrides.get(int(value)) or label_info(int(value))
        segments.append({
            "id": f"Segment_{int(value)}",
            "labelValue": int(value),
            "layer": 0,
            "name": info.display_name,
            "nameAutoGenerated": False,
            "color": [channel / 255.0 for channel in info.color],
            "colorAutoGenerated": False,
            "terminology": terminology_entry_from_string(info.terminology_entry()),
            # The full extent rather than each segment's bounding box: some Slicer versions
            # crop every segment of a layer to the first segment's extent.
            "extent": full_extent,
        })
    segmentation = {
        "voxels": array,  # [i, j, k], which slicerio's default index order "F" expects
        "ijkToLPS": LPS_TO_RAS @ labelmap.affine,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": segments,
    }
    # Level 1: labelmaps compress almost as well as at 9, several times faster.
    slicerio.write_segmentation(str(path), segmentation, compression_level=1)
