"""``vista3d batch --executor ray`` on a real local Ray cluster (two CPUs), a small network of VISTA3D's
design and a small cohort with one unreadable file, against the local batch; and the shards of
``--part-id/--num-parts``."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import pretend_not_installed
from VISTA3DSlicerLib.batch import BatchOutput, file_cases, find_inputs, shard
from VISTA3DSlicerLib.cli import main
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.io import read_image
from VISTA3DSlicerLib.labels import VISTA3D_LABELS

CROPS = [(26, 20), (30, 24), (36, 18), (40, 30)]  # corners of 50 x 50 crops of the example CT


def summary_rows(folder: Path, name: str = "vista3d_summary.csv") -> dict[str, dict]:
    with open(folder / name, newline="", encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted writes (atomic_write's hidden ``.<name>.<hex>.tmp<ext>``)."""
    return sorted(path.name for path in folder.glob(".*.tmp*"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, example_ct) -> Path:
    """Four crops of the example CT and one file that is not a volume."""
    import nibabel as nib

    folder = tmp_path_factory.mktemp("cohort")
    image = nib.load(example_ct)
    for number, (i, j) in enumerate(CROPS):
        crop = image.slicer[i:i + 50, j:j + 50, :]
        nib.save(nib.Nifti1Image(np.asanyarray(crop.dataobj).astype(np.int16), crop.affine),
                 folder / f"case{number}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not a volume")
    return folder


@pytest.fixture(scope="module")
def local_result(cohort, small_checkpoint, tmp_path_factory) -> Path:
    """The local batch's outputs: the reference."""
    out = tmp_path_factory.mktemp("local")
    assert main(["batch", str(cohort), "-o", str(out), "--labels", "liver,spleen", "--weights",
                 str(small_checkpoint), "--device", "cpu"]) == 1  # 1: a case failed
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'vista3dslicer[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def assert_same_labels(local: Path, other: Path, names) -> None:
    for name in names:
        ours, theirs = read_image(other / f"{name}.nii.gz"), read_image(local / f"{name}.nii.gz")
        assert ours.array.tobytes() == theirs.array.tobytes(), name
        np.testing.assert_array_equal(ours.affine, theirs.affine)


def test_ray_batch_writes_what_the_local_batch_writes_and_reports_the_bad_case(
        ray_cluster, cohort, local_result, small_checkpoint, tmp_path, capsys):
    out = tmp_path / "ray"
    code = main(["batch", str(cohort), "-o", str(out), "--labels", "liver,spleen", "--weights", str(small_checkpoint),
                 "--device", "cpu", "--executor", "ray", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "Ray: 2 worker(s) with 0 GPU and 1 CPU(s) each, for 5 case(s)" in err
    assert "cases/min, 1 failed" in err  # the bar
    names = [f"case{number}" for number in range(len(CROPS))]
    assert_same_labels(local_result, out, names)
    rows, local_rows = summary_rows(out), summary_rows(local_result)
    assert list(rows) == list(local_rows) == ["broken"] + names  # the cases' order, whatever finished first
    assert rows["broken"]["status"] == "failed" and rows["broken"]["message"] == local_rows["broken"]["message"]
    assert "truncated or corrupted" in rows["broken"]["message"]
    workers = {rows[name]["worker"] for name in names}
    assert len(workers) == 2 and all(":" in worker for worker in workers)  # host:pid of each worker
    assert all(float(rows[name]["seconds"]) > 0 and rows[name]["status"] == "done" for name in names)
    assert leftovers(out) == [] and not (out / "broken.nii.gz").exists()

    # Run again: every finished case is skipped (the bad one is tried again, and fails again).
    stamps = {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in names}
    assert main(["batch", str(cohort), "-o", str(out), "--labels", "liver,spleen", "--weights", str(small_checkpoint),
                 "--device", "cpu", "--executor", "ray", "--workers", "2"]) == 1
    again = summary_rows(out)
    assert [again[name]["status"] for name in names] == ["skipped"] * len(names)
    assert all("done in an earlier run" in again[name]["message"] for name in names)
    assert {again[name]["worker"] for name in names} == workers  # who made them, kept from the first run
    assert stamps == {name: (out / f"{name}.nii.gz").stat().st_mtime_ns for name in names}


def test_a_worker_killed_mid_case_loses_no_case_and_leaves_no_partial_output(
        ray_cluster, cohort, local_result, small_checkpoint, tmp_path):
    from VISTA3DSlicerLib.ray_batch import EngineRecipe, RayOptions, run_on_ray

    out = tmp_path / "killed"
    cases = file_cases(find_inputs(str(cohort)), out, read_image)
    output = BatchOutput(out, label_space=VISTA3D_LABELS)
    killed: list[str] = []
    broken_on: list[str] = []  # the workers the unreadable file was tried on

    def kill_the_first(case, worker: str) -> None:
        if case.name == "broken":
            broken_on.append(worker)
        elif not killed:
            killed.append(case.name)
            out.mkdir(exist_ok=True)
            # What a worker killed while writing leaves: the hidden temporary file of its write.
            (out / f".{case.name}.nii.gz.0badcafe.tmp.nii.gz").write_bytes(b"half a labelmap")
            ray_cluster.kill(ray_cluster.get_actor(worker))

    recipe = EngineRecipe("vista3d", str(small_checkpoint), "cpu", labels="liver,spleen")
    report = run_on_ray(cases, recipe, output, RayOptions(workers=2), on_start=kill_the_first, say=lambda text: None)
    names = [f"case{number}" for number in range(len(CROPS))]
    assert killed and killed[0] in names
    assert len(broken_on) == 2 and broken_on[0] != broken_on[1]  # tried once more, on another worker
    assert {result.name: result.status for result in report.results} == {"broken": "failed", **dict.fromkeys(names, "done")}
    assert leftovers(out) == []
    assert_same_labels(local_result, out, names)


def test_ctrl_c_stops_the_workers_and_keeps_the_finished_cases(ray_cluster, cohort, small_checkpoint, tmp_path):
    from VISTA3DSlicerLib.ray_batch import EngineRecipe, RayOptions, run_on_ray

    out = tmp_path / "interrupted"
    cases = file_cases(find_inputs(str(cohort)), out, read_image)
    workers: list[str] = []

    interrupted: list[str] = []

    def interrupt_after_the_first(result) -> None:  # Ctrl-C as the first case is recorded
        if result.status == "done" and not interrupted:
            interrupted.append(result.name)
            raise KeyboardInterrupt

    recipe = EngineRecipe("vista3d", str(small_checkpoint), "cpu", labels="liver,spleen")
    with pytest.raises(KeyboardInterrupt):
        run_on_ray(cases, recipe, BatchOutput(out, label_space=VISTA3D_LABELS), RayOptions(workers=2),
                   on_result=interrupt_after_the_first, on_start=lambda case, worker: workers.append(worker),
                   say=lambda text: None)
    rows = summary_rows(out)
    done = {name for name, row in rows.items() if row["status"] == "done"}
    assert set(rows) == {case.name for case in cases} and done and len(done) < len(CROPS)  # stopped early
    assert all(row["status"] == "not run" and row["message"] == "cancelled" for name, row in rows.items()
               if name not in done)
    # What is there is whole and listed as done (the other worker may have finished its case as it stopped).
    assert {path.name for path in out.glob("*.nii.gz")} == {f"{name}.nii.gz" for name in done}
    assert leftovers(out) == []
    for worker in set(workers):  # stopped: their names are free again
        with pytest.raises(ValueError):
            ray_cluster.get_actor(worker)


def test_a_model_that_cannot_load_stops_the_ray_batch_with_its_reason(ray_cluster, cohort, tmp_path, capsys):
    out = tmp_path / "no-model"
    missing = tmp_path / "missing.pt"
    code = main(["batch", str(cohort), "-o", str(out), "--labels", "liver", "--weights", str(missing),
                 "--device", "cpu", "--executor", "ray", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "The model could not be loaded on the Ray workers" in err and str(missing) in err
    assert "Traceback" not in err and not list(out.glob("*.nii.gz"))


@pytest.mark.parametrize("options, says", [
    ({"workers": 0}, "--workers must be 1 or more"),
    ({"gpus_per_worker": 1}, "Each worker asks for 1 GPU(s) and the Ray cluster has 0: pass --gpus-per-worker 0"),
])
def test_worker_counts_the_cluster_cannot_give_are_refused(ray_cluster, cohort, small_checkpoint, tmp_path, options,
                                                           says):
    from VISTA3DSlicerLib.ray_batch import EngineRecipe, RayOptions, run_on_ray

    out = tmp_path / "refused"
    cases = file_cases(find_inputs(str(cohort)), out, read_image)
    with pytest.raises(VISTA3DError, match=re.escape(says)):
        run_on_ray(cases, EngineRecipe("vista3d", str(small_checkpoint), "cpu"), BatchOutput(out),
                   RayOptions(**options), say=lambda text: None)
    assert not list(out.glob("*.nii.gz"))


def test_shards_are_disjoint_and_cover_the_sorted_inputs():
    cases = [f"case{number:03d}" for number in range(23)]
    for parts in (1, 2, 3, 7, 30):
        shards = [shard(cases, part, parts) for part in range(parts)]
        assert sorted(sum(shards, [])) == cases  # every case once
        assert all(len(one) in (len(cases) // parts, -(-len(cases) // parts)) for one in shards)  # balanced
    for part, parts in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(VISTA3DError, match="--part-id .* --num-parts"):
            shard(cases, part, parts)


def test_parts_of_a_cohort_write_what_one_batch_writes(cohort, tmp_path, capsys, monkeypatch):
    """Two jobs of an array on one output folder: disjoint outputs, a summary each, together the whole."""
    from VISTA3DSlicerLib import cli

    class ShapeEngine:  # fast: the parts' bookkeeping is what is tested here
        def segment(self, image, label_ids, progress=None, cancel=None):
            return image.with_array(np.ones(image.shape, dtype=np.uint8))

    monkeypatch.setattr(cli, "_engine", lambda args: ShapeEngine())
    out = tmp_path / "parts"
    done: list[set] = []
    for part in (0, 1):
        main(["batch", str(cohort), "-o", str(out), "--labels", "liver", "--part-id", str(part), "--num-parts", "2"])
        rows = summary_rows(out, f"vista3d_summary_part-{part}-of-2.csv")
        done.append(set(rows))
    assert done[0].isdisjoint(done[1]) and done[0] | done[1] == {"broken", "case0", "case1", "case2", "case3"}
    assert {path.name for path in out.glob("*.nii.gz")} == {f"case{number}.nii.gz" for number in range(4)}
    assert main(["batch", str(cohort), "-o", str(out), "--part-id", "1"]) == 1
    assert "--part-id and --num-parts go together" in capsys.readouterr().err


def test_without_ray_the_executor_says_how_to_install_it(cohort, tmp_path, capsys, monkeypatch):
    pretend_not_installed(monkeypatch, "ray")
    assert main(["batch", str(cohort), "-o", str(tmp_path / "out"), "--executor", "ray"]) == 1
    err = capsys.readouterr().err
    assert "ray>=2.9 (not installed)" in err and "pip install 'vista3dslicer[ray]'" in err
