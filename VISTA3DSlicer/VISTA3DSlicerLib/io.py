"""Reading CT volumes and writing labelmaps and previews, with the geometry kept exact.

Everything goes through SimpleITK, whose physical space is LPS; ``Image`` is RAS, so the
two adapters ``image_to_sitk`` / ``image_from_sitk`` flip once and transpose the voxel
array between ITK's ``[i, j, k]`` and SimpleITK's ``[k, j, i]`` numpy order.

Writers never leave a half-written file behind: they write a hidden temporary file in
the destination folder and rename it over the destination (``os.replace`` is atomic on
one file system), and they refuse to replace an existing file unless asked to.

Importing this module is cheap and never imports torch; SimpleITK, nibabel, slicerio and
PIL are imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import numpy as np

from .errors import VISTA3DError
from .geometry import LPS_TO_RAS, Image

if TYPE_CHECKING:
    import SimpleITK

    from .labels import LabelInfo

logger = logging.getLogger(__name__)

#: File endings ``read_image`` reads (longest first, so that ``.nii.gz`` wins over ``.gz``);
#: a DICOM series is a folder.
IMAGE_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Labelmap formats ``write_labelmap`` writes, by file name ending (longest endings first,
#: so that ``x.seg.nrrd`` is a segmentation, not a plain NRRD labelmap).
LABELMAP_EXTENSIONS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")

#: Soft-tissue CT window (HU) for previews: organs stay distinguishable, bone is white, air black.
CT_WINDOW_LEVEL = 40.0
CT_WINDOW_WIDTH = 400.0
#: Opacity of label colours over the CT in previews.
PREVIEW_LABEL_OPACITY = 0.5
#: Longest physical extent of the volume, in preview pixels (every view uses the same mm per pixel).
PREVIEW_PANEL_PIXELS = 400


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

    _check_scalar_volume("The image", sitk_image.GetDimension(), sitk_image.GetSize(),
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
        _check_nifti_complete(path)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage_complete(path)

    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # The header alone tells a 4D or colour image apart before its voxels are loaded.
        reader.ReadImageInformation()
        _check_scalar_volume(path, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents())
        sitk_image = reader.Execute()
    except RuntimeError as error:
        raise VISTA3DError(
            f"Could not read {path} as an image ({_itk_reason(error)}). The file may be truncated, corrupted "
            "or in a format ITK does not read: re-export or re-download it as NIfTI (.nii.gz), NRRD or "
            "MetaImage (.mha), or pass the folder of a DICOM series."
        ) from None
    return image_from_sitk(sitk_image)


def _read_dicom_series(folder: Path) -> Image:
    """Read the DICOM series of ``folder`` with the most slices (not searching subfolders)."""
    import SimpleITK as sitk

    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise VISTA3DError(
            f"No DICOM series found in the folder {folder}. Pass the folder that directly holds the DICOM "
            "files of one CT series (subfolders are not searched), or a volume file such as .nii.gz."
        )
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files[sid]))
    if len(series_ids) > 1:
        others = ", ".join(f"{sid or '(no UID)'} ({len(files[sid])} files)" for sid in series_ids if sid != chosen)
        logger.warning(
            "The folder %s holds %d DICOM series; reading %s (%d files), the one with the most slices. "
            "Other series: %s. Put one series per folder to choose another.",
            folder, len(series_ids), chosen or "(no UID)", len(files[chosen]), others,
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
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
            listed = {Path(name).name for names in files.values() for name in names}
            raise _uneven_slices_error(folder, gaps, spacing, listed)
    _check_scalar_volume(f"The DICOM series in {folder}", sitk_image.GetDimension(), sitk_image.GetSize(),
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


def _check_scalar_volume(source: str | Path, dimension: int, size: tuple[int, ...], components: int) -> None:
    """Refuse anything but one 3D volume of scalars, saying what the input is instead."""
    shape = " x ".join(str(n) for n in size)
    if components != 1:
        raise VISTA3DError(
            f"{source} has {components} components per voxel (a vector or colour image of {shape} voxels); "
            "VISTA3D needs one 3D scalar volume (a grey-level CT). Export a single-channel volume."
        )
    if dimension != 3:
        kind = "a 2D image" if dimension == 2 else f"a {dimension}D image"
        extra = " (a time series or several volumes stacked)" if dimension > 3 else ""
        raise VISTA3DError(
            f"{source} is {kind} of {shape} voxels{extra}; VISTA3D needs one 3D scalar volume. "
            + ("Pass the whole series (a 3D volume or the DICOM folder), not one slice."
               if dimension < 3 else "Extract one 3D volume from it first.")
        )


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated or corrupted NIfTI file.

    ITK's NIfTI reader silently fills missing voxels with zeros, so the voxel data are
    counted here (by decompressing ``.nii.gz`` once, which also checks its CRC).
    """
    import gzip
    import zlib

    import nibabel as nib

    def corrupted(reason: str) -> VISTA3DError:
        return VISTA3DError(
            f"The NIfTI file {path} is truncated or corrupted ({reason}). Copy or download it again, "
            "or re-export it from the program that made it."
        )

    try:
        proxy = nib.load(str(path)).dataobj
        expected = int(proxy.offset) + int(np.prod(proxy.shape)) * proxy.dtype.itemsize
    except Exception as error:  # nibabel raises many kinds for a damaged header
        raise corrupted(f"unreadable header: {error}") from None
    if path.name.lower().endswith(".gz"):
        found = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 24):
                    found += len(chunk)
        except (OSError, EOFError, zlib.error) as error:
            raise corrupted(f"compressed data damaged: {error}") from None
    else:
        found = path.stat().st_size
    if found < expected:
        raise corrupted(f"{found} bytes of header and voxel data, {expected} expected")


#: Bytes per element of the MetaImage element types whose size is certain (MET_LONG and
#: MET_ULONG are left out: their size has differed between MetaIO versions and platforms).
_METAIMAGE_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_FLOAT": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_DOUBLE": 8,
}


def _check_metaimage_complete(path: Path) -> None:
    """Refuse a compressed MetaImage (``.mha``/``.mhd``) whose voxel data are truncated or corrupted.

    ITK's MetaImage reader only prints "Uncompress failed" and returns garbage voxels, so the
    zlib stream is decompressed here once (which checks its Adler-32 checksum at the end).
    Uncompressed data and headers this does not understand are left to ITK.
    """
    import math
    import zlib

    def corrupted(reason: str) -> VISTA3DError:
        return VISTA3DError(
            f"The MetaImage file {path} is truncated or corrupted ({reason}). Copy or download it again, "
            "or re-export it from the program that made it."
        )

    # The header is "Key = Value" lines; ElementDataFile is the last, and LOCAL data follow it.
    header: dict[str, str] = {}
    with open(path, "rb") as stream:
        while "ElementDataFile" not in header:
            key, equals, value = stream.readline(4096).partition(b"=")
            if not equals:
                return  # not a MetaImage header
            header[key.strip().decode("latin-1")] = value.strip().decode("latin-1")
        data_offset = stream.tell()
    if header.get("CompressedData", "").lower() != "true" or header.get("HeaderSize", "0") != "0":
        return  # (data after a header of another size: a layout not reproduced here)
    try:
        elements = math.prod(int(n) for n in header["DimSize"].split()) * int(
            header.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    if header["ElementDataFile"] == "LOCAL":
        source, offset = path, data_offset
    else:
        source, offset = path.parent / header["ElementDataFile"], 0
        if not source.is_file():
            return  # a list or pattern of slice files, or a missing file, which ITK reports

    decompressor = zlib.decompressobj()
    found = 0
    try:
        with open(source, "rb") as stream:
            stream.seek(offset)
            while not decompressor.eof:
                data = decompressor.unconsumed_tail or stream.read(1 << 20)
                if not data:
                    found += len(decompressor.flush())
                    break
                # At most 16 MiB out per call: a highly compressed labelmap must not fill the memory.
                found += len(decompressor.decompress(data, 1 << 24))
    except zlib.error as error:
        raise corrupted(f"compressed data damaged in {source.name}: {error}") from None
    if not decompressor.eof:
        raise corrupted(f"the compressed data in {source.name} end early")
    element_bytes = _METAIMAGE_ELEMENT_BYTES.get(header.get("ElementType", ""))
    if element_bytes and found < elements * element_bytes:
        raise corrupted(f"{found} bytes of voxel data, {elements * element_bytes} expected")


def _itk_reason(error: RuntimeError) -> str:
    """The informative last line of a SimpleITK exception (its first lines are source locations)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else "unknown error"
    for prefix in ("sitk::ERROR: ", "ITK ERROR: "):
        reason = reason.split(prefix)[-1]
    return reason.removeprefix("[nrrd] ")


# --------------------------------------------------------------------------- checking

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


# --------------------------------------------------------------------------- writing


def write_labelmap(
    labelmap: Image,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    segments: Optional[Mapping[int, "LabelInfo"]] = None,
) -> Path:
    """Write a labelmap of VISTA3D global IDs as ``uint8`` with exactly the ``Image``'s geometry.

    The format follows the file name: ``.nii.gz``/``.nii`` (NIfTI), ``.nrrd`` (plain NRRD
    labelmap), ``.mha`` (MetaImage), or ``.seg.nrrd`` (3D Slicer segmentation: one segment
    per label present, with its name, colour and terminology). ``segments`` describes some
    labels' segments in place of the label table (a structure the user renamed or recoloured):
    a ``.seg.nrrd`` segment takes the ``display_name``, ``color`` and terminology codes of its
    label's entry; the other formats hold no names. Returns the path written.
    """
    path = Path(path)
    extension = labelmap_extension(path)
    array = _labelmap_uint8(labelmap.array, path)
    uint8_labelmap = Image(array, labelmap.affine)

    if extension == ".seg.nrrd":
        def write(temporary: Path) -> None:
            _write_segmentation(uint8_labelmap, temporary, segments or {})
    else:
        def write(temporary: Path) -> None:
            _write_compressed(uint8_labelmap, temporary)

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


def _labelmap_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    """The labels as ``uint8``, refusing values a ``uint8`` labelmap cannot hold."""
    if array.dtype == bool:
        return array.astype(np.uint8, copy=False)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise VISTA3DError(f"Cannot write {path}: labels of type {array.dtype} are not numbers.")
    if array.size:
        low, high = array.min(), array.max()
        whole = np.issubdtype(array.dtype, np.integer) or bool(np.all(np.mod(array, 1) == 0))
        if low < 0 or high > 255 or not whole:
            raise VISTA3DError(
                f"Cannot write {path}: label values must be whole numbers from 0 to 255 (VISTA3D IDs), "
                f"found values from {low} to {high}{'' if whole else ' with fractions'}. "
                "Write the labelmap the segmentation produced, not an image."
            )
    return array.astype(np.uint8, copy=False)


def _write_segmentation(labelmap: Image, path: Path, overrides: Mapping[int, "LabelInfo"]) -> None:
    """Write a uint8 labelmap as a 3D Slicer ``.seg.nrrd`` with one segment per label present.

    Each segment's name, colour and terminology come from ``overrides`` where it describes the
    label, else from the label table.
    """
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    from .labels import label_info

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


def write_atomically(path: Path, extension: str, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary file next to ``path``, then rename it to ``path``.

    The temporary name keeps ``extension`` because the writers pick the format from it; it is
    created by the writer itself so that the file gets the usual permissions (umask).
    """
    if path.is_dir():
        raise VISTA3DError(
            f"Cannot write {path}: it is a folder. Give a file name, e.g. {path / ('labels' + extension)}."
        )
    if path.exists() and not overwrite:
        raise VISTA3DError(
            f"{path} already exists. Pass --overwrite (overwrite=True) to replace it, or choose another name."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise VISTA3DError(
            f"Cannot create the folder {path.parent}: {error.strerror}. Choose a writable location."
        ) from None
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{extension}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):  # a full disk, a lost network drive, ITK failing
            raise VISTA3DError(
                f"Could not write {path}: {error}. Check the folder is writable and has free space."
            ) from error
        raise
    return path


# --------------------------------------------------------------------------- preview


def write_preview_png(image: Image, labelmap: Image, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a PNG of three orthogonal slices (axial, coronal, sagittal) with the labels over them.

    The slices go through the centre of the labelled voxels (the volume centre if none).
    The volume is first turned to the nearest canonical axes (an oblique scan is shown along
    its own voxel grid) and each slice is resampled to square pixels, one mm-per-pixel for
    all views. Radiological display: axial with anterior up and the patient's right on the
    left; coronal with superior up and right on the left; sagittal with superior up and
    anterior on the left. CT is shown in a soft-tissue window; other images between their
    1st and 99th percentiles. Labels are blended in their VISTA3D colours.
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    path = Path(path)
    if not image.same_grid(labelmap):
        raise VISTA3DError(
            "The labelmap for the preview must be on the image's voxel grid (same size and geometry)."
        )
    volume, labels, spacing = _to_ras_canonical(image.array, labelmap.array, image.affine)
    centre = _label_centre(labels)
    # Canonical arrays are [R, A, S] with indices increasing towards right, anterior, superior;
    # each view flips so that the first row/column shows the side radiologists put there.
    r, a, s = centre
    views = [
        ("Axial", volume[::-1, ::-1, s].T, labels[::-1, ::-1, s].T, (spacing[1], spacing[0]), "ARPL"),
        ("Coronal", volume[::-1, a, ::-1].T, labels[::-1, a, ::-1].T, (spacing[2], spacing[0]), "SRIL"),
        ("Sagittal", volume[r, ::-1, ::-1].T, labels[r, ::-1, ::-1].T, (spacing[2], spacing[1]), "SAIP"),
    ]
    mm_per_pixel = float(max(np.asarray(volume.shape) * spacing)) / PREVIEW_PANEL_PIXELS
    low, high = _display_range(volume)
    colours = _label_colours(np.unique(np.concatenate([view[2].ravel() for view in views])))

    panels = [
        (title, _render_view(grey, label_slice, pixel_spacing, mm_per_pixel, low, high, colours), sides)
        for title, grey, label_slice, pixel_spacing, sides in views
    ]
    title_height, gap = 18, 16
    width = sum(panel.width for _, panel, _ in panels) + gap * (len(panels) + 1)
    height = title_height + max(panel.height for _, panel, _ in panels) + gap
    canvas = PILImage.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, panel, sides in panels:
        y = title_height + (height - title_height - gap - panel.height) // 2
        canvas.paste(panel, (x, y))
        draw.text((x, 3), title, fill=(255, 255, 255))
        _draw_side_letters(draw, (x, y, x + panel.width, y + panel.height), sides)
        x += panel.width + gap

    def write(temporary: Path) -> None:
        canvas.save(temporary, format="PNG")

    return write_atomically(path, ".png", overwrite, write)


def _to_ras_canonical(volume: np.ndarray, labels: np.ndarray, affine: np.ndarray):
    """Both arrays flipped/transposed to the canonical axes nearest RAS, and their voxel spacing."""
    from nibabel.orientations import apply_orientation, io_orientation

    orientation = io_orientation(affine)  # per voxel axis: (RAS axis, +1/-1)
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    return apply_orientation(volume, orientation), apply_orientation(labels, orientation), spacing


def _label_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the centroid of the labelled voxels (the volume centre if none)."""
    mask = labels > 0
    total = int(mask.sum())
    centre = []
    for axis, size in enumerate(mask.shape):
        if total == 0:
            centre.append(size // 2)
            continue
        # Counts per slice along the axis: the centroid without the coordinates of every voxel.
        counts = mask.sum(axis=tuple(other for other in range(3) if other != axis))
        centre.append(int(round(float(np.dot(counts, np.arange(size))) / total)))
    return tuple(centre)  # type: ignore[return-value]


def _display_range(volume: np.ndarray) -> tuple[float, float]:
    """The grey-level window: soft-tissue CT window for CT-like values, else 1st-99th percentiles."""
    sample = volume[::2, ::2, ::2].astype(np.float32)
    p1, p99 = np.percentile(sample, [1, 99]) if sample.size else (0.0, 1.0)
    if p1 < -500:  # air at about -1000 HU: this is a CT
        return CT_WINDOW_LEVEL - CT_WINDOW_WIDTH / 2, CT_WINDOW_LEVEL + CT_WINDOW_WIDTH / 2
    return float(p1), float(max(p99, p1 + 1e-6))


def _label_colours(values: np.ndarray) -> np.ndarray:
    """An RGB lookup table (``uint8``, one row per label value up to the largest present)."""
    from .labels import label_info

    values = values[values > 0].astype(np.int64)
    table = np.zeros((int(values.max(initial=0)) + 1, 3), dtype=np.uint8)
    for value in values:
        table[value] = label_info(int(value)).color
    return table


def _render_view(grey: np.ndarray, labels: np.ndarray, pixel_spacing: tuple[float, float], mm_per_pixel: float,
                 low: float, high: float, colours: np.ndarray):
    """One slice as an RGB PIL image with square pixels: windowed grey with labels blended in."""
    from PIL import Image as PILImage

    rows, columns = grey.shape
    size = (max(1, round(columns * pixel_spacing[1] / mm_per_pixel)),
            max(1, round(rows * pixel_spacing[0] / mm_per_pixel)))
    # Grey levels interpolate; labels take the nearest voxel so no in-between IDs appear.
    grey = np.asarray(PILImage.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
                      .resize(size, PILImage.Resampling.BILINEAR))
    labels = np.asarray(PILImage.fromarray(np.ascontiguousarray(labels, dtype=np.int32), mode="I")
                        .resize(size, PILImage.Resampling.NEAREST))
    grey = np.clip((grey - low) / (high - low), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    labelled = labels > 0
    colour = colours[np.clip(labels, 0, len(colours) - 1)].astype(np.float32)
    rgb[labelled] = (1 - PREVIEW_LABEL_OPACITY) * rgb[labelled] + PREVIEW_LABEL_OPACITY * colour[labelled]
    return PILImage.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")


def _draw_side_letters(draw, box: tuple[int, int, int, int], sides: str) -> None:
    """Patient-direction letters at the middle of the top, left, bottom and right edges of a panel.

    Positions come from ``textbbox`` rather than text anchors, which Pillow's bitmap
    fallback font (no FreeType) does not support.
    """
    left, top, right, bottom = box
    for letter, edge in zip(sides, ("top", "left", "bottom", "right")):
        x0, y0, x1, y1 = draw.textbbox((0, 0), letter)
        width, height = x1 - x0, y1 - y0
        x = {"left": left + 3, "right": right - 3 - width}.get(edge, (left + right - width) // 2)
        y = {"top": top + 3, "bottom": bottom - 3 - height}.get(edge, (top + bottom - height) // 2)
        draw.rectangle((x - 1, y - 1, x + width, y + height), fill=(0, 0, 0))
        draw.text((x - x0, y - y0), letter, fill=(255, 255, 0))
