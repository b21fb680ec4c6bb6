"""Unusual inputs either segment correctly (labels on the input grid, nothing outside the body)
or stop with one message naming the problem and what to do."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from VISTA3DSlicerLib.cli import main
from VISTA3DSlicerLib.engine import Engine
from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.geometry import Image
from VISTA3DSlicerLib.interactive import Click, Session
from VISTA3DSlicerLib.ct_check import ct_warning
from VISTA3DSlicerLib.io import read_image

#: Where a label may appear around the body (the preprocessing crop's margin is 10 voxels of 1.5 mm).
MARGIN_MM = 15.0


def phantom(shape, spacing) -> tuple[Image, tuple[slice, ...]]:
    """Air with a box of soft tissue (40 HU) in the middle; the box is returned too."""
    array = np.full(shape, -1000, np.int16)
    box = tuple(slice(n // 2 - max(1, n // 3), n // 2 + max(1, n // 3) + 1) for n in shape)
    array[box] = 40
    return Image(array, np.diag([*spacing, 1.0])), box


@pytest.fixture(scope="module")
def engine(small_network) -> Engine:
    return Engine(small_network)


@pytest.mark.parametrize("shape, spacing", [
    ((8, 8, 8), (1.5, 1.5, 1.5)),      # far smaller than a 128³ window
    ((64, 64, 48), (0.1, 0.1, 0.1)),   # 6 mm across: a few network voxels
    ((20, 20, 16), (10.0, 10.0, 10.0)),  # 20 cm across at 10 mm: upsampled 6.7 times
    ((48, 40, 12), (0.6, 0.6, 5.0)),   # thick slices
])
def test_tiny_volumes_and_extreme_spacings_are_segmented_on_the_input_grid(engine, shape, spacing):
    image, box = phantom(shape, spacing)
    labelmap = engine.segment(image, [1, 3])
    assert labelmap.shape == image.shape and np.array_equal(labelmap.affine, image.affine)
    assert set(np.unique(labelmap.array)) <= {0, 1, 3}
    # Nothing beyond the body crop's margin (a wrong inverse mapping would put labels anywhere).
    reach = [int(np.ceil(MARGIN_MM / s)) + 1 for s in spacing]
    allowed = np.zeros(shape, bool)
    allowed[tuple(slice(max(b.start - r, 0), b.stop + r) for b, r in zip(box, reach))] = True
    assert not labelmap.array[~allowed].any()


def test_a_single_slice_is_refused(engine, tmp_path, capsys, small_checkpoint):
    image, _ = phantom((40, 40, 1), (0.8, 0.8, 1.0))
    with pytest.raises(VISTA3DError, match="single slice .* Load the whole series"):
        engine.segment(image, [1])
    path = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(image.array, np.eye(4)), path)
    assert main(["segment", str(path), "-o", str(tmp_path / "out.nii.gz"), "--labels", "liver",
                 "--weights", str(small_checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "single slice" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels_are_refused_with_what_to_do(engine, bad):
    image, _ = phantom((24, 24, 24), (1.5, 1.5, 1.5))
    values = image.array.astype(np.float32)
    values[3, 4, 5] = bad
    with pytest.raises(VISTA3DError, match="NaN or infinite voxels.*set them to -1024"):
        engine.segment(image.with_array(values), [1])


def test_a_constant_volume_is_flagged_and_runs_or_is_refused(engine):
    soft = Image(np.full((24, 24, 24), 100, np.int16), np.eye(4))
    assert "no air" in ct_warning(soft)
    assert engine.segment(soft, [1]).shape == soft.shape  # a warning, not a refusal: it may be a crop
    with pytest.raises(VISTA3DError, match="No voxel of the volume is above 0 HU"):
        engine.segment(soft.with_array(np.full((24, 24, 24), -1000, np.int16)), [1])


def test_a_click_in_the_air_around_the_body_is_refused(engine):
    image, box = phantom((96, 96, 40), (1.5, 1.5, 1.5))  # body 16..80: the crop's margin ends near 6
    session = Session(engine, image)
    structure = session.structure(None, mask=np.zeros(image.shape, bool))
    with pytest.raises(VISTA3DError, match="outside the body region"):
        structure.click((1, 1, 20))
    assert structure.clicks == []
    structure.click((48, 48, 20))  # on the body: taken
    assert len(structure.clicks) == 1


def test_a_hundred_clicks_work_and_more_are_refused(example_ct_crop, small_network):
    """On the crop every click with i <= 32 opens the same window (clamped to the volume's start),
    so 100 clicks cost one window; click 101 is refused and changes nothing."""
    from VISTA3DSlicerLib.interactive import MAX_CLICKS

    session = Session(Engine(small_network), read_image(example_ct_crop))
    rng = np.random.default_rng(0)
    voxels = {(int(i), int(j), int(k)) for i, j, k in zip(rng.integers(20, 33, 400), rng.integers(20, 45, 400),
                                                          rng.integers(8, 22, 400))}
    clicks = [Click(tuple(float(v) for v in voxel), positive=n % 4 != 0) for n, voxel in enumerate(sorted(voxels))]
    structure = session.structure(None, mask=np.zeros(session.image.shape, bool))
    windows = []
    edit = structure.set_clicks(clicks[:MAX_CLICKS], progress=lambda done, total, message: windows.append(total))
    assert edit.mask.any() and len(structure.clicks) == MAX_CLICKS and max(windows) == 1
    with pytest.raises(VISTA3DError, match=f"{MAX_CLICKS + 1} clicks on one structure is more than"):
        structure.set_clicks(clicks[:MAX_CLICKS + 1])
    assert len(structure.clicks) == MAX_CLICKS
