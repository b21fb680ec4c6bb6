"""Tests of VISTA3DSlicerLib.export: segments -> one labelmap of VISTA3D IDs + a colour table CSV.

All data are small synthetic masks on the oblique grid of test_io; files are read back with
SimpleITK, slicerio and the csv module, not with the writers under test.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from test_io import EXACT_ATOL, NIFTI_TOLERANCE, OBLIQUE_AFFINE

from VISTA3DSlicerLib import export
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.export import ExportSegment
from VISTA3DSlicerLib.labels import colour_table_path

SHAPE = (6, 5, 4)
ABSCESS_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^44132006^Abscess~^^"
    "~Anatomic codes - DICOM master list~SCT^71915002^Psoas muscle~SCT^24028007^Right"
)
LESION_COLOUR = (0.1, 0.8, 0.333)
TISSUE = ("SCT", "85756007", "Tissue")  # the label table's category and type for zero-shot IDs


def box(i: slice, j: slice, k: slice) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[i, j, k] = True
    return mask


def three_segments() -> list[ExportSegment]:
    """A renamed, recoloured liver (ID 1), a named zero-shot structure (133) and a user-drawn
    segment; the abscess overlaps the liver and the lesion overlaps the abscess."""
    return [
        ExportSegment("Liver edited", box(slice(0, 3), slice(0, 3), slice(0, 2)), 1, (0.5, 0.25, 1.0),
                      "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
                      "~SCT^71854001^Colon~^^~Anatomic codes - DICOM master list~^^~^^"),
        ExportSegment("psoas abscess", box(slice(2, 5), slice(2, 4), slice(1, 3)), 133, (0.9, 0.1, 0.1),
                      ABSCESS_TERMINOLOGY),
        ExportSegment("my lesion", box(slice(4, 6), slice(3, 5), slice(2, 4)), None, LESION_COLOUR, None),
    ]


def expected_labelmap(segments: list[ExportSegment]) -> tuple[np.ndarray, int]:
    liver, abscess, lesion = (segment.mask for segment in segments)
    labels = np.where(lesion, 134, np.where(abscess, 133, np.where(liver, 1, 0))).astype(np.uint8)
    overlap = int(np.count_nonzero(liver.astype(int) + abscess + lesion >= 2))
    return labels, overlap


def table_rows(path: Path) -> tuple[list[str], dict[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), {int(row["LabelValue"]): row for row in reader}


def codes(row: dict[str, str], part: str) -> tuple[str, str, str]:
    return tuple(row[f"{part}_{field}"] for field in ("CodingScheme", "CodeValue", "CodeMeaning"))


def read_with_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels ``[i, j, k]`` and IJK-to-RAS matrix of an image file, straight from SimpleITK."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("extension", [".nii.gz", ".nrrd", ".seg.nrrd"])
def test_export_round_trip(tmp_path, extension):
    segments = three_segments()
    labels, overlap = expected_labelmap(segments)
    assert overlap > 0 and set(np.unique(labels)) == {0, 1, 133, 134}  # the data test what they should

    result = export.export_segmentation(segments, OBLIQUE_AFFINE, tmp_path / f"out{extension}")

    assert result.labelmap_path == tmp_path / f"out{extension}"
    assert result.colour_table_path == tmp_path / "out.csv"
    assert result.ids == (1, 133, 134)
    assert result.overlap_voxels == overlap
    assert sorted(os.listdir(tmp_path)) == sorted(["out.csv", f"out{extension}"])  # no temporary files

    if extension == ".seg.nrrd":
        check_segmentation(result.labelmap_path, segments, labels)
    else:
        voxels, affine = read_with_sitk(result.labelmap_path)
        assert voxels.dtype == np.uint8
        np.testing.assert_array_equal(voxels, labels)
        tolerance = NIFTI_TOLERANCE if extension == ".nii.gz" else dict(rtol=0, atol=EXACT_ATOL)
        np.testing.assert_allclose(affine, OBLIQUE_AFFINE, **tolerance)

    check_colour_table(result.colour_table_path)


def check_segmentation(path: Path, segments: list[ExportSegment], labels: np.ndarray) -> None:
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    np.testing.assert_array_equal(segmentation["voxels"], labels)
    np.testing.assert_allclose(segmentation["ijkToLPS"], np.diag([-1, -1, 1, 1]) @ OBLIQUE_AFFINE, atol=EXACT_ATOL)
    written = {segment["labelValue"]: segment for segment in segmentation["segments"]}
    assert sorted(written) == [1, 133, 134]
    for segment, label_id in zip(segments, (1, 133, 134)):
        assert written[label_id]["name"] == segment.name
        np.testing.assert_allclose(written[label_id]["color"], segment.color, atol=1 / 510 + 1e-6)
        np.testing.assert_array_equal(slicerio.segment_mask(segmentation, written[label_id]), labels == label_id)
    # The liver keeps the table's codes, not those of its (changed) terminology tag.
    assert written[1]["terminology"]["type"] == ["SCT", "10200004", "Liver"]
    abscess = written[133]["terminology"]
    assert abscess["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
    assert abscess["type"] == ["SCT", "44132006", "Abscess"]
    assert abscess["anatomicRegion"] == ["SCT", "71915002", "Psoas muscle"]
    assert abscess["anatomicRegionModifier"] == ["SCT", "24028007", "Right"]
    assert written[134]["terminology"]["category"] == list(TISSUE)
    assert written[134]["terminology"]["type"] == list(TISSUE)
    assert "anatomicRegion" not in written[134]["terminology"]


def check_colour_table(path: Path) -> None:
    columns, rows = table_rows(path)
    reference_columns, reference = table_rows(colour_table_path())
    assert columns == reference_columns  # Slicer reads it as the label table it is modelled on
    assert sorted(rows) == [1, 133, 134]

    liver = rows[1]
    assert liver["Name"] == "Liver edited"
    assert [liver[f"Color_{c}"] for c in "RGBA"] == ["128", "64", "255", "255"]
    for part in ("Category", "Type", "TypeModifier", "Region", "RegionModifier"):
        assert codes(liver, part) == codes(reference[1], part)

    abscess = rows[133]
    assert abscess["Name"] == "psoas abscess"
    assert [abscess[f"Color_{c}"] for c in "RGB"] == ["230", "26", "26"]
    assert codes(abscess, "Category") == ("SCT", "49755003", "Morphologically Altered Structure")
    assert codes(abscess, "Type") == ("SCT", "44132006", "Abscess")
    assert codes(abscess, "TypeModifier") == ("", "", "")
    assert codes(abscess, "Region") == ("SCT", "71915002", "Psoas muscle")
    assert codes(abscess, "RegionModifier") == ("SCT", "24028007", "Right")

    lesion = rows[134]
    assert lesion["Name"] == "my lesion"
    assert [int(lesion[f"Color_{c}"]) for c in "RGB"] == [round(c * 255) for c in LESION_COLOUR]
    assert codes(lesion, "Category") == TISSUE and codes(lesion, "Type") == TISSUE
    assert codes(lesion, "Region") == ("", "", "")


def test_colour_table_is_in_label_order_with_names_verbatim(tmp_path):
    name = 'Läsion, "rechts"'  # a comma, quotes and a non-ASCII letter
    segments = [ExportSegment(name, box(slice(0, 2), slice(0, 2), slice(0, 2)), None, (0.0, 0.0, 0.0)),
                ExportSegment("Spleen", box(slice(3, 5), slice(0, 2), slice(0, 2)), 3, (0.0, 0.0, 0.0))]
    result = export.export_segmentation(segments, np.eye(4), tmp_path / "x.nrrd")
    rows = table_rows(result.colour_table_path)[1]
    assert list(rows) == [3, 133]
    assert rows[133]["Name"] == name


# --------------------------------------------------------------------------- IDs and overlaps


def test_user_drawn_segments_get_the_free_zero_shot_ids_in_order():
    mask = box(slice(0, 1), slice(0, 1), slice(0, 1))
    segments = [ExportSegment(name, mask, label_id, (0, 0, 0))
                for name, label_id in [("a", None), ("b", 133), ("c", None), ("d", 5), ("e", np.int64(135)),
                                       ("f", None)]]
    assert export.assign_label_ids(segments) == [134, 133, 136, 5, 135, 137]


def test_two_segments_with_one_id_are_refused(tmp_path):
    mask = box(slice(0, 2), slice(0, 2), slice(0, 2))
    segments = [ExportSegment("Liver", mask, 1, (1, 0, 0)), ExportSegment("lesion", ~mask, None, (0, 1, 0)),
                ExportSegment("Liver copy", ~mask, 1, (0, 0, 1))]

    with pytest.raises(VISTA3DError, match="'Liver' and 'Liver copy' both carry VISTA3D label 1") as raised:
        export.export_segmentation(segments, np.eye(4), tmp_path / "x.nii.gz")
    assert "Merge" in str(raised.value) and "delete" in str(raised.value)
    assert not list(tmp_path.iterdir())


def test_later_segment_wins_where_segments_overlap():
    first = box(slice(0, 4), slice(0, 4), slice(0, 4))
    second = box(slice(2, 6), slice(2, 5), slice(2, 4))
    third = box(slice(3, 4), slice(3, 4), slice(3, 4))  # inside both: one overlapped voxel, counted once
    segments = [ExportSegment(name, mask, None, (0, 0, 0)) for name, mask in
                [("first", first), ("second", second), ("third", third)]]

    labels, overlap = export.build_labelmap(segments, [7, 9, 11])

    assert labels.dtype == np.uint8 and labels.shape == SHAPE
    assert overlap == np.count_nonzero(first & second) == 8
    assert labels[3, 3, 3] == 11 and labels[2, 2, 2] == 9 and labels[0, 0, 0] == 7 and labels[5, 4, 3] == 9
    assert np.count_nonzero(labels) == np.count_nonzero(first | second)
    assert export.build_labelmap(segments[:1], [7])[1] == 0


def test_segments_on_different_grids_are_refused():
    segments = [ExportSegment("a", np.ones(SHAPE, bool), None, (0, 0, 0)),
                ExportSegment("b", np.ones((6, 5, 3), bool), None, (0, 0, 0))]
    with pytest.raises(VISTA3DError, match="same reference grid"):
        export.build_labelmap(segments, [133, 134])


@pytest.mark.parametrize("mask, label_id, colour, message", [
    (np.ones(SHAPE, np.uint8), None, (0, 0, 0), "boolean"),
    (np.ones((6, 5), bool), None, (0, 0, 0), "3D boolean"),
    (np.ones(SHAPE, bool), 255, (0, 0, 0), "bad VISTA3D label"),
    (np.ones(SHAPE, bool), None, (0, 0, 255), "from 0 to 1"),
])
def test_malformed_segments_are_refused(mask, label_id, colour, message):
    with pytest.raises(VISTA3DError, match=message):
        ExportSegment("s", mask, label_id, colour)


# --------------------------------------------------------------------------- terminology


@pytest.mark.parametrize("terminology", [
    "",
    "not a terminology",
    "ctx~SCT^49755003^Morphologically Altered Structure~^^~^^~ctx~^^~^^",  # no type
    "ctx~SCT^49755003~SCT^44132006^Abscess~^^~ctx~^^~^^",  # an incomplete code
])
def test_unreadable_terminology_gives_the_zero_shot_codes(terminology, caplog):
    segment = ExportSegment("s", np.ones(SHAPE, bool), None, (0, 0, 0), terminology)
    info = export.segment_label_infos([segment], [140])[140]
    assert (info.category.scheme, info.category.value, info.category.meaning) == TISSUE
    assert (info.type.scheme, info.type.value, info.type.meaning) == TISSUE
    assert info.region is None
    assert "cannot be read" in caplog.text


# --------------------------------------------------------------------------- refusals and files


@pytest.mark.parametrize("existing", ["out.seg.nrrd", "out.csv"])
def test_existing_files_are_kept_and_nothing_is_written(tmp_path, existing):
    (tmp_path / existing).write_text("keep me")

    with pytest.raises(VISTA3DError, match="already exists; nothing was written") as raised:
        export.export_segmentation(three_segments(), OBLIQUE_AFFINE, tmp_path / "out.seg.nrrd")

    assert existing in str(raised.value)
    assert os.listdir(tmp_path) == [existing]
    assert (tmp_path / existing).read_text(encoding="utf-8") == "keep me"

    result = export.export_segmentation(three_segments(), OBLIQUE_AFFINE, tmp_path / "out.seg.nrrd", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "out.seg.nrrd"]
    assert sorted(table_rows(result.colour_table_path)[1]) == [1, 133, 134]


def test_labelmap_is_removed_when_its_colour_table_cannot_be_written(tmp_path):
    (tmp_path / "out.csv").mkdir()  # a folder where the table goes

    with pytest.raises(VISTA3DError, match="folder"):
        export.export_segmentation(three_segments(), OBLIQUE_AFFINE, tmp_path / "out.nii.gz", overwrite=True)

    assert os.listdir(tmp_path) == ["out.csv"]


def test_colour_table_sits_beside_the_labelmap_under_its_stem(tmp_path):
    for name in ("case.nii.gz", "case.nrrd", "case.seg.nrrd", "Case.SEG.NRRD"):
        assert export.colour_table_path_for(tmp_path / name) == tmp_path / (name.split(".")[0] + ".csv")
    with pytest.raises(VISTA3DError, match="Supported endings"):
        export.colour_table_path_for(tmp_path / "case.png")


@pytest.mark.parametrize("segments", [[], [ExportSegment("empty", np.zeros(SHAPE, bool), 1, (0, 0, 0)),
                                           ExportSegment("also empty", np.zeros(SHAPE, bool), None, (0, 0, 0))]],
                         ids=["no segments", "empty segments"])
def test_nothing_to_export(tmp_path, segments):
    with pytest.raises(VISTA3DError, match="nothing to export"):
        export.export_segmentation(segments, np.eye(4), tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_export_leaves_the_segments_as_they_were(tmp_path):
    segments = three_segments()
    copies = [segment.mask.copy() for segment in segments]
    for segment in segments:
        segment.mask.flags.writeable = False  # any write into a mask would raise

    export.export_segmentation(segments, OBLIQUE_AFFINE, tmp_path / "out.seg.nrrd")

    for segment, copy in zip(segments, copies):
        np.testing.assert_array_equal(segment.mask, copy)
    assert [(s.name, s.label_id, s.color, s.terminology) for s in segments] == [
        (s.name, s.label_id, s.color, s.terminology) for s in three_segments()]
