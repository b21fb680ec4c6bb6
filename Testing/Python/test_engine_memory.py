"""Memory limits of the automatic engine: a volume too large is refused before anything is
allocated, and a GPU out of memory falls back to the CPU instead of crashing.

There is no GPU here: a wrapped network raises CUDA's out-of-memory error on chosen calls, and
the GPU's fallback ladder is replayed with every device mapped to the CPU.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from VISTA3DSlicerLib import engine as engine_module
from VISTA3DSlicerLib.engine import Engine, Placement, memory_needed, network_grid, placements
from VISTA3DSlicerLib.model import build_network
from VISTA3DSlicerLib.errors import Cancelled, VISTA3DError
from VISTA3DSlicerLib.geometry import Image
from VISTA3DSlicerLib.io import read_image
from VISTA3DSlicerLib.preprocessing import preprocess, preprocessing_transform
from VISTA3DSlicerLib.progress import CancelToken

LABELS = [1, 3, 5, 6]
CPU = torch.device("cpu")
GIB = 2**30


class FailingNetwork(torch.nn.Module):
    """Wraps a network; the calls numbered in ``fail_on`` (1-based, one per window) raise ``error`` instead."""

    def __init__(self, network: torch.nn.Module, fail_on: set[int], error: Exception):
        super().__init__()
        self.network = network
        self.fail_on = fail_on
        self.error = error
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls in self.fail_on:
            raise self.error
        return self.network(*args, **kwargs)


def cuda_oom() -> Exception:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def gpu_ladder_on_the_cpu(device: torch.device, precision: str, batch: int) -> list[Placement]:
    """The attempts of an engine on a GPU, with the GPU replaced by the CPU (same order and messages)."""
    return [
        replace(p, network=CPU, stitching=None if p.stitching is None else CPU)
        for p in placements(torch.device("cuda"), precision, batch)
    ]


def phantom(shape=(40, 36, 30), spacing=(1.5, 1.5, 1.5)) -> Image:
    """Air with a box of soft tissue: one window at 1.5 mm."""
    array = np.full(shape, -1000, np.int16)
    array[8:-8, 8:-8, 6:-6] = 40
    return Image(array, np.diag([*spacing, 1.0]))


@pytest.fixture(scope="module")
def crop(example_ct_crop) -> Image:
    return read_image(example_ct_crop)


@pytest.fixture(scope="module")
def normal_run(crop, small_network) -> np.ndarray:
    labelmap = Engine(small_network).segment(crop, LABELS).array
    assert len(set(np.unique(labelmap)) - {0}) >= 3  # a comparison of empty labelmaps would prove nothing
    return labelmap


# --- GPU out of memory: fall back ---------------------------------------------------------------


def test_a_gpu_engine_falls_back_to_cpu_stitching_then_to_the_cpu():
    cuda = torch.device("cuda")
    assert placements(cuda, "fp16") == [
        Placement(cuda, None, "fp16"),
        Placement(cuda, CPU, "fp16", "stitched the windows on the CPU"),
        Placement(CPU, CPU, "fp32", "finished on the CPU"),  # model.autocast refuses fp16 on the CPU
    ]
    assert placements(cuda, "bf16")[-1].precision == "bf16"
    assert placements(CPU, "fp32") == [Placement(CPU, None, "fp32")]


def test_batched_windows_fall_back_to_one_at_a_time_first():
    cuda = torch.device("cuda")
    assert placements(cuda, "bf16", batch=4)[:3] == [
        Placement(cuda, None, "bf16", batch=4),
        Placement(cuda, None, "bf16", "ran the windows one at a time"),
        Placement(cuda, CPU, "bf16", "stitched the windows on the CPU"),
    ]
    assert placements(CPU, "fp32", batch=2) == [
        Placement(CPU, None, "fp32", batch=2),
        Placement(CPU, None, "fp32", "ran the windows one at a time"),
    ]


@pytest.mark.parametrize(
    "fail_on, calls, done",
    [
        ({2}, 4, "stitched the windows on the CPU"),  # the second window fails; the retry runs both again
        ({1, 3}, 5, "finished on the CPU"),  # the stitching fallback fails too, at its second window
    ],
)
def test_gpu_out_of_memory_falls_back_and_gives_the_same_labels(
    monkeypatch, caplog, crop, small_network, normal_run, fail_on, calls, done
):
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    network = FailingNetwork(small_network, fail_on, cuda_oom())
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        labelmap = Engine(network).segment(crop, LABELS)
    assert np.array_equal(labelmap.array, normal_run)
    assert network.calls == calls
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"GPU out of memory: {done}, which is slower; fewer labels or a smaller volume fit the GPU."
    ]


def test_batched_windows_out_of_memory_run_one_at_a_time_with_the_same_labels(
    monkeypatch, caplog, crop, small_network, normal_run
):
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    network = FailingNetwork(small_network, {1}, cuda_oom())
    windows = engine_module.count_windows(preprocess(crop).spatial_shape)
    assert windows == 2
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        labelmap = Engine(network, window_batch=windows).segment(crop, LABELS)
    assert np.array_equal(labelmap.array, normal_run)
    assert network.calls == 1 + windows  # the batch of both windows failed, then one window at a time
    assert "GPU out of memory: ran the windows one at a time" in caplog.text


def test_batched_windows_give_the_same_labels(crop, small_network, normal_run):
    labelmap = Engine(small_network, window_batch=2).segment(crop, LABELS)
    assert (labelmap.array == normal_run).mean() > 0.9999  # a batch may round a convolution differently


def test_a_window_batch_below_one_is_refused(small_network):
    with pytest.raises(VISTA3DError, match="The window batch must be 1 or more, not 0."):
        Engine(small_network, window_batch=0)


def test_segment_prepared_falls_back_too(monkeypatch, caplog, crop, small_network, normal_run):
    """The interactive session's entry point, with its image preprocessed once beforehand."""
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    network = FailingNetwork(small_network, {1}, cuda_oom())
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        labels = Engine(network).segment_prepared(preprocess(crop), LABELS)
    assert np.array_equal(labels, normal_run)
    assert "finished on the CPU" not in caplog.text and "stitched the windows on the CPU" in caplog.text


def test_no_warning_without_a_fallback(monkeypatch, caplog, small_network):
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    with caplog.at_level(logging.WARNING, logger=engine_module.__name__):
        Engine(small_network).segment(phantom(), [1])
    assert "out of memory" not in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        cuda_oom(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        MemoryError(),
    ],
    ids=["cuda", "torch-cpu", "numpy"],
)
def test_out_of_memory_on_the_cpu_is_a_clear_error(small_network, error):
    image = phantom()
    network = FailingNetwork(small_network, {1}, error)
    grid = network_grid(image.shape, image.affine)
    with pytest.raises(VISTA3DError) as raised:
        Engine(network).segment(image, [1, 3])
    assert str(raised.value) == (
        f"Out of memory segmenting a volume of {math.prod(grid):,} voxels ({'x'.join(map(str, grid))} at 1.5 mm) "
        "with 2 classes: segment fewer labels, crop the volume, or use a machine with more memory."
    )
    assert network.calls == 1  # the CPU has nothing to fall back to


def test_out_of_memory_at_every_fallback_is_a_clear_error(monkeypatch, small_network):
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    network = FailingNetwork(small_network, {1, 2, 3}, cuda_oom())
    with pytest.raises(VISTA3DError, match="^Out of memory segmenting .* with 1 classes: segment fewer labels"):
        Engine(network).segment(phantom(), [1])
    assert network.calls == 3


def test_other_errors_are_not_retried(monkeypatch, small_network):
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    network = FailingNetwork(small_network, {1}, RuntimeError("expected 5D input"))
    with pytest.raises(RuntimeError, match="expected 5D input"):
        Engine(network).segment(phantom(), [1])
    assert network.calls == 1


def test_a_cancelled_run_is_not_retried(monkeypatch, caplog, crop, small_network):
    monkeypatch.setattr(engine_module, "placements", gpu_ladder_on_the_cpu)
    network = FailingNetwork(small_network, set(), cuda_oom())
    token = CancelToken()

    def cancel_after_first_window(done: int, total: int, message: str) -> None:
        if done == 1 and total > 1:
            token.cancel()

    with caplog.at_level(logging.INFO, logger=engine_module.__name__), pytest.raises(Cancelled):
        Engine(network).segment(crop, [1], progress=cancel_after_first_window, cancel=token)
    assert network.calls == 1
    assert "Out of memory" not in caplog.text


# --- A volume too large for the memory: refuse before allocating ------------------------------


@pytest.mark.parametrize(
    "shape, affine",
    [
        ((70, 64, 30), np.diag([3.0, 3.0, 3.0, 1.0])),
        ((7, 9, 5), np.diag([0.8, 0.9, 2.0, 1.0])),
        ((13, 11, 6), np.diag([1.5, 1.5, 1.5, 1.0])),
        # LPS, axes stored (k, i, j), with an origin
        ((6, 12, 10), np.array([[0, -0.7, 0, 10], [0, 0, -0.7, -4], [2.5, 0, 0, 30], [0, 0, 0, 1]], float)),
        # oblique: 20 degrees about k
        ((12, 10, 8), np.array([[0.94, -0.34, 0, 0], [0.34, 0.94, 0, 0], [0, 0, 1.2, 0], [0, 0, 0, 1]]) @ np.diag([1.1, 0.9, 1, 1])),
    ],
)
def test_network_grid_is_the_preprocessing_resample(shape, affine):
    from monai.data import MetaTensor

    spacing = preprocessing_transform().transforms[0]
    image = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(affine, dtype=torch.float64))
    assert network_grid(shape, affine) == tuple(spacing({"image": image})["image"].shape[1:])


def test_memory_needed_counts_a_slab_of_the_stitched_channels_not_the_volume():
    grid = (273, 273, 410)  # a 512 x 512 x 768 CT of 0.8 mm at 1.5 mm
    source = (512, 512, 768)
    slab = 128 * 273 * 410  # the buffer: one window deep along the first axis
    needed = memory_needed(source, grid, 48)
    assert 4 * 48 * slab < needed < 4 * 48 * math.prod(grid) * 0.6
    # Each further channel costs one slab and one window, whatever the volume's depth along the first axis.
    assert memory_needed(source, grid, 49) - needed == 4 * (slab + 128**3)
    # A batch of windows that reaches into the next row of windows holds one step (96) more.
    assert memory_needed(source, grid, 48, batch=4) - needed == 4 * 48 * (96 * 273 * 410 + 3 * 128**3)


def test_everything_stitches_the_class_features_not_117_logits(small_network):
    """Host memory stops growing with the classes once they outnumber the class head's features."""
    engine = Engine(small_network)
    assert engine.windows.feature_channels == 8  # the small network's width; vista3d132's is 48
    assert [engine.stitched_channels(n) for n in (1, 5, 8, 9, 117)] == [1, 5, 8, 8, 8]
    assert Engine(build_network()).stitched_channels(117) == 48


def refuse_computing(*args, **kwargs):
    raise AssertionError("computed although the volume was refused")


@pytest.mark.parametrize("label_ids, classes", [([1, 3], 2), (None, 117)])
def test_a_volume_over_the_budget_is_refused_before_anything_is_computed(
    monkeypatch, small_network, label_ids, classes
):
    image = phantom()
    grid = network_grid(image.shape, image.affine)
    needed = memory_needed(image.shape, grid, Engine(small_network).stitched_channels(classes))
    monkeypatch.setattr(engine_module, "available_memory", lambda device: needed - 1)
    monkeypatch.setattr(engine_module, "preprocess", refuse_computing)
    network = FailingNetwork(small_network, set(), cuda_oom())
    with pytest.raises(VISTA3DError) as raised:
        Engine(network).segment(image, label_ids)
    message = str(raised.value)
    assert message.startswith(
        f"The volume is too large for the memory available: 40x36x30 voxels are {'x'.join(map(str, grid))} = "
        f"{math.prod(grid):,} voxels at 1.5 mm, and segmenting {classes} classes needs about"
    )
    assert message.endswith("Segment fewer labels, crop the volume to the region of interest, or use a machine with more memory.")
    assert network.calls == 0


def test_a_volume_within_the_budget_is_segmented(monkeypatch, small_network):
    image = phantom()
    needed = memory_needed(image.shape, network_grid(image.shape, image.affine), 2)
    monkeypatch.setattr(engine_module, "available_memory", lambda device: needed)
    labelmap = Engine(small_network).segment(image, [1, 3])
    assert labelmap.shape == image.shape


def test_segment_prepared_checks_the_budget(monkeypatch, small_network):
    prepared = preprocess(phantom())
    monkeypatch.setattr(engine_module, "available_memory", lambda device: GIB // 1000)
    network = FailingNetwork(small_network, set(), cuda_oom())
    with pytest.raises(VISTA3DError, match=f"{'x'.join(map(str, prepared.spatial_shape))} = .* voxels at 1.5 mm"):
        Engine(network).segment_prepared(prepared, [1])
    assert network.calls == 0


def test_a_huge_volume_is_refused_without_allocating_it(small_network):
    """20000³ voxels of 1 mm (a zero-stride view of one value): 9 TB of logits per class, on any machine;
    the real budget, and a float32 copy of the input alone would fail to allocate."""
    huge = Image(np.broadcast_to(np.int16(40), (20000, 20000, 20000)), np.eye(4))
    with pytest.raises(VISTA3DError, match="20000x20000x20000 voxels are 13334x13334x13334 = .* voxels at 1.5 mm"):
        Engine(small_network).segment(huge, [1])


# --- The budget -----------------------------------------------------------------------------


def test_available_memory_uses_psutil_when_installed(monkeypatch):
    fake = SimpleNamespace(virtual_memory=lambda: SimpleNamespace(available=12_345_678))
    monkeypatch.setitem(sys.modules, "psutil", fake)
    assert engine_module.available_memory(CPU) == 12_345_678


def test_available_memory_reads_proc_meminfo_without_psutil(monkeypatch):
    import os

    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo on this system")
    monkeypatch.setitem(sys.modules, "psutil", None)  # makes `import psutil` fail
    available = engine_module.available_memory(CPU)
    assert 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("host, expected", [(2 * GIB, 4 * GIB), (10 * GIB, 10 * GIB), (None, 4 * GIB)])
def test_available_memory_on_a_gpu_is_the_larger_of_gpu_and_host(monkeypatch, host, expected):
    """Free GPU memory plus what PyTorch's cache holds unused (3 + 2 - 1 GiB), or the host's if larger:
    the fallback can stitch there."""
    monkeypatch.setattr(engine_module, "host_memory_available", lambda: host)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * GIB, 8 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 1 * GIB)
    assert engine_module.available_memory(torch.device("cuda")) == expected
