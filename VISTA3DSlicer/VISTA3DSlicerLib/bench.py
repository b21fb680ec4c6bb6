"""``vista3d bench``: how fast the engine runs on this machine, recorded in ``BENCHMARKS.md``.

Speed goals live here, never in unit tests. Without ``--weights`` the network is
``vista3d132`` with random weights: the time of a window does not depend on the weights'
values, and it lets the benchmark run where the real weights cannot be downloaded.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Optional

from .errors import VISTA3DError

#: The example CT the project's tests use, when ``../shared/data`` is beside the checkout.
DEFAULT_INPUT = Path(__file__).resolve().parents[3] / "shared/data/totalsegmentator-example/example_ct_sm.nii.gz"


def run_benchmark(
    input_path: Optional[str],
    labels: str,
    weights: Optional[str],
    device: str,
    precision: str,
    repeats: int,
    output: Path,
) -> dict:
    """Time one 128³ window and one end-to-end segmentation; append the figures to ``output``."""
    import torch

    from .engine import Engine, count_windows
    from .io import read_image
    from .labels import expand_subclasses, parse_label_prompt, validate_automatic_prompt
    from .model import autocast, build_network, load_network, resolve_device
    from .preprocessing import preprocess

    source = Path(input_path) if input_path else DEFAULT_INPUT
    if not source.exists():
        raise VISTA3DError(f"No CT to time: {source} does not exist. Pass --input FILE.")
    label_ids = parse_label_prompt(labels)
    validate_automatic_prompt(label_ids)
    torch_device = resolve_device(device)
    if weights:
        network, weights_note = load_network(weights, torch_device), str(weights)
    else:
        torch.manual_seed(0)
        network, weights_note = build_network(), "random vista3d132 weights (seed 0)"
    engine = Engine(network, torch_device, precision)
    class_vector = torch.as_tensor(expand_subclasses(label_ids), device=torch_device).unsqueeze(-1)

    window = torch.rand(1, 1, 128, 128, 128, device=torch_device)
    patch = [(slice(None), slice(None), slice(0, 128), slice(0, 128), slice(0, 128))]
    timed = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            started = time.perf_counter()
            with autocast(torch_device, precision):  # as the engine runs a window
                engine.network(window, patch, class_vector=class_vector, prompt_class=class_vector, transpose=True)
            _synchronize(torch_device)
            timed.append(time.perf_counter() - started)
    timed = timed[1:]  # the first run warms up allocators and kernels

    image = read_image(source)
    windows = count_windows(preprocess(image).spatial_shape)
    started = time.perf_counter()
    engine.segment(image, label_ids)
    _synchronize(torch_device)
    end_to_end = time.perf_counter() - started

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(torch_device),
        "weights": weights_note,
        "precision": precision,
        "classes": len(class_vector),
        "window_seconds": sum(timed) / len(timed),
        "input": f"{source.name} {image.shape} at {tuple(round(float(s), 2) for s in image.spacing)} mm",
        "windows": windows,
        "end_to_end_seconds": end_to_end,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "command": "vista3d " + " ".join(sys.argv[1:]) if sys.argv and "vista3d" in sys.argv[0] else "vista3d bench",
    }
    _append_markdown(output, result)
    print(
        f"{result['machine']}\n128³ window ({result['classes']} classes, {precision}): "
        f"{result['window_seconds']:.2f} s\nend to end on {result['input']}, {windows} windows: "
        f"{end_to_end:.1f} s\nappended to {output}"
    )
    return result


def machine_description(device) -> str:
    """CPU model and cores (or the GPU), RAM and library versions, for the record."""
    import monai
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    where = f"{cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {memory:.0f} GiB RAM"
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} on {where}"
    return f"{where}; Python {platform.python_version()}, torch {torch.__version__}, monai {monai.__version__}"


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _append_markdown(path: Path, result: dict) -> None:
    header = "" if path.exists() else (
        "# Benchmarks\n\nWritten by `vista3d bench` (each run appends a section). Timings are wall-clock "
        "seconds on the machine named; speed goals live here, not in the tests.\n"
    )
    section = (
        f"\n## {result['date']}: {result['precision']} on {result['machine']}\n\n"
        f"Command: `{result['command']}`  \nWeights: {result['weights']}\n\n"
        "| measure | value |\n|---|---|\n"
        f"| one 128³ window, {result['classes']} classes (mean of timed runs after a warm-up) "
        f"| {result['window_seconds']:.2f} s |\n"
        f"| end to end, {result['input']}, {result['windows']} windows | {result['end_to_end_seconds']:.1f} s |\n"
        f"| peak host memory (max RSS) | {result['peak_host_memory_gib']:.2f} GiB |\n"
    )
    with open(path, "a") as handle:
        handle.write(header + section)
