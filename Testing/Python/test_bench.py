"""``vista3d bench --reference``: ours against the reference pipeline, each run in a process of its own.

What is checked is that the comparison measures what it says (its labels, agreement, memory and
records), not how fast anything is: speed figures live in BENCHMARKS.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from VISTA3DSlicerLib.bench import phantom_ct
from VISTA3DSlicerLib.cli import main
from VISTA3DSlicerLib.errors import VISTA3DError


def test_phantom_has_the_shape_spacing_and_a_body_in_air():
    image = phantom_ct((40, 30, 20), 2.5)
    assert image.shape == (40, 30, 20)
    np.testing.assert_allclose(image.spacing, (2.5, 2.5, 2.5))
    assert image.array[0, 0, 0] == -1000 and image.array[20, 15, 10] > 0
    assert image.array.max() == 700  # the bone


def test_reference_comparison_on_a_phantom_records_identical_fp32_labels(tmp_path, capsys, small_checkpoint):
    markdown, records = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    code = main(["bench", "--reference", "--phantom", "60x50x40@3", "--labels", "liver,spleen",
                 "--weights", str(small_checkpoint), "--device", "cpu", "--precisions", "fp32,bf16",
                 "--output", str(markdown), "--json", str(records)])
    assert code == 0, capsys.readouterr().err
    result, bf16 = json.loads(records.read_text())
    assert bf16["precision"] == "bf16" and 0 < bf16["agreement"] <= 1
    assert result["precision"] == "fp32" and result["classes"] == 2
    assert result["identical"] and result["agreement"] == 1.0  # the same pipeline at fp32, voxel for voxel
    assert result["input"] == "phantom (60, 50, 40) at 3.0 mm"
    for run in (result["reference"], result["engine"]):
        assert run["seconds"] > 0 and run["peak_host_memory_gib"] > 0.1 and run["peak_gpu_memory_gib"] is None
    assert result["engine"]["windows"] == 1 and result["reference"]["windows"] is None  # one 128³ window at 1.5 mm
    text = markdown.read_text()
    assert "ours against the reference pipeline, 2 classes" in text
    assert "fp32: labels agreeing with the reference at fp32 | 100.0000% (identical)" in text
    assert "fp32: ours, network rate (1 windows x 2.9 TFLOP" in text
    speedup = result["reference"]["seconds"] / bf16["engine"]["seconds"]
    assert f"| ours at bf16 against the reference at fp32 | {speedup:.2f}x faster |" in text


@pytest.mark.parametrize("phantom", ["333x333", "0x10x10", "axbxc", "10x10x10@-1"])
def test_a_malformed_phantom_size_is_refused(tmp_path, phantom):
    from VISTA3DSlicerLib.bench import _comparison_input

    with pytest.raises(VISTA3DError, match="XxYxZ"):
        _comparison_input(None, phantom, tmp_path)
