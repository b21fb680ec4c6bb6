"""How fast and how lean the engine runs on this machine, recorded in ``BENCHMARKS.md``.

Run from a checkout (it is not part of the installed package)::

    python benchmarks/bench.py                       # a 128³ window and the example CT end to end
    python benchmarks/bench.py --clicks              # clicks with and without the feature cache
    python benchmarks/bench.py --supervoxels 128     # SAM supervoxels of a 128³ region: time, batch, peak memory
    python benchmarks/bench.py --reference --phantom 333x333x603 --precisions fp32,bf16
                                                     # ours against the bundle's pipeline (reference_pipeline.py)
    python benchmarks/bench.py --server http://127.0.0.1:8765   # bytes and round trips of a `vista3d serve` session

Speed goals live here, never in unit tests. Without ``--weights`` the network is
``vista3d132`` with random weights: the time of a window does not depend on the weights'
values, and it lets the benchmark run where the real weights cannot be downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import asdict, dataclass
import platform
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from VISTA3DSlicerLib.errors import VISTA3DError
from VISTA3DSlicerLib.round_trips import phantom_ct

if TYPE_CHECKING:
    import numpy as np
    import torch

#: The example CT the project's tests use, when ``../shared/data`` is beside the checkout.
DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared/data/totalsegmentator-example/example_ct_sm.nii.gz"


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

    from VISTA3DSlicerLib.engine import count_windows
    from VISTA3DSlicerLib.io import read_image
    from VISTA3DSlicerLib.labels import automatic_prompt, expand_subclasses
    from VISTA3DSlicerLib.model import autocast
    from VISTA3DSlicerLib.preprocessing import preprocess

    source = _source(input_path)
    label_ids = automatic_prompt(labels)
    engine, weights_note = _engine(weights, device, precision)
    torch_device = engine.device
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
        "command": _command(),
    }
    _append_section(output, precision, result, [
        (f"one 128³ window, {result['classes']} classes (mean of timed runs after a warm-up)",
         f"{result['window_seconds']:.2f} s"),
        (f"end to end, {result['input']}, {windows} windows", f"{end_to_end:.1f} s"),
        ("peak host memory (max RSS)", f"{result['peak_host_memory_gib']:.2f} GiB"),
    ])
    print(
        f"{result['machine']}\n128³ window ({result['classes']} classes, {precision}): "
        f"{result['window_seconds']:.2f} s\nend to end on {result['input']}, {windows} windows: "
        f"{end_to_end:.1f} s\nappended to {output}"
    )
    return result


def _source(input_path: Optional[str]) -> Path:
    source = Path(input_path) if input_path else DEFAULT_INPUT
    if not source.exists():
        raise VISTA3DError(f"No CT to time: {source} does not exist. Pass --input FILE.")
    return source


def _engine(weights: Optional[str], device: str, precision: str):
    """The engine to time, and a note saying which weights it holds."""
    from VISTA3DSlicerLib.engine import Engine
    from VISTA3DSlicerLib.model import resolve_device

    torch_device = resolve_device(device)
    note = str(weights) if weights else "random vista3d132 weights (seed 0)"
    return Engine(_network(weights, torch_device), torch_device, precision), note


def _network(weights: Optional[str], device) -> "torch.nn.Module":
    """The network a benchmark times, in eval mode on ``device``: the checkpoint ``weights``, or
    vista3d132 with random weights from seed 0, the same in every process of a comparison."""
    import torch

    from VISTA3DSlicerLib.model import build_network, load_network

    if weights:
        return load_network(weights, device)
    torch.manual_seed(0)
    return build_network().eval().to(device)


#: Clicks of the click benchmark, as points of the network grid (1.5 mm voxels, RAS axes): three
#: in the window that the reference puts at the grid's first corner (every click less than 64
#: voxels from that corner opens the same window), then one at the grid's centre (a new window
#: wherever the grid is larger than a window).
SAME_WINDOW_POINTS = ((40.0, 50.0, 30.0, True), (55.0, 35.0, 40.0, False), (30.0, 30.0, 20.0, True))


def run_click_benchmark(
    input_path: Optional[str], label: str, weights: Optional[str], device: str, precision: str, output: Path
) -> dict:
    """Time clicks with the feature cache against the same clicks without it; append to ``output``.

    The structure starts empty (no automatic pass first), so the figures are the clicks' own.
    """
    import numpy as np

    from VISTA3DSlicerLib.interactive import Session
    from VISTA3DSlicerLib.io import read_image
    from VISTA3DSlicerLib.labels import find_label

    source = _source(input_path)
    label_id = find_label(label)
    engine, weights_note = _engine(weights, device, precision)
    image = read_image(source)
    cached = Session(engine, image)
    grid = np.asarray(cached.prepared.spatial_shape, dtype=np.float64)
    network_points = [(np.minimum(p[:3], grid - 1), p[3]) for p in SAME_WINDOW_POINTS] + [((grid - 1) / 2, True)]
    to_input = np.linalg.inv(
        np.linalg.inv(np.asarray(cached.prepared.tensor.affine, dtype=np.float64)) @ image.affine
    )
    clicks = [(tuple(to_input[:3, :3] @ p + to_input[:3, 3]), positive) for p, positive in network_points]

    def timed_clicks(session: Session) -> tuple[list[float], np.ndarray]:
        structure = session.structure(label_id, mask=np.zeros(image.shape, dtype=bool))
        seconds = []
        for point, positive in clicks:
            started = time.perf_counter()
            edit = structure.click(point, positive)
            _synchronize(engine.device)
            seconds.append(time.perf_counter() - started)
        return seconds, edit.mask

    with_cache, mask_cached = timed_clicks(cached)
    without_cache, mask_uncached = timed_clicks(Session(engine, image, cache_budget_bytes=0))
    later = with_cache[1:3]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(engine.device),
        "weights": weights_note,
        "precision": precision,
        "input": f"{source.name} {image.shape} at {tuple(round(float(s), 2) for s in image.spacing)} mm",
        "label": label_id,
        "first_click": with_cache[0],
        "later_same_window": sum(later) / len(later),
        "new_window": with_cache[3],
        "without_cache": without_cache,
        "identical": bool(np.array_equal(mask_cached, mask_uncached)),
        "command": _command(),
    }
    result["speedup"] = result["first_click"] / result["later_same_window"]
    _append_section(output, f"clicks, {precision}", result, [
        ("first click (encoder + heads, cold cache)", f"{result['first_click']:.2f} s"),
        ("2nd and 3rd clicks in the same window (mean; heads only)", f"{result['later_same_window']:.2f} s"),
        ("speed-up of later clicks in a seen window", f"{result['speedup']:.1f}x"),
        ("4th click, in a new window (one encoder pass; the first window from the cache)",
         f"{result['new_window']:.2f} s"),
        ("the same four clicks without the cache", ", ".join(f"{t:.2f}" for t in without_cache) + " s"),
        ("final mask identical with and without the cache", "yes" if result["identical"] else "NO"),
    ], context=f"Input: {result['input']}; class {label_id} + clicks on an empty structure")
    print(
        f"{result['machine']}\nfirst click {result['first_click']:.2f} s, later clicks in that window "
        f"{result['later_same_window']:.2f} s ({result['speedup']:.1f}x), a click in a new window "
        f"{result['new_window']:.2f} s; identical to no cache: {result['identical']}\nappended to {output}"
    )
    return result


def run_server_benchmark(url: str, token_file: Optional[str], input_path: Optional[str], labels: str,
                         output: Path) -> dict:
    """A session on a ``vista3d serve`` server (``round_trips.measure_round_trips``): the bytes each
    request sends and receives, and its round trip against the server's own work."""
    import platform as host

    from VISTA3DSlicerLib.io import read_image
    from VISTA3DSlicerLib.remote import RemoteEngine, read_token
    from VISTA3DSlicerLib.round_trips import describe, measure_round_trips

    source = _source(input_path)
    image = read_image(source)
    engine = RemoteEngine(url, read_token(token_file))
    exchanges = measure_round_trips(engine, image, labels)
    raw = image.array.nbytes
    rows = [("volume", f"{source.name}: {'x'.join(map(str, image.shape))} voxels, {raw / 1e6:.2f} MB raw")]
    rows += describe(exchanges, labels)
    result = {"date": datetime.date.today().isoformat(), "command": _command(),
              "machine": f"client {host.node() or 'here'} ({os.cpu_count()} cores) to {engine.device}",
              "weights": f"the server's ({engine.model.title}, sha256 {str(engine.info.get('weights_sha256'))[:12]}...)",
              "exchanges": [asdict(exchange) for exchange in exchanges]}
    _append_section(output, f"server round trips ({url})", result, rows,
                    context="Bytes are request and reply bodies (Zstandard-compressed arrays, JSON); a click's "
                            "reply is the box of voxels that changed.")
    for measure, value in rows:
        print(f"{measure}: {value}")
    return result


def run_supervoxel_benchmark(
    roi_size: int, sam_kind: str, sam_weights: Optional[str], device: str, precision: str, output: Path
) -> dict:
    """Time supervoxels of a ``roi_size``³ region (3 x ``roi_size`` SAM slices, then SLIC), with the
    slice batch chosen from the memory free, its estimated and its measured peak; append to ``output``."""
    import torch

    from VISTA3DSlicerLib.model import resolve_device
    from VISTA3DSlicerLib.supervoxels import (
        FREE_MEMORY_SHARE, SLICE_BATCH, build_sam, choose_slice_batch, compute_supervoxels, estimate_memory,
        usable_host_memory,
    )

    torch_device = resolve_device(device)
    if sam_weights is None:
        torch.manual_seed(0)
    sam = build_sam(sam_kind, sam_weights, torch_device)
    image = phantom_ct((roi_size,) * 3)
    estimate = estimate_memory(sam, image.shape, precision=precision, device_type=torch_device.type)
    # The run gets the budget measured here, so that it chooses the batch recorded.
    budget = usable_host_memory()
    batch = choose_slice_batch(estimate, torch_device, memory_budget=budget)
    before_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process with SAM loaded
    estimated_gib = estimate.host_bytes(batch, sam_on_gpu=torch_device.type == "cuda") / 2**30
    phases: dict[str, float] = {}
    started = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        if message.startswith("Clustering"):
            phases["features"] = time.perf_counter() - started

    labels = compute_supervoxels(
        sam, image, device=torch_device, precision=precision, memory_budget=budget, progress=progress
    )
    _synchronize(torch_device)
    total = time.perf_counter() - started
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_description(torch_device),
        "weights": sam_weights or f"random SAM {sam_kind} weights (seed 0)",
        "precision": precision,
        "roi": f"{roi_size}³ phantom ({3 * roi_size} slices through SAM {sam_kind})",
        "features_seconds": phases.get("features", total),
        "total_seconds": total,
        "supervoxels": int(labels.array.max()),
        "slice_batch": batch,
        "memory_budget_gib": None if budget is None else budget / 2**30,
        "estimated_slice_gib": estimate.slice_bytes / 2**30,
        "host_memory_before_gib": before_gib,
        "estimated_peak_host_memory_gib": before_gib + estimated_gib,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "command": _command(),
    }
    budget_text = (
        "unknown free memory" if budget is None
        else f"{result['memory_budget_gib']:.1f} GiB, {FREE_MEMORY_SHARE:.0%} of the memory free"
    )
    _append_section(output, f"supervoxels, {precision}", result, [
        (f"SAM features of a {result['roi']}",
         f"{result['features_seconds']:.1f} s ({result['features_seconds'] / (3 * roi_size):.2f} s a slice)"),
        ("features + SLIC + air removal, end to end", f"{total:.1f} s ({result['supervoxels']} supervoxels)"),
        (f"slices per SAM call (at most {SLICE_BATCH}; chosen for {budget_text})", str(batch)),
        ("estimated SAM activations per slice", f"{result['estimated_slice_gib']:.2f} GiB"),
        ("estimated peak host memory (max RSS with SAM loaded + the estimate)",
         f"{before_gib:.2f} + {estimated_gib:.2f} = {result['estimated_peak_host_memory_gib']:.2f} GiB"),
        ("peak host memory (max RSS)", f"{result['peak_host_memory_gib']:.2f} GiB"),
    ])
    print(
        f"{result['machine']}\nsupervoxels of a {result['roi']}: {total:.1f} s, {batch} slice(s) per SAM call\n"
        f"peak host memory {result['peak_host_memory_gib']:.2f} GiB (estimated "
        f"{result['estimated_peak_host_memory_gib']:.2f})\nappended to {output}"
    )
    return result


#: Tera floating-point operations of one 128³ window through the encoder and the class head
#: (reference doc §10; 4.0 with both decoders): what the achieved FLOP/s are counted from.
WINDOW_TFLOP = 2.9


@dataclass(frozen=True)
class PipelineRun:
    """One timed segmentation, run in a process of its own so that its peak memory is its own."""

    pipeline: str  # "engine" (ours) or "reference" (the bundle's MONAI components)
    source: str  # a volume file both pipelines read
    label_ids: Optional[tuple[int, ...]]  # None: everything
    precision: str
    device: str
    weights: Optional[str]
    window_batch: int = 1  # ours only: windows per network call
    gpu_memory_gib: Optional[float] = None  # caps what the process may allocate on the GPU
    runtime: str = "torch"  # ours only: what runs the windows (``model.RUNTIMES``)


def run_reference_comparison(
    input_path: Optional[str],
    phantom: Optional[str],
    labels: str,
    weights: Optional[str],
    device: str,
    precisions: Sequence[str],
    output: Path,
    json_output: Path,
    *,
    window_batch: int = 1,
    gpu_memory_gib: Optional[float] = None,
    runtime: str = "torch",
) -> list[dict]:
    """Time our engine against the reference pipeline on one volume, at each of ``precisions``.

    Each segmentation runs in a fresh process (``spawn``), from reading the file to the labelmap
    on the input grid, so that each peak of host and GPU memory is that run's. The two labelmaps
    of a precision are compared voxel by voxel. ``gpu_memory_gib`` makes a large GPU behave as a
    smaller one (an 8 GB card): a run that then runs out of memory is recorded as such. With
    ``runtime`` openvino the network is converted (or found in the cache) before the timed runs,
    and the time that took is recorded apart. Appends to ``output`` (Markdown) and ``json_output``.
    """
    import tempfile

    import numpy as np

    from VISTA3DSlicerLib.labels import automatic_prompt, expand_subclasses
    from VISTA3DSlicerLib.model import check_runtime, resolve_device

    label_ids = automatic_prompt(labels)
    classes = len(expand_subclasses(label_ids)) if label_ids is not None else 117
    torch_device = resolve_device(device)
    check_runtime(runtime, torch_device)
    preparing = {precision: _prepare_runtime(runtime, weights, precision, window_batch) for precision in precisions}
    results = []
    with tempfile.TemporaryDirectory(prefix="vista3d-bench-") as folder:
        source, description = _comparison_input(input_path, phantom, Path(folder))
        for precision in precisions:
            runs = {
                pipeline: _run_in_child(
                    PipelineRun(pipeline, str(source), None if label_ids is None else tuple(label_ids), precision,
                                str(torch_device), weights, window_batch, gpu_memory_gib, runtime),
                    Path(folder) / f"{pipeline}-{precision}.npy",
                )
                for pipeline in ("reference", "engine")
            }
            (reference, reference_labels), (engine, engine_labels) = runs["reference"], runs["engine"]
            compared = reference_labels is not None and engine_labels is not None
            agreement = float(np.mean(reference_labels == engine_labels)) if compared else None
            result = {
                "date": datetime.date.today().isoformat(),
                "machine": machine_description(torch_device),
                "weights": weights or "random vista3d132 weights (seed 0)",
                "input": description,
                "classes": classes,
                "precision": precision,
                "reference": reference,
                "engine": engine,
                "speedup": reference["seconds"] / engine["seconds"] if compared else None,
                "agreement": agreement,
                "identical": compared and bool(np.array_equal(reference_labels, engine_labels)),
                "window_batch": window_batch,
                "gpu_memory_limit_gib": gpu_memory_gib,
                "runtime": runtime,
                "runtime_preparation_seconds": preparing[precision],
                "command": _command(),
            }
            results.append(result)
            if compared:
                print(f"{precision}: reference {reference['seconds']:.1f} s, ours {engine['seconds']:.1f} s "
                      f"({result['speedup']:.2f}x), labels agree on {agreement:.4%} of voxels", flush=True)
            else:
                print(f"{precision}: reference: {reference.get('failed', 'done')}; ours: {engine.get('failed', 'done')}")
    _append_comparison(output, results)
    _append_json(json_output, results)
    print(f"appended to {output} and {json_output}")
    return results


def _prepare_runtime(runtime: str, weights: Optional[str], precision: str, window_batch: int) -> Optional[float]:
    """Seconds to make ``runtime`` ready for the timed runs (OpenVINO converts the network once per
    weights, then the runs read it from the cache), or None for PyTorch, which needs nothing."""
    if runtime == "torch":
        return None
    from VISTA3DSlicerLib.engine import Engine

    started = time.perf_counter()
    network = _network(weights, "cpu")  # the weights the timed runs build
    Engine(network, "cpu", precision, window_batch=window_batch, runtime=runtime).prepare_runtime()
    return time.perf_counter() - started


def _comparison_input(input_path: Optional[str], phantom: Optional[str], folder: Path) -> tuple[Path, str]:
    """The volume file to segment and its description: ``input_path``, or a phantom written to ``folder``.

    ``phantom`` is ``XxYxZ`` voxels at 0.8 mm (the issue's 333x333x603 and 512x512x512), or ``XxYxZ@S`` at S mm.
    """
    from VISTA3DSlicerLib.io import image_to_sitk, read_image

    if phantom is None:
        source = _source(input_path)
        image = read_image(source)
        return source, f"{source.name} {image.shape} at {tuple(round(float(s), 2) for s in image.spacing)} mm"
    size, _, spacing = phantom.partition("@")
    try:
        shape = tuple(int(n) for n in size.lower().split("x"))
        mm = float(spacing or 0.8)
    except ValueError:
        shape, mm = (), 0.0
    if len(shape) != 3 or min(shape) < 2 or mm <= 0:
        raise VISTA3DError(f"--phantom {phantom!r}: give the size as XxYxZ voxels, e.g. 333x333x603 or 512x512x512@0.8.")
    import SimpleITK as sitk

    image = phantom_ct(shape, mm)
    # Uncompressed, as a volume already loaded would be: gzip would time zlib, the same for both pipelines.
    source = folder / f"phantom_{'x'.join(map(str, shape))}.nii"
    sitk.WriteImage(image_to_sitk(image.with_array(image.array.astype("int16"))), str(source))  # HU as a CT stores them
    return source, f"phantom {shape} at {mm} mm"


def _run_in_child(run: PipelineRun, labels_path: Path) -> tuple[dict, "Optional[np.ndarray]"]:
    """``_measure(run)`` in a fresh process; its figures and the labelmap it made (None if it ran out of memory)."""
    import multiprocessing

    import numpy as np

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        figures = pool.apply(_measure, (run, str(labels_path)))
    return figures, None if "failed" in figures else np.load(labels_path)


def _measure(run: PipelineRun, labels_path: str) -> dict:
    """Segment ``run.source`` with ``run.pipeline``; save the labelmap to ``labels_path``, return the figures.

    A run that runs out of memory returns ``failed`` instead; the engine's out-of-memory fallbacks
    (its warnings) are returned as ``fallbacks``.
    """
    import logging

    import numpy as np
    import torch

    from VISTA3DSlicerLib.engine import _is_out_of_memory

    device = torch.device(run.device)
    if run.gpu_memory_gib and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(run.gpu_memory_gib * 2**30 / total, 1.0), device)
    fallbacks: list[str] = []
    warnings = logging.Handler(logging.WARNING)
    warnings.emit = lambda record: fallbacks.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("VISTA3DSlicerLib.engine").addHandler(warnings)
    network = _network(run.weights, device)
    windows = []  # the engine's count of windows, from its progress reports

    def count_windows(done: int, total: int, message: str) -> None:
        if message.startswith("Window"):
            windows.append(total)

    started = time.perf_counter()
    figures: dict = {}
    try:
        if run.pipeline == "engine":
            from VISTA3DSlicerLib.engine import Engine
            from VISTA3DSlicerLib.io import read_image

            engine = Engine(network, device, run.precision, window_batch=run.window_batch, runtime=run.runtime)
            labels = engine.segment(read_image(run.source), run.label_ids, progress=count_windows).array
        else:
            from reference_pipeline import run_reference

            labels = run_reference(run.source, network, run.label_ids, device=device, precision=run.precision)
        _synchronize(device)
    except Exception as error:
        if not _is_out_of_memory(error):
            raise
        figures["failed"] = f"out of memory ({type(error).__name__})"
    else:
        np.save(labels_path, np.asarray(labels).astype(np.uint8))
    finally:
        logging.getLogger("VISTA3DSlicerLib.engine").removeHandler(warnings)
    seconds = time.perf_counter() - started
    cuda = device.type == "cuda"
    return figures | {
        "seconds": seconds,
        "windows": windows[-1] if windows else None,
        "fallbacks": fallbacks,
        "peak_host_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None,
    }


def _append_comparison(path: Path, results: list[dict]) -> None:
    first = results[0]
    rows = []
    ours = "ours" if first["runtime"] == "torch" else f"ours ({first['runtime']})"
    for result in results:
        reference, engine, precision = result["reference"], result["engine"], result["precision"]
        if result["runtime_preparation_seconds"] is not None:
            rows.append((f"{precision}: {result['runtime']}: converting the network and compiling it, before the "
                         "timed runs (once per weights; then from the cache)",
                         f"{result['runtime_preparation_seconds']:.1f} s"))
        rows += [
            (f"{precision}: reference pipeline, end to end", _outcome(reference)),
            (f"{precision}: {ours}, end to end", _outcome(engine) + (
                f" ({result['speedup']:.2f}x the reference)" if result["speedup"] else "")),
        ]
        if result["agreement"] is not None:
            rows.append((f"{precision}: labels agreeing with the reference at {precision}",
                         f"{result['agreement']:.4%}" + (" (identical)" if result["identical"] else "")))
        rows.append((f"{precision}: peak host memory (max RSS of the process), reference / ours",
                     f"{reference['peak_host_memory_gib']:.2f} / {engine['peak_host_memory_gib']:.2f} GiB"))
        if engine["fallbacks"]:
            rows.append((f"{precision}: {ours}, out-of-memory fallbacks", "; ".join(engine["fallbacks"])))
        if engine["windows"]:
            rate = engine["windows"] * WINDOW_TFLOP * 1e3 / engine["seconds"]
            rows.append((f"{precision}: {ours}, network rate ({engine['windows']} windows x {WINDOW_TFLOP} TFLOP "
                         "over the end-to-end time: a lower bound)", f"{rate:.0f} GFLOP/s"))
        if engine["peak_gpu_memory_gib"] is not None:
            rows.append((f"{precision}: peak GPU memory allocated (reserved), reference / ours",
                         f"{reference['peak_gpu_memory_gib']:.2f} ({reference['peak_gpu_reserved_gib']:.2f}) / "
                         f"{engine['peak_gpu_memory_gib']:.2f} ({engine['peak_gpu_reserved_gib']:.2f}) GiB"))
    # What a user of the bundle gets is its fp32 (CPU) or its AMP (GPU): ours at a lower precision against that.
    fp32 = next((result for result in results if result["precision"] == "fp32"), None)
    for result in results:
        if fp32 is not None and result is not fp32 and "failed" not in fp32["reference"] | result["engine"]:
            rows.append((f"{ours} at {result['precision']} against the reference at fp32",
                         f"{fp32['reference']['seconds'] / result['engine']['seconds']:.2f}x faster"))
    settings = "".join([
        f"; ours with the {first['runtime']} runtime" if first["runtime"] != "torch" else "",
        f"; ours with {first['window_batch']} windows per network call" if first["window_batch"] > 1 else "",
        f"; GPU memory capped at {first['gpu_memory_limit_gib']:g} GiB" if first["gpu_memory_limit_gib"] else "",
    ])
    _append_section(path, f"ours against the reference pipeline, {first['classes']} classes", first, rows,
                    context=f"Input: {first['input']}; each run in a fresh process, from reading the file to "
                            f"the labelmap on the input grid{settings}")


def _outcome(run: dict) -> str:
    """A run's time, or that it ran out of memory and when."""
    if "failed" in run:
        return f"{run['failed']} after {run['seconds']:.1f} s"
    return f"{run['seconds']:.1f} s"


def _append_json(path: Path, results: list[dict]) -> None:
    """Add ``results`` to the JSON list in ``path`` (created if missing)."""
    import json

    earlier = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    path.write_text(json.dumps(earlier + results, indent=1) + "\n", encoding="utf-8")


def _command() -> str:
    return "python benchmarks/bench.py " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("bench.py") \
        else "python benchmarks/bench.py"


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


HEADER = (
    "# Benchmarks\n\nWritten by `benchmarks/bench.py` (each run appends a section). Timings are wall-clock "
    "seconds on the machine named; speed goals live here, not in the tests.\n"
)


def _append_section(
    path: Path, title: str, result: dict, rows: list[tuple[str, str]], context: Optional[str] = None
) -> None:
    """Append one run to ``path`` (created with its header): a title, the command, the weights,
    optional context, then a table of ``(measure, value)`` rows."""
    lines = [f"\n## {result['date']}: {title} on {result['machine']}\n", f"Command: `{result['command']}`  "]
    lines.append(f"Weights: {result['weights']}" + ("  " if context else ""))
    if context:
        lines.append(context)
    lines += ["", "| measure | value |", "|---|---|"] + [f"| {measure} | {value} |" for measure, value in rows]
    header = "" if path.exists() else HEADER  # before open() creates the file
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(header + "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    from VISTA3DSlicerLib.model import PRECISIONS, RUNTIMES

    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", help="CT to time end to end (default: the example CT in ../shared/data)")
    parser.add_argument("--labels", default="1,3,5,6,10", help="classes for the end-to-end timing")
    parser.add_argument("--weights", help="checkpoint; default: random vista3d132 weights (timing is the same)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--repeats", type=int, default=2, help="timed 128³ windows (after one warm-up)")
    parser.add_argument("--output", default="BENCHMARKS.md", help="Markdown file the results are appended to")
    parser.add_argument(
        "--clicks", action="store_true",
        help="time interactive clicks instead: first click, later clicks in a window already seen (feature "
        "cache), a click in a new window, and the same clicks without the cache",
    )
    parser.add_argument("--label", default="liver", help="with --clicks: the class the clicks edit")
    parser.add_argument(
        "--supervoxels", type=int, metavar="SIZE",
        help="time SAM supervoxels of a SIZE³ region instead (e.g. 128; a CPU takes minutes per 10 slices)",
    )
    parser.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--sam-weights", help="with --supervoxels: SAM checkpoint (default: random weights)")
    parser.add_argument(
        "--reference", action="store_true",
        help="time ours against the reference pipeline (the bundle's MONAI components) on --input or --phantom, "
        "each run in a fresh process, at each of --precisions; compare their labels",
    )
    parser.add_argument("--phantom", metavar="XxYxZ[@MM]", help="with --reference: a CT-like phantom (default 0.8 mm)")
    parser.add_argument("--precisions", default=None,
                        help="with --reference: comma-separated, e.g. fp32,bf16 (default: --precision)")
    parser.add_argument("--json", default="BENCHMARKS.json", help="with --reference: JSON file the results are added to")
    parser.add_argument("--window-batch", type=int, default=1, metavar="N",
                        help="with --reference: our engine runs N windows per network call (default 1)")
    parser.add_argument("--runtime", default="torch", choices=RUNTIMES,
                        help="with --reference: what runs our engine's windows (openvino: CPU only)")
    parser.add_argument("--server", metavar="URL",
                        help="time a session on a `vista3d serve` server instead: bytes and round trips of an upload, "
                        "an automatic segmentation (--labels) and two clicks; token from $VISTA3D_SERVER_TOKEN")
    parser.add_argument("--token-file", help="with --server: a file holding the token")
    parser.add_argument("--gpu-memory", type=float, metavar="GIB",
                        help="with --reference: let each run allocate at most GIB on the GPU (e.g. 8, an 8 GB card)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark the arguments ask for; a ``VISTA3DError`` is one line and exit status 1."""
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except VISTA3DError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> None:
    from VISTA3DSlicerLib.model import PRECISIONS

    if args.server:
        run_server_benchmark(args.server, args.token_file, args.input, args.labels, Path(args.output))
    elif args.reference:
        precisions = [p.strip() for p in (args.precisions or args.precision).split(",") if p.strip()]
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown or not precisions:
            raise VISTA3DError(f"--precisions {args.precisions!r}: give fp32, fp16 or bf16, comma-separated.")
        if args.window_batch < 1 or (args.gpu_memory is not None and args.gpu_memory <= 0):
            raise VISTA3DError("--window-batch must be 1 or more and --gpu-memory more than 0 GiB.")
        run_reference_comparison(args.input, args.phantom, args.labels, args.weights, args.device, precisions,
                                 Path(args.output), Path(args.json), window_batch=args.window_batch,
                                 gpu_memory_gib=args.gpu_memory, runtime=args.runtime)
    elif args.supervoxels:
        run_supervoxel_benchmark(
            args.supervoxels, args.sam_model, args.sam_weights, args.device, args.precision, Path(args.output)
        )
    elif args.clicks:
        run_click_benchmark(args.input, args.label, args.weights, args.device, args.precision, Path(args.output))
    else:
        run_benchmark(input_path=args.input, labels=args.labels, weights=args.weights, device=args.device,
                      precision=args.precision, repeats=args.repeats, output=Path(args.output))


if __name__ == "__main__":
    sys.exit(main())
