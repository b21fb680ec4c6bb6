"""``vista3d batch`` killed mid-run: it resumes where it stopped, redoes no finished case and
leaves no corrupt output (each file is written under a hidden temporary name, then renamed)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from VISTA3DSlicerLib import cli
from VISTA3DSlicerLib.batch import SUMMARY_NAME

REPO = Path(__file__).resolve().parents[2]
CASES = ("case_a", "case_b", "case_c")
#: A guard against a hung batch, not a timing check: a case takes seconds.
DEADLINE_S = 600


@pytest.fixture
def cases(tmp_path, example_ct_crop) -> Path:
    """Three copies of a corner of the example crop: one 128³ window each, so seconds a case on a CPU."""
    image = nib.load(example_ct_crop)
    corner = image.slicer[:40, 24:64, 5:25]
    folder = tmp_path / "cases"
    folder.mkdir()
    for name in CASES:
        nib.save(nib.Nifti1Image(np.asanyarray(corner.dataobj), corner.affine), folder / f"{name}.nii.gz")
    return folder


def environment(tmp_path: Path) -> dict:
    """The test's environment for the subprocess: the package importable from the checkout, no real cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "VISTA3DSlicer"), env.get("PYTHONPATH")]))
    env["VISTA3D_HOME"] = str(tmp_path / "cache")
    env.pop("VISTA3D_WEIGHTS", None)
    return env


def visible_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def labelmaps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.nii.gz") if not p.name.startswith("."))


def summary(folder: Path) -> dict[str, dict]:
    with open(folder / SUMMARY_NAME, newline="", encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def assert_complete(folder: Path, shape: tuple) -> None:
    """Every labelmap and preview in ``folder`` is whole, and nothing else but the summary is visible."""
    names = visible_files(folder)
    expected = {f"{c}.nii.gz" for c in CASES} | {f"{c}_preview.png" for c in CASES} | {SUMMARY_NAME}
    assert names <= expected, f"partial or stray files: {names - expected}"
    for path in labelmaps(folder):
        labels = nib.load(path)
        assert labels.shape == shape and labels.get_data_dtype() == np.uint8
        np.asanyarray(labels.dataobj)  # reads (and gunzips) every voxel: a cut file fails here
    for path in folder.glob("[!.]*_preview.png"):
        with PILImage.open(path) as preview:
            preview.load()


def test_a_killed_batch_resumes_without_redoing_finished_cases(tmp_path, cases, small_checkpoint):
    out_dir = tmp_path / "out"
    command = [
        sys.executable, "-m", "VISTA3DSlicerLib.cli", "batch", str(cases), "-o", str(out_dir),
        "--labels", "liver", "--weights", str(small_checkpoint), "--device", "cpu", "--preview",
    ]
    env = environment(tmp_path)
    shape = nib.load(cases / f"{CASES[0]}.nii.gz").shape

    # Kill it once two cases are finished: the first one's summary row is then surely written,
    # and the third case is under way.
    log_path = tmp_path / "killed_run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + DEADLINE_S
        while process.poll() is None and time.monotonic() < deadline:
            if out_dir.is_dir() and len(labelmaps(out_dir)) >= 2:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"the batch was not killed mid-run:\n{log_path.read_text(encoding='utf-8')}"

    finished = {path.name: path.stat().st_mtime_ns for path in labelmaps(out_dir)}
    assert 2 <= len(finished) < len(CASES)
    assert_complete(out_dir, shape)
    previews = {f"{name.removesuffix('.nii.gz')}_preview.png" for name in finished}
    preview_times = {name: (out_dir / name).stat().st_mtime_ns for name in previews}
    # What finished is in the summary already: all of it but, at most, the case finished just before the kill.
    killed_summary = summary(out_dir)
    assert {row["status"] for row in killed_summary.values()} == {"done"}
    assert {f"{case}.nii.gz" for case in killed_summary} <= set(finished)
    assert len(killed_summary) >= len(finished) - 1
    # A file of an unfinished case (e.g. a preview written before the kill cut its labelmap) is replaced.
    unfinished = [case for case in CASES if f"{case}.nii.gz" not in finished]
    (out_dir / f"{unfinished[0]}_preview.png").write_bytes(b"left by the killed run")

    resumed = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=DEADLINE_S)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(unfinished)} done, {len(finished)} skipped, 0 failed" in resumed.stdout
    assert {name: (out_dir / name).stat().st_mtime_ns for name in finished} == finished  # not redone
    assert {name: (out_dir / name).stat().st_mtime_ns for name in previews} == preview_times
    assert_complete(out_dir, shape)
    assert visible_files(out_dir) >= {f"{c}.nii.gz" for c in CASES} | {f"{c}_preview.png" for c in CASES}
    rows = summary(out_dir)
    assert {case: row["status"] for case, row in rows.items()} == {
        case: "skipped" if f"{case}.nii.gz" in finished else "done" for case in CASES
    }
    # A skipped case keeps what the killed run's summary said of it: when it was done, and in how long.
    for case, row in killed_summary.items():
        assert f"done in an earlier run in {row['seconds']} s" in rows[case]["message"]

    # Once more (no model is loaded: every case is skipped): the notes carry over, from either run.
    again = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=DEADLINE_S)
    assert again.returncode == 0 and f"0 done, {len(CASES)} skipped, 0 failed" in again.stdout, again.stderr
    last = summary(out_dir)
    for case, row in rows.items():
        expected = row["message"] if row["status"] == "skipped" else f"done in an earlier run in {row['seconds']} s"
        assert last[case]["status"] == "skipped" and expected in last[case]["message"]


class _AnotherBatchFinishesTheCase:
    """An engine whose segmentation takes long enough for another batch, on the same output folder,
    to write this case's labelmap."""

    def __init__(self, labelmap: Path):
        self.labelmap = labelmap

    def segment(self, image, label_ids, progress=None, cancel=None):
        self.labelmap.write_bytes(b"the other batch's labelmap")
        return image.with_array(np.zeros(image.shape, dtype=np.uint8))


def test_preview_of_a_case_finished_meanwhile_is_not_replaced(capsys, tmp_path, cases, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    labelmap, preview = out_dir / "case_a.nii.gz", out_dir / "case_a_preview.png"
    preview.write_bytes(b"the other batch's preview")
    monkeypatch.setattr(cli, "_engine", lambda args: _AnotherBatchFinishesTheCase(labelmap))

    code = cli.main(["batch", str(cases / "case_a.nii.gz"), "-o", str(out_dir), "--labels", "liver", "--preview"])
    assert code == 1, capsys.readouterr().err
    assert preview.read_bytes() == b"the other batch's preview"
    assert labelmap.read_bytes() == b"the other batch's labelmap"
    row = summary(out_dir)["case_a"]
    assert row["status"] == "failed" and "--overwrite" in row["message"]
