"""Refusing, before ITK reads them, the files ITK would read wrongly without a word: a truncated or
corrupted NIfTI or MetaImage (ITK fills missing voxels with zeros), and anything but one 3D volume
of scalars (a 4D series, a colour image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import VISTA3DError

def check_scalar_volume(source: str | Path, dimension: int, size: tuple[int, ...], components: int) -> None:
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


def check_nifti_complete(path: Path) -> None:
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


def check_metaimage_complete(path: Path) -> None:
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
