"""``benchmarks/bench.py --reference``: ours against the reference pipeline, each run in a process of its own.

What is checked is that the comparison measures what it says (its labels, agreement, memory and
records), not how fast anything is: speed figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import bench
from bench import main
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.round_trips import phantom_ct


def test_phantom_has_the_shape_spacing_and_a_body_in_air():
    image = phantom_ct((40, 30, 20), 2.5)
    assert image.shape == (40, 30, 20)
    np.testing.assert_allclose(image.spacing, (2.5, 2.5, 2.5))
    assert image.array[0, 0, 0] == -1000 and image.array[20, 15, 10] > 0
    assert image.array.max() == 700  # the bone


def test_reference_comparison_on_a_phantom_records_identical_fp32_labels(tmp_path, capsys, small_checkpoint):
    markdown, records = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    code = main(["--reference", "--phantom", "60x50x40@3", "--labels", "liver,spleen",
                 "--weights", str(small_checkpoint), "--device", "cpu", "--precisions", "fp32,bf16",
                 "--output", str(markdown), "--json", str(records)])
    assert code == 0, capsys.readouterr().err
    result, bf16 = json.loads(records.read_text(encoding="utf-8"))
    assert bf16["precision"] == "bf16" and 0 < bf16["agreement"] <= 1
    assert result["precision"] == "fp32" and result["classes"] == 2
    assert result["identical"] and result["agreement"] == 1.0  # the same pipeline at fp32, voxel for voxel
    assert result["input"] == "phantom (60, 50, 40) at 3.0 mm"
    for run in (result["reference"], result["engine"]):
        assert run["seconds"] > 0 and run["peak_host_memory_gib"] > 0.1 and run["peak_gpu_memory_gib"] is None
    assert result["engine"]["windows"] == 1 and result["reference"]["windows"] is None  # one 128³ window at 1.5 mm
    text = markdown.read_text(encoding="utf-8")
    assert "ours against the reference pipeline, 2 classes" in text
    assert "fp32: labels agreeing with the reference at fp32 | 100.0000% (identical)" in text
    assert "fp32: ours, network rate (1 windows x 2.9 TFLOP" in text
    speedup = result["reference"]["seconds"] / bf16["engine"]["seconds"]
    assert f"| ours at bf16 against the reference at fp32 | {speedup:.2f}x faster |" in text


@pytest.mark.parametrize("phantom", ["333x333", "0x10x10", "axbxc", "10x10x10@-1"])
def test_a_malformed_phantom_size_is_refused(tmp_path, phantom):
    from bench import _comparison_input

    with pytest.raises(VISTA3DError, match="XxYxZ"):
        _comparison_input(None, phantom, tmp_path)


def run_for(checkpoint, tmp_path, pipeline: str = "engine"):
    from bench import PipelineRun, _comparison_input

    source, _ = _comparison_input(None, "40x30x20@3", tmp_path)
    return PipelineRun(pipeline, str(source), (1,), "fp32", "cpu", str(checkpoint), window_batch=2)


def test_a_run_out_of_memory_is_recorded_not_raised(tmp_path, monkeypatch, small_checkpoint):
    """Under ``--gpu-memory`` the bundle may run out of memory: that is a result to record."""
    from VISTA3DSlicerLib.engine import Engine

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(Engine, "segment", out_of_memory)
    labels = tmp_path / "labels.npy"
    figures = bench._measure(run_for(small_checkpoint, tmp_path), str(labels))
    assert figures["failed"] == "out of memory (MemoryError)" and not labels.exists()
    assert bench._outcome(figures).startswith("out of memory (MemoryError) after ")


def test_a_bug_in_a_run_is_raised(tmp_path, monkeypatch, small_checkpoint):
    from VISTA3DSlicerLib.engine import Engine

    def bug(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(Engine, "segment", bug)
    with pytest.raises(KeyError):
        bench._measure(run_for(small_checkpoint, tmp_path), str(tmp_path / "labels.npy"))


def test_the_engines_fallbacks_and_window_batch_are_recorded(tmp_path, monkeypatch, small_checkpoint):
    import logging

    from VISTA3DSlicerLib import engine

    segment = engine.Engine.segment

    def segment_with_a_fallback(self, *args, **kwargs):
        assert self.window_batch == 2
        engine.logger.warning("GPU out of memory: ran the windows one at a time, which is slower")
        return segment(self, *args, **kwargs)

    monkeypatch.setattr(engine.Engine, "segment", segment_with_a_fallback)
    engine.logger.setLevel(logging.WARNING)
    figures = bench._measure(run_for(small_checkpoint, tmp_path), str(tmp_path / "labels.npy"))
    assert figures["fallbacks"] == ["GPU out of memory: ran the windows one at a time, which is slower"]
    assert np.load(tmp_path / "labels.npy").shape == (40, 30, 20)


def test_a_comparison_with_a_failed_reference_says_so(tmp_path):
    from bench import _append_comparison

    run = {"seconds": 12.0, "windows": 27, "fallbacks": [], "peak_host_memory_gib": 3.0,
           "peak_gpu_memory_gib": 7.5, "peak_gpu_reserved_gib": 7.9}
    result = {"date": "2026-11-24", "machine": "a GPU", "weights": "random", "input": "phantom", "classes": 117,
              "precision": "fp16", "reference": run | {"failed": "out of memory (OutOfMemoryError)"},
              "engine": run | {"fallbacks": ["GPU out of memory: stitched the windows on the CPU"]},
              "speedup": None, "agreement": None, "identical": False, "window_batch": 2,
              "gpu_memory_limit_gib": 8.0, "runtime": "torch", "runtime_preparation_seconds": None,
              "command": "vista3d bench"}
    _append_comparison(tmp_path / "B.md", [result])
    text = (tmp_path / "B.md").read_text(encoding="utf-8")
    assert "| fp16: reference pipeline, end to end | out of memory (OutOfMemoryError) after 12.0 s |" in text
    assert "| fp16: ours, end to end | 12.0 s |" in text and "agreeing" not in text
    assert "| fp16: ours, out-of-memory fallbacks | GPU out of memory: stitched the windows on the CPU |" in text
    assert "| fp16: peak GPU memory allocated (reserved), reference / ours | 7.50 (7.90) / 7.50 (7.90) GiB |" in text
    assert "ours with 2 windows per network call; GPU memory capped at 8 GiB" in text


@pytest.mark.parametrize("option", [["--window-batch", "0"], ["--gpu-memory", "-1"]])
def test_bad_bench_settings_are_refused(tmp_path, capsys, option):
    code = main(["--reference", "--phantom", "10x10x10", "--output", str(tmp_path / "B.md"), *option])
    assert code != 0 and "--window-batch must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "B.md").exists()
