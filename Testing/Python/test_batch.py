"""The batch queue: every item gets a result, failures do not stop it, cancelling does."""

from __future__ import annotations

import logging

import pytest

from VISTA3DSlicerLib.batch import BatchReport, BatchResult, run_batch
from VISTA3DSlicerLib.errors import Cancelled, VISTA3DError
from VISTA3DSlicerLib.progress import CancelToken


def statuses(report: BatchReport) -> dict[str, str]:
    return {result.name: result.status for result in report.results}


def test_items_run_in_order_and_failures_do_not_stop_the_batch(caplog):
    processed = []

    def process(item, progress, cancel):
        processed.append(item)
        if item == "unreadable":
            raise VISTA3DError("Cannot read unreadable.nii.gz: not an image.")
        if item == "buggy":
            raise IndexError("index 3 is out of bounds")
        return "3 structures" if item == "a" else None

    with caplog.at_level(logging.DEBUG, logger="VISTA3DSlicerLib.batch"):
        report = run_batch(["a", "unreadable", "buggy", "b"], process, name=str)

    assert processed == ["a", "unreadable", "buggy", "b"]
    assert [(r.name, r.status, r.message) for r in report.results] == [
        ("a", "done", "3 structures"),
        ("unreadable", "failed", "Cannot read unreadable.nii.gz: not an image."),
        ("buggy", "failed", "IndexError: index 3 is out of bounds"),
        ("b", "done", ""),
    ]
    assert all(r.seconds >= 0 for r in report.results)
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and logged[0].exc_info[0] is IndexError  # the bug keeps its traceback
    assert not report.cancelled


def test_should_skip_skips_without_processing():
    processed = []
    report = run_batch(
        ["a", "b"], lambda item, progress, cancel: processed.append(item), name=str,
        should_skip=lambda item: "output exists" if item == "a" else None,
    )
    assert processed == ["b"]
    assert report.results[0] == BatchResult("a", "skipped", "output exists", report.results[0].seconds)
    assert statuses(report) == {"a": "skipped", "b": "done"}


def test_cancelled_stops_the_batch_and_the_rest_are_not_run():
    processed = []

    def process(item, progress, cancel):
        processed.append(item)
        if item == "b":
            raise Cancelled()

    token = CancelToken()
    report = run_batch(["a", "b", "c", "d"], process, name=str, cancel=token)
    assert processed == ["a", "b"]
    assert statuses(report) == {"a": "done", "b": "not run", "c": "not run", "d": "not run"}
    assert report.cancelled and token.cancelled


def test_the_token_set_during_an_item_stops_after_it():
    processed = []

    def process(item, progress, cancel):
        processed.append(item)
        if item == "a":
            token.cancel()  # the user pressed Cancel while "a" was finishing: "a" is written

    token = CancelToken()
    report = run_batch(["a", "b"], process, name=str, cancel=token)
    assert processed == ["a"]
    assert statuses(report) == {"a": "done", "b": "not run"}


def test_progress_is_forwarded_with_position_and_name():
    seen, results = [], []

    def process(item, progress, cancel):
        progress(1, 2, "window 1 of 2")
        progress(2, 2, "")

    run_batch(
        [{"id": "case_a"}, {"id": "case_b"}], process, name=lambda item: item["id"],
        on_result=results.append, progress=lambda *step: seen.append(step),
    )
    assert seen == [
        (0, 0, "[1/2] case_a"), (1, 2, "[1/2] case_a: window 1 of 2"), (2, 2, "[1/2] case_a"),
        (0, 0, "[2/2] case_b"), (1, 2, "[2/2] case_b: window 1 of 2"), (2, 2, "[2/2] case_b"),
    ]
    assert [r.name for r in results] == ["case_a", "case_b"]


def test_the_batch_token_reaches_process():
    token, received = CancelToken(), []
    run_batch(["a"], lambda item, progress, cancel: received.append(cancel), name=str, cancel=token)
    assert received == [token]


@pytest.mark.parametrize(
    "results, summary",
    [
        ([], "nothing to do"),
        (
            [BatchResult("a", "done"), BatchResult("b", "done"), BatchResult("c", "done"),
             BatchResult("case_b", "failed", "Cannot read it."), BatchResult("e", "not run", "cancelled")],
            "3 done, 1 failed (case_b: Cannot read it.), 1 not run (cancelled)",
        ),
        (
            [BatchResult("a", "skipped", "output exists"), BatchResult("b", "failed", "x"),
             BatchResult("c", "failed", "y")],
            "1 skipped, 2 failed (b: x; c: y)",
        ),
    ],
)
def test_summary(results, summary):
    assert BatchReport(results).summary() == summary


# ---------------------------------------------------------------- the workflow: cases into a folder


def _labelled(image):
    """A labelmap that shows which input it came from: every voxel 1, the input's shape."""
    import numpy as np

    return image.with_array(np.ones(image.shape, dtype=np.uint8))


def _cases(names, shapes=None):
    import numpy as np

    from VISTA3DSlicerLib.batch import volume_cases
    from VISTA3DSlicerLib.geometry import Image

    shapes = shapes or {name: (4, 5, 6) for name in names}
    return volume_cases(names, [lambda name=name: Image(np.zeros(shapes[name], np.int16), np.eye(4))
                                for name in names])


def _summary(folder):
    import csv

    from VISTA3DSlicerLib.batch import SUMMARY_NAME

    with open(folder / SUMMARY_NAME, newline="", encoding="utf-8") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_volume_cases_are_named_for_files_and_never_share_an_output():
    cases = _cases(["CT", "ct", "a/b: c?", "..", "liver"])
    assert [case.name for case in cases] == ["CT_1", "ct_2", "a_b_ c_", "volume", "liver"]
    assert [case.source for case in cases] == ["CT", "ct", "a/b: c?", "..", "liver"]


def test_cases_into_a_folder_write_labelmaps_and_a_summary_and_a_rerun_skips_them(tmp_path):
    import nibabel as nib

    from VISTA3DSlicerLib.batch import segment_cases

    seen = []
    cases = _cases(["a", "b"], {"a": (4, 5, 6), "b": (7, 5, 6)})
    report = segment_cases(cases, lambda case, image, progress, cancel: _labelled(image), out_dir=tmp_path,
                           on_labelmap=lambda case, labelmap: seen.append((case.name, labelmap.shape)))
    assert statuses(report) == {"a": "done", "b": "done"}
    assert seen == [("a", (4, 5, 6)), ("b", (7, 5, 6))]
    assert nib.load(tmp_path / "a.nii.gz").shape == (4, 5, 6) and nib.load(tmp_path / "b.nii.gz").shape == (7, 5, 6)
    assert {case: row["status"] for case, row in _summary(tmp_path).items()} == {"a": "done", "b": "done"}

    (tmp_path / "b.nii.gz").unlink()  # a batch killed before b: run again, it finishes b only
    again = segment_cases(cases, lambda case, image, progress, cancel: _labelled(image), out_dir=tmp_path)
    assert statuses(again) == {"a": "skipped", "b": "done"}
    rows = _summary(tmp_path)
    assert rows["a"]["status"] == "skipped" and "done in an earlier run" in rows["a"]["message"]


def test_a_model_that_does_not_load_stops_the_batch_once_and_the_summary_keeps_what_was_done(tmp_path):
    from VISTA3DSlicerLib.batch import StopBatch, segment_cases

    calls = []

    def segment(case, image, progress, cancel):
        calls.append(case.name)
        if case.name == "b":
            raise StopBatch() from VISTA3DError("The checkpoint is damaged: download it again.")
        return _labelled(image)

    with pytest.raises(VISTA3DError, match="checkpoint is damaged"):
        segment_cases(_cases(["a", "b", "c"]), segment, out_dir=tmp_path)
    assert calls == ["a", "b"]  # not tried again for c
    assert {case: row["status"] for case, row in _summary(tmp_path).items()} == {"a": "done"}


def test_without_a_folder_nothing_is_written_and_nothing_is_skipped(tmp_path, monkeypatch):
    from VISTA3DSlicerLib.batch import segment_cases

    monkeypatch.chdir(tmp_path)
    seen = []
    report = segment_cases(_cases(["a"]), lambda case, image, progress, cancel: _labelled(image),
                           on_labelmap=lambda case, labelmap: seen.append(case.name))
    assert statuses(report) == {"a": "done"} and seen == ["a"] and list(tmp_path.iterdir()) == []


def test_an_unknown_output_format_is_refused_before_anything_runs(tmp_path):
    from VISTA3DSlicerLib.batch import segment_cases

    with pytest.raises(VISTA3DError, match="choose one of nii.gz, nrrd, seg.nrrd, mha"):
        segment_cases(_cases(["a"]), lambda *args: pytest.fail("ran"), out_dir=tmp_path, output_format="png")
    assert list(tmp_path.iterdir()) == []
