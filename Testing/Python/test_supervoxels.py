"""Supervoxels from SAM features (reference doc §7) and snapping a zero-shot mask to them.

SAM's real weights cannot be downloaded here and ViT-B takes 10-20 s per slice on this CPU, so
the tests use a small SAM of the same design with random, seeded weights: the recipe (padding,
resizing, normalisation, the three views) is what is checked, not SAM's quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from VISTA3DSlicerLib import supervoxels as sv
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.geometry import Image


def recipe_features(sam, hu: np.ndarray) -> torch.Tensor:
    """The reference recipe written out one slice at a time, with MONAI's Resize as the reference uses it."""
    from monai.transforms import Resize

    pixels = np.clip((hu + 1000.0) / 2000.0, 0, 1) * 255.0
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    total = None
    for axis in (2, 1, 0):
        view = None
        for index in range(hu.shape[axis]):
            image = torch.as_tensor(np.take(pixels, index, axis=axis), dtype=torch.float32)  # [h, w]
            h, w = image.shape
            side = max(h, w)
            padded = torch.zeros(side, side)
            padded[:h, :w] = image
            big = Resize((1024, 1024), mode="bilinear")(padded[None])  # [1, 1024, 1024]
            normalised = (big.expand(3, -1, -1) - mean) / std
            with torch.no_grad():
                features = sam.mask_decoder.output_upscaling(sam.image_encoder(normalised[None]))[0]
            back = Resize((side, side), mode="bilinear")(features)[:, :h, :w]  # [C, h, w]
            if view is None:
                view = torch.zeros((back.shape[0],) + hu.shape)
            where = [slice(None)] * 4
            where[1 + axis] = index
            view[tuple(where)] = back
        total = view if total is None else total + view
    return total


def test_features_follow_the_reference_recipe(small_sam):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 1200, size=(9, 7, 5)).astype(np.float32)  # three different sides: no square
    batched = sv.volume_features(small_sam, hu, batch=4)
    expected = recipe_features(small_sam, hu)
    assert batched.shape == expected.shape == (8, 9, 7, 5)
    torch.testing.assert_close(batched, expected, rtol=1e-4, atol=1e-4)


def test_air_mask_is_the_outside_air_only():
    hu = np.full((30, 30, 10), -1000.0)
    hu[5:25, 5:25, :] = 40.0  # a body
    hu[12:16, 12:16, :] = -900.0  # air inside it (a lung, a bowel loop): not the outside air
    air = sv.air_mask(hu)
    assert air[0, 0, 0] and air[29, 29, 9]
    assert not air[14, 14, 5] and not air[10, 10, 5]


def piecewise_volume() -> tuple[np.ndarray, np.ndarray]:
    """Blocks of constant HU inside a body surrounded by air; returns (hu, region labels, 0 = air)."""
    regions = np.zeros((40, 36, 24), dtype=np.int32)
    regions[4:36, 4:32, 2:22] = 1
    regions[4:20, 4:18, 2:22] = 2
    regions[20:36, 18:32, 2:12] = 3
    regions[10:28, 10:26, 12:22] = 4
    values = {0: -1000.0, 1: 40.0, 2: 300.0, 3: -120.0, 4: 700.0}
    return np.vectorize(values.get)(regions).astype(np.float32), regions


def boundaries(labels: np.ndarray) -> np.ndarray:
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        different = np.diff(labels, axis=axis) != 0
        before = [slice(None)] * 3
        before[axis] = slice(0, -1)
        after = [slice(None)] * 3
        after[axis] = slice(1, None)
        edge[tuple(before)] |= different
        edge[tuple(after)] |= different
    return edge


def test_supervoxel_boundaries_follow_region_boundaries(small_sam):
    from scipy.ndimage import binary_dilation

    hu, regions = piecewise_volume()
    labels = sv.compute_supervoxels(small_sam, Image(hu, np.eye(4)), n_segments=60).array
    truth = boundaries(regions) & (regions > 0)
    found = binary_dilation(boundaries(labels), iterations=1)  # within one voxel, the usual tolerance
    recall = float(found[truth].mean())
    print(f"boundary recall {recall:.3f}, {labels.max()} supervoxels")
    assert recall >= 0.9
    assert np.all(labels[regions == 0] == 0) and np.all(labels[regions > 0] > 0)


def assert_connected_labels(labels: np.ndarray) -> None:
    from skimage.measure import label

    present = np.unique(labels[labels > 0])
    assert np.array_equal(present, np.arange(1, len(present) + 1))
    assert label(labels, background=0, connectivity=1).max() == len(present)  # one piece per label


def test_supervoxels_of_the_real_ct_cover_the_body(small_sam, example_ct):
    from VISTA3DSlicerLib.io import read_image

    image = read_image(example_ct)
    labels = sv.compute_supervoxels(small_sam, image).array
    air = sv.air_mask(image.array)
    assert air.any() and (~air).any()
    assert np.all(labels[~air] > 0), "a body voxel without a supervoxel"
    assert np.all(labels[air] == 0), "a supervoxel in the air"
    assert labels.max() >= 100  # about the default 400 requested, after SLIC's merging
    assert_connected_labels(labels)


def test_roi_supervoxels_stay_inside_the_roi(small_sam, example_ct):
    from VISTA3DSlicerLib.io import read_image

    image = read_image(example_ct)
    roi = sv.parse_roi("30,20,5,70,60,20", image.shape)
    labels = sv.compute_supervoxels(small_sam, image, roi, n_segments=50).array
    outside = np.ones(image.shape, dtype=bool)
    outside[roi] = False
    assert np.all(labels[outside] == 0) and labels[roi].max() > 10
    assert_connected_labels(labels)


@pytest.mark.parametrize("text", ["1,2,3", "0,0,0,200,10,10", "5,5,5,5,10,10", "a,b,c,d,e,f"])
def test_bad_roi_is_refused(text):
    with pytest.raises(VISTA3DError, match="ROI"):
        sv.parse_roi(text, (100, 100, 30))


# ------------------------------------------------------------------------------------------- memory

#: Peak host memory one slice adds through SAM ViT-B (random weights, 64x64 slices), measured as the
#: growth of max RSS over a fresh process that built the model (2 CPU threads, torch 2.13): fp32 the
#: step from a batch of 1 to 2 (2500 and 5037 MiB), bf16 the batch of 1 (1378 MiB; 2662 for 2).
MEASURED_VIT_B_SLICE_MIB = {"fp32": 2537, "bf16": 1378}


def spy_on_slice_features(monkeypatch) -> list[int]:
    """The number of slices of each call to ``slice_features`` (which still runs)."""
    batches: list[int] = []
    real = sv.slice_features

    def counting(sam, slices):
        batches.append(len(slices))
        return real(sam, slices)

    monkeypatch.setattr(sv, "slice_features", counting)
    return batches


def refuse_slice_features(sam, slices):
    raise AssertionError("SAM ran although the supervoxels were refused")


def test_a_budget_below_a_batch_of_eight_gives_smaller_batches_and_the_same_supervoxels(small_sam, monkeypatch):
    hu, _ = piecewise_volume()
    image = Image(hu[10:22, 8:20, 6:12], np.eye(4))  # 12 + 12 + 6 = 30 slices
    estimate = sv.estimate_memory(small_sam, image.shape, output_shape=image.shape)
    budget = estimate.host_bytes(3)
    assert estimate.host_bytes(1) < budget < estimate.host_bytes(sv.SLICE_BATCH)
    batches = spy_on_slice_features(monkeypatch)
    budgeted = sv.compute_supervoxels(small_sam, image, n_segments=20, memory_budget=budget).array
    assert max(batches) == 3 and sum(batches) == 30
    batches.clear()
    unbudgeted = sv.compute_supervoxels(small_sam, image, n_segments=20).array
    assert max(batches) == sv.SLICE_BATCH
    assert unbudgeted.max() > 1
    np.testing.assert_array_equal(budgeted, unbudgeted)


def test_a_budget_below_one_slice_is_refused_before_sam_runs(small_sam, monkeypatch):
    hu, _ = piecewise_volume()
    image = Image(hu[:8, :8, :8], np.eye(4))
    estimate = sv.estimate_memory(small_sam, image.shape, output_shape=image.shape)
    budget = estimate.host_bytes(1) - 1
    assert budget > estimate.clustering_bytes  # the clustering alone would fit
    monkeypatch.setattr(sv, "slice_features", refuse_slice_features)
    for compute in (
        lambda: sv.compute_supervoxels(small_sam, image, memory_budget=budget),
        lambda: sv.volume_features(small_sam, image.array, memory_budget=budget),
    ):
        with pytest.raises(VISTA3DError) as raised:
            compute()
        message = str(raised.value)
        assert message.startswith("Supervoxels of the 8x8x8 ROI (512 voxels) in fp32 need about ")
        assert f"but only {budget / 2**20:.0f} MB is free" in message
        assert "one slice at a time" in message and "bf16" in message


def test_a_budget_too_small_for_the_feature_volume_and_slic_is_refused_before_sam_runs(small_sam, monkeypatch):
    image = Image(np.full((80, 80, 80), 40.0, dtype=np.float32), np.eye(4))
    estimate = sv.estimate_memory(small_sam, image.shape, output_shape=image.shape)
    sam_phase = estimate.features_bytes + estimate.sam_bytes(1)
    budget = (sam_phase + estimate.clustering_bytes) // 2
    assert sam_phase < budget  # SAM alone would run, one slice at a time
    monkeypatch.setattr(sv, "slice_features", refuse_slice_features)
    with pytest.raises(VISTA3DError) as raised:
        sv.compute_supervoxels(small_sam, image, memory_budget=budget)
    message = str(raised.value)
    assert message.startswith("Supervoxels of the 80x80x80 ROI (512,000 voxels) in fp32 need about ")
    assert "SLIC" in message and f"but only {budget / 2**20:.0f} MB is free" in message
    assert "around the points" in message


def test_slice_estimate_for_sam_vit_b_bounds_its_measured_peak():
    with torch.device("meta"):  # the architecture without allocating its weights
        vit_b = sv.sam_model_registry()["vit_b"](checkpoint=None)
    for precision, measured_mib in MEASURED_VIT_B_SLICE_MIB.items():
        estimate_mib = sv.sam_slice_memory(vit_b, precision, slice_side=64) / 2**20
        assert measured_mib <= estimate_mib <= 1.5 * measured_mib, (precision, estimate_mib)


# ------------------------------------------------------------------------------------------ snapping


def snap_fixture():
    supervoxels = np.zeros((12, 12, 4), dtype=np.int32)
    supervoxels[0:6, 0:6] = 1
    supervoxels[6:12, 0:6] = 2
    supervoxels[0:6, 6:12] = 3
    supervoxels[6:12, 6:12] = 4
    mask = np.zeros(supervoxels.shape, dtype=bool)
    mask[0:6, 0:6] = True  # all of supervoxel 1
    mask[6:9, 0:6] = True  # half of supervoxel 2
    mask[0:1, 6:12, 0:1] = True  # a sliver of supervoxel 3
    return supervoxels, mask


def test_snap_keeps_supervoxels_covered_above_the_fraction():
    supervoxels, mask = snap_fixture()
    snapped = sv.snap(mask, supervoxels, 0.5)
    assert np.array_equal(snapped, np.isin(supervoxels, [1, 2]))
    assert np.array_equal(sv.snap(mask, supervoxels, 0.9), supervoxels == 1)


def test_positive_click_adds_exactly_the_missed_supervoxel():
    supervoxels, mask = snap_fixture()
    snapped = sv.snap(mask, supervoxels, 0.5, positive=[(9.2, 8.7, 2.0)])  # in supervoxel 4, which the mask missed
    assert np.array_equal(snapped, np.isin(supervoxels, [1, 2, 4]))


def test_negative_click_removes_exactly_its_supervoxel():
    supervoxels, mask = snap_fixture()
    snapped = sv.snap(mask, supervoxels, 0.5, negative=[(7, 2, 1)])  # in supervoxel 2
    assert np.array_equal(snapped, supervoxels == 1)


def test_snap_leaves_voxels_without_supervoxel_alone():
    supervoxels, mask = snap_fixture()
    supervoxels[:, :, 3] = 0  # outside the ROI
    mask[11, 11, 3] = True
    snapped = sv.snap(mask, supervoxels, 0.5)
    assert snapped[11, 11, 3] and np.array_equal(snapped[:, :, 3], mask[:, :, 3])


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_snap_fraction_out_of_range_is_refused(fraction):
    supervoxels, mask = snap_fixture()
    with pytest.raises(VISTA3DError, match="fraction"):
        sv.snap(mask, supervoxels, fraction)


# ------------------------------------------------------------------------------------------- SAM


def test_sam_loads_without_torchvision_and_rejects_a_foreign_checkpoint(tmp_path, small_sam):
    path = tmp_path / "not_vit_b.pth"
    torch.save(small_sam.state_dict(), path)
    with pytest.raises(VISTA3DError, match="not a SAM vit_b checkpoint"):
        sv.build_sam("vit_b", str(path))
    with pytest.raises(VISTA3DError, match="Unknown SAM model"):
        sv.build_sam("vit_x")


def test_bench_records_supervoxel_time(tmp_path, monkeypatch, small_sam):
    """`benchmarks/bench.py --supervoxels N` writes its row (here with the small SAM, on a 12³ phantom)."""
    import bench

    monkeypatch.setattr(sv, "build_sam", lambda kind, weights, device: small_sam)
    output = tmp_path / "BENCHMARKS.md"
    result = bench.run_supervoxel_benchmark(12, "vit_b", None, "cpu", "fp32", output)
    text = output.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks")  # a new file gets its header
    assert "supervoxels, fp32" in text and "12³ phantom (36 slices" in text
    assert 0 < result["features_seconds"] <= result["total_seconds"] and result["supervoxels"] > 0
    assert result["slice_batch"] == sv.SLICE_BATCH and "| slices per SAM call" in text
    assert 0 < result["host_memory_before_gib"] < result["estimated_peak_host_memory_gib"]
    assert "| estimated peak host memory" in text and "| peak host memory (max RSS) |" in text
