"""The slab-by-slab stitching gives MONAI's sliding-window values bit for bit, with a buffer about
one window deep instead of the volume's depth (a buffer too shallow for a batch would fail to add
a window, so the batched cases check ``buffer_depth`` too)."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from VISTA3DSlicerLib.sliding_window import WindowGrid, stitch_in_slabs

WINDOW = 16


class RandomConvolution(torch.nn.Module):
    """A fixed random 3D convolution with a nonlinearity: its windows' borders differ, so a wrong
    offset or a wrong count would change the stitched values."""

    def __init__(self, channels: int):
        super().__init__()
        torch.manual_seed(0)
        self.convolution = torch.nn.Conv3d(1, channels, 3, padding=1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.convolution(windows)) * windows.mean(dim=(2, 3, 4), keepdim=True)


def stitched(image: torch.Tensor, network: torch.nn.Module, batch: int,
             window: tuple[int, int, int] = (WINDOW,) * 3) -> tuple[torch.Tensor, list[int]]:
    """Our stitching, gathered into one volume, and the first-axis start of each slab handed on."""
    slabs: dict[int, torch.Tensor] = {}

    def keep(slab: torch.Tensor, x0: int) -> None:
        assert x0 not in slabs
        slabs[x0] = slab.clone()

    stitch_in_slabs(image, network, keep, window=window, overlap=0.25, batch=batch)
    starts = sorted(slabs)
    return torch.cat([slabs[x0] for x0 in starts], dim=1), starts


@pytest.mark.parametrize("shape", [(70, 37, 40), (16, 16, 16), (9, 50, 33), (33, 5, 21), (100, 20, 9)])
@pytest.mark.parametrize("batch", [1, 2, 3, 7])  # 7: batches reach across rows of windows
@pytest.mark.parametrize("window", [(WINDOW,) * 3, (24, 16, 8)], ids=["cube", "box"])  # box: CTMR's kind
def test_values_are_monais_bit_for_bit(shape, batch, window):
    torch.manual_seed(1)
    image = torch.randn(1, *shape)
    network = RandomConvolution(channels=4).eval()
    with torch.inference_mode():
        expected = sliding_window_inference(
            image[None], window, batch, network, overlap=0.25, mode="constant", padding_mode="replicate"
        )[0]
        ours, starts = stitched(image, network, batch, window)
    assert ours.shape == expected.shape == (4, *shape)
    assert torch.equal(ours, expected)
    assert starts == sorted(set(starts)) and starts[0] == 0  # each position once, in order


def test_a_bf16_network_is_stitched_in_float32_as_monai_does():
    image = torch.rand(1, 40, 30, 20)
    network = RandomConvolution(channels=3).eval()

    def bf16(windows: torch.Tensor) -> torch.Tensor:
        return network(windows).bfloat16()

    with torch.inference_mode():
        expected = sliding_window_inference(image[None], WINDOW, 1, bf16, overlap=0.25, mode="constant")[0]
        ours, _ = stitched(image, bf16, 1)
    assert ours.dtype == expected.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_the_buffer_is_about_one_window_deep_whatever_the_volume():
    for depth_of_volume in (16, 100, 1000):
        assert WindowGrid((depth_of_volume, 40, 40), (WINDOW,) * 3, 0.25).buffer_depth(1) == WINDOW
    # A batch that reaches into the next row of windows holds both: one window and one step.
    grid = WindowGrid((100, 16, 20), (WINDOW,) * 3, 0.25)  # rows of 2 windows (along the last axis)
    assert grid.buffer_depth(2) == grid.buffer_depth(3) == WINDOW + 12
    assert grid.buffer_depth(5) == WINDOW + 2 * 12
    assert WindowGrid((20, 16, 16), (WINDOW,) * 3, 0.25).buffer_depth(8) == 20  # never more than the volume


def test_windows_are_monais():
    grid = WindowGrid((40, 16, 10), (WINDOW,) * 3, 0.25)
    assert grid.padding == ((0, 0), (0, 0), (3, 3))
    starts = sorted({w[0].start for w in grid.windows()})
    assert starts == grid.starts(0) == [0, 12, 24]  # the last one moved back to end at the border, as MONAI does
    assert len(grid.windows()) == 3 == grid.count(0) * grid.count(1) * grid.count(2)
    assert grid.coverage(0).tolist() == [1] * 12 + [2] * 4 + [1] * 8 + [2] * 4 + [1] * 12  # [0,16) [12,28) [24,40)
