"""Exporting a segmentation as one labelmap of VISTA3D IDs plus a colour table beside it.

This is the Qt-free half of the Slicer panel's Export. The Slicer adapter hands over each
segment as plain data (``ExportSegment``); this module gives every segment a label ID, paints
the segments into one ``uint8`` labelmap, and writes it (NIfTI, NRRD or a Slicer ``.seg.nrrd``)
together with ``<stem>.csv``: a colour table with terminology in the columns of the label table
(``VISTA3DSlicerLib/data/VISTA3DColorTable.csv``), which 3D Slicer 5.10 and later loads as a colour node
and any other tool reads as plain CSV, so the IDs in the labelmap keep their meaning.

The segments are only read: their masks are never written to. A mask may be given as a function
that reads it, so that a caller holding many segments (Slicer's 117 of "everything" on a
512x512x600 CT would be 18 GB of masks at once) hands over one mask at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from . import io
from .atomic_write import write_atomically
from .errors import VISTA3DError
from .geometry import Image, bounding_box
from .labels import Code, LabelInfo, label_info, label_table, next_zero_shot_id

logger = logging.getLogger(__name__)

# The colour table's code columns (prefix) and the LabelInfo field each holds.
_CODE_FIELDS = (
    ("Category", "category"),
    ("Type", "type"),
    ("TypeModifier", "type_modifier"),
    ("Region", "region"),
    ("RegionModifier", "region_modifier"),
)
#: The columns of the exported colour table: those of the label table (``labels.colour_table_path``).
COLOUR_TABLE_COLUMNS: tuple[str, ...] = ("LabelValue", "Name", "Color_R", "Color_G", "Color_B", "Color_A") + tuple(
    f"{prefix}_{field}" for prefix, _ in _CODE_FIELDS for field in ("CodingScheme", "CodeValue", "CodeMeaning")
)

# The LabelInfo field of each code of a Slicer TerminologyEntry tag, by the key slicerio's parser
# gives it (the context names, the tag's other parts, have no column in the colour table).
_TERMINOLOGY_KEYS = (("category", "category"), ("type", "type"), ("type_modifier", "typeModifier"),
                     ("region", "anatomicRegion"), ("region_modifier", "anatomicRegionModifier"))


@dataclass(frozen=True)
class ExportSegment:
    """One segment to export, as the Slicer adapter reads it from a segmentation node.

    ``mask`` is a ``bool`` array ``[i, j, k]`` on the reference grid (the same for every segment),
    or a function returning it, called once when the segment is painted; ``label_id`` is the
    VISTA3D ID the segment was made from (its ``VISTA3D.LabelValue`` tag), or ``None`` for a
    segment the user drew; ``color`` is RGB in 0..1; ``terminology`` is the segment's
    ``TerminologyEntry`` tag, or ``None``.
    """

    name: str
    mask: Union[np.ndarray, Callable[[], np.ndarray]]
    label_id: Optional[int]
    color: tuple[float, float, float]
    terminology: Optional[str] = None

    def __post_init__(self) -> None:
        if not callable(self.mask):
            self._checked(self.mask)
        if len(self.color) != 3 or not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in self.color):
            raise VISTA3DError(f"Segment '{self.name}': its colour {self.color} is not three numbers from 0 to 1.")
        if self.label_id is not None:
            try:
                label_info(self.label_id)
            except VISTA3DError as error:
                raise VISTA3DError(f"Segment '{self.name}' carries a bad VISTA3D label: {error}") from None

    def read_mask(self) -> np.ndarray:
        """The mask (read now, if it was given as a function)."""
        return self._checked(self.mask() if callable(self.mask) else self.mask)

    def _checked(self, mask) -> np.ndarray:
        if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 3:
            raise VISTA3DError(
                f"Segment '{self.name}': its mask must be a 3D boolean array, got "
                f"{getattr(mask, 'dtype', type(mask).__name__)} of shape {np.shape(mask)}."
            )
        return mask


@dataclass(frozen=True)
class ExportResult:
    """What ``export_segmentation`` wrote."""

    labelmap_path: Path
    colour_table_path: Path
    ids: tuple[int, ...]  # the label ID of each segment, in the order given
    overlap_voxels: int  # voxels in more than one segment: each holds only the last one's ID


def assign_label_ids(segments: Sequence[ExportSegment]) -> list[int]:
    """The label ID of each segment, in order.

    A segment made by VISTA3D keeps its ID (1..132, or the zero-shot ID 133..254 it was made
    with), so the exported IDs mean what VISTA3D means by them. A segment the user drew gets the
    next zero-shot ID no other segment uses. Two segments with the same ID cannot both be
    exported (a labelmap voxel holds one ID), so that is refused, naming both.
    """
    owners: dict[int, str] = {}
    for segment in segments:
        if segment.label_id is None:
            continue
        label_id = int(segment.label_id)
        if label_id in owners:
            raise VISTA3DError(
                f"The segments '{owners[label_id]}' and '{segment.name}' both carry VISTA3D label {label_id}, "
                "but a labelmap holds one segment per label. Merge them into one segment (Segment Editor, "
                "Logical operators, Add) or delete one of them, then export again."
            )
        owners[label_id] = segment.name
    used = set(owners)
    ids = []
    for segment in segments:
        if segment.label_id is None:
            ids.append(next_zero_shot_id(used))
            used.add(ids[-1])
        else:
            ids.append(int(segment.label_id))
    return ids


def build_labelmap(segments: Sequence[ExportSegment], ids: Sequence[int]) -> tuple[np.ndarray, int]:
    """Paint the segments into one ``uint8`` labelmap ``[i, j, k]`` and count overlapped voxels.

    A labelmap holds one label per voxel, so where segments overlap the later one in the list
    wins, as in Slicer's own labelmap export; the number of voxels in more than one segment is
    returned so that the caller can warn about what was lost. The masks are read one at a time
    and each is painted within the box that holds it, so memory holds the labelmap, the overlap
    count's mask and one segment, whatever the number of segments.
    """
    if len(segments) != len(ids):
        raise ValueError(f"{len(segments)} segments but {len(ids)} IDs")
    if not segments:
        raise _nothing_to_export()
    labelmap: Optional[np.ndarray] = None
    overlapped: Optional[np.ndarray] = None
    first = segments[0].name
    for segment, label_id in zip(segments, ids):
        mask = segment.read_mask()
        if labelmap is None:
            labelmap = np.zeros(mask.shape, dtype=np.uint8)
            overlapped = np.zeros(mask.shape, dtype=bool)
        elif mask.shape != labelmap.shape:
            raise VISTA3DError(
                f"Segment '{segment.name}' is on a grid of {mask.shape} voxels, '{first}' on "
                f"{labelmap.shape}: all segments must be given on the same reference grid."
            )
        box = bounding_box(mask)
        if box is None:
            continue
        inside, painted = mask[box], labelmap[box]
        overlapped[box] |= inside & (painted > 0)  # IDs are never 0, so > 0 means an earlier segment is there
        painted[inside] = label_id
    return labelmap, int(np.count_nonzero(overlapped))


def segment_label_infos(segments: Sequence[ExportSegment], ids: Sequence[int]) -> dict[int, LabelInfo]:
    """How each segment is described in the exported files, by increasing label ID."""
    infos = (_segment_label_info(segment, label_id) for segment, label_id in zip(segments, ids))
    return {info.id: info for info in sorted(infos, key=lambda info: info.id)}


def _segment_label_info(segment: ExportSegment, label_id: int) -> LabelInfo:
    """The label's entry with the segment's name (as ``display_name``) and colour, and codes.

    A trained VISTA3D class keeps the label table's codes. Any other segment takes the codes
    of its terminology tag, or, without a usable one, the generic zero-shot codes the label
    table gives zero-shot IDs. The ``name`` field stays the VISTA3D name of the ID.
    """
    # The colour table holds 0..255; the .seg.nrrd takes the same rounded colour so that both
    # files agree (within 1/510 of Slicer's floating-point colour).
    colour = tuple(int(round(channel * 255)) for channel in segment.color)
    info = dataclasses.replace(label_info(label_id), display_name=segment.name, color=colour)
    if label_id in label_table() or segment.terminology is None:
        return info
    codes = _terminology_codes(segment.terminology)
    if codes is None:
        logger.warning(
            "The terminology of segment '%s' cannot be read (%r); it is exported with the generic "
            "zero-shot category and type.", segment.name, segment.terminology,
        )
        return info
    return dataclasses.replace(info, **codes)


def _terminology_codes(entry: str) -> Optional[dict[str, Optional[Code]]]:
    """The codes of a ``TerminologyEntry`` tag by ``LabelInfo`` field, read with slicerio's parser;
    ``None`` when the tag is malformed or lacks a category or type (Slicer writes ``^^`` for an
    absent code)."""
    from slicerio.segmentation import terminology_entry_from_string

    try:
        parsed = terminology_entry_from_string(entry)
    except IndexError:  # fewer than Slicer's seven "~"-separated parts
        return None
    codes: dict[str, Optional[Code]] = {}
    for field, key in _TERMINOLOGY_KEYS:
        triplet = [item.strip() for item in parsed.get(key, ("", "", ""))]
        if len(triplet) != 3 or (any(triplet) and not all(triplet)):
            return None
        codes[field] = Code(*triplet) if all(triplet) else None
    if codes["category"] is None or codes["type"] is None:
        return None
    return codes


def colour_table_rows(infos: Iterable[LabelInfo]) -> list[dict[str, str]]:
    """One colour table row (``COLOUR_TABLE_COLUMNS`` -> text) per label, in the order given."""
    return [_colour_table_row(info) for info in infos]


def _colour_table_row(info: LabelInfo) -> dict[str, str]:
    row = {"LabelValue": str(info.id), "Name": info.display_name, "Color_A": "255"}
    row.update({f"Color_{channel}": str(value) for channel, value in zip("RGB", info.color)})
    for prefix, field in _CODE_FIELDS:
        code: Optional[Code] = getattr(info, field)
        for column, value in zip(("CodingScheme", "CodeValue", "CodeMeaning"),
                                 (code.scheme, code.value, code.meaning) if code else ("", "", "")):
            row[f"{prefix}_{column}"] = value
    return row


def write_colour_table(infos: Iterable[LabelInfo], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a colour table CSV of the labels (``COLOUR_TABLE_COLUMNS``), atomically; returns the path."""
    path = Path(path)

    def write(temporary: Path) -> None:
        # newline="": the csv module writes its own line endings; UTF-8 because names may be any text.
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLOUR_TABLE_COLUMNS)
            writer.writeheader()
            writer.writerows(colour_table_rows(infos))

    return write_atomically(path, ".csv", overwrite, write)


def colour_table_path_for(labelmap_path: str | os.PathLike) -> Path:
    """The colour table written beside a labelmap: ``x.nii.gz``, ``x.nrrd``, ``x.seg.nrrd`` -> ``x.csv``."""
    path = Path(labelmap_path)
    extension = io.labelmap_extension(path)
    return path.with_name(path.name[: -len(extension)] + ".csv")


def export_segmentation(
    segments: Sequence[ExportSegment], affine: np.ndarray, path: str | os.PathLike, *, overwrite: bool = False
) -> ExportResult:
    """Write the segments as one labelmap of VISTA3D IDs at ``path`` and a colour table beside it.

    ``affine`` is the reference grid's ``IJKToRAS`` matrix. The labelmap's format follows the
    name (see ``io.write_labelmap``); a ``.seg.nrrd`` carries each segment's name, colour and
    terminology codes (under the context names every VISTA3D label uses, ``labels.CATEGORY_TYPE_CONTEXT``).
    The colour table is ``<stem>.csv`` with one row per segment (see ``segment_label_infos``),
    also for a segment wholly hidden under later ones, which the labelmap cannot hold. Neither file is replaced unless ``overwrite``, and both are
    checked before either is written. If the colour table cannot be written, the labelmap just
    written is removed again: a labelmap without its table would lose what its IDs mean.
    """
    path = Path(path)
    table_path = colour_table_path_for(path)
    ids = assign_label_ids(segments)
    array, overlap = build_labelmap(segments, ids)
    if not array.any():
        raise _nothing_to_export()
    existing = [str(p) for p in (path, table_path) if p.exists()]
    if existing and not overwrite:
        raise VISTA3DError(
            f"{' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; nothing was written. "
            "Choose another name, or allow overwriting."
        )
    infos = segment_label_infos(segments, ids)
    io.write_labelmap(Image(array, affine), path, overwrite=overwrite, segments=infos)
    try:
        write_colour_table(infos.values(), table_path, overwrite=overwrite)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return ExportResult(path, table_path, tuple(ids), overlap)


def _nothing_to_export() -> VISTA3DError:
    return VISTA3DError("There is nothing to export: the segmentation has no segments, or all of them are empty.")
