"""Sliding-window inference that hands the stitched result on slab by slab (reference doc §5.4 B).

MONAI's ``sliding_window_inference`` stitches every window into one ``[channels, X, Y, Z]`` buffer
and returns it whole. With many channels on a large CT that buffer is most of a run's memory
(48 class features × 273 × 273 × 410 voxels of a 512 × 512 × 768 CT are 5.9 GB), and all that is
kept of it afterwards is one label per voxel.

Here the windows are MONAI's (``dense_patch_slices`` with its scan interval and replicate
padding), taken in MONAI's order (first axis slowest) and accumulated the same way in float32,
then divided by the same window count: every stitched value is MONAI's, bit for bit. But the
buffer spans only the rows of windows along the first axis that are still being added to; each
slab that no later window touches is divided, handed to ``consume`` (the argmax) and dropped.
The buffer's depth along the first axis is then about one window (128) instead of the volume's.
Windows may have a different size along each axis (NV-Segment-CTMR's are 192 x 192 x 128).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

#: ``forward(windows [B, C_in, wx, wy, wz]) -> [B, C, wx, wy, wz]``.
WindowForward = Callable[["torch.Tensor"], "torch.Tensor"]
#: ``consume(slab [C, x, Y, Z], x0)``: stitched values of the input's first-axis positions ``x0 .. x0 + x``;
#: the slab is a view of the buffer, valid only during the call.
SlabConsumer = Callable[["torch.Tensor", int], None]


@dataclass(frozen=True)
class WindowGrid:
    """Where MONAI's sliding window puts its windows over an image of ``shape`` (its spatial axes)."""

    shape: tuple[int, ...]
    window: tuple[int, ...]  #: the window's size along each axis (MONAI's ``roi_size``)
    overlap: float

    @property
    def padding(self) -> tuple[tuple[int, int], ...]:
        """(before, after) per axis: MONAI pads an axis shorter than a window evenly to one window."""
        return tuple(((w - n) // 2, w - n - (w - n) // 2) if n < w else (0, 0) for n, w in zip(self.shape, self.window))

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(max(n, w) for n, w in zip(self.shape, self.window))

    def interval(self, axis: int) -> int:
        """MONAI's scan interval (``_get_scan_interval``): a window-sized axis is one step."""
        if self.padded_shape[axis] == self.window[axis]:
            return self.window[axis]
        return max(int(self.window[axis] * (1 - self.overlap)), 1)

    def count(self, axis: int) -> int:
        """How many windows MONAI puts along ``axis`` (the last one moved back to end at the border)."""
        return math.ceil(max(self.padded_shape[axis] - self.window[axis], 0) / self.interval(axis)) + 1

    def windows(self) -> list[tuple[slice, ...]]:
        """The windows in the padded image, in the order MONAI runs them (first axis slowest)."""
        from monai.data.utils import dense_patch_slices

        size = self.padded_shape
        return list(dense_patch_slices(size, self.window, [self.interval(a) for a in range(len(size))]))

    def starts(self, axis: int) -> list[int]:
        """The windows' starts along ``axis``: a step apart, the last one moved back to end at the border."""
        last = self.padded_shape[axis] - self.window[axis]
        return [min(i * self.interval(axis), last) for i in range(self.count(axis))]

    def coverage(self, axis: int) -> np.ndarray:
        """How many windows cover each position of the padded image along ``axis``."""
        counts = np.zeros(self.padded_shape[axis], dtype=np.int64)
        for start in self.starts(axis):
            counts[start : start + self.window[axis]] += 1
        return counts

    def buffer_depth(self, batch: int) -> int:
        """First-axis depth of ``stitch_in_slabs``'s buffer with ``batch`` windows per call.

        The buffer spans from the first position not yet handed on to the farthest one written: one
        window, plus one step along the first axis for each further row of windows a batch reaches into
        (windows run first axis slowest, so a row is every window with the same first-axis start).
        """
        per_row = math.prod(self.count(axis) for axis in range(1, len(self.shape)))
        rows_reached = min(math.ceil((batch - 1) / per_row), self.count(0) - 1)
        return min(self.window[0] + rows_reached * self.interval(0), self.padded_shape[0])


def _first_starts_after(groups: Sequence[Sequence[tuple[slice, ...]]]) -> list[float]:
    """For each group, the smallest first-axis start of the windows after it (infinity after the last)."""
    result: list[float] = []
    smallest = math.inf
    for group in reversed(groups):
        result.append(smallest)
        smallest = min(smallest, *(w[0].start for w in group))
    return result[::-1]


def stitch_in_slabs(
    image: "torch.Tensor",
    forward: WindowForward,
    consume: SlabConsumer,
    *,
    window: tuple[int, ...],
    overlap: float,
    batch: int = 1,
    device: "torch.device | None" = None,
) -> None:
    """Run ``forward`` over windows of ``image`` ``[C_in, X, Y, Z]`` and hand the stitched output to ``consume``.

    Each position along the first axis is handed on exactly once, in increasing order, as soon as
    no later window covers it, cropped to the image (padding removed). ``device`` is where the
    stitching happens (default: the image's). The values are those of MONAI's
    ``sliding_window_inference(roi_size=window, overlap=overlap, mode="constant",
    padding_mode="replicate", sw_batch_size=batch)`` with a float32 image.
    """
    import torch
    import torch.nn.functional as F

    device = device or image.device
    grid = WindowGrid(tuple(image.shape[1:]), window, overlap)
    pad = [n for before_after in reversed(grid.padding) for n in before_after]  # F.pad counts from the last axis
    padded = F.pad(image[None], pad, mode="replicate")[0] if any(pad) else image
    windows = grid.windows()
    groups = [windows[start : start + batch] for start in range(0, len(windows), batch)]  # as ``sw_batch_size``
    depth = grid.buffer_depth(batch)
    count = [torch.as_tensor(grid.coverage(axis), dtype=torch.float32, device=device) for axis in range(3)]
    keep = [slice(before, before + n) for (before, _), n in zip(grid.padding, grid.shape)]

    values: "torch.Tensor | None" = None  # allocated once the first output says how many channels
    finished = 0  # padded first-axis positions before this one were handed on; the buffer starts here
    for group, next_start in zip(groups, _first_starts_after(groups)):
        # Windows go in as MONAI passes them (one: a view of the image; more: a copy), since a contiguous
        # copy can make a convolution pick another algorithm and round differently.
        windows = [padded[(None, slice(None), *w)] for w in group]
        output = forward(torch.cat(windows) if batch > 1 else windows[0]).to(device)
        if values is None:
            values = torch.zeros((output.shape[1], depth, *grid.padded_shape[1:]), dtype=torch.float32, device=device)
        for window_slices, window_output in zip(group, output):
            x = window_slices[0]
            values[(slice(None), slice(x.start - finished, x.stop - finished), *window_slices[1:])] += window_output
        del output
        done = int(min(next_start, grid.padded_shape[0]))
        if done > finished:
            _hand_on(values, finished, done, count, keep, consume)
            _drop_front(values, done - finished)
            finished = done


def _hand_on(
    values: "torch.Tensor",
    start: int,
    stop: int,
    count: Sequence["torch.Tensor"],
    keep: Sequence[slice],
    consume: SlabConsumer,
) -> None:
    """Divide the padded first-axis positions ``start .. stop`` by their window count, in place, and hand on
    the part inside the image."""
    first = max(start, keep[0].start)
    last = min(stop, keep[0].stop)
    if first >= last:
        return  # padding only
    # MONAI divides by a count map summed from ones: the same small integers as this product.
    windows_over = count[0][first:last, None, None] * count[1][keep[1], None] * count[2][None, keep[2]]
    slab = values[:, first - start : last - start, keep[1], keep[2]]
    slab /= windows_over
    consume(slab, first - keep[0].start)


def _drop_front(values: "torch.Tensor", shift: int) -> None:
    """Move the buffer's first-axis positions ``shift ..`` to the front and zero the rest, in place.

    Copied ``shift`` positions at a time, front to back, so that no copy reads what it writes and no
    second buffer is allocated.
    """
    depth = values.shape[1]
    for start in range(0, depth - shift, shift):
        width = min(shift, depth - shift - start)
        values[:, start : start + width] = values[:, start + shift : start + shift + width]
    values[:, max(depth - shift, 0) :] = 0
