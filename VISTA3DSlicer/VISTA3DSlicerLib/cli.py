"""The ``vista3d`` command line: segment, batch, zeroshot, supervoxels, labels, weights.

Every failure the user can fix is a ``VISTA3DError``; it is printed as one line starting
with ``error:`` and the command exits with status 1 (no traceback). Running out of memory and
system errors (a full disk, a folder without write permission) get one line with what to do, too.
Anything else is a bug: one line asking for a report, exit status 2, and the traceback with
``-v``. Outputs are checked before the model is loaded, so a refused overwrite costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import logging
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from .batch import BatchResult, run_batch
from .errors import Cancelled, VISTA3DError
from .model import PRECISIONS, RUNTIMES
from .progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from .geometry import Image

#: Label value of a structure defined by clicks alone (no class): the first ID after VISTA3D's classes,
#: so that the output never claims a class it was not segmented as.
POINTS_ONLY_ID = 133
#: File endings ``read_image`` takes, longest first so ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
OUTPUT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "mha")
SUMMARY_NAME = "vista3d_summary.csv"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.run(args)
    except VISTA3DError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as error:
        return _report_unexpected(error, args.verbose)


def _report_unexpected(error: Exception, verbose: bool) -> int:
    """One line for an error that is not a ``VISTA3DError``; the traceback only with ``-v``."""
    if verbose:
        traceback.print_exc()
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":  # torch's CUDA OOM
        print("error: out of memory. Segment fewer --labels, crop the volume, use --precision bf16 (CPU) or "
              "fp16 (GPU), or run on a machine with more memory (--device cpu if the GPU is the one too small).",
              file=sys.stderr)
        return 1
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}. Check that the path exists, that you may write there "
              "and that the disk has room.", file=sys.stderr)
        return 1
    print(f"error: unexpected {type(error).__name__}: {error}. This is a bug in vista3d: please report it with "
          "the output of the same command run with -v.", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vista3d", description="VISTA3D CT segmentation from the command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="say more about what happens")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--labels",
            help="comma-separated VISTA3D names or IDs (liver,spleen or 1,3), or 'everything' (default)",
        )
        command.add_argument("--weights", help="checkpoint file (default: $VISTA3D_WEIGHTS, else the download)")
        command.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
        command.add_argument("--precision", default="fp32", choices=PRECISIONS)
        command.add_argument(
            "--runtime", default="torch", choices=RUNTIMES,
            help="what runs automatic segmentation: torch (default; reproduces the reference) or openvino "
            "(CPU only, faster there; pip install openvino; converts the network once, minutes)",
        )
        command.add_argument("--overwrite", action="store_true", help="replace outputs that exist")

    segment = commands.add_parser("segment", help="segment one CT volume")
    segment.add_argument("image", help="CT volume (NIfTI, NRRD, MHA) or a DICOM series folder")
    segment.add_argument("-o", "--output", required=True, help="labelmap: .nii.gz, .nrrd, .seg.nrrd or .mha")
    model_options(segment)
    segment.add_argument("--preview", help="also write a PNG of three orthogonal slices with the labels")
    clicks = segment.add_argument_group(
        "clicks",
        "Segment or correct one structure with clicks. Without --label the structure is defined by the clicks "
        f"alone and written as ID {POINTS_ONLY_ID}. With a class, the clicks edit its automatic result; "
        "with a zero-shot ID (133..254) they segment a structure VISTA3D has no class for.",
    )
    clicks.add_argument("--label", help="the one structure the clicks are on: a VISTA3D name or ID (1..254)")
    clicks.add_argument(
        "--point", dest="clicks", action=_ClickAction, positive=True, metavar="I,J,K",
        help="a positive click (repeatable): voxel indices of the input array, as SimpleITK's "
        "TransformIndexToPhysicalPoint takes them, or millimetres with --point-space ras",
    )
    clicks.add_argument(
        "--negative-point", dest="clicks", action=_ClickAction, positive=False, metavar="I,J,K",
        help="a negative click (repeatable): a place that is not the structure",
    )
    clicks.add_argument(
        "--point-space", choices=("index", "ras"), default="index",
        help="index (default): voxel indices i,j,k; ras: Slicer's RAS millimetres (as Markups show them)",
    )
    segment.set_defaults(run=_segment, clicks=[])

    batch = commands.add_parser("batch", help="segment every volume of a folder or glob pattern")
    batch.add_argument("inputs", help="a folder, or a glob pattern such as 'cases/*.nii.gz' (quote it)")
    batch.add_argument("-o", "--output", required=True, help="output folder")
    model_options(batch)
    batch.add_argument("--format", default="nii.gz", choices=OUTPUT_FORMATS, help="labelmap format")
    batch.add_argument("--preview", action="store_true", help="also write <case>_preview.png per case")
    batch.set_defaults(run=_batch)

    def sam_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"), help="SAM backbone")
        command.add_argument("--sam-weights", help="SAM checkpoint (default: $VISTA3D_SAM_WEIGHTS, else the download)")
        command.add_argument("--n-segments", type=int, default=400, help="about how many supervoxels (default 400)")

    supervoxels = commands.add_parser("supervoxels", help="SAM-feature supervoxels of a CT (the paper's method)")
    supervoxels.add_argument("image", help="CT volume (NIfTI, NRRD, MHA) or a DICOM series folder")
    supervoxels.add_argument("-o", "--output", required=True, help="supervoxel labels: .nii.gz, .nrrd or .mha")
    supervoxels.add_argument(
        "--roi", metavar="I0,J0,K0,I1,J1,K1",
        help="only this box (voxel indices of the input array, ends exclusive); default: the whole volume "
        "(10-20 s per slice per view on a CPU with vit_b: use a ROI there)",
    )
    sam_options(supervoxels)
    supervoxels.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    supervoxels.add_argument("--precision", default="fp32", choices=PRECISIONS)
    supervoxels.add_argument("--overwrite", action="store_true", help="replace an output that exists")
    supervoxels.set_defaults(run=_supervoxels)

    zeroshot = commands.add_parser("zeroshot", help="segment a structure VISTA3D has no class for, with clicks")
    zeroshot.add_argument("image", help="CT volume (NIfTI, NRRD, MHA) or a DICOM series folder")
    zeroshot.add_argument("-o", "--output", required=True, help="labelmap: .nii.gz, .nrrd, .seg.nrrd or .mha")
    zeroshot.add_argument("--id", type=int, default=POINTS_ONLY_ID, help="label value of the structure (133..254)")
    zeroshot.add_argument("--name", help="the structure's name in a .seg.nrrd output (default: zero-shot structure ID)")
    zeroshot.add_argument(
        "--point", dest="clicks", action=_ClickAction, positive=True, metavar="I,J,K", help="a positive click"
    )
    zeroshot.add_argument(
        "--negative-point", dest="clicks", action=_ClickAction, positive=False, metavar="I,J,K",
        help="a negative click",
    )
    zeroshot.add_argument("--point-space", choices=("index", "ras"), default="index")
    zeroshot.add_argument(
        "--snap", type=float, metavar="FRACTION",
        help="snap the mask to SAM supervoxels: keep those it covers for at least FRACTION (0..1]",
    )
    zeroshot.add_argument("--weights", help="VISTA3D checkpoint (default: $VISTA3D_WEIGHTS, else the download)")
    zeroshot.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    zeroshot.add_argument("--precision", default="fp32", choices=PRECISIONS)
    zeroshot.add_argument("--overwrite", action="store_true", help="replace an output that exists")
    sam_options(zeroshot)
    zeroshot.set_defaults(run=_zeroshot, clicks=[], runtime="torch")  # clicks run in PyTorch

    labels = commands.add_parser("labels", help="print the label table")
    labels.set_defaults(run=_labels)

    weights = commands.add_parser("weights", help="download, locate or verify the VISTA3D weights")
    weights.add_argument("action", choices=("download", "path", "verify"))
    weights.add_argument(
        "--model", default="vista3d", choices=("vista3d",) + tuple(f"sam_{k}" for k in ("vit_b", "vit_l", "vit_h")),
        help="which checkpoint: VISTA3D (default) or a SAM model of the zero-shot tool",
    )
    weights.add_argument("--source", default=None, help="huggingface (default) or nvidia")
    weights.add_argument("--weights", help="with verify: the file to check (default: the one that would be used)")
    weights.set_defaults(run=_weights)

    return parser


# ----------------------------------------------------------------------------------------- segment


class _ClickAction(argparse.Action):
    """``--point`` / ``--negative-point``: collect clicks in the order they are given, with their sign."""

    def __init__(self, *args, positive: bool, **kwargs):
        self.positive = positive
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            coordinates = [float(v) for v in str(values).split(",")]
        except ValueError:
            coordinates = []
        if len(coordinates) != 3:
            parser.error(f"{option_string} takes three comma-separated numbers (i,j,k), got {values!r}")
        namespace.clicks = list(getattr(namespace, "clicks", None) or []) + [(coordinates, self.positive)]


def _segment(args: argparse.Namespace) -> int:
    from .io import write_labelmap, write_preview_png

    output = Path(args.output)
    preview = Path(args.preview) if args.preview else None
    for path in (output, preview):
        _refuse_existing(path, args.overwrite)
    if args.clicks or args.label is not None:
        run = _click_job(args)
    else:
        label_ids = _label_ids(args.labels)

        def run(image, engine):
            with _progress_bar(Path(args.image).name) as progress:
                return engine.segment(image, label_ids, progress=progress)

    image = _read_ct(args.image)
    engine = _engine(args)
    labelmap = run(image, engine)
    write_labelmap(labelmap, output, overwrite=args.overwrite)
    print(f"Wrote {output}")
    if preview is not None:
        write_preview_png(image, labelmap, preview, overwrite=args.overwrite)
        print(f"Wrote {preview}")
    return 0


def _click_job(args: argparse.Namespace):
    """Check the click options now (before any loading) and return what segments the image with them."""
    from .labels import validate_click_label

    if args.labels is not None:
        raise VISTA3DError("Clicks edit one structure: give it with --label (not --labels).")
    if not args.clicks:
        raise VISTA3DError("--label without clicks: add --point i,j,k (or use --labels for automatic segmentation).")
    label = None if args.label is None else validate_click_label(args.label)

    def run(image, engine):
        import numpy as np

        from .interactive import Session

        with _progress_bar(Path(args.image).name) as progress:
            structure = Session(engine, image).structure(label)
            edit = structure.add_clicks(args.clicks, args.point_space, progress=progress)
        value = POINTS_ONLY_ID if label is None else label
        return image.with_array(np.where(edit.mask, value, 0).astype(np.uint8))

    return run


def _sam(args: argparse.Namespace):
    from .model import resolve_device
    from .supervoxels import build_sam
    from .weights import resolve_sam_weights

    device = resolve_device(args.device)
    sam = build_sam(args.sam_model, str(resolve_sam_weights(args.sam_weights, args.sam_model)), device)
    print(f"SAM {args.sam_model} on {device} ({args.precision})", file=sys.stderr)
    return sam, device


def _supervoxels(args: argparse.Namespace) -> int:
    from .io import write_supervoxels
    from .supervoxels import compute_supervoxels, parse_roi

    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    image = _read_ct(args.image)
    roi = parse_roi(args.roi, image.shape) if args.roi else None
    sam, device = _sam(args)
    with _progress_bar(Path(args.image).name) as progress:
        labels = compute_supervoxels(
            sam, image, roi, n_segments=args.n_segments, device=device, precision=args.precision, progress=progress
        )
    write_supervoxels(labels, output, overwrite=args.overwrite)
    print(f"Wrote {output} ({int(labels.array.max())} supervoxels)")
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from .interactive import Session
    from .io import write_labelmap
    from .labels import ZERO_SHOT_IDS, label_info
    from .supervoxels import compute_supervoxels, snap, snap_roi

    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    if args.id not in ZERO_SHOT_IDS:
        raise VISTA3DError(f"--id {args.id}: a zero-shot structure takes an ID from 133 to 254.")
    if not args.clicks:
        raise VISTA3DError("Give at least one click: --point i,j,k on the structure.")
    if args.snap is not None and not 0 < args.snap <= 1:
        raise VISTA3DError(f"--snap {args.snap}: give a fraction in (0, 1], e.g. 0.5.")
    image = _read_ct(args.image)
    sam, sam_device = _sam(args) if args.snap is not None else (None, None)  # a missing SAM file fails now
    engine = _engine(args)
    with _progress_bar(Path(args.image).name) as progress:
        structure = Session(engine, image).structure(args.id, mask=np.zeros(image.shape, dtype=bool))
        mask = structure.add_clicks(args.clicks, args.point_space, progress=progress).mask
        if args.snap is not None:
            clicks = structure.clicks
            supervoxels = compute_supervoxels(
                sam, image, snap_roi(mask, [c.index for c in clicks]), n_segments=args.n_segments,
                device=sam_device, precision=args.precision, progress=progress,
            )
            mask = snap(
                mask, supervoxels.array, args.snap,
                positive=[c.index for c in clicks if c.positive], negative=[c.index for c in clicks if not c.positive],
            )
    write_labelmap(
        image.with_array(np.where(mask, args.id, 0).astype(np.uint8)), output, overwrite=args.overwrite,
        segments={args.id: replace(label_info(args.id), display_name=args.name)} if args.name else None,
    )
    print(f"Wrote {output}")
    return 0


def _read_ct(path) -> "Image":
    """The image, with a warning on stderr when it does not look like a CT: VISTA3D is a CT model,
    and on MR or unscaled values it gives confident nonsense."""
    from .io import ct_warning, read_image

    image = read_image(path)
    warning = ct_warning(image)
    if warning:
        print(f"warning: {Path(path).name}: {warning}", file=sys.stderr)
    return image


def _refuse_existing(path: Optional[Path], overwrite: bool) -> None:
    if path is not None and path.exists() and not overwrite:
        raise VISTA3DError(f"{path} exists and was left as it is. Pass --overwrite to replace it.")


def _label_ids(text: Optional[str]) -> Optional[list[int]]:
    """IDs from ``--labels``; None means everything (the engine's default prompt)."""
    from .labels import EVERYTHING, parse_label_prompt, validate_automatic_prompt

    if text is None:
        return None
    ids = parse_label_prompt(text)
    validate_automatic_prompt(ids)
    return None if list(ids) == list(EVERYTHING) else ids


def _engine(args: argparse.Namespace):
    from .engine import Engine

    engine = Engine.from_weights(args.weights, device=args.device, precision=args.precision, runtime=args.runtime)
    runtime = "" if args.runtime == "torch" else f", {args.runtime}"
    print(f"VISTA3D on {engine.device} ({args.precision}{runtime})", file=sys.stderr)
    return engine


@contextlib.contextmanager
def _progress_bar(desc: str) -> Iterator[ProgressCallback]:
    """A tqdm bar on stderr, fed by the engine's progress callback."""
    from tqdm import tqdm

    with tqdm(total=1, desc=desc, unit="window", file=sys.stderr, dynamic_ncols=True) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        yield progress


# ------------------------------------------------------------------------------------------- batch


def _batch(args: argparse.Namespace) -> int:
    cases = list(_find_cases(args.inputs))
    if not cases:
        raise VISTA3DError(
            f"No volumes found in {args.inputs!r}: give a folder holding {', '.join(IMAGE_SUFFIXES)} files "
            "(or DICOM series folders), or a quoted glob pattern."
        )
    out_dir = Path(args.output)
    names = _case_names(cases, out_dir)
    label_ids = _label_ids(args.labels)
    with _batch_lock(out_dir):
        return _run_batch(args, cases, names, out_dir, label_ids)


def _run_batch(args: argparse.Namespace, cases: list[Path], names: dict[Path, str], out_dir: Path,
               label_ids: Optional[list[int]]) -> int:
    """``vista3d batch`` once its cases, their names and the output folder are settled and locked."""
    from tqdm import tqdm

    from .io import write_labelmap, write_preview_png

    summary = out_dir / SUMMARY_NAME
    earlier = _read_summary(summary)  # read before this run replaces it: what it says of the cases skipped now

    def output(source: Path) -> Path:
        return out_dir / f"{names[source]}.{args.format}"

    def should_skip(source: Path) -> Optional[str]:
        return "output exists (use --overwrite to redo)" if output(source).exists() and not args.overwrite else None

    engine = None  # loaded on the first case that needs it: a batch of finished cases loads nothing
    load_error: Optional[Exception] = None

    def process(source: Path, progress: ProgressCallback, cancel: CancelToken) -> None:
        nonlocal engine, load_error
        name = names[source]
        image = _read_ct(source)
        if engine is None:
            try:
                engine = _engine(args)
            except Exception as error:  # a model that cannot load fails the whole batch, once:
                load_error = error  # stop the batch here and raise the error after it
                raise Cancelled() from error
        with _progress_bar(name) as case_progress:  # a bar of its own, named after the case
            labelmap = engine.segment(image, label_ids, progress=case_progress, cancel=cancel)
        if args.preview:  # before the labelmap: an existing labelmap marks a finished case
            # So a preview without its labelmap is a killed run's leftover, and is replaced. Once the
            # labelmap exists (another batch on this folder finished the case meanwhile), the preview
            # is that batch's: it is kept, and the case fails with "exists" before writing anything.
            write_preview_png(
                image, labelmap, out_dir / f"{name}_preview.png",
                overwrite=args.overwrite or not output(source).exists(),
            )
        write_labelmap(labelmap, output(source), overwrite=args.overwrite)

    # The summary is rewritten after each case, so that a killed batch leaves one of what it finished.
    # A kill can also leave the temporary file of a write under way (".<name>.<hex>.tmp<ext>", see
    # io.write_atomically): it stays, since it may be another batch's write in progress in this folder;
    # being hidden, it is never taken for an output, nor for an input by _find_cases.
    rows: list[dict] = []
    sources = iter(cases)  # the results come one per case, in the order of the cases

    def record(result: BatchResult) -> None:
        source = next(sources)
        cases_bar.update()
        if result.status == "not run":  # only after a model that failed to load (raised below):
            return  # nothing was done to these cases
        rows.append(_row(source, output(source), result, earlier.get(str(output(source)))))
        _write_summary(summary, rows)

    with tqdm(total=len(cases), desc="Cases", unit="case", file=sys.stderr, dynamic_ncols=True) as cases_bar:
        report = run_batch(cases, process, name=names.__getitem__, should_skip=should_skip, on_result=record)
    if load_error is not None:
        raise load_error
    counts = {status: len(report.with_status(status)) for status in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; summary: {summary}")
    for result in report.with_status("failed"):
        print(f"  failed: {result.name}: {result.message}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def _find_cases(pattern: str) -> Iterator[Path]:
    """Volumes of a folder (files with an image ending, and DICOM series sub-folders), or of a glob."""
    folder = Path(pattern)
    candidates = sorted(folder.iterdir()) if folder.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    for path in candidates:
        if path.name.startswith("."):  # hidden: among them an interrupted write's temporary file
            continue
        if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES) and not path.name.endswith(".seg.nrrd"):
            yield path
        elif path.is_dir() and _holds_dicom_series(path):
            yield path


def _holds_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def _case_names(cases: Sequence[Path], out_dir: Path) -> dict[Path, str]:
    """Each case's name, which names its outputs: the file name without its image ending.

    Cases whose names differ only by that ending or by case (``a.nii.gz`` and ``a.nrrd``, the DICOM
    folder ``A``) keep it (``a_nii_gz``, ``a_nrrd``, ``A_dicom``), so that no case takes another's output,
    on a disk that ignores case too. Refused: an output folder that holds inputs, where a result could
    replace one and would be taken for a case by the next batch.
    """
    out_dir = out_dir.resolve()
    inside = [case for case in cases if case.resolve().parent == out_dir]
    if inside:
        raise VISTA3DError(
            f"The output folder {out_dir} holds the inputs ({inside[0].name}{', ...' if len(inside) > 1 else ''}): "
            "results written there could replace them, and the next batch would take the results for cases. "
            "Give another folder with --output."
        )
    stems = {case: _strip_image_suffix(case.name) for case in cases}
    counts = Counter(stem.casefold() for stem in stems.values())
    names = {
        case: stem if counts[stem.casefold()] == 1 else f"{stem}_{_image_suffix(case).strip('.').replace('.', '_') or 'dicom'}"
        for case, stem in stems.items()
    }
    clashes = [name for name, count in Counter(name.casefold() for name in names.values()).items() if count > 1]
    if clashes:  # e.g. a.nii and a_nii.nii.gz next to a.nii.gz: too rare to name more cleverly
        raise VISTA3DError(
            f"Several inputs would write the outputs named {clashes[0]!r}: rename one of them, or run them "
            "in separate batches with different --output folders."
        )
    return names


def _image_suffix(path: Path) -> str:
    """The image ending of ``path``'s name (``.nii.gz``), or "" (a DICOM folder)."""
    return next((suffix for suffix in IMAGE_SUFFIXES if path.name.lower().endswith(suffix)), "")


def _strip_image_suffix(name: str) -> str:
    return name[: len(name) - len(_image_suffix(Path(name)))]


@contextlib.contextmanager
def _batch_lock(out_dir: Path) -> Iterator[None]:
    """Hold the output folder for this batch: a second batch there would rewrite the summary under the first."""
    from filelock import FileLock, Timeout

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(out_dir / ".vista3d_batch.lock"))
        lock.acquire(timeout=0)
    except Timeout:  # an OSError too: caught first
        raise VISTA3DError(
            f"Another vista3d batch is writing to {out_dir}. Wait for it to finish (cases it has done are "
            "skipped when you run this batch again), or give another folder with --output."
        ) from None
    except OSError as error:
        raise VISTA3DError(
            f"Cannot write to the output folder {out_dir}: {error.strerror or error}. Choose a writable folder."
        ) from None
    try:
        yield
    finally:
        lock.release()


_SUMMARY_FIELDS = ("case", "input", "output", "status", "seconds", "message")


def _row(source: Path, output: Path, result: BatchResult, earlier: Optional[dict] = None) -> dict:
    """The summary CSV's row of one case. ``earlier`` is the previous summary's row of the same output:
    a case skipped because its output exists keeps from it when the output was made, and in how long."""
    message = result.message
    if result.status == "skipped" and earlier is not None:
        if earlier["status"] == "done":
            message += f"; done in an earlier run in {earlier['seconds']} s"
        elif earlier["status"] == "skipped":
            message = earlier["message"]  # skipped for the same reason, with what the run before knew
    return {
        "case": result.name,
        "input": str(source),
        "output": str(output),
        "status": result.status,
        "seconds": f"{result.seconds:.1f}",
        "message": message,
    }


def _read_summary(path: Path) -> dict[str, dict]:
    """The rows of the summary an earlier batch left, by output file; rows lacking a field are left out.

    An unreadable summary gives no rows: it only adds to the messages of skipped cases, and the
    batch must not stop over it (writing the new one reports a real problem with the folder).
    """
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error):
        return {}
    return {row["output"]: row for row in rows if all(row.get(field) is not None for field in _SUMMARY_FIELDS)}


def _write_summary(path: Path, rows: list[dict]) -> None:
    """Replace the summary atomically: a kill leaves the previous one whole, never a part of this one."""
    from .io import write_atomically

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, ".csv", True, write)


# ------------------------------------------------------------------------------------ labels, weights


def _labels(args: argparse.Namespace) -> int:
    from .labels import EVERYTHING, SUBCLASSES, SUPPORTED, label_table

    print(f"{'ID':>3}  {'name':<30} {'display name':<30} use")
    for label_id, info in label_table().items():
        if label_id in SUBCLASSES:
            use = "group: " + ",".join(map(str, SUBCLASSES[label_id]))
        elif label_id in EVERYTHING:
            use = "everything"
        elif label_id in SUPPORTED:
            use = "ask for it by name"
        else:
            use = "unsupported (legacy)"
        print(f"{label_id:>3}  {info.name:<30} {info.display_name:<30} {use}")
    print("133-254  zero-shot structures: need clicks")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from . import weights

    if args.model == "vista3d":
        source = _weights_source(args.source)
        resolve = weights.resolve_weights
    else:
        if args.source is not None:
            raise VISTA3DError("--source chooses where the VISTA3D weights come from; SAM has one source.")
        kind = args.model.removeprefix("sam_")
        source = weights.SAM_SOURCES[kind]
        resolve = lambda explicit: weights.resolve_sam_weights(explicit, kind)  # noqa: E731
    if args.action == "path":
        print(resolve(None))
        return 0
    if args.action == "verify":
        path = Path(args.weights) if args.weights else resolve(None)
        if weights.verify(path, source):
            print(f"{path}: checksum OK ({source.name})")
            return 0
        print(f"{path}: checksum does NOT match the {source.name} release. Download it again.", file=sys.stderr)
        return 1
    print(source.licence_note, file=sys.stderr)
    path = _download_with_bar(source)
    print(path)
    return 0


def _weights_source(name: Optional[str]):
    from .weights import DEFAULT_SOURCE, SOURCES

    name = name or DEFAULT_SOURCE
    if name not in SOURCES:
        raise VISTA3DError(f"Unknown weights source {name!r}: use one of {', '.join(SOURCES)}.")
    return SOURCES[name]


def _download_with_bar(source):
    from tqdm import tqdm

    from .weights import download

    with tqdm(desc=source.title, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:

        def progress(done: int, total: int, message: str) -> None:
            bar.total = total or None
            bar.n = done
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        return download(source, progress=progress)


if __name__ == "__main__":
    sys.exit(main())
