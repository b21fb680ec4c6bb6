"""Clicks: the session against the bundle's point pipeline, the cache, undo/redo and coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_pipeline import run_reference

from VISTA3DSlicerLib.engine import Engine
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.feature_cache import FeatureCache
from VISTA3DSlicerLib.geometry import Image
from VISTA3DSlicerLib.interactive import Session, changed_box
from VISTA3DSlicerLib.point_windows import window_start
from VISTA3DSlicerLib.io import read_image
from VISTA3DSlicerLib.model import build_network

AGREEMENT = 0.999

#: (name, label, clicks as (i, j, k, positive)). On the example CT the network grid is (2i, 2j, 2k)
#: (243 x 199 x 59 at 1.5 mm), so these clicks open windows at different places; one pair shares a
#: window, and the special class (26, hepatic tumor) gets click labels 3 / 2.
PROMPT_KINDS = [
    ("points-only", None, [(60, 50, 15, True), (30, 40, 12, False), (20, 30, 12, True)]),
    ("class+clicks", 6, [(60, 50, 15, True), (20, 30, 12, False)]),
    ("zero-shot", 140, [(60, 50, 15, True), (95, 60, 20, True)]),
    ("special-class", 26, [(60, 50, 15, True), (30, 45, 10, False)]),
]


def compare_with_reference(path, network, label, clicks) -> tuple[float, int]:
    """Agreement inside the reference's windows, and the number of structure voxels there."""
    image = read_image(path)
    session = Session(Engine(network), image)
    structure = session.structure(label, mask=np.zeros(image.shape, dtype=bool))
    for i, j, k, positive in clicks:
        structure.click((i, j, k), positive)
    computed, inside = session.compute(label, structure.clicks, structure.initial_mask)
    reference = run_reference(
        path, network, None if label is None else [label], [c[:3] for c in clicks], [int(c[3]) for c in clicks]
    )
    in_windows = reference != 255
    # The reference writes 0 (not 255) outside the foreground crop, which no window reaches:
    # our engine leaves those voxels as they were, and says so by not marking them computed.
    assert not np.any(computed & ~in_windows)
    assert np.all(reference[in_windows & ~computed] == 0)
    value = 1 if label is None else label
    assert set(np.unique(reference)) <= {0, value, 255}
    agreement = float((structure.mask[in_windows] == (reference[in_windows] == value)).mean())
    assert np.array_equal(structure.mask, inside)  # the empty structure only gained what was computed
    return agreement, int((reference == value).sum())


@pytest.mark.parametrize("name,label,clicks", PROMPT_KINDS, ids=[k[0] for k in PROMPT_KINDS])
def test_matches_reference_point_pipeline(example_ct, small_network, name, label, clicks):
    agreement, voxels = compare_with_reference(example_ct, small_network, label, clicks)
    assert voxels > 1000, "the structure must not be empty, or the comparison proves nothing"
    assert agreement >= AGREEMENT


@pytest.mark.slow
def test_full_size_network_matches_reference_for_every_prompt_kind(example_ct):
    """vista3d132 (random, seeded): one positive and one negative click sharing one window, each kind."""
    torch.manual_seed(0)
    network = build_network().eval()
    for label in (None, 6, 140, 26):
        clicks = [(20, 30, 12, True), (25, 20, 14, False)]
        agreement, voxels = compare_with_reference(example_ct, network, label, clicks)
        print(f"label {label}: agreement {agreement:.6f}, {voxels} voxels")
        assert voxels > 1000
        assert agreement >= AGREEMENT


# ------------------------------------------------------------------------------------------ windows


def test_window_start_is_the_reference_rule():
    from monai.apps.vista3d.inferer import _get_window_idx_c

    for size in (128, 129, 243, 400):
        for point in np.linspace(-0.5, size - 0.5, 97):
            assert window_start(point, size) == _get_window_idx_c(point, 128, size)[0]


def test_changed_box():
    before = np.zeros((10, 12, 14), dtype=bool)
    after = before.copy()
    assert changed_box(before, after) is None
    after[2, 3, 4] = True
    after[5, 9, 6] = True
    assert changed_box(before, after) == (slice(2, 6), slice(3, 10), slice(4, 7))


# --------------------------------------------------------------------------------------- a session


@pytest.fixture(scope="module")
def crop_session(example_ct_crop, small_network):
    """A session on the abdomen crop (network grid 140 x 128 x 59: windows overlap along one axis)."""
    return Session(Engine(small_network), read_image(example_ct_crop))


def test_outputs_identical_without_cache(example_ct_crop, small_network):
    image = read_image(example_ct_crop)
    cached = Session(Engine(small_network), image)
    uncached = Session(Engine(small_network), image, cache_budget_bytes=0)
    # Two windows on the crop's network grid (x = 2i: windows start at 6, then at 0 for the last two).
    clicks = [((35, 30, 15), True), ((10, 20, 12), False), ((12, 25, 14), True)]
    a = cached.structure(6, mask=np.zeros(image.shape, bool))
    b = uncached.structure(6, mask=np.zeros(image.shape, bool))
    for point, positive in clicks:
        edit_a, edit_b = a.click(point, positive), b.click(point, positive)
        assert np.array_equal(edit_a.mask, edit_b.mask)
        assert edit_a.changed == edit_b.changed
    assert edit_a.mask.any()
    assert cached.point_windows.cache.hits > 0 and len(uncached.point_windows.cache) == 0


def test_undo_redo_restore_exact_masks(crop_session):
    start = np.zeros(crop_session.image.shape, dtype=bool)
    start[5:15, 5:15, 5:10] = True  # something the user drew, far from the clicks
    structure = crop_session.structure(None, mask=start)
    masks = [structure.mask.copy()]
    for point, positive in [((35, 30, 15), True), ((40, 35, 15), False), ((50, 30, 18), True)]:
        edit = structure.click(point, positive)
        masks.append(edit.mask)
    assert not np.array_equal(masks[1], masks[0])
    for expected in reversed(masks[:-1]):
        assert np.array_equal(structure.undo().mask, expected)
    with pytest.raises(VISTA3DError, match="no click to undo"):
        structure.undo()
    for expected in masks[1:]:
        assert np.array_equal(structure.redo().mask, expected)
    assert len(structure.clicks) == 3


def test_moving_or_removing_a_click_equals_placing_the_final_clicks(crop_session):
    """A Markups point moved or deleted in Slicer: the mask is the one its final points give."""
    from VISTA3DSlicerLib.interactive import Click

    start = np.zeros(crop_session.image.shape, dtype=bool)
    start[5:15, 5:15, 5:10] = True
    first, second, moved = Click((35, 30, 15)), Click((40, 35, 15), False), Click((50, 30, 18))

    edited = crop_session.structure(None, mask=start)
    edited.set_clicks([first, second])
    moved_edit = edited.set_clicks([first, moved])  # the negative point dragged elsewhere, now positive
    direct = crop_session.structure(None, mask=start).set_clicks([first, moved])
    assert np.array_equal(moved_edit.mask, direct.mask)
    assert edited.clicks == [first, moved]

    removed_edit = edited.set_clicks([moved])  # the first point deleted
    assert np.array_equal(removed_edit.mask, crop_session.structure(None, mask=start).set_clicks([moved]).mask)

    cleared = edited.set_clicks([])
    assert np.array_equal(cleared.mask, start) and edited.clicks == []
    assert np.array_equal(edited.undo().mask, removed_edit.mask) and edited.clicks == [moved]


def test_duplicate_conflicting_and_negative_only_clicks(crop_session):
    from VISTA3DSlicerLib.interactive import Click

    empty = np.zeros(crop_session.image.shape, dtype=bool)
    once = crop_session.structure(None, mask=empty).set_clicks([Click((35, 30, 15))]).mask
    twice = crop_session.structure(None, mask=empty)
    assert np.array_equal(twice.set_clicks([Click((35, 30, 15)), Click((35, 30, 15))]).mask, once)
    assert twice.clicks == [Click((35, 30, 15))]

    with pytest.raises(VISTA3DError, match="both a positive and a negative"):
        twice.set_clicks([Click((35, 30, 15)), Click((35.2, 30, 14.9), positive=False)])
    with pytest.raises(VISTA3DError, match="only negative clicks"):
        crop_session.structure(None, mask=empty).set_clicks([Click((35, 30, 15), positive=False)])
    with pytest.raises(VISTA3DError, match="only negative clicks"):
        crop_session.structure(140, mask=empty).set_clicks([Click((35, 30, 15), positive=False)])
    assert twice.clicks == [Click((35, 30, 15))]  # the refusals changed nothing

    drawn = empty.copy()
    drawn[30:40, 25:35, 12:18] = True  # a negative click may carve a drawn structure
    crop_session.structure(None, mask=drawn).set_clicks([Click((35, 30, 15), positive=False)])


def test_edit_reports_the_changed_box(crop_session):
    structure = crop_session.structure(None, mask=np.zeros(crop_session.image.shape, bool))
    before = structure.mask.copy()
    edit = structure.click((35, 30, 15))
    assert edit.changed is not None
    outside = np.ones_like(before)
    outside[edit.changed] = False
    assert np.array_equal(edit.mask[outside], before[outside])
    assert edit.mask[edit.changed].any()


def test_existing_mask_outside_the_windows_is_kept(crop_session):
    """The reference writes 255 outside its windows; a click must not touch what the user had there."""
    shape = crop_session.image.shape
    drawn = np.zeros(shape, dtype=bool)
    drawn[:, :, 0:2] = True  # slabs the user drew
    structure = crop_session.structure(6, mask=drawn)
    computed, _ = crop_session.compute(6, [structure_click(crop_session, (35, 30, 15))], drawn)
    edit = structure.click((35, 30, 15))
    assert (~computed).any()
    assert np.array_equal(edit.mask[~computed], drawn[~computed])


def structure_click(session, index):
    from VISTA3DSlicerLib.interactive import Click

    return Click(session.to_index(index), True)


def test_points_only_edit_keeps_untouched_parts_of_a_drawn_mask(crop_session):
    """Without a class head, the user's mask is the network's prev_mask: untouched components stay."""
    shape = crop_session.image.shape
    drawn = np.zeros(shape, dtype=bool)
    drawn[30:34, 28:32, 13:17] = True  # a small blob the user drew, inside the click's window
    structure = crop_session.structure(None, mask=drawn)
    edit = structure.click((60, 50, 20), positive=True)  # a click elsewhere in the same window
    assert edit.mask[drawn].all()


def test_click_outside_the_volume_is_refused_and_changes_nothing(crop_session):
    structure = crop_session.structure(None, mask=np.zeros(crop_session.image.shape, bool))
    structure.click((35, 30, 15))
    before = structure.mask.copy()
    for point in [(-3, 10, 10), (10, 64, 10), (10, 10, 30.5)]:
        with pytest.raises(VISTA3DError, match="outside the volume"):
            structure.click(point)
    with pytest.raises(VISTA3DError, match="outside the volume"):
        structure.click(crop_session.image.index_to_ras(np.array([10.0, 10.0, 40.0])), space="ras")
    assert np.array_equal(structure.mask, before)
    assert len(structure.clicks) == 1


def test_groups_are_refused_with_clicks(crop_session):
    with pytest.raises(VISTA3DError, match="group"):
        crop_session.structure(21, mask=np.zeros(crop_session.image.shape, bool))


def test_ras_clicks_on_an_oblique_volume_equal_voxel_clicks(example_ct_crop, small_network):
    """A rotated, flipped volume: a click given in RAS mm lands on the same voxel as its index."""
    source = read_image(example_ct_crop)
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(source.spacing)
    affine[:3, 3] = [12.0, -40.0, 7.5]
    oblique = Image(source.array, affine)
    session = Session(Engine(small_network), oblique)
    index = np.array([35.0, 30.0, 15.0])
    ras = oblique.index_to_ras(index)
    assert np.allclose(session.to_index(ras, "ras"), index)
    by_index = session.structure(None, mask=np.zeros(oblique.shape, bool)).click(index)
    by_ras = session.structure(None, mask=np.zeros(oblique.shape, bool)).click(ras, space="ras")
    assert by_index.mask.any()
    assert np.array_equal(by_index.mask, by_ras.mask)


# ------------------------------------------------------------------------------------------- cache


def test_cache_evicts_least_recently_used_within_budget():
    megabyte = torch.zeros(256 * 1024)  # 1 MiB of float32
    cache = FeatureCache(budget_bytes=3 * megabyte.nbytes, device=torch.device("cpu"))
    for key in "abc":
        cache.put(key, megabyte.clone())
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("d", megabyte.clone())
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.nbytes <= cache.budget_bytes
    cache.put("huge", torch.zeros(4 * 256 * 1024))  # larger than the whole budget: not kept
    assert "huge" not in cache and len(cache) == 3
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get("b") is None and cache.misses == 1
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_session_cache_stays_within_a_small_budget(example_ct, small_network):
    """A budget of one window's features: the second window evicts the first, the results stay right."""
    image = read_image(example_ct)
    probe = Session(Engine(small_network), image)
    probe.structure(None, mask=np.zeros(image.shape, bool)).click((60, 50, 15))
    one_window = probe.point_windows.cache.nbytes
    session = Session(Engine(small_network), image, cache_budget_bytes=one_window)
    structure = session.structure(None, mask=np.zeros(image.shape, bool))
    structure.click((60, 50, 15))
    edit = structure.click((20, 30, 12))  # a second window: both are needed, only one fits
    assert len(session.point_windows.cache) == 1 and session.point_windows.cache.nbytes <= one_window
    reference = probe.structure(None, mask=np.zeros(image.shape, bool))
    reference.click((60, 50, 15))
    assert np.array_equal(edit.mask, reference.click((20, 30, 12)).mask)


class FakeGPUTensor:
    """Just enough of a CUDA tensor for the cache's placement rule (this machine has no GPU)."""

    def __init__(self, nbytes: int):
        self.nbytes_ = nbytes
        self.device = torch.device("cuda", 0)

    def element_size(self) -> int:
        return 1

    def nelement(self) -> int:
        return self.nbytes_

    def detach(self) -> "FakeGPUTensor":
        return self

    def to(self, device, non_blocking: bool = False):
        moved = FakeGPUTensor(self.nbytes_)
        moved.device = torch.device(device)
        return moved


@pytest.mark.parametrize("free_gib,expected", [(10, "cuda"), (2.5, "cpu")])
def test_cache_keeps_entries_on_the_gpu_only_while_it_has_room(monkeypatch, free_gib, expected):
    from VISTA3DSlicerLib import feature_cache

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))
    cache = FeatureCache(budget_bytes=4 * 2**30, device=torch.device("cuda", 0))
    cache.put("window", FakeGPUTensor(2**30))  # 1 GiB: leaves 9 GiB, or only 1.5 GiB (< the 2 GiB reserve)
    assert cache._entries["window"].device.type == expected
    assert feature_cache.DEVICE_RESERVE_BYTES == 2 * 2**30
    assert cache.get("window").device.type == "cuda"  # handed back on the compute device either way
