"""The ``vista3d`` command line as users and scripts call it."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from VISTA3DSlicerLib.batch import SUMMARY_NAME
from VISTA3DSlicerLib.cli import main
from VISTA3DSlicerLib.models import MODELS


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Nothing from the real cache or environment: weights come from --weights or not at all."""
    monkeypatch.setenv("VISTA3D_HOME", str(tmp_path / "cache"))
    for model in MODELS.values():
        monkeypatch.delenv(model.environment, raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_writes_labelmap_with_input_geometry_and_preview(capsys, tmp_path, example_ct_crop, small_checkpoint):
    output, preview = tmp_path / "out" / "labels.nii.gz", tmp_path / "preview.png"
    code, out, err = run(
        capsys, "segment", example_ct_crop, "-o", output, "--labels", "liver,spleen,5,6",
        "--weights", small_checkpoint, "--device", "cpu", "--precision", "fp32", "--preview", preview,
    )
    assert code == 0, err
    assert "window" in err  # the progress bar
    source, result = sitk.ReadImage(str(example_ct_crop)), sitk.ReadImage(str(output))
    assert result.GetSize() == source.GetSize()
    assert result.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(result.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(result.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetDirection(), source.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1, 3, 5, 6}
    assert preview.stat().st_size > 1000


def test_existing_output_is_never_replaced_without_overwrite(capsys, tmp_path, example_ct_crop, small_checkpoint):
    output = tmp_path / "labels.nrrd"
    output.write_bytes(b"the user's own file")
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", output, "--weights", small_checkpoint)
    assert code == 1 and "--overwrite" in err and "Traceback" not in err
    assert output.read_bytes() == b"the user's own file"
    code, _, err = run(
        capsys, "segment", example_ct_crop, "-o", output, "--labels", "1", "--weights", small_checkpoint,
        "--overwrite",
    )
    assert code == 0, err
    assert sitk.ReadImage(str(output)).GetSize() == sitk.ReadImage(str(example_ct_crop)).GetSize()


def test_seg_nrrd_output_carries_names_and_terminology(capsys, tmp_path, example_ct_crop, small_checkpoint):
    import slicerio

    output = tmp_path / "labels.seg.nrrd"
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", output, "--labels", "1,3", "--weights", small_checkpoint)
    assert code == 0, err
    segments = slicerio.read_segmentation(str(output))["segments"]
    assert {s["labelValue"] for s in segments} <= {1, 3} and segments
    # slicerio gives each code as [scheme, value, meaning]
    assert {tuple(s["terminology"]["type"]) for s in segments} <= {("SCT", "10200004", "Liver"), ("SCT", "78961009", "Spleen")}


def test_typo_in_a_label_name_suggests_the_right_one(capsys, tmp_path, example_ct_crop):
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", tmp_path / "x.nii.gz", "--labels", "livr")
    assert code == 1 and "liver" in err and "Traceback" not in err


def test_missing_weights_say_how_to_get_them(capsys, tmp_path, example_ct_crop):
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", tmp_path / "x.nii.gz", "--labels", "1")
    assert code == 1 and "--weights" in err and "vista3d weights download" in err


def test_models_lists_each_model_with_what_it_does_and_its_licence(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert out.splitlines()[0] == "vista3d  (default): VISTA3D (MONAI bundle)"
    blocks = out.strip().split("\n\n")
    assert len(blocks) == len(MODELS)
    for block, model in zip(blocks, MODELS.values()):
        assert block.startswith(model.key)
        for text in (model.licence.name, model.licence.url, model.licence.commercial_use, f"${model.environment}",
                     f"classes: {model.classes}", f"prompts: {', '.join(model.prompts)}"):
            assert text in block
    assert "commercial use: no" in blocks[0]  # the MONAI bundle's weights
    ctmr = blocks[list(MODELS).index("nv-segment-ctmr")]
    for text in ("classes: 345", "modalities: CT, MR", "prompts: automatic\n",
                 "everything: 117 classes for ct; 50 classes for mri-body; 132 classes for mri-brain",
                 "windows: 192x192x128", "percentiles 1 to 99", "skull-stripped"):
        assert text in ctmr


def test_nv_segment_ct_is_the_same_pipeline_with_its_own_weights(capsys, tmp_path, example_ct_crop, small_checkpoint,
                                                                 monkeypatch):
    bundle, nv = tmp_path / "bundle.nii.gz", tmp_path / "nv.nii.gz"
    common = ["--labels", "liver", "--device", "cpu"]
    assert run(capsys, "segment", example_ct_crop, "-o", bundle, "--weights", small_checkpoint, *common)[0] == 0
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", nv, "--model", "nv-segment-ct", *common)
    assert code == 1 and "NV_SEGMENT_CT_WEIGHTS" in err and "vista3d weights download --model nv-segment-ct" in err
    assert not nv.exists()
    monkeypatch.setenv("NV_SEGMENT_CT_WEIGHTS", str(small_checkpoint))
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", nv, "--model", "nv-segment-ct", *common)
    assert code == 0, err
    assert "NV-Segment-CT on cpu" in err
    assert np.array_equal(np.asanyarray(nib.load(nv).dataobj), np.asanyarray(nib.load(bundle).dataobj))


def test_labels_prints_the_table(capsys):
    code, out, _ = run(capsys, "labels")
    assert code == 0
    rows = [line for line in out.splitlines() if line.split()[0].isdigit()]
    assert len(rows) == 132
    assert "liver" in rows[0] and "everything" in rows[0]
    assert "group: 14,5" in rows[1]


def test_batch_runs_skips_and_reports(capsys, tmp_path, example_ct_crop, small_checkpoint):
    cases = tmp_path / "cases"
    cases.mkdir()
    image = nib.load(example_ct_crop)
    for name in ("a", "b"):
        nib.save(image, cases / f"{name}.nii.gz")
    (cases / "broken.nii.gz").write_bytes(b"not an image")
    out_dir = tmp_path / "out"
    options = ["--labels", "1,3", "--weights", small_checkpoint, "--device", "cpu"]

    code, out, err = run(capsys, "batch", cases, "-o", out_dir, *options)
    assert code == 1  # one case failed
    rows = {row["case"]: row for row in csv.DictReader(open(out_dir / SUMMARY_NAME, newline="", encoding="utf-8"))}
    assert {k: r["status"] for k, r in rows.items()} == {"a": "done", "b": "done", "broken": "failed"}
    assert "broken" in err and rows["broken"]["message"]
    first = (out_dir / "a.nii.gz").read_bytes()

    code, out, err = run(capsys, "batch", str(cases / "[ab].nii.gz"), "-o", out_dir, *options)
    assert code == 0
    rows = {row["case"]: row for row in csv.DictReader(open(out_dir / SUMMARY_NAME, newline="", encoding="utf-8"))}
    assert {k: r["status"] for k, r in rows.items()} == {"a": "skipped", "b": "skipped"}
    assert (out_dir / "a.nii.gz").read_bytes() == first


def test_weights_path_without_weights(capsys):
    code, _, err = run(capsys, "weights", "path")
    assert code == 1 and "vista3d weights download" in err


@pytest.mark.slow
@pytest.mark.parametrize("labels", ["everything"])
def test_segment_with_real_vista3d132_matches_the_bundle(capsys, tmp_path, example_ct, real_checkpoint, labels):
    """The engine issue's acceptance run: the full-size network on the whole example CT, CLI against the bundle.

    "everything" only, to keep CI short: a few classes take the same path (argmax over the class
    channels) and are compared with the bundle on the small network in test_engine.py.
    """
    from reference_pipeline import run_reference

    from VISTA3DSlicerLib.model import load_network

    output = tmp_path / "labels.nii.gz"
    code, _, err = run(
        capsys, "segment", example_ct, "-o", output, "--labels", labels, "--weights", real_checkpoint,
        "--device", "cpu", "--precision", "fp32",
    )
    assert code == 0, err
    ours = np.asanyarray(nib.load(output).dataobj)
    reference = run_reference(example_ct, load_network(real_checkpoint), None if labels == "everything" else [1, 3, 5, 6])
    agreement = float((ours == reference).mean())
    print(f"agreement with the bundle ({labels}): {agreement:.6f}")
    assert agreement >= 0.999
    assert len(set(np.unique(ours)) - {0}) >= (3 if labels != "everything" else 10)


# ------------------------------------------------------------------------------------------- clicks


@pytest.mark.slow
@pytest.mark.parametrize("volume, modality", [("example_ct", "ct"), ("example_mr", "mri-body")])
def test_ctmr_with_the_full_size_network_matches_its_bundle(request, capsys, tmp_path, real_checkpoint, volume,
                                                            modality):
    """NV-Segment-CTMR's acceptance run: the full-size network, its everything of the modality on the
    whole example CT and MR, the CLI against that bundle's wiring (192x192x128 windows, percentiles)."""
    from reference_pipeline import run_reference

    from VISTA3DSlicerLib.labels import CTMR_LABELS
    from VISTA3DSlicerLib.model import load_network

    path, output = request.getfixturevalue(volume), tmp_path / "labels.nii.gz"
    code, _, err = run(capsys, "segment", path, "-o", output, "--model", "nv-segment-ctmr", "--modality", modality,
                       "--weights", real_checkpoint, "--device", "cpu")
    assert code == 0, err
    ours = np.asanyarray(nib.load(output).dataobj)
    everything = list(CTMR_LABELS.everything_for(modality))
    reference = run_reference(path, load_network(real_checkpoint), everything, config="nv-segment-ctmr")
    agreement = float((ours == reference).mean())
    print(f"NV-Segment-CTMR {modality}: agreement with the bundle {agreement:.6f}, "
          f"{len(np.unique(ours)) - 1} labels present")
    assert agreement >= 0.999
    assert len(np.unique(ours)) > 2


def click_session_mask(checkpoint, image_path, label, clicks, auto: bool):
    """What the library gives for the same clicks (the CLI must write exactly this)."""
    from VISTA3DSlicerLib.engine import Engine
    from VISTA3DSlicerLib.interactive import Session
    from VISTA3DSlicerLib.io import read_image

    image = read_image(image_path)
    session = Session(Engine.from_weights(checkpoint, device="cpu"), image)
    structure = session.structure(label, mask=None if auto else np.zeros(image.shape, bool))
    return structure.add_clicks(clicks).mask


def test_segment_with_clicks_edits_the_class_auto_result(capsys, tmp_path, example_ct_crop, small_checkpoint):
    output = tmp_path / "liver.nii.gz"
    code, _, err = run(
        capsys, "segment", example_ct_crop, "-o", output, "--label", "liver", "--point", "35,30,15",
        "--negative-point", "50,40,18", "--weights", small_checkpoint, "--device", "cpu",
    )
    assert code == 0, err
    written = np.asanyarray(nib.load(output).dataobj)
    assert set(np.unique(written)) == {0, 1}  # liver is ID 1
    clicks = [((35, 30, 15), True), ((50, 40, 18), False)]
    assert np.array_equal(written == 1, click_session_mask(small_checkpoint, example_ct_crop, 1, clicks, True))


def test_segment_points_only_in_ras_writes_its_own_id(capsys, tmp_path, example_ct_crop, small_checkpoint):
    image = nib.load(example_ct_crop)
    ras = image.affine @ np.array([35.0, 30.0, 15.0, 1.0])
    by_index, by_ras = tmp_path / "index.nrrd", tmp_path / "ras.nrrd"
    common = ["--weights", small_checkpoint, "--device", "cpu"]
    assert run(capsys, "segment", example_ct_crop, "-o", by_index, "--point", "35,30,15", *common)[0] == 0
    code, _, err = run(
        capsys, "segment", example_ct_crop, "-o", by_ras, "--point", ",".join(f"{v:.4f}" for v in ras[:3]),
        "--point-space", "ras", *common,
    )
    assert code == 0, err
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(by_index)))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(by_ras)))
    assert set(np.unique(a)) == {0, 133}  # never 1: that is the liver's ID
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--labels", "liver", "--point", "35,30,15"], "--label"),
        (["--label", "liver"], "without clicks"),
        (["--label", "bone", "--point", "35,30,15"], "group"),
        (["--label", "livr", "--point", "35,30,15"], "Did you mean: liver"),
        (["--point", "35,30,99"], "outside the volume"),
    ],
    ids=["labels-with-clicks", "no-clicks", "group", "typo", "outside"],
)
def test_click_options_refused_with_a_clear_message(capsys, tmp_path, example_ct_crop, small_checkpoint, argv, message):
    output = tmp_path / "out.nii.gz"
    code, _, err = run(capsys, "segment", example_ct_crop, "-o", output, "--weights", small_checkpoint, *argv)
    assert code == 1 and message in err and "Traceback" not in err
    assert not output.exists()


def test_malformed_point_is_a_usage_error(capsys, tmp_path, example_ct_crop):
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(example_ct_crop), "-o", str(tmp_path / "o.nii.gz"), "--point", "1,2"])
    assert exit_info.value.code == 2
    assert "three comma-separated numbers" in capsys.readouterr().err


# ------------------------------------------------------------------------------- supervoxels, zeroshot


@pytest.fixture
def with_small_sam(monkeypatch, small_sam):
    """The CLI's SAM loader hands out the small test SAM (the real checkpoints cannot be had here)."""
    import torch

    from VISTA3DSlicerLib import cli

    monkeypatch.setattr(cli, "_sam", lambda args: (small_sam, torch.device("cpu")))


def test_supervoxels_command_writes_roi_labels_on_the_input_grid(capsys, tmp_path, example_ct_crop, with_small_sam):
    output = tmp_path / "sv.nrrd"
    code, out, err = run(
        capsys, "supervoxels", example_ct_crop, "-o", output, "--roi", "10,10,5,50,40,20", "--n-segments", "30",
    )
    assert code == 0, err
    assert "supervoxels" in out
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(example_ct_crop))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
    labels = sitk.GetArrayFromImage(written).transpose(2, 1, 0)  # back to [i, j, k]
    inside = np.zeros(labels.shape, dtype=bool)
    inside[10:50, 10:40, 5:20] = True
    assert labels[inside].max() > 5 and np.all(labels[~inside] == 0)


@pytest.mark.parametrize(
    "argv,message",
    [(["--roi", "0,0,0,500,10,10"], "outside the volume"), (["--roi", "1,2,3"], "six integers")],
)
def test_supervoxels_bad_roi_is_refused(capsys, tmp_path, example_ct_crop, with_small_sam, argv, message):
    output = tmp_path / "sv.nii.gz"
    code, _, err = run(capsys, "supervoxels", example_ct_crop, "-o", output, *argv)
    assert code == 1 and message in err and "Traceback" not in err and not output.exists()


def test_zeroshot_command_with_and_without_snapping(
    capsys, tmp_path, example_ct_crop, small_checkpoint, small_sam, with_small_sam
):
    from VISTA3DSlicerLib.io import read_image
    from VISTA3DSlicerLib.supervoxels import compute_supervoxels, snap, snap_roi

    common = ["--point", "35,30,15", "--negative-point", "12,25,14", "--weights", small_checkpoint, "--device", "cpu"]
    raw, snapped = tmp_path / "raw.nii.gz", tmp_path / "snapped.nii.gz"
    assert run(capsys, "zeroshot", example_ct_crop, "-o", raw, "--id", "150", *common)[0] == 0
    code, _, err = run(capsys, "zeroshot", example_ct_crop, "-o", snapped, "--snap", "0.5", "--n-segments", "40", *common)
    assert code == 0, err
    raw_mask = np.asanyarray(nib.load(raw).dataobj) == 150
    snapped_labels = np.asanyarray(nib.load(snapped).dataobj)
    assert raw_mask.any() and set(np.unique(snapped_labels)) == {0, 133}
    # The same snapping done by hand with the library: the supervoxels of the box around the mask
    # and the clicks, those covered by half, plus the one under the positive click, minus the
    # one under the negative click.
    image = read_image(example_ct_crop)
    supervoxels = compute_supervoxels(small_sam, image, snap_roi(raw_mask, [(35, 30, 15), (12, 25, 14)]), n_segments=40)
    expected = snap(raw_mask, supervoxels.array, 0.5, positive=[(35, 30, 15)], negative=[(12, 25, 14)])
    assert np.array_equal(snapped_labels == 133, expected)
    assert not np.array_equal(expected, raw_mask)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--id", "5", "--point", "35,30,15"], "133 to 254"),
        ([], "at least one click"),
        (["--point", "35,30,15", "--snap", "2"], "fraction"),
    ],
    ids=["class-id", "no-clicks", "snap-range"],
)
def test_zeroshot_bad_options_are_refused(capsys, tmp_path, example_ct_crop, small_checkpoint, argv, message):
    output = tmp_path / "z.nii.gz"
    code, _, err = run(capsys, "zeroshot", example_ct_crop, "-o", output, "--weights", small_checkpoint, *argv)
    assert code == 1 and message in err and "Traceback" not in err and not output.exists()


def test_sam_weights_path_says_how_to_get_them(capsys, monkeypatch):
    monkeypatch.delenv("VISTA3D_SAM_WEIGHTS", raising=False)
    code, _, err = run(capsys, "weights", "path", "--model", "sam_vit_b")
    assert code == 1 and "vista3d weights download --model sam_vit_b" in err


class OutOfMemoryError(RuntimeError):
    """Named like torch's CUDA out-of-memory error, which the command line recognises by name."""


@pytest.mark.parametrize("error, message, status", [
    (MemoryError(), "out of memory. Segment fewer --labels", 1),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory", 1),
    (PermissionError(13, "Permission denied", "/data/out"), "Permission denied (/data/out). Check", 1),
    (ZeroDivisionError("division by zero"), "unexpected ZeroDivisionError: division by zero. This is a bug", 2),
])
def test_unexpected_errors_are_one_line_without_traceback(capsys, monkeypatch, error, message, status):
    import VISTA3DSlicerLib.cli as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_labels", fail)
    assert main(["labels"]) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert err.count("\n") == 1

    assert main(["-v", "labels"]) == status  # -v adds the traceback for a bug report
    assert "Traceback" in capsys.readouterr().err


def test_a_volume_that_is_not_ct_gets_a_warning(capsys, tmp_path, example_ct, small_checkpoint):
    whole = nib.load(example_ct.with_name("example_mr_sm.nii.gz"))
    mr = tmp_path / "example_mr_sm.nii.gz"  # a crop of the real MR: one window, seconds instead of half a minute
    nib.save(whole.slicer[:48, :48, :24], mr)
    out = tmp_path / "mr_labels.nii.gz"
    status = main(["segment", str(mr), "-o", str(out), "--labels", "liver", "--weights", str(small_checkpoint)])
    err = capsys.readouterr().err
    assert "warning: example_mr_sm.nii.gz: This does not look like a CT" in err
    assert status == 0 and out.is_file()  # a warning, not a refusal: the run goes on


def test_batch_inputs_leave_out_hidden_files_such_as_an_interrupted_write(tmp_path):
    from VISTA3DSlicerLib.batch import find_inputs

    for name in ("case_a.nii.gz", ".case_a.nii.gz.0123abcd.tmp.nii.gz", "labels.seg.nrrd", "notes.txt", "case_b.nrrd"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_inputs(str(tmp_path))] == ["case_a.nii.gz", "case_b.nrrd"]


class _ShapeEngine:
    """An engine that labels every voxel 1: its outputs show which input they came from by their shape."""

    def segment(self, image, label_ids, progress=None, cancel=None):
        return image.with_array(np.ones(image.shape, dtype=np.uint8))


def _write_ct(path, shape) -> None:
    """A small CT-like volume (air around a body of water) that passes the CT check."""
    volume = np.full(shape, -1000, dtype=np.int16)
    volume[2:-2, 2:-2, 1:-1] = 40
    sitk.WriteImage(sitk.GetImageFromArray(volume.transpose()), str(path))


def test_batch_inputs_differing_only_by_their_ending_get_outputs_of_their_own(capsys, tmp_path, monkeypatch):
    from VISTA3DSlicerLib import cli

    cases = tmp_path / "cases"
    cases.mkdir()
    shapes = {"a.nii.gz": (10, 11, 12), "a.nrrd": (13, 11, 12), "A.mha": (14, 11, 12), "b.nii.gz": (15, 11, 12)}
    for name, shape in shapes.items():
        _write_ct(cases / name, shape)
    monkeypatch.setattr(cli, "_engine", lambda args: _ShapeEngine())

    code, out, err = run(capsys, "batch", cases, "-o", tmp_path / "out", "--labels", "liver")
    assert code == 0, err
    outputs = {"a_nii_gz.nii.gz": "a.nii.gz", "a_nrrd.nii.gz": "a.nrrd", "A_mha.nii.gz": "A.mha", "b.nii.gz": "b.nii.gz"}
    written = {p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")}
    assert written == set(outputs) | {SUMMARY_NAME}
    for output, source in outputs.items():
        assert nib.load(tmp_path / "out" / output).shape == shapes[source]
    rows = {row["case"]: row for row in csv.DictReader(open(tmp_path / "out" / SUMMARY_NAME, newline="", encoding="utf-8"))}
    assert {case: row["input"].rsplit("/", 1)[-1] for case, row in rows.items()} == {
        name.split(".")[0] if name == "b.nii.gz" else output.split(".")[0]: name
        for output, name in outputs.items()
    }


def test_batch_into_the_inputs_folder_is_refused_before_anything_is_written(capsys, tmp_path, monkeypatch):
    from VISTA3DSlicerLib import cli

    _write_ct(tmp_path / "a.nii.gz", (10, 11, 12))
    before = (tmp_path / "a.nii.gz").read_bytes()
    monkeypatch.setattr(cli, "_engine", lambda args: _ShapeEngine())
    code, out, err = run(capsys, "batch", tmp_path, "-o", tmp_path, "--labels", "liver", "--overwrite")
    assert code == 1
    assert f"The output folder {tmp_path} holds the inputs (a.nii.gz)" in err and "another folder with --output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    assert (tmp_path / "a.nii.gz").read_bytes() == before


def test_a_second_batch_on_the_same_output_folder_is_refused(capsys, tmp_path, monkeypatch):
    import subprocess
    import sys

    from VISTA3DSlicerLib import cli

    _write_ct(tmp_path / "a.nii.gz", (10, 11, 12))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    holder = subprocess.Popen(  # the first batch, as far as the folder can tell: another process holding its lock
        [sys.executable, "-c", "import sys, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(out_dir / ".vista3d_batch.lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, encoding="utf-8", errors="replace",
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(cli, "_engine", lambda args: _ShapeEngine())
        code, out, err = run(capsys, "batch", tmp_path / "a.nii.gz", "-o", out_dir, "--labels", "liver")
        assert code == 1
        assert f"Another vista3d batch is writing to {out_dir}" in err
        assert [p.name for p in out_dir.iterdir()] == [".vista3d_batch.lock"]
    finally:
        holder.communicate("")
    code, out, err = run(capsys, "batch", tmp_path / "a.nii.gz", "-o", out_dir, "--labels", "liver")
    assert code == 0 and (out_dir / "a.nii.gz").is_file()  # once the first batch is gone


def test_a_terminal_that_only_takes_ascii_gets_the_path_escaped_not_a_crash(tmp_path):
    """LANG=C on a server: stdout is ASCII. Printing a path with an accent ("Wrote ...", the weights' path)
    raised UnicodeEncodeError, a bug report and exit status 2, after the work was done."""
    import os
    import subprocess
    import sys

    # Bytes: under an ASCII locale (the CI's) this process cannot name the folder as text either.
    folder = os.path.join(os.fsencode(tmp_path), "Müller".encode("utf-8"))
    os.mkdir(folder)
    checkpoint = os.path.join(folder, b"model.pt")
    with open(checkpoint, "wb") as handle:
        handle.write(b"weights")
    environment = {**os.environ, "VISTA3D_WEIGHTS": checkpoint, "LC_ALL": "C", "PYTHONUTF8": "0",
                   "PYTHONCOERCECLOCALE": "0"}
    environment.pop("PYTHONIOENCODING", None)
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from VISTA3DSlicerLib.cli import main; "
         "print(sys.stdout.encoding, file=sys.stderr); raise SystemExit(main())", "weights", "path"],
        capture_output=True, env=environment)
    stderr = result.stderr.decode("ascii")
    assert stderr.splitlines()[0] in ("ascii", "ANSI_X3.4-1968"), "the child did not get an ASCII stdout"
    assert result.returncode == 0, stderr
    printed = result.stdout.decode("ascii").strip()
    assert printed.startswith(str(tmp_path / "M")) and printed.endswith("model.pt") and "\\" in printed


# ------------------------------------------------------------------------------ NV-Segment-CTMR


def test_ctmr_segments_an_mr_with_its_own_table_on_the_input_grid(capsys, tmp_path, example_mr, small_checkpoint):
    """The issue's command: body MR with NV-Segment-CTMR into a .seg.nrrd whose segments' names,
    colours and terminology are the CTMR table's (read back with slicerio), on the MR's grid."""
    import slicerio

    from VISTA3DSlicerLib.io import read_image
    from VISTA3DSlicerLib.labels import CTMR_LABELS

    output = tmp_path / "out.seg.nrrd"
    code, _, err = run(capsys, "segment", example_mr, "--model", "nv-segment-ctmr", "--modality", "mri-body",
                       "-o", output, "--weights", small_checkpoint, "--device", "cpu")
    assert code == 0, err
    assert "does not look like a CT" not in err  # MR is what this model takes
    segmentation = slicerio.read_segmentation(str(output))
    segments = segmentation["segments"]
    assert segments and {s["labelValue"] for s in segments} <= set(CTMR_LABELS.everything_for("mri-body"))
    for segment in segments:
        info = CTMR_LABELS.label_info(segment["labelValue"])
        assert segment["name"] == info.display_name
        np.testing.assert_allclose(segment["color"], np.array(info.color) / 255, atol=1e-3)
        assert tuple(segment["terminology"]["type"]) == (info.type.scheme, info.type.value, info.type.meaning)
        assert segment["terminology"]["contextName"] == CTMR_LABELS.terminology_contexts[0]
    source = read_image(example_mr)
    assert segmentation["voxels"].shape == source.shape
    np.testing.assert_allclose(segmentation["ijkToLPS"], np.diag([-1, -1, 1, 1]) @ source.affine, atol=1e-4)


def test_ctmr_infers_mr_says_so_and_writes_labels_past_255(capsys, tmp_path, example_mr, small_checkpoint):
    output = tmp_path / "brain.nii.gz"
    code, _, err = run(capsys, "segment", example_mr, "--model", "nv-segment-ctmr", "-o", output,
                       "--labels", "liver, left hippocampus, 300", "--weights", small_checkpoint)
    assert code == 0, err
    assert "segmenting it as MR of the body (choose the modality mri-brain for a brain T1" in err
    result = sitk.ReadImage(str(output))
    assert result.GetPixelID() == sitk.sitkUInt16
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1, 230, 300}
    code, _, err = run(capsys, "segment", example_mr, "--model", "nv-segment-ctmr", "--modality", "mri-brain",
                       "-o", tmp_path / "b.nii.gz", "--labels", "1", "--weights", small_checkpoint)
    assert code == 0 and "skull-stripped" in err  # what the brain model expects, said where it is chosen


def test_a_ct_model_refuses_an_mr_modality_and_names_the_model_that_takes_it(capsys, tmp_path, example_mr):
    code, _, err = run(capsys, "segment", example_mr, "--modality", "mri-body", "-o", tmp_path / "x.nii.gz",
                       "--labels", "liver")
    assert code == 1 and "VISTA3D (MONAI bundle) segments CT only" in err and "--model nv-segment-ctmr" in err


@pytest.mark.parametrize("command", [
    ["segment", "--label", "liver", "--point", "10,10,10"],
    ["zeroshot", "--point", "10,10,10"],
])
def test_clicks_on_ctmr_are_refused_before_anything_loads(capsys, tmp_path, example_mr, command):
    code, _, err = run(capsys, command[0], example_mr, "-o", tmp_path / "x.nii.gz", "--model", "nv-segment-ctmr",
                       *command[1:])
    assert code == 1 and "NV-Segment-CTMR segments automatically only" in err and "Traceback" not in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_labels_lists_a_model_s_table(capsys):
    code, out, _ = run(capsys, "labels", "--model", "nv-segment-ctmr")
    rows = out.splitlines()[1:]
    assert code == 0 and len(rows) == 345
    assert "Left-Hippocampus" in rows[229] and "everything (mri-brain)" in rows[229]
    assert "everything (ct, mri-body)" in rows[0]  # liver
    assert "zero-shot" not in out


def test_a_ctmr_batch_segments_each_case_as_its_own_modality(capsys, tmp_path, example_ct_crop, example_mr,
                                                              small_checkpoint):
    """A cohort mixing CT and MR: each case's "everything" is its modality's, said per case."""
    from VISTA3DSlicerLib.labels import CTMR_LABELS

    cases = tmp_path / "cases"
    cases.mkdir()
    nib.save(nib.load(example_ct_crop), cases / "ct.nii.gz")
    nib.save(nib.load(example_mr), cases / "mr.nii.gz")
    code, _, err = run(capsys, "batch", cases, "-o", tmp_path / "out", "--model", "nv-segment-ctmr",
                       "--weights", small_checkpoint, "--format", "seg.nrrd")
    assert code == 0, err
    assert "note: ct: The volume looks like a CT: segmenting it as CT" in err
    assert "note: mr: The volume does not look like a CT in Hounsfield units: segmenting it as MR of the body" in err
    import slicerio

    for case, modality in (("ct", "ct"), ("mr", "mri-body")):
        segments = slicerio.read_segmentation(str(tmp_path / "out" / f"{case}.seg.nrrd"))["segments"]
        assert segments and {s["labelValue"] for s in segments} <= set(CTMR_LABELS.everything_for(modality))
        assert all(s["name"] == CTMR_LABELS.label_info(s["labelValue"]).display_name for s in segments)
