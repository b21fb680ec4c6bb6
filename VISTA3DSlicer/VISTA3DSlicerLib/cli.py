"""The ``vista3d`` command line: segment, batch, zeroshot, supervoxels, serve, bench, labels, models, weights.

Every failure the user can fix is a ``VISTA3DError``; it is printed as one line starting
with ``error:`` and the command exits with status 1 (no traceback). Running out of memory and
system errors (a full disk, a folder without write permission) get one line with what to do, too.
Anything else is a bug: one line asking for a report, exit status 2, and the traceback with
``-v``. Outputs are checked before the model is loaded, so a refused overwrite costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from .batch import OUTPUT_FORMATS, SUMMARY_NAME
from .ct_check import MODALITY_TITLES
from .errors import VISTA3DError
from .model import PRECISIONS, RUNTIMES
from .models import DEFAULT_MODEL, MODELS
from .remote import TOKEN_VARIABLE
from .server import DEFAULT_HOST, DEFAULT_PORT, ServerLimits
from .weights import MODELS as WEIGHTS_MODELS
from .progress import ProgressCallback

if TYPE_CHECKING:
    from .geometry import Image

#: Label value of a structure defined by clicks alone (no class): the first ID after VISTA3D's classes,
#: so that the output never claims a class it was not segmented as.
POINTS_ONLY_ID = 133


def main(argv: Optional[Sequence[str]] = None) -> int:
    _never_fail_on_encoding()
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
    finally:
        if getattr(args, "remote", None) is not None:
            args.remote.close()  # the server frees this run's volumes now, not at their idle timeout


def _never_fail_on_encoding() -> None:
    """A terminal or a pipe that only takes ASCII (``LANG=C`` on a server, a Windows code page) gets an
    escape for what it cannot show, such as an accented file name, instead of a crash while printing
    "Wrote ..." after the work is done. Python already does this for stderr; stdout needs it too."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


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

    def choose_model(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--model", choices=tuple(MODELS),
            help=f"which model (default {DEFAULT_MODEL}, or the server's; `vista3d models` lists them with their "
            "licences)",
        )
        command.add_argument(
            "--weights", help="checkpoint file (default: the model's environment variable, such as "
            "$VISTA3D_WEIGHTS, else the download)")
        command.add_argument(
            "--server", metavar="URL", help="run on a `vista3d serve` server (http[s]://HOST:PORT) instead of this "
            f"computer; its token from ${TOKEN_VARIABLE} or --token-file")
        command.add_argument("--token-file", help="a file holding the server's token (its only line)")

    def model_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--labels",
            help="comma-separated class names or IDs (liver,spleen or 1,3), or 'everything' (default); "
            "`vista3d labels --model NAME` lists a model's",
        )
        choose_model(command)
        command.add_argument(
            "--modality", choices=tuple(MODALITY_TITLES),
            help="what the volume is, for a model that segments CT and MR (nv-segment-ctmr): its 'everything' "
            "differs (default: ct for a volume in Hounsfield units, else mri-body). mri-brain expects a "
            "skull-stripped, normalised T1",
        )
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
    batch.add_argument("--format", default="nii.gz", choices=OUTPUT_FORMATS,
                       help="labelmap format; dicom-seg: a DICOM SEG per DICOM series input (pip install "
                       "'vista3dslicer[dicom]')")
    batch.add_argument("--preview", action="store_true", help="also write <case>_preview.png per case")
    batch.add_argument("--part-id", type=int, help="with --num-parts: do part K (0..N-1) of the sorted inputs, "
                       "e.g. a Slurm array's $SLURM_ARRAY_TASK_ID")
    batch.add_argument("--num-parts", type=int, help="split the inputs into N parts for N independent jobs")
    batch.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="local (default): this process, case after case; ray: workers on a Ray cluster, each "
                       "loading the model once (pip install 'vista3dslicer[ray]')")
    batch.add_argument("--address", help="with --executor ray: the cluster (auto, ray://HOST:PORT; default: "
                       "$RAY_ADDRESS, else a local cluster on this machine)")
    batch.add_argument("--workers", type=int, help="with --executor ray: how many (default: one per GPU, else one)")
    batch.add_argument("--gpus-per-worker", type=float,
                       help="with --executor ray: GPUs per worker (default 1 on a cluster with GPUs, else 0)")
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
    choose_model(zeroshot)
    zeroshot.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    zeroshot.add_argument("--precision", default="fp32", choices=PRECISIONS)
    zeroshot.add_argument("--overwrite", action="store_true", help="replace an output that exists")
    sam_options(zeroshot)
    zeroshot.set_defaults(run=_zeroshot, clicks=[], runtime="torch")  # clicks run in PyTorch

    serve = commands.add_parser(
        "serve", help="serve a model to Slicer and scripts on other computers (pip install 'vista3dslicer[server]')")
    serve.add_argument("--model", default=DEFAULT_MODEL, choices=tuple(MODELS), help=f"default {DEFAULT_MODEL}")
    serve.add_argument("--weights", help="checkpoint file (default: the model's environment variable, else the "
                       "download)")
    serve.add_argument("--users", help="the users file: a line NAME TOKEN per user, read again when it changes "
                       "(default: one made with a new token, printed once)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                       "computer only; 0.0.0.0 for every network, behind TLS)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    serve.add_argument("--precision", default="fp32", choices=PRECISIONS)
    serve.add_argument("--max-sessions", type=int, default=ServerLimits.max_sessions_per_user,
                       help=f"open sessions per user (default {ServerLimits.max_sessions_per_user})")
    serve.add_argument("--idle-timeout", type=float, default=ServerLimits.idle_timeout_s,
                       help=f"seconds before an idle session is dropped (default {ServerLimits.idle_timeout_s:g})")
    serve.add_argument("--max-upload-mb", type=float, default=ServerLimits.max_upload_mb,
                       help=f"largest compressed volume taken (default {ServerLimits.max_upload_mb:g} MB)")
    serve.add_argument("--tls-cert", help="TLS certificate (PEM), with --tls-key: serve https")
    serve.add_argument("--tls-key", help="TLS private key (PEM)")
    serve.add_argument("--sam-model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"),
                       help="SAM backbone of the supervoxels (default vit_b)")
    serve.add_argument("--sam-weights", help="SAM checkpoint (default: $VISTA3D_SAM_WEIGHTS, else the download; "
                                             "without one the server makes no supervoxels)")
    serve.set_defaults(run=_serve)

    bench = commands.add_parser(
        "bench", help="what a session on a server costs: bytes and round trips of an upload, a segmentation, clicks")
    bench.add_argument("image", nargs="?", help="the volume to send (default: a 160x160x120 CT-like phantom)")
    bench.add_argument("--server", metavar="URL", required=True, help="the `vista3d serve` server (http[s]://HOST:PORT)")
    bench.add_argument("--token-file", help=f"a file holding the server's token (default: ${TOKEN_VARIABLE})")
    bench.add_argument("--labels", default="liver", help="the automatic segmentation's classes (default liver)")
    bench.set_defaults(run=_bench)

    labels = commands.add_parser("labels", help="print a model's label table")
    labels.add_argument("--model", default=DEFAULT_MODEL, choices=tuple(MODELS),
                        help=f"whose labels (default {DEFAULT_MODEL})")
    labels.set_defaults(run=_labels)

    models = commands.add_parser("models", help="list the models, with what they segment and their licences")
    models.set_defaults(run=_models)

    weights = commands.add_parser("weights", help="download, locate or verify a model's weights")
    weights.add_argument("action", choices=("download", "path", "verify"))
    weights.add_argument(
        "--model", default=DEFAULT_MODEL, choices=WEIGHTS_MODELS,
        help=f"which checkpoint: a segmentation model ({DEFAULT_MODEL} by default) or a SAM model of the "
        "zero-shot tool",
    )
    weights.add_argument("--source", default=None, help="where from, for a model with several (vista3d: "
                         "huggingface, the default, or nvidia)")
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
    from .io import write_labelmap
    from .preview import write_preview_png

    model = _model(args)
    output = Path(args.output)
    preview = Path(args.preview) if args.preview else None
    for path in (output, preview):
        _refuse_existing(path, args.overwrite)
    if args.clicks or args.label is not None:
        run = _click_job(args)
        image = _read_ct(args.image)
    else:
        model.labels.automatic_prompt(args.labels, args.modality)  # a bad prompt fails before anything loads
        image, modality = _read_for_model(args.image, model, args.modality)
        label_ids = model.labels.automatic_prompt(args.labels, modality)

        def run(image, engine):
            with _progress_bar(Path(args.image).name) as progress:
                return engine.segment(image, label_ids, progress=progress)

    engine = _engine(args)
    labelmap = run(image, engine)
    write_labelmap(labelmap, output, overwrite=args.overwrite, label_space=model.labels)
    print(f"Wrote {output}")
    if preview is not None:
        write_preview_png(image, labelmap, preview, overwrite=args.overwrite, label_space=model.labels)
        print(f"Wrote {preview}")
    return 0


def _click_job(args: argparse.Namespace):
    """Check the click options now (before any loading) and return what segments the image with them."""
    model = _model(args)
    model.check_clicks()
    if args.labels is not None:
        raise VISTA3DError("Clicks edit one structure: give it with --label (not --labels).")
    if not args.clicks:
        raise VISTA3DError("--label without clicks: add --point i,j,k (or use --labels for automatic segmentation).")
    label = None if args.label is None else model.labels.validate_click_label(args.label)

    def run(image, engine):
        import numpy as np

        with _progress_bar(Path(args.image).name) as progress:
            structure = engine.session(image).structure(label)
            edit = structure.add_clicks(args.clicks, args.point_space, progress=progress)
        value = POINTS_ONLY_ID if label is None else label
        return image.with_array(np.where(edit.mask, value, 0).astype(np.uint8))

    return run


def _sam(args: argparse.Namespace):
    from .zero_shot import load_sam

    sam, device = load_sam(args.sam_model, args.sam_weights, args.device)
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

    from .io import write_labelmap
    from .labels import label_info
    from .zero_shot import check_request, on_the_server, on_this_machine, segment_zero_shot

    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    _model(args).check_clicks()
    check_request(args.id, args.clicks, args.snap)
    image = _read_ct(args.image)
    supervoxels = None
    if args.snap is not None:  # a missing SAM file fails now; a server uses its own SAM
        supervoxels = on_the_server if args.server else on_this_machine(*_sam(args), args.precision)
    engine = _engine(args)
    with _progress_bar(Path(args.image).name) as progress:
        mask = segment_zero_shot(engine, image, args.id, args.clicks, args.point_space, supervoxels=supervoxels,
                                 snap_fraction=args.snap, n_segments=args.n_segments, progress=progress)
    write_labelmap(
        image.with_array(np.where(mask, args.id, 0).astype(np.uint8)), output, overwrite=args.overwrite,
        segments={args.id: replace(label_info(args.id), display_name=args.name)} if args.name else None,
    )
    print(f"Wrote {output}")
    return 0


def _read_ct(path) -> "Image":
    """The image, with a warning on stderr when it does not look like a CT: VISTA3D is a CT model,
    and on MR or unscaled values it gives confident nonsense."""
    from .ct_check import ct_warning
    from .io import read_image

    image = read_image(path)
    warning = ct_warning(image)
    if warning:
        print(f"warning: {Path(path).name}: {warning}", file=sys.stderr)
    return image


def _read_for_model(path, model, requested: Optional[str]) -> "tuple[Image, str]":
    """The image and the modality to segment it as (``ct_check.choose_modality``), saying on stderr
    what the user should know (a CT model on a non-CT, the modality inferred, brain MR's needs)."""
    from .io import read_image

    image = read_image(path)
    return image, _modality(model, image, requested, Path(path).name)


def _modality(model, image: "Image", requested: Optional[str], name: str) -> str:
    from .ct_check import choose_modality

    choice = choose_modality(model, image, requested)
    if choice.message:
        print(f"{'warning' if choice.warning else 'note'}: {name}: {choice.message}", file=sys.stderr)
    return choice.modality


def _refuse_existing(path: Optional[Path], overwrite: bool) -> None:
    if path is not None and path.exists() and not overwrite:
        raise VISTA3DError(f"{path} exists and was left as it is. Pass --overwrite to replace it.")


def _model(args: argparse.Namespace):
    """The model that will run: the server's with --server (asked now: a wrong model, token or URL fails
    before anything is read), else the one chosen (default VISTA3D)."""
    if not getattr(args, "server", None):
        return MODELS[args.model or DEFAULT_MODEL]
    if getattr(args, "remote", None) is None:
        from .remote import RemoteEngine, read_token

        args.remote = RemoteEngine(args.server, read_token(args.token_file), model=args.model)
    return args.remote.model


def _engine(args: argparse.Namespace):
    from .engine import Engine

    model = _model(args)
    if args.server:
        engine = args.remote
    else:
        engine = Engine.from_weights(args.weights, device=args.device, precision=args.precision,
                                     runtime=args.runtime, model=model.key)
    runtime = "" if args.runtime == "torch" else f", {args.runtime}"
    print(f"{model.title} on {engine.device} ({engine.precision}{runtime})", file=sys.stderr)
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
    """``vista3d batch``: the batch workflow (``batch.py``) on files, here (a bar per case and one for
    all) or on a Ray cluster (``ray_batch``); all of it or one part (``--part-id/--num-parts``)."""
    from .batch import BatchOutput, automatic_segmenter, file_cases, find_inputs, segment_cases, shard
    from .io import read_image

    if (args.part_id is None) != (args.num_parts is None):
        raise VISTA3DError("--part-id and --num-parts go together: --part-id K --num-parts N, K from 0 to N - 1.")
    if args.executor == "ray" and args.server:
        raise VISTA3DError("--server and --executor ray: choose one (a Ray cluster's workers load the model "
                           "themselves).")
    model = _model(args)
    out_dir = Path(args.output)
    cases = file_cases(find_inputs(args.inputs), out_dir, read_image)  # named before the split: the same names
    summary_name = SUMMARY_NAME
    if args.num_parts is not None:
        cases = shard(cases, args.part_id, args.num_parts)
        summary_name = f"vista3d_summary_part-{args.part_id}-of-{args.num_parts}.csv"  # parts may run at once
    output = BatchOutput(out_dir, args.format, args.overwrite, args.preview, model.labels)
    say = partial(print, file=sys.stderr)
    with _cases_bar(len(cases)) as on_result:
        if args.executor == "ray":
            report = _batch_on_ray(args, model, cases, output, summary_name, on_result, say)
        else:
            segment_case = automatic_segmenter(model, args.labels, args.modality, lambda: _engine(args), say)

            def segment(case, image, progress, cancel):
                with _progress_bar(case.name) as case_progress:  # a bar of its own, named after the case
                    return segment_case(case, image, case_progress, cancel)

            report = segment_cases(cases, segment, out_dir=out_dir, output_format=args.format,
                                   overwrite=args.overwrite, preview=args.preview, on_result=on_result,
                                   label_space=model.labels, summary_name=summary_name)
    counts = {status: len(report.with_status(status)) for status in ("done", "skipped", "failed")}
    print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
          f"summary: {out_dir / summary_name}")
    for result in report.with_status("failed"):
        print(f"  failed: {result.name}: {result.message}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def _batch_on_ray(args: argparse.Namespace, model, cases, output, summary_name: str, on_result, say):
    from .ray_batch import EngineRecipe, RayOptions, run_on_ray

    # The workers may run elsewhere: a weights file named here travels as an absolute path (shared storage).
    weights = str(Path(args.weights).resolve()) if args.weights else None
    recipe = EngineRecipe(model.key, weights, args.device, args.precision, args.runtime, args.labels, args.modality)
    return run_on_ray(cases, recipe, output, RayOptions(args.address, args.workers, args.gpus_per_worker),
                      summary_name=summary_name, on_result=on_result, say=say)


@contextlib.contextmanager
def _cases_bar(total: int) -> Iterator[Callable]:
    """One bar over a batch's cases, with cases per minute and the failures so far; yields the
    ``on_result`` that moves it."""
    import time

    from tqdm import tqdm

    started, done, failed = time.perf_counter(), 0, 0
    with tqdm(total=total, desc="Cases", unit="case", file=sys.stderr, dynamic_ncols=True) as bar:

        def on_result(result) -> None:
            nonlocal done, failed
            done += result.status == "done"
            failed += result.status == "failed"
            minutes = (time.perf_counter() - started) / 60
            bar.set_postfix_str(f"{done / minutes if minutes else 0:.1f} cases/min, {failed} failed", refresh=False)
            bar.update()

        yield on_result


# ------------------------------------------------------------------------------------------ serve


def _serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .dependencies import require
    from .server import serve

    require("server")
    limits = replace(ServerLimits(), max_sessions_per_user=args.max_sessions, idle_timeout_s=args.idle_timeout,
                     max_upload_mb=args.max_upload_mb)
    serve(model=args.model, weights=args.weights, users_path=args.users, host=args.host, port=args.port,
          device=args.device, precision=args.precision, limits=limits, tls_cert=args.tls_cert, tls_key=args.tls_key,
          sam_kind=args.sam_model, sam_weights=args.sam_weights, say=lambda text: print(text, file=sys.stderr))
    return 0


def _bench(args: argparse.Namespace) -> int:
    """``vista3d bench --server URL``: one session's requests, with their bytes and round trips."""
    from .remote import RemoteEngine, read_token
    from .round_trips import describe, measure_round_trips, phantom_ct

    engine = RemoteEngine(args.server, read_token(args.token_file))
    image = _read_ct(args.image) if args.image else phantom_ct((160, 160, 120), 1.5)
    print(f"{engine.model.title} on {engine.device}; volume {'x'.join(map(str, image.shape))} voxels, "
          f"{image.array.nbytes / 1e6:.1f} MB raw", file=sys.stderr)
    for what, figures in describe(measure_round_trips(engine, image, args.labels), args.labels):
        print(f"{what}: {figures}")
    return 0


# ------------------------------------------------------------------------------------ labels, weights


def _labels(args: argparse.Namespace) -> int:
    space = MODELS[args.model].labels
    several = len(space.modalities) > 1
    print(f"{'ID':>3}  {'name':<38} {'display name':<40} use")
    for label_id, info in space.table().items():
        in_lists = [modality for modality, ids in space.everything_lists.items() if label_id in ids]
        if label_id in space.subclasses:
            use = "group: " + ",".join(map(str, space.subclasses[label_id]))
        elif in_lists:
            use = f"everything ({', '.join(in_lists)})" if several else "everything"
        elif label_id in space.supported:
            use = "ask for it by name"
        else:
            use = "unsupported (legacy)"
        print(f"{label_id:>3}  {info.name:<38} {info.display_name:<40} {use}")
    if space.zero_shot_ids:
        print(f"{space.zero_shot_ids.start}-{space.zero_shot_ids.stop - 1}  zero-shot structures: need clicks")
    return 0


def _models(args: argparse.Namespace) -> int:
    for model in MODELS.values():
        source = model.default_source
        size = source.size_text or "size given by the hub"
        default = "  (default)" if model.key == DEFAULT_MODEL else ""
        everything = "; ".join(f"{len(ids)} classes for {key}" for key, ids in model.labels.everything_lists.items())
        window = "x".join(map(str, model.preprocessing.window))
        caveat = f"  note: {model.caveat}\n" if model.caveat else ""
        print(f"{model.key}{default}: {model.title}\n"
              f"  {model.summary}\n"
              f"  classes: {model.classes}   modalities: {', '.join(model.modalities)}   "
              f"prompts: {', '.join(model.prompts)}\n"
              f"  everything: {everything}\n"
              f"  windows: {window}, {model.preprocessing.spacing_mm} mm; intensities: {model.preprocessing.intensity}\n"
              f"{caveat}"
              f"  licence: {model.licence.name} <{model.licence.url}>\n"
              f"  commercial use: {model.licence.commercial_use}\n"
              f"  weights: {source.host} ({size}); a local copy: --weights FILE or ${model.environment}\n")
    return 0


def _weights(args: argparse.Namespace) -> int:
    from . import weights

    source = weights.source_for(args.model, args.source)
    if args.action == "path":
        print(weights.resolve(args.model))
        return 0
    if args.action == "verify":
        path = Path(args.weights) if args.weights else weights.resolve(args.model)
        problem = weights.mismatch(path, source)  # one full hash of the file, not two
        if problem is None:
            print(f"{path}: checksum OK ({source.name})")
            return 0
        print(f"{path}: checksum does NOT match the {source.name} release: it {problem}. Download it again "
              f"(`{source.download_command}`).", file=sys.stderr)
        return 1
    print(source.licence_note, file=sys.stderr)
    path = _download_with_bar(source)
    print(path)
    return 0


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
