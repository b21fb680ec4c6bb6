"""Peak memory of the Slicer module's Export of a segmentation with many segments, on real Slicer code.

A headless Slicer (slicer-core; ``Testing/Python/headless_slicer.py``) gets a SIZE³ volume and a
segmentation of N segments (VISTA3D's "everything" labels, each a block of a grid that tiles the
volume, imported as one run of the module would), then ``VISTA3DSlicerLogic.export`` writes it.
The figure is the growth of the process's peak resident memory during the export (Linux: the peak
is reset just before it, ``/proc/self/clear_refs``), with its time; they are appended to
BENCHMARKS.md.

``--source DIR`` imports the module and its library from another checkout (``git worktree add DIR
COMMIT``), to measure the code before a change against the code after it.

    .venv/bin/python benchmarks/export_memory.py --size 512 --segments 117
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM: this benchmark needs Linux")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size


def tiled_labelmap(size: int, label_ids: list[int]) -> np.ndarray:
    """``label_ids`` as blocks of the smallest n x n x n grid that has a cell for each."""
    cells = int(np.ceil(len(label_ids) ** (1 / 3)))
    step = size // cells
    labelmap = np.zeros((size, size, size), np.uint8)
    for index, label in enumerate(label_ids):
        i, j, k = np.unravel_index(index, (cells, cells, cells))
        labelmap[i * step:(i + 1) * step, j * step:(j + 1) * step, k * step:(k + 1) * step] = label
    return labelmap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="the volume is SIZE³ voxels (default 512)")
    parser.add_argument("--segments", type=int, default=117, help="number of segments (default 117, everything)")
    parser.add_argument("--format", default=".seg.nrrd", help="export format (default .seg.nrrd, the panel's)")
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose module and library are measured")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md", help="where to append the figures")
    args = parser.parse_args()

    sys.path[:0] = [str(args.source / "VISTA3DSlicer"), str(REPO / "Testing" / "Python")]
    from headless_slicer import HeadlessSlicer, installed, volume_from_array

    revision = subprocess.run(["git", "-C", str(args.source), "rev-parse", "--short", "HEAD"],
                              capture_output=True, encoding="utf-8", errors="replace").stdout.strip()
    with tempfile.TemporaryDirectory() as folder, installed(HeadlessSlicer(None), Path(folder)) as slicer:
        import VISTA3DSlicer
        from VISTA3DSlicerLib import labels, slicer_adapter
        from VISTA3DSlicerLib.geometry import Image

        affine = np.diag([-0.8, -0.8, 0.8, 1.0])
        volume = volume_from_array(slicer, np.zeros((args.size,) * 3, np.int16), affine)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "everything")
        segmentation.CreateDefaultDisplayNodes()
        label_ids = list(labels.EVERYTHING)[:args.segments]
        slicer_adapter.labelmap_to_segmentation(Image(tiled_labelmap(args.size, label_ids), affine), segmentation,
                                                volume)
        gc.collect()
        logic = VISTA3DSlicer.VISTA3DSlicerLogic()
        path = Path(folder) / f"labels{args.format}"
        resident = peak_rss_bytes()
        reset_peak_rss()
        started = time.perf_counter()
        result = logic.export(segmentation, volume, path)
        seconds = time.perf_counter() - started
        growth = peak_rss_bytes() - resident
        assert len(result.ids) == len(label_ids), result.ids

    volume_bytes = args.size**3
    line = (f"| `{revision}` | {args.size}³, {len(label_ids)} segments, {args.format} | {growth / 2**30:.2f} GiB "
            f"({growth / volume_bytes:.1f} bytes a voxel) | {seconds:.1f} s |")
    print(line)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    header = (f"\n## {datetime.date.today()}: Slicer Export of many segments, peak memory ({platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, {memory:.0f} GiB RAM; Python {platform.python_version()}, "
              f"slicer-core {importlib.metadata.version('slicer-core')})\n\n"
              f"Command: `{' '.join(['python'] + sys.argv)}`  \n"
              "Peak resident memory the export adds (VmHWM reset before it), with the segments shared in one "
              "labelmap layer as one VISTA3D run leaves them.\n\n"
              "| code | segmentation | peak memory added | time |\n|---|---|---|---|\n")
    text = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if "Slicer Export of many segments, peak memory" not in text.rsplit("\n## ", 1)[-1]:
        text += header
    args.output.write_text(text + line + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
