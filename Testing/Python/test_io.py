"""Tests of VISTA3DSlicerLib.io: reading volumes, writing labelmaps and previews, exact geometry.

Geometry tolerances, on the 4x4 voxel-to-RAS matrix (mm):
- NRRD, .seg.nrrd and MetaImage store the matrix as decimal text with 17 significant digits,
  so they round-trip to double precision: ``EXACT_ATOL`` = 1e-9 mm.
- NIfTI stores the sform (and the qform's quaternion) as float32, whose relative precision
  is 2**-24 ~ 6e-8: an origin of 500 mm comes back within ~3e-5 mm. ``NIFTI_TOLERANCE`` is
  rtol 1e-6 (16 float32 ULPs) plus atol 1e-5 mm for matrix entries near zero.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from VISTA3DSlicerLib import io, preview
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.geometry import Image

EXACT_ATOL = 1e-9
NIFTI_TOLERANCE = dict(rtol=1e-6, atol=1e-5)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "totalsegmentator-example"


def shared_file(name: str) -> Path:
    """A file of the shared example data, or a clean skip where those data are absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared example data not available ({path})")
    return path


# --------------------------------------------------------------------------- geometry helpers


def rotation(quaternion, flips=(1, 1, 1)) -> np.ndarray:
    """Rotation matrix of a (not necessarily unit) quaternion, with optional axis flips (det -1)."""
    w, x, y, z = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    matrix = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
    return matrix * np.asarray(flips, dtype=np.float64)


def make_affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return affine


#: A non-axis-aligned, anisotropic grid with a far-from-zero origin, used by the fixed tests.
OBLIQUE_AFFINE = make_affine(rotation([0.9, 0.2, -0.3, 0.25], flips=(1, -1, 1)), (0.68, 1.37, 2.9),
                             (-123.456789, 234.56789, -345.678912))


def random_labels(shape, seed=0, high=133) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=np.uint8)


quaternions = st.tuples(*[st.floats(-1, 1) for _ in range(4)]).filter(lambda q: np.linalg.norm(q) > 0.1)
flips = st.tuples(*[st.sampled_from([1, -1]) for _ in range(3)])
spacings = st.tuples(*[st.floats(0.2, 6.0) for _ in range(3)])
origins = st.tuples(*[st.floats(-600, 600) for _ in range(3)])
shapes = st.tuples(*[st.integers(1, 6) for _ in range(3)])


def assert_same_geometry(read: Image, written: Image, **tolerance) -> None:
    assert read.shape == written.shape
    np.testing.assert_allclose(read.affine, written.affine, **tolerance)
    np.testing.assert_allclose(read.spacing, written.spacing, **tolerance)
    np.testing.assert_allclose(read.origin, written.origin, **tolerance)
    np.testing.assert_allclose(read.direction, written.direction, atol=1e-6)


# --------------------------------------------------------------------------- SimpleITK adapters


@settings(max_examples=60, deadline=None)
@given(quaternion=quaternions, flip=flips, spacing=spacings, origin=origins, shape=shapes,
       dtype=st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64]))
def test_sitk_adapters_are_inverse(quaternion, flip, spacing, origin, shape, dtype):
    affine = make_affine(rotation(quaternion, flip), spacing, origin)
    array = np.random.default_rng(1).normal(0, 100, size=shape).astype(dtype)
    image = Image(array, affine)

    back = io.image_from_sitk(io.image_to_sitk(image))

    assert back.array.dtype == array.dtype
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-12)


def test_image_to_sitk_uses_lps_and_ijk_order():
    image = Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), make_affine(np.eye(3), (1, 2, 3), (10, 20, 30)))

    sitk_image = io.image_to_sitk(image)

    assert sitk_image.GetSize() == (2, 3, 4)
    assert sitk_image.GetSpacing() == (1, 2, 3)
    assert sitk_image.GetOrigin() == (-10, -20, 30)  # RAS (10, 20, 30) in LPS
    assert sitk_image.GetDirection() == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert sitk_image.GetPixel(1, 2, 3) == image.array[1, 2, 3]
    np.testing.assert_allclose(sitk_image.TransformIndexToPhysicalPoint((1, 2, 3)) * np.array([-1, -1, 1]),
                               image.index_to_ras([1, 2, 3]))


def test_bool_array_becomes_uint8():
    image = Image(np.zeros((2, 2, 2), dtype=bool), np.eye(4))
    assert io.image_from_sitk(io.image_to_sitk(image)).array.dtype == np.uint8


# --------------------------------------------------------------------------- labelmap round trips


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd"])
def test_labelmap_round_trip_keeps_exact_geometry(tmp_path, extension):
    labelmap = Image(random_labels((7, 5, 4)), OBLIQUE_AFFINE)

    path = io.write_labelmap(labelmap, tmp_path / f"labels{extension}")

    assert path == tmp_path / f"labels{extension}"
    read = io.read_image(path)
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, labelmap.array)
    tolerance = NIFTI_TOLERANCE if extension.startswith(".nii") else dict(rtol=0, atol=EXACT_ATOL)
    assert_same_geometry(read, labelmap, **tolerance)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quaternion=quaternions, flip=flips, spacing=spacings, origin=origins, shape=shapes,
       extension=st.sampled_from([".nii.gz", ".nrrd", ".mha", ".seg.nrrd"]))
def test_labelmap_round_trip_random_geometry(quaternion, flip, spacing, origin, shape, extension):
    labelmap = Image(random_labels(shape, seed=3, high=20), make_affine(rotation(quaternion, flip), spacing, origin))

    with tempfile.TemporaryDirectory() as folder:
        read = io.read_image(io.write_labelmap(labelmap, Path(folder) / f"x{extension}"))

    np.testing.assert_array_equal(read.array, labelmap.array)
    tolerance = NIFTI_TOLERANCE if extension == ".nii.gz" else dict(rtol=0, atol=EXACT_ATOL)
    assert_same_geometry(read, labelmap, **tolerance)


def test_labelmap_values_are_written_as_uint8(tmp_path):
    labelmap = Image(np.array([0, 1, 132, 255] * 2, dtype=np.int64).reshape(2, 2, 2), np.eye(4))
    read = io.read_image(io.write_labelmap(labelmap, tmp_path / "l.nrrd"))
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, labelmap.array)


@pytest.mark.parametrize("values", [[0, 256], [-1, 3], [0.5, 1.0]])
def test_labelmap_values_outside_uint8_are_refused(tmp_path, values):
    labelmap = Image(np.array(values * 4).reshape(2, 2, 2), np.eye(4))
    with pytest.raises(VISTA3DError, match="0 to 255"):
        io.write_labelmap(labelmap, tmp_path / "l.nii.gz")
    assert not list(tmp_path.iterdir())


def test_a_label_space_past_255_writes_uint16_with_its_own_segments(tmp_path):
    """NV-Segment-CTMR's IDs reach 345: its labelmaps are uint16 and its .seg.nrrd segments carry its
    table's names and terminology; the same values are refused for VISTA3D's space."""
    import slicerio

    from VISTA3DSlicerLib.labels import CTMR_LABELS

    labelmap = Image(np.array([0, 1, 230, 345] * 2, dtype=np.uint16).reshape(2, 2, 2), np.eye(4))
    read = io.read_image(io.write_labelmap(labelmap, tmp_path / "l.nrrd", label_space=CTMR_LABELS))
    assert read.array.dtype == np.uint16
    np.testing.assert_array_equal(read.array, labelmap.array)
    segments = slicerio.read_segmentation(str(io.write_labelmap(labelmap, tmp_path / "l.seg.nrrd",
                                                                 label_space=CTMR_LABELS)))["segments"]
    assert {s["labelValue"]: s["name"] for s in segments} == {
        1: "Liver", 230: "Left hippocampus", 345: CTMR_LABELS.label_info(345).display_name}
    assert {s["terminology"]["contextName"] for s in segments} == {CTMR_LABELS.terminology_contexts[0]}
    with pytest.raises(VISTA3DError, match="0 to 255"):
        io.write_labelmap(labelmap, tmp_path / "v.nii.gz")


def test_unknown_extension_lists_supported_ones(tmp_path):
    with pytest.raises(VISTA3DError) as raised:
        io.write_labelmap(Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "labels.png")
    for extension in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".mha"):
        assert extension in str(raised.value)


def test_missing_parent_folders_are_created(tmp_path):
    path = io.write_labelmap(Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "a" / "b" / "l.nii.gz")
    assert path.is_file()


def test_nifti_labelmap_matches_nibabel(tmp_path):
    import nibabel as nib

    labelmap = Image(random_labels((6, 5, 4)), OBLIQUE_AFFINE)
    path = io.write_labelmap(labelmap, tmp_path / "l.nii.gz")

    nifti = nib.load(path)
    np.testing.assert_allclose(nifti.affine, labelmap.affine, **NIFTI_TOLERANCE)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), labelmap.array)


# --------------------------------------------------------------------------- .seg.nrrd


def test_segmentation_has_names_colours_and_terminology(tmp_path):
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    from VISTA3DSlicerLib.labels import label_info

    array = np.zeros((6, 5, 4), np.uint8)
    array[1:3, 1:3, 1:3] = 1  # liver
    array[4, 0, 0] = 3  # spleen
    array[0, 4, 3] = 132
    labelmap = Image(array, OBLIQUE_AFFINE)

    path = io.write_labelmap(labelmap, tmp_path / "s.seg.nrrd")
    segmentation = slicerio.read_segmentation(str(path))

    segments = segmentation["segments"]
    assert [segment["labelValue"] for segment in segments] == [1, 3, 132]
    for segment in segments:
        info = label_info(segment["labelValue"])
        assert segment["name"] == info.display_name
        np.testing.assert_allclose(segment["color"], np.array(info.color) / 255, atol=1e-6)
        assert segment["terminology"] == terminology_entry_from_string(info.terminology_entry())
        assert segment["layer"] == 0
        assert segment["extent"] == [0, 5, 0, 4, 0, 3]
        assert np.array_equal(slicerio.segment_mask(segmentation, segment), array == segment["labelValue"])
    assert len({segment["id"] for segment in segments}) == 3
    np.testing.assert_array_equal(segmentation["voxels"], array)
    np.testing.assert_allclose(segmentation["ijkToLPS"], np.diag([-1, -1, 1, 1]) @ OBLIQUE_AFFINE, atol=EXACT_ATOL)


def test_segment_descriptions_given_replace_the_table_entries(tmp_path):
    import dataclasses

    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    from VISTA3DSlicerLib.labels import Code, label_info

    array = np.zeros((4, 4, 4), np.uint8)
    array[0, 0, 0], array[1, 1, 1] = 1, 140
    nodule = dataclasses.replace(
        label_info(140), display_name="left adrenal nodule", color=(10, 20, 30),
        type=Code("SCT", "27925004", "Nodule"), region=Code("SCT", "23451007", "Adrenal gland"),
    )
    path = io.write_labelmap(Image(array, np.eye(4)), tmp_path / "z.seg.nrrd", segments={140: nodule})
    segments = {s["labelValue"]: s for s in slicerio.read_segmentation(str(path))["segments"]}
    assert segments[140]["name"] == "left adrenal nodule"
    np.testing.assert_allclose(segments[140]["color"], np.array([10, 20, 30]) / 255, atol=1e-6)
    assert segments[140]["terminology"] == terminology_entry_from_string(nodule.terminology_entry())
    assert segments[140]["terminology"]["anatomicRegion"] == ["SCT", "23451007", "Adrenal gland"]
    # Labels not described keep the table's entry.
    assert segments[1]["name"] == label_info(1).display_name
    assert segments[1]["terminology"] == terminology_entry_from_string(label_info(1).terminology_entry())


def test_supervoxels_beyond_255_are_written_exactly(tmp_path):
    import SimpleITK as sitk

    array = np.arange(4 * 5 * 30, dtype=np.int32).reshape(4, 5, 30)  # 0..599
    path = io.write_supervoxels(Image(array, OBLIQUE_AFFINE), tmp_path / "sv.nii.gz")
    written = sitk.ReadImage(str(path))
    assert written.GetPixelID() == sitk.sitkUInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written).transpose(2, 1, 0), array)
    with pytest.raises(VISTA3DError, match="already exists"):
        io.write_supervoxels(Image(array, OBLIQUE_AFFINE), path)
    with pytest.raises(VISTA3DError, match=".seg.nrrd"):
        io.write_supervoxels(Image(array, OBLIQUE_AFFINE), tmp_path / "sv.seg.nrrd")


def test_empty_segmentation_has_no_segments(tmp_path):
    import slicerio

    path = io.write_labelmap(Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), tmp_path / "e.seg.nrrd")
    assert slicerio.read_segmentation(str(path))["segments"] == []


# --------------------------------------------------------------------------- overwrite and atomic writes


def small_labelmap(value: int = 1) -> Image:
    return Image(np.full((3, 3, 3), value, np.uint8), np.eye(4))


@pytest.mark.parametrize("extension", [".nii.gz", ".seg.nrrd"])
def test_existing_labelmap_is_kept_unless_overwrite(tmp_path, extension):
    path = io.write_labelmap(small_labelmap(1), tmp_path / f"l{extension}")
    before = path.read_bytes()

    with pytest.raises(VISTA3DError, match="--overwrite"):
        io.write_labelmap(small_labelmap(2), path)
    assert path.read_bytes() == before

    io.write_labelmap(small_labelmap(2), path, overwrite=True)
    assert path.read_bytes() != before
    assert np.all(io.read_image(path).array == 2)
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_existing_preview_is_kept_unless_overwrite(tmp_path):
    image = Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    path = preview.write_preview_png(image, image.with_array(np.zeros((4, 4, 4), np.uint8)), tmp_path / "p.png")
    before = path.read_bytes()

    with pytest.raises(VISTA3DError, match="--overwrite"):
        preview.write_preview_png(image, image.with_array(np.ones((4, 4, 4), np.uint8)), path)
    assert path.read_bytes() == before

    preview.write_preview_png(image, image.with_array(np.ones((4, 4, 4), np.uint8)), path, overwrite=True)
    assert path.read_bytes() != before


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def crash(labelmap, path, names, space):
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt  # as if the user pressed Ctrl+C in the middle

    monkeypatch.setattr(io, "_write_segmentation", crash)
    with pytest.raises(KeyboardInterrupt):
        io.write_labelmap(small_labelmap(), tmp_path / "l.seg.nrrd")
    assert not list(tmp_path.iterdir())


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    path = io.write_labelmap(small_labelmap(), tmp_path / "l.seg.nrrd")
    before = path.read_bytes()

    def crash(labelmap, temporary, names, space):
        Path(temporary).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_write_segmentation", crash)
    with pytest.raises(VISTA3DError, match="No space left"):
        io.write_labelmap(small_labelmap(5), path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]


def test_writing_onto_a_folder_is_refused(tmp_path):
    (tmp_path / "out.nii.gz").mkdir()
    with pytest.raises(VISTA3DError, match="folder"):
        io.write_labelmap(small_labelmap(), tmp_path / "out.nii.gz", overwrite=True)


# --------------------------------------------------------------------------- reading


def test_read_nifti_matches_nibabel(tmp_path):
    import nibabel as nib

    array = np.random.default_rng(5).integers(-1024, 2000, size=(9, 7, 5)).astype(np.int16)
    nifti = nib.Nifti1Image(array, OBLIQUE_AFFINE)
    nifti.header.set_slope_inter(0.5, -10.0)  # ITK applies the scaling, as nibabel does
    nib.save(nifti, tmp_path / "ct.nii.gz")
    reference = nib.load(tmp_path / "ct.nii.gz")

    image = io.read_image(tmp_path / "ct.nii.gz")

    np.testing.assert_allclose(image.affine, reference.affine, **NIFTI_TOLERANCE)
    for index in [(0, 0, 0), (8, 6, 4), (3, 1, 2), (1, 5, 0)]:
        assert image.array[index] == pytest.approx(reference.dataobj[index])
    np.testing.assert_allclose(image.array, np.asarray(reference.dataobj))


def test_read_real_ct_matches_nibabel():
    import nibabel as nib

    path = shared_file("example_ct_sm.nii.gz")
    reference = nib.load(path)

    image = io.read_image(path)

    assert image.array.dtype == np.int16  # the pixel type is kept
    np.testing.assert_allclose(image.affine, reference.affine, **NIFTI_TOLERANCE)
    for index in [(0, 0, 0), (60, 50, 15), (121, 100, 29), (10, 90, 3)]:
        assert image.array[index] == reference.dataobj[index]
    np.testing.assert_array_equal(image.array, np.asarray(reference.dataobj))


@pytest.mark.parametrize("extension", [".nrrd", ".mha"])
def test_read_keeps_pixel_type(tmp_path, extension):
    import SimpleITK as sitk

    image = Image(np.random.default_rng(2).normal(size=(4, 3, 2)).astype(np.float32), OBLIQUE_AFFINE)
    sitk.WriteImage(io.image_to_sitk(image), str(tmp_path / f"f{extension}"))
    read = io.read_image(tmp_path / f"f{extension}")
    assert read.array.dtype == np.float32
    np.testing.assert_array_equal(read.array, image.array)


def test_missing_file(tmp_path):
    with pytest.raises(VISTA3DError, match="not found") as raised:
        io.read_image(tmp_path / "nothing.nii.gz")
    assert "nothing.nii.gz" in str(raised.value)


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, extension):
    import SimpleITK as sitk

    volume = Image(np.random.default_rng(0).normal(size=(30, 20, 10)).astype(np.float32), np.eye(4))
    whole = tmp_path / f"whole{extension}"
    sitk.WriteImage(io.image_to_sitk(volume), str(whole), True)
    cut = tmp_path / f"cut{extension}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with pytest.raises(VISTA3DError, match="truncated") as raised:
        io.read_image(cut)
    assert str(cut) in str(raised.value)


def test_corrupted_gzip_is_refused(tmp_path):
    path = tmp_path / "bad.nii.gz"
    io.write_labelmap(Image(random_labels((20, 20, 20)), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the compressed voxels
    path.write_bytes(bytes(data))
    with pytest.raises(VISTA3DError, match="corrupted"):
        io.read_image(path)


def write_compressed_metaimage(folder: Path, name: str) -> tuple[Path, np.ndarray]:
    """A compressed MetaImage of random floats (``.mhd`` writes its zlib data to a ``.zraw`` file)."""
    import SimpleITK as sitk

    array = np.random.default_rng(4).normal(size=(30, 20, 10)).astype(np.float32)
    path = folder / name
    sitk.WriteImage(io.image_to_sitk(Image(array, np.eye(4))), str(path), True)
    return path, array


@pytest.mark.parametrize("name", ["ct.mha", "ct.mhd"])
def test_compressed_metaimage_reads_exactly(tmp_path, name):
    path, array = write_compressed_metaimage(tmp_path, name)
    assert "CompressedData = True" in path.read_bytes()[:1000].decode("latin-1")
    np.testing.assert_array_equal(io.read_image(path).array, array)


@pytest.mark.parametrize("name, damaged, damage", [
    ("ct.mha", "ct.mha", "flip"),
    ("ct.mha", "ct.mha", "cut"),
    ("ct.mhd", "ct.zraw", "flip"),
])
def test_damaged_compressed_metaimage_is_refused(tmp_path, name, damaged, damage):
    path, _ = write_compressed_metaimage(tmp_path, name)
    data = bytearray((tmp_path / damaged).read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the zlib data (ITK reads garbage silently)
    else:
        del data[len(data) * 3 // 4:]
    (tmp_path / damaged).write_bytes(bytes(data))

    with pytest.raises(VISTA3DError, match="truncated or corrupted") as raised:
        io.read_image(path)
    assert str(path) in str(raised.value) and "again" in str(raised.value)


def test_unreadable_file_is_reported_as_a_permission_problem(tmp_path, monkeypatch):
    import builtins

    path = io.write_labelmap(small_labelmap(), tmp_path / "l.nii.gz")
    real_open = builtins.open

    def denying_open(file, *args, **kwargs):
        # Tests run as root, for whom chmod does not deny reading.
        if file in (path, str(path)):
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    with pytest.raises(VISTA3DError, match="Permission denied") as raised:
        io.read_image(path)
    message = str(raised.value)
    assert str(path) in message and "readable" in message and "truncated" not in message


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("hello")
    with pytest.raises(VISTA3DError, match="Could not read") as raised:
        io.read_image(path)
    assert "notes.nrrd" in str(raised.value)


def test_2d_image_is_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((16, 12), np.int16), np.eye(4)), tmp_path / "slice.nii.gz")
    with pytest.raises(VISTA3DError, match="2D image of 16 x 12 voxels") as raised:
        io.read_image(tmp_path / "slice.nii.gz")
    assert "3D scalar volume" in str(raised.value)


def test_4d_image_is_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 3), np.int16), np.eye(4)), tmp_path / "series.nii.gz")
    with pytest.raises(VISTA3DError, match="4D image of 6 x 5 x 4 x 3 voxels") as raised:
        io.read_image(tmp_path / "series.nii.gz")
    assert "3D scalar volume" in str(raised.value)


def test_a_4d_nifti_with_one_time_point_is_read_as_its_3d_volume(tmp_path):
    import nibabel as nib

    array = np.zeros((6, 5, 4, 1), np.int16)
    array[2, 3, 1, 0] = 7
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.9, 2.0, 1.0])), tmp_path / "one_time_point.nii.gz")
    image = io.read_image(tmp_path / "one_time_point.nii.gz")
    assert image.shape == (6, 5, 4) and image.array[2, 3, 1] == 7
    np.testing.assert_allclose(image.spacing, [0.8, 0.9, 2.0], rtol=1e-6)


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz"])
def test_vector_image_is_refused(tmp_path, extension):
    import SimpleITK as sitk

    scalar = io.image_to_sitk(Image(np.zeros((6, 5, 4), np.uint8), np.eye(4)))
    sitk.WriteImage(sitk.Compose([scalar, scalar, scalar]), str(tmp_path / f"rgb{extension}"))
    with pytest.raises(VISTA3DError, match="3 components per voxel") as raised:
        io.read_image(tmp_path / f"rgb{extension}")
    assert "3D scalar volume" in str(raised.value)


# --------------------------------------------------------------------------- DICOM


def test_real_dicom_series():
    folder = shared_file("example_ct_dicom")

    image = io.read_image(folder)

    assert image.shape == (512, 512, 20)
    np.testing.assert_allclose(image.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    assert -1100 <= image.array.min() <= -900  # air
    assert 1000 <= image.array.max() <= 4000  # bone or contrast
    assert np.issubdtype(image.array.dtype, np.integer)
    assert np.linalg.det(image.direction) == pytest.approx(1, abs=1e-6)


def copy_of_example_dicom(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A writable copy of the example DICOM series (20 CT slices) and its files in name order."""
    source = shared_file("example_ct_dicom")
    folder = tmp_path / "dicom"
    folder.mkdir()
    for file in sorted(source.iterdir()):
        shutil.copyfile(file, folder / file.name)  # not copytree: the shared files and folder are read-only
    return folder, sorted(folder.iterdir())


def test_intact_copy_of_dicom_series_reads_all_slices(tmp_path):
    folder, _ = copy_of_example_dicom(tmp_path)
    assert io.read_image(folder).shape == (512, 512, 20)


@pytest.mark.parametrize("keep", ["half", 200], ids=["half", "200-bytes"])
def test_dicom_series_with_a_damaged_slice_is_refused(tmp_path, keep):
    folder, files = copy_of_example_dicom(tmp_path)
    damaged = files[len(files) // 2]
    data = damaged.read_bytes()
    damaged.write_bytes(data[: len(data) // 2 if keep == "half" else keep])  # GDCM leaves it out of the series

    with pytest.raises(VISTA3DError, match="missing or unevenly spaced slices") as raised:
        io.read_image(folder)
    message = str(raised.value)
    assert str(folder) in message and damaged.name in message and "probably damaged" in message
    assert "2 to 4 mm apart" in message and "1.89 mm" in message and "2.111 mm" in message
    assert "3D Slicer" in message


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path):
    folder, files = copy_of_example_dicom(tmp_path)
    files[len(files) // 2].unlink()

    with pytest.raises(VISTA3DError, match="missing or unevenly spaced slices") as raised:
        io.read_image(folder)
    assert "slices are probably missing" in str(raised.value) and "damaged slices" not in str(raised.value)


def write_dicom_series(folder: Path, series_uid: str, slices: int, offset: int,
                       slice_z: Sequence[float] | None = None) -> np.ndarray:
    """A small CT series, one file per slice, of known voxels ``[i, j, k]``; slice ``k`` at ``z = slice_z[k]``
    (default: 2.5 mm apart)."""
    import SimpleITK as sitk

    volume = (np.arange(4 * 3 * slices).reshape(4, 3, slices) + offset).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    slice_z = [k * 2.5 for k in range(slices)] if slice_z is None else slice_z
    for k in range(slices):
        dicom_slice = sitk.GetImageFromArray(np.ascontiguousarray(volume[:, :, k].T))
        dicom_slice.SetSpacing((0.7, 0.5))
        for tag, value in [
            ("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"), ("0020|000e", series_uid),
            ("0008|0018", f"{series_uid}.{k + 1}"), ("0020|0013", str(k + 1)),
            ("0020|0032", f"-10\\-20\\{slice_z[k]}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0028|0030", "0.5\\0.7"), ("0018|0050", "2.5"),
        ]:
            dicom_slice.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-3:]}_{k:03d}.dcm"))
        writer.Execute(dicom_slice)
    return volume


def test_dicom_folder_with_several_series_reads_the_largest(tmp_path, caplog):
    largest = write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.101", 5, 0)
    write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.102", 3, 1000)

    with caplog.at_level(logging.WARNING, logger="VISTA3DSlicerLib.io"):
        image = io.read_image(tmp_path)

    np.testing.assert_array_equal(image.array, largest)
    # DICOM LPS (-10, -20, 0), columns 0.7 mm apart, rows 0.5 mm, slices 2.5 mm; RAS flips x and y.
    np.testing.assert_allclose(image.affine, make_affine(np.diag([-1.0, -1.0, 1.0]), (0.7, 0.5, 2.5), (10, 20, 0)),
                               atol=1e-6)
    assert "2 DICOM series" in caplog.text and "1.2.826.0.1.3680043.2.1125.101" in caplog.text


def test_dicom_slice_positions_rounded_off_even_are_read(tmp_path):
    """ITK flags deviations of 0.01 % of the spacing: rounding in real series' positions must not be refused."""
    rounded = [k * 2.5 + (0.004 if k % 2 else 0.0) for k in range(6)]
    volume = write_dicom_series(tmp_path, "1.2.826.0.1.3680043.2.1125.103", 6, 0, slice_z=rounded)
    np.testing.assert_array_equal(io.read_image(tmp_path).array, volume)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(VISTA3DError, match="No DICOM series"):
        io.read_image(tmp_path)


# --------------------------------------------------------------------------- preview


def preview_panels(png: np.ndarray, grey: int) -> list[tuple[slice, slice]]:
    """Row and column extents of the views of a preview, found from their uniform grey background."""
    is_grey = np.all(np.abs(png.astype(int) - grey) <= 1, axis=2)
    columns = np.flatnonzero(is_grey.mean(axis=0) > 0.2)  # (the antialiased titles hold a few grey pixels)
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    panels = []
    for run in runs:
        rows = np.flatnonzero(is_grey[:, run[0]:run[-1] + 1].mean(axis=1) > 0.2)
        panels.append((slice(rows[0], rows[-1] + 1), slice(run[0], run[-1] + 1)))
    return panels


def colour_centroid(panel: np.ndarray, colour: np.ndarray) -> np.ndarray | None:
    """Centroid (row, column), as fractions of the panel size, of the pixels of one colour."""
    rows, columns = np.nonzero(np.all(np.abs(panel.astype(int) - colour) <= 2, axis=2))
    if rows.size == 0:
        return None
    return np.array([rows.mean() / panel.shape[0], columns.mean() / panel.shape[1]])


@pytest.mark.parametrize("shape, affine", [
    ((40, 30, 20), make_affine(np.eye(3), (1.0, 1.5, 2.5), (0, 0, 0))),  # RAS
    # Voxel axes along S, L, P (a permuted storage order), tilted by 5 degrees about A-P.
    ((20, 40, 30), make_affine(rotation([np.cos(np.radians(2.5)), 0, np.sin(np.radians(2.5)), 0]) @ np.array(
        [[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=float), (2.5, 1.0, 1.5), (100, -50, 20))),
], ids=["ras", "oblique-permuted"])
def test_preview_orientation_aspect_and_colours(tmp_path, shape, affine):
    from PIL import Image as PILImage

    from VISTA3DSlicerLib.labels import label_info

    # A box of 40 x 45 x 50 voxel-grid mm (R x A x S) of soft tissue with air in its left-posterior-
    # inferior octant (which no view below shows; it makes the image a CT), and three labelled
    # rods from its centre: label 1 towards the patient's right, 2 anterior, 3 superior.
    grid = Image(np.zeros(shape, np.int16), affine)
    ras = grid.index_to_ras(np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1))
    offset = ras - ras.reshape(-1, 3).mean(axis=0)
    volume = np.where((offset < -1).all(axis=-1), -1000, 40).astype(np.int16)
    labels = np.zeros(shape, np.uint8)
    for label, axis in [(1, 0), (2, 1), (3, 2)]:
        others = [a for a in range(3) if a != axis]
        rod = (offset[..., axis] > 0) & (np.abs(offset[..., others]) < 8).all(axis=-1)
        labels[rod] = label
    image = Image(volume, affine)

    path = preview.write_preview_png(image, image.with_array(labels), tmp_path / "preview.png")

    png = np.asarray(PILImage.open(path).convert("RGB"))
    grey = 128  # 40 HU in the window 40 +- 200
    panels = preview_panels(png, grey)
    assert len(panels) == 3
    axial, coronal, sagittal = (png[rows, columns] for rows, columns in panels)
    # Square pixels: each view's width/height is its physical width/height.
    for view, (width_mm, height_mm) in zip((axial, coronal, sagittal), [(40, 45), (40, 50), (45, 50)]):
        assert view.shape[1] / view.shape[0] == pytest.approx(width_mm / height_mm, rel=0.02)
    assert max(view.shape[0] for view in (axial, coronal, sagittal)) > 300  # big enough to read

    def centroid(view, label):
        colour = np.round(0.5 * grey + 0.5 * np.array(label_info(label).color))
        return colour_centroid(view, colour)

    # Axial: patient's right on the left, anterior up.
    assert centroid(axial, 1)[1] < 0.45 and centroid(axial, 2)[0] < 0.45
    assert centroid(axial, 3) is None or abs(centroid(axial, 3)[1] - 0.5) < 0.1
    # Coronal: right on the left, superior up.
    assert centroid(coronal, 1)[1] < 0.45 and centroid(coronal, 3)[0] < 0.45
    # Sagittal: anterior on the left, superior up.
    assert centroid(sagittal, 2)[1] < 0.45 and centroid(sagittal, 3)[0] < 0.45


def test_preview_of_unlabelled_volume(tmp_path):
    from PIL import Image as PILImage

    image = Image(np.random.default_rng(0).normal(100, 20, size=(20, 10, 5)).astype(np.float32), np.eye(4))
    path = preview.write_preview_png(image, image.with_array(np.zeros((20, 10, 5), np.uint8)), tmp_path / "p.png")
    png = PILImage.open(path)
    assert png.format == "PNG" and png.mode == "RGB"
    assert np.asarray(png).std() > 10  # an MR-like range is windowed by percentiles, not left black


def test_preview_needs_labels_on_the_image_grid(tmp_path):
    image = Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    with pytest.raises(VISTA3DError, match="grid"):
        preview.write_preview_png(image, Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), tmp_path / "p.png")


def test_preview_of_real_ct(tmp_path):
    from PIL import Image as PILImage

    image = io.read_image(shared_file("example_ct_sm.nii.gz"))
    reference = io.read_image(shared_file("example_seg.nii.gz"))  # TotalSegmentator IDs, good for a look
    labels = reference.with_array(np.clip(reference.array, 0, 132).astype(np.uint8))

    path = preview.write_preview_png(image, labels, tmp_path / "ct.png")

    png = np.asarray(PILImage.open(path).convert("RGB")).astype(int)
    # 366 x 303 x 90 mm: the widest view (axial or coronal, 366 mm) is 400 pixels wide.
    assert 300 < png.shape[0] < 460 and png.shape[1] > 900
    coloured = (np.ptp(png, axis=2) > 20).mean()  # label colours are blended in: not all grey
    assert 0.05 < coloured < 0.5


def test_ct_warning_passes_a_ct_and_flags_mr_and_raw_values(example_ct):
    from VISTA3DSlicerLib.ct_check import ct_warning
    from VISTA3DSlicerLib.io import read_image

    ct = read_image(example_ct)
    assert ct_warning(ct) is None
    mr = read_image(example_ct.with_name("example_mr_sm.nii.gz"))
    assert "does not look like a CT" in ct_warning(mr)
    raw = ct.with_array(ct.array.astype(np.int32) + 33024)  # raw values far above any Hounsfield unit
    assert "Hounsfield" in ct_warning(raw)
    assert "no finite" in ct_warning(ct.with_array(np.full(ct.shape, np.nan, np.float32)))
