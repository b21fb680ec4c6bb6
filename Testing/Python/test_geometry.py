"""Geometry round trip: any orientation, spacing and size in, the same grid and positions out.

A probe network whose logits are a known function of the input intensity stands in for
VISTA3D: class 1 is "brighter than 300 HU". A bright ball in a soft-tissue box must come
back as label 1 exactly where it is, whatever the direction cosines, spacing and axis order.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from VISTA3DSlicerLib.engine import Engine
from VISTA3DSlicerLib.geometry import Image
from VISTA3DSlicerLib.io import read_image, write_labelmap
from VISTA3DSlicerLib.preprocessing import VISTA3D_PREPROCESSING

BRIGHT_HU = 300.0
INTENSITY = VISTA3D_PREPROCESSING.intensity
BRIGHT_SCALED = (BRIGHT_HU - INTENSITY.a_min) / (INTENSITY.a_max - INTENSITY.a_min)


class IntensityProbe(torch.nn.Module):
    """Every requested class: logit +1 where the scaled input is above 300 HU, else -1."""

    def forward(self, input_images, patch_coords=None, class_vector=None, transpose=False, **kwargs):
        logits = torch.where(input_images > BRIGHT_SCALED, 1.0, -1.0)
        logits = logits.repeat(len(class_vector), 1, 1, 1, 1)  # [B, 1, X, Y, Z]
        return logits.transpose(1, 0) if transpose else logits


def rotation(quaternion: np.ndarray) -> np.ndarray:
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@st.composite
def phantoms(draw) -> tuple[Image, np.ndarray, float]:
    """A soft-tissue box with a bright ball, on a random grid; returns the image, the ball's centre (RAS), radius."""
    spacing = np.array([draw(st.floats(0.6, 3.0)) for _ in range(3)])
    extent_mm = np.array([draw(st.floats(40.0, 80.0)) for _ in range(3)])
    shape = tuple(int(n) for n in np.clip(np.round(extent_mm / spacing), 14, 64))
    quaternion = np.array([draw(st.floats(-1, 1)) for _ in range(4)])
    if np.linalg.norm(quaternion) < 0.1:
        quaternion = np.array([1.0, 0, 0, 0])
    direction = rotation(quaternion)
    if draw(st.booleans()):  # a left-handed grid (one axis mirrored), as LPS files with some layouts are
        direction[:, 0] *= -1
    permutation = draw(st.permutations([0, 1, 2]))
    direction = direction[:, permutation]
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = [draw(st.floats(-200, 200)) for _ in range(3)]

    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    extent = (np.array(shape) - 1) * spacing
    centre_index = (np.array(shape) - 1) * np.array([draw(st.floats(0.4, 0.6)) for _ in range(3)])
    radius = 0.3 * float(extent.min())
    distance = np.linalg.norm((index - centre_index) * spacing, axis=-1)
    array = np.where(distance <= radius, 700.0, 40.0).astype(np.float32)
    image = Image(array, affine)
    return image, image.index_to_ras(centre_index), radius


def distances_to_centre(image: Image, centre_ras: np.ndarray) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), axis=-1)
    return np.linalg.norm(image.index_to_ras(index) - centre_ras, axis=-1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(phantoms(), st.sampled_from([".nii.gz", ".nrrd"]))
def test_labels_stay_where_the_structure_is(tmp_path_factory, phantom, suffix):
    image, centre, radius = phantom
    labelmap = Engine(IntensityProbe()).segment(image, [1])

    assert labelmap.shape == image.shape and np.array_equal(labelmap.affine, image.affine)
    distance = distances_to_centre(image, centre)
    # Bilinear resampling to 1.5 mm puts the boundary somewhere between two input voxels, and the
    # nearest-neighbour way back moves it by up to half a 1.5 mm voxel: at most an input voxel's
    # diagonal plus half a 1.5 mm diagonal. Beyond that margin every voxel must be right.
    margin = (float(image.spacing.max()) + 0.75) * np.sqrt(3)
    inside, outside = distance < radius - margin, distance > radius + margin
    assert inside.any() and outside.any()
    assert np.all(labelmap.array[inside] == 1)
    assert np.all(labelmap.array[outside] == 0)

    # Written and read back, the labelmap keeps the input's exact grid.
    path = tmp_path_factory.mktemp("roundtrip") / f"labels{suffix}"
    write_labelmap(labelmap, path)
    reread = read_image(path)
    assert reread.shape == image.shape
    np.testing.assert_allclose(reread.affine, image.affine, atol=1e-4)  # NIfTI stores float32
    assert np.array_equal(reread.array, labelmap.array)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phantoms(), st.lists(st.floats(-5, 70), min_size=3, max_size=3))
def test_voxel_ras_conversion_round_trips(phantom, index):
    """Slicer's Markups are RAS: clicks convert to voxel indices and back without drift."""
    image = phantom[0]
    ras = image.index_to_ras(np.array(index))
    np.testing.assert_allclose(image.ras_to_index(ras), index, atol=1e-9)
    np.testing.assert_allclose(ras, image.affine[:3, :3] @ index + image.affine[:3, 3])
