"""PNG previews: three orthogonal slices of a CT with its labels over them, for a glance at a
batch's results without opening a viewer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .atomic_write import write_atomically
from .errors import VISTA3DError
from .geometry import Image

if TYPE_CHECKING:
    from .labels import LabelSpace

#: Soft-tissue CT window (HU) for previews: organs stay distinguishable, bone is white, air black.
CT_WINDOW_LEVEL = 40.0
CT_WINDOW_WIDTH = 400.0
#: Opacity of label colours over the CT in previews.
PREVIEW_LABEL_OPACITY = 0.5
#: Longest physical extent of the volume, in preview pixels (every view uses the same mm per pixel).
PREVIEW_PANEL_PIXELS = 400


def write_preview_png(image: Image, labelmap: Image, path: str | os.PathLike, *, overwrite: bool = False,
                      label_space: Optional["LabelSpace"] = None) -> Path:
    """Write a PNG of three orthogonal slices (axial, coronal, sagittal) with the labels over them.

    The slices go through the centre of the labelled voxels (the volume centre if none).
    The volume is first turned to the nearest canonical axes (an oblique scan is shown along
    its own voxel grid) and each slice is resampled to square pixels, one mm-per-pixel for
    all views. Radiological display: axial with anterior up and the patient's right on the
    left; coronal with superior up and right on the left; sagittal with superior up and
    anterior on the left. CT is shown in a soft-tissue window; other images between their
    1st and 99th percentiles. Labels are blended in their colours in ``label_space`` (default VISTA3D's).
    """
    from PIL import Image as PILImage
    from PIL import ImageDraw

    path = Path(path)
    if not image.same_grid(labelmap):
        raise VISTA3DError(
            "The labelmap for the preview must be on the image's voxel grid (same size and geometry)."
        )
    volume, labels, spacing = _to_ras_canonical(image.array, labelmap.array, image.affine)
    centre = _label_centre(labels)
    # Canonical arrays are [R, A, S] with indices increasing towards right, anterior, superior;
    # each view flips so that the first row/column shows the side radiologists put there.
    r, a, s = centre
    views = [
        ("Axial", volume[::-1, ::-1, s].T, labels[::-1, ::-1, s].T, (spacing[1], spacing[0]), "ARPL"),
        ("Coronal", volume[::-1, a, ::-1].T, labels[::-1, a, ::-1].T, (spacing[2], spacing[0]), "SRIL"),
        ("Sagittal", volume[r, ::-1, ::-1].T, labels[r, ::-1, ::-1].T, (spacing[2], spacing[1]), "SAIP"),
    ]
    mm_per_pixel = float(max(np.asarray(volume.shape) * spacing)) / PREVIEW_PANEL_PIXELS
    low, high = _display_range(volume)
    colours = _label_colours(np.unique(np.concatenate([view[2].ravel() for view in views])), label_space)

    panels = [
        (title, _render_view(grey, label_slice, pixel_spacing, mm_per_pixel, low, high, colours), sides)
        for title, grey, label_slice, pixel_spacing, sides in views
    ]
    title_height, gap = 18, 16
    width = sum(panel.width for _, panel, _ in panels) + gap * (len(panels) + 1)
    height = title_height + max(panel.height for _, panel, _ in panels) + gap
    canvas = PILImage.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, panel, sides in panels:
        y = title_height + (height - title_height - gap - panel.height) // 2
        canvas.paste(panel, (x, y))
        draw.text((x, 3), title, fill=(255, 255, 255))
        _draw_side_letters(draw, (x, y, x + panel.width, y + panel.height), sides)
        x += panel.width + gap

    def write(temporary: Path) -> None:
        canvas.save(temporary, format="PNG")

    return write_atomically(path, ".png", overwrite, write)


def _to_ras_canonical(volume: np.ndarray, labels: np.ndarray, affine: np.ndarray):
    """Both arrays flipped/transposed to the canonical axes nearest RAS, and their voxel spacing."""
    from nibabel.orientations import apply_orientation, io_orientation

    orientation = io_orientation(affine)  # per voxel axis: (RAS axis, +1/-1)
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = np.linalg.norm(affine[:3, :3], axis=0)
    return apply_orientation(volume, orientation), apply_orientation(labels, orientation), spacing


def _label_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Voxel index of the centroid of the labelled voxels (the volume centre if none)."""
    mask = labels > 0
    total = int(mask.sum())
    centre = []
    for axis, size in enumerate(mask.shape):
        if total == 0:
            centre.append(size // 2)
            continue
        # Counts per slice along the axis: the centroid without the coordinates of every voxel.
        counts = mask.sum(axis=tuple(other for other in range(3) if other != axis))
        centre.append(int(round(float(np.dot(counts, np.arange(size))) / total)))
    return tuple(centre)  # type: ignore[return-value]


def _display_range(volume: np.ndarray) -> tuple[float, float]:
    """The grey-level window: soft-tissue CT window for CT-like values, else 1st-99th percentiles."""
    sample = volume[::2, ::2, ::2].astype(np.float32)
    p1, p99 = np.percentile(sample, [1, 99]) if sample.size else (0.0, 1.0)
    if p1 < -500:  # air at about -1000 HU: this is a CT
        return CT_WINDOW_LEVEL - CT_WINDOW_WIDTH / 2, CT_WINDOW_LEVEL + CT_WINDOW_WIDTH / 2
    return float(p1), float(max(p99, p1 + 1e-6))


def _label_colours(values: np.ndarray, label_space: Optional["LabelSpace"]) -> np.ndarray:
    """An RGB lookup table (``uint8``, one row per label value up to the largest present) from the
    label space's colours (default VISTA3D's)."""
    from .labels import VISTA3D_LABELS

    label_info = (label_space or VISTA3D_LABELS).label_info

    values = values[values > 0].astype(np.int64)
    table = np.zeros((int(values.max(initial=0)) + 1, 3), dtype=np.uint8)
    for value in values:
        table[value] = label_info(int(value)).color
    return table


def _render_view(grey: np.ndarray, labels: np.ndarray, pixel_spacing: tuple[float, float], mm_per_pixel: float,
                 low: float, high: float, colours: np.ndarray):
    """One slice as an RGB PIL image with square pixels: windowed grey with labels blended in."""
    from PIL import Image as PILImage

    rows, columns = grey.shape
    size = (max(1, round(columns * pixel_spacing[1] / mm_per_pixel)),
            max(1, round(rows * pixel_spacing[0] / mm_per_pixel)))
    # Grey levels interpolate; labels take the nearest voxel so no in-between IDs appear.
    grey = np.asarray(PILImage.fromarray(np.ascontiguousarray(grey, dtype=np.float32), mode="F")
                      .resize(size, PILImage.Resampling.BILINEAR))
    labels = np.asarray(PILImage.fromarray(np.ascontiguousarray(labels, dtype=np.int32), mode="I")
                        .resize(size, PILImage.Resampling.NEAREST))
    grey = np.clip((grey - low) / (high - low), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    labelled = labels > 0
    colour = colours[np.clip(labels, 0, len(colours) - 1)].astype(np.float32)
    rgb[labelled] = (1 - PREVIEW_LABEL_OPACITY) * rgb[labelled] + PREVIEW_LABEL_OPACITY * colour[labelled]
    return PILImage.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")


def _draw_side_letters(draw, box: tuple[int, int, int, int], sides: str) -> None:
    """Patient-direction letters at the middle of the top, left, bottom and right edges of a panel.

    Positions come from ``textbbox`` rather than text anchors, which Pillow's bitmap
    fallback font (no FreeType) does not support.
    """
    left, top, right, bottom = box
    for letter, edge in zip(sides, ("top", "left", "bottom", "right")):
        x0, y0, x1, y1 = draw.textbbox((0, 0), letter)
        width, height = x1 - x0, y1 - y0
        x = {"left": left + 3, "right": right - 3 - width}.get(edge, (left + right - width) // 2)
        y = {"top": top + 3, "bottom": bottom - 3 - height}.get(edge, (top + bottom - height) // 2)
        draw.rectangle((x - 1, y - 1, x + width, y + height), fill=(0, 0, 0))
        draw.text((x - x0, y - y0), letter, fill=(255, 255, 0))
