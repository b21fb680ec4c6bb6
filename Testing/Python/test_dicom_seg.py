"""Tests of VISTA3DSlicerLib.dicom_seg: a labelmap of a DICOM CT series written as a DICOM SEG.

The example series (20 CT slices) was anonymised by emptying its UIDs and Patient ID, which a
SEG must reference; the tests write a copy with them restored (the SOP Instance UIDs from the
files' meta headers, new study and series UIDs), and check that the anonymised original is refused.
The SEGs are checked with dciodvfy (Debian's dicom3tools) and read back with highdicom and pydicom.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import example_file, pretend_not_installed
from VISTA3DSlicerLib import io, labels
from VISTA3DSlicerLib.dicom_seg import source_series_files, write_dicom_seg
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.geometry import Image

highdicom = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

PATIENT_ID = "VISTA3D-TEST-1"
LIVER, SPLEEN, LEFT_UPPER_LOBE, LEFT_KIDNEY_CYST, ZERO_SHOT = 1, 3, 28, 116, 150


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """A copy of the example DICOM series with its UIDs and Patient ID restored."""
    source = example_file("example_ct_dicom")
    folder = tmp_path_factory.mktemp("dicom") / "ct"
    folder.mkdir()
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for file in sorted(source.iterdir()):
        dataset = pydicom.dcmread(file)  # the JPEG 2000 pixel data stay encoded
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.PatientID = study_uid, series_uid, PATIENT_ID
        dataset.save_as(folder / file.name)
    return folder


@pytest.fixture(scope="module")
def ct(series) -> Image:
    return io.read_image(series)


@pytest.fixture(scope="module")
def labelmap(ct) -> Image:
    """Structures drawn on the CT: soft tissue in a box (liver), a ball (spleen), boxes for a structure
    with a type modifier, one with an anatomic region and modifier (in 4 of the 20 slices only), and a
    zero-shot ID. Later structures overwrite earlier ones, as an argmax would."""
    array = np.zeros(ct.shape, np.uint8)
    box = (slice(100, 300), slice(150, 350), slice(2, 18))
    array[box][(ct.array[box] > 0) & (ct.array[box] < 200)] = LIVER
    i, j, k = np.ogrid[:ct.shape[0], :ct.shape[1], :ct.shape[2]]
    array[(i - 380) ** 2 + (j - 250) ** 2 + (2 * (k - 10)) ** 2 < 40 ** 2] = SPLEEN
    array[300:340, 300:340, 12:19] = LEFT_UPPER_LOBE
    array[200:260, 100:140, 5:9] = LEFT_KIDNEY_CYST
    array[20:40, 25:40, 0:3] = ZERO_SHOT
    return ct.with_array(array)


@pytest.fixture(scope="module")
def seg_file(tmp_path_factory, series, labelmap) -> Path:
    return write_dicom_seg(labelmap, series, tmp_path_factory.mktemp("seg") / "seg.dcm")


def source_uids(series: Path) -> list[str]:
    """The SOP Instance UIDs of the series' files, in the labelmap's slice order k."""
    return [pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID for file in source_series_files(series)]


def labelmap_from_seg(seg: "highdicom.seg.Segmentation", series: Path, space: labels.LabelSpace) -> np.ndarray:
    """The labelmap ``[i, j, k]`` a reader rebuilds from the SEG, mapping segments to label IDs by their labels."""
    numbers = np.zeros(max(seg.segment_numbers) + 1, np.uint16)
    for description in seg.SegmentSequence:
        numbers[description.SegmentNumber] = space.find_label(description.SegmentLabel)  # display names, zero-shot too
    pixels = seg.get_pixels_by_source_instance(source_uids(series), combine_segments=True)  # [k, row j, column i]
    return np.transpose(numbers[pixels], (2, 1, 0))


def test_seg_passes_dciodvfy(seg_file):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    result = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, timeout=60)
    report = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, f"dciodvfy found errors:\n{report}"


def test_seg_reads_back_as_the_labelmap(seg_file, series, labelmap):
    seg = highdicom.seg.segread(seg_file)

    np.testing.assert_array_equal(labelmap_from_seg(seg, series, labels.VISTA3D_LABELS), labelmap.array)
    present = [LIVER, SPLEEN, LEFT_UPPER_LOBE, LEFT_KIDNEY_CYST, ZERO_SHOT]
    assert seg.segment_numbers == [1, 2, 3, 4, 5]  # in increasing label order
    # Empty frames are left out: one frame per segment and slice where the segment is present.
    assert seg.NumberOfFrames == sum(int((labelmap.array == value).any(axis=(0, 1)).sum()) for value in present)
    assert seg.NumberOfFrames < len(present) * labelmap.shape[2]


def test_seg_describes_segments_with_the_label_table(seg_file):
    dataset = pydicom.dcmread(seg_file)

    assert dataset.SegmentationType == "BINARY" and dataset.Modality == "SEG"
    for number, (item, label_id) in enumerate(zip(dataset.SegmentSequence,
                                                  [LIVER, SPLEEN, LEFT_UPPER_LOBE, LEFT_KIDNEY_CYST, ZERO_SHOT]), 1):
        info = labels.label_info(label_id)
        assert item.SegmentNumber == number
        assert item.SegmentLabel == info.display_name
        for sequence, code in [(item.SegmentedPropertyCategoryCodeSequence, info.category),
                               (item.SegmentedPropertyTypeCodeSequence, info.type)]:
            assert (sequence[0].CodingSchemeDesignator, sequence[0].CodeValue, sequence[0].CodeMeaning) == (
                code.scheme, code.value, code.meaning)
        rgb = highdicom.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        np.testing.assert_allclose(rgb, info.color, atol=1)
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "VISTA3D"
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"

    lobe, cyst, zero_shot = dataset.SegmentSequence[2:]
    assert lobe.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    region = cyst.AnatomicRegionSequence[0]
    assert region.CodeMeaning == "Kidney" and region.AnatomicRegionModifierSequence[0].CodeMeaning == "Left"
    assert zero_shot.SegmentLabel == "Zero-shot structure 150"
    assert zero_shot.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Tissue"


def test_seg_references_the_source_series(seg_file, series):
    dataset = pydicom.dcmread(seg_file)
    source = pydicom.dcmread(source_series_files(series)[0], stop_before_pixels=True)

    assert dataset.StudyInstanceUID == source.StudyInstanceUID and dataset.PatientID == PATIENT_ID
    assert dataset.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
    (referenced,) = dataset.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == set(source_uids(series))
    assert dataset.SeriesDescription == "VISTA3D segmentation" and dataset.ContentLabel == "VISTA3D"
    assert dataset.Manufacturer == "VISTA3DSlicer" and dataset.InstanceNumber == 1


@pytest.mark.parametrize("change", ["flipped", "shifted", "cropped"])
def test_labelmap_on_another_grid_is_refused(tmp_path, series, labelmap, change):
    if change == "cropped":
        other = Image(labelmap.array[:, :, 1:], labelmap.affine)
    else:
        affine = labelmap.affine.copy()
        if change == "flipped":
            affine[:3, 0] *= -1
        else:
            affine[:3, 3] += labelmap.affine[:3, 2]  # one slice up
        other = Image(labelmap.array, affine)

    with pytest.raises(VISTA3DError, match="not on the grid of the DICOM series") as raised:
        write_dicom_seg(other, series, tmp_path / "seg.dcm")
    assert str(series) in str(raised.value) and "segmented from this very series" in str(raised.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("source", ["nifti", "empty folder", "missing"])
def test_input_that_is_not_a_dicom_series_is_refused(tmp_path, labelmap, source):
    path = {"nifti": tmp_path / "ct.nii.gz", "empty folder": tmp_path / "empty", "missing": tmp_path / "none"}[source]
    if source == "nifti":
        io.write_labelmap(labelmap, path)
    elif source == "empty folder":
        path.mkdir()

    with pytest.raises(VISTA3DError, match="DICOM SEG output needs a DICOM series as input") as raised:
        write_dicom_seg(labelmap, path, tmp_path / "seg.dcm")
    assert str(path) in str(raised.value) and "--format nii.gz|nrrd|seg.nrrd|mha" in str(raised.value)
    assert not (tmp_path / "seg.dcm").exists()


def test_anonymised_series_without_uids_is_refused(tmp_path):
    folder = example_file("example_ct_dicom")  # its StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID are empty
    labelmap = io.read_image(folder)
    labelmap = labelmap.with_array(np.ones(labelmap.shape, np.uint8))

    with pytest.raises(VISTA3DError, match="lacks .*SOPInstanceUID.*StudyInstanceUID") as raised:
        write_dicom_seg(labelmap, folder, tmp_path / "seg.dcm")
    assert "--format" in str(raised.value)


def test_existing_output_is_kept_without_overwrite(tmp_path, series, labelmap):
    output = tmp_path / "seg.dcm"
    output.write_bytes(b"an earlier result")

    with pytest.raises(VISTA3DError, match="already exists"):
        write_dicom_seg(labelmap, series, output)
    assert output.read_bytes() == b"an earlier result"

    write_dicom_seg(labelmap, series, output, overwrite=True)
    assert pydicom.dcmread(output).Modality == "SEG"


def test_empty_labelmap_is_refused(tmp_path, series, ct):
    with pytest.raises(VISTA3DError, match="Nothing was segmented in .*no DICOM SEG written") as raised:
        write_dicom_seg(ct.with_array(np.zeros(ct.shape, np.uint8)), series, tmp_path / "seg.dcm")
    assert str(series) in str(raised.value)
    assert not list(tmp_path.iterdir())


def test_ctmr_labels_above_255(tmp_path, series, ct):
    array = np.zeros(ct.shape, np.uint16)
    array[100:200, 100:200, 3:6] = 1
    array[250:300, 250:300, 10:12] = 300
    labelmap = ct.with_array(array)

    seg = highdicom.seg.segread(write_dicom_seg(labelmap, series, tmp_path / "seg.dcm", label_space=labels.CTMR_LABELS))

    assert [item.SegmentLabel for item in seg.SegmentSequence] == [
        labels.CTMR_LABELS.label_info(1).display_name, labels.CTMR_LABELS.label_info(300).display_name]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "NV-Segment-CTMR"
    np.testing.assert_array_equal(labelmap_from_seg(seg, series, labels.CTMR_LABELS), array)


def test_without_highdicom_the_error_says_how_to_install_it(tmp_path, series, labelmap, monkeypatch):
    pretend_not_installed(monkeypatch, "highdicom")
    with pytest.raises(VISTA3DError, match=r"highdicom>=0.22 \(not installed\).*pip install 'vista3dslicer\[dicom\]'"):
        write_dicom_seg(labelmap, series, tmp_path / "seg.dcm")


def test_importing_the_module_imports_no_heavy_package():
    code = ("import sys; import VISTA3DSlicerLib.dicom_seg; "
            "print(sorted({'torch', 'monai', 'highdicom', 'pydicom', 'SimpleITK'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                            cwd=Path(__file__).resolve().parents[2] / "VISTA3DSlicer", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_batch_writes_a_dicom_seg_per_series_and_refuses_other_inputs(series, ct, tmp_path, capsys, monkeypatch):
    """``vista3d batch --format dicom-seg``: the batch workflow's naming and summary, this writer."""
    from VISTA3DSlicerLib import cli
    from VISTA3DSlicerLib.batch import SUMMARY_NAME

    class ThresholdEngine:  # the batch's part is tested here; the labels come from the CT's values
        def segment(self, image, label_ids, progress=None, cancel=None):
            return image.with_array(np.where(image.array > 100, SPLEEN, np.where(image.array > 0, LIVER, 0))
                                    .astype(np.uint8))

    monkeypatch.setattr(cli, "_engine", lambda args: ThresholdEngine())
    out = tmp_path / "out"
    assert cli.main(["batch", str(series.parent), "-o", str(out), "--format", "dicom-seg", "--labels", "liver"]) == 0
    seg_path = out / f"{series.name}.seg.dcm"
    assert seg_path.exists() and (out / SUMMARY_NAME).exists()
    expected = ThresholdEngine().segment(ct, None).array
    np.testing.assert_array_equal(labelmap_from_seg(highdicom.seg.segread(seg_path), series, labels.VISTA3D_LABELS),
                                  expected)
    if shutil.which("dciodvfy"):
        report = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, timeout=60)
        assert not [line for line in (report.stdout + report.stderr).decode("utf-8", "replace").splitlines()
                    if line.startswith("Error")]

    volume = tmp_path / "volumes"
    volume.mkdir()
    shutil.copy(example_file("example_ct_sm.nii.gz"), volume)
    capsys.readouterr()
    assert cli.main(["batch", str(volume), "-o", str(tmp_path / "out2"), "--format", "dicom-seg"]) == 1
    err = capsys.readouterr().err
    assert "DICOM SEG output needs DICOM series inputs (folders), and 1 input(s) are not" in err
    assert "Traceback" not in err and not (tmp_path / "out2").exists()
