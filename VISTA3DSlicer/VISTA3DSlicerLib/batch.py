"""Batch segmentation, the one workflow behind ``vista3d batch`` and the Slicer panel's batch.

Two layers:

- ``run_batch`` processes items in order and records one ``BatchResult`` per item. It is built
  for a night's unattended run: a case that fails is recorded and the batch goes on, and only
  cancelling stops it early (the rest are then "not run").
- ``segment_cases`` segments ``BatchCase``s with it and, given an output folder, writes each
  case's labelmap there under a name of its own (``file_cases``, ``volume_cases``), holds the
  folder with a lock, skips cases whose output exists (so that a killed batch resumes where it
  stopped) and keeps ``vista3d_summary.csv`` up to date after each case. The command line gives
  it files, the Slicer Logic loaded volumes; a GPU server gives it the same.

The pieces a cluster runner (``ray_batch``) shares with it, so that both name, skip, write and
report cases the same way: ``BatchOutput`` (where and how a case is written, and whether it is
done), ``process_case`` (read, segment, write one case), ``failure_message``, ``BatchFolder`` (the
folder's lock and its summary), ``automatic_segmenter`` (the model loaded once, each case's own
modality) and ``shard`` (one part of a cohort, for scheduler job arrays).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import logging
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional, Sequence, TypeVar

from .errors import Cancelled, VISTA3DError
from .progress import CancelToken, ProgressCallback, report

if TYPE_CHECKING:
    from .engine import Engine
    from .geometry import Image
    from .labels import LabelSpace
    from .models import SegmentationModel

__all__ = [
    "BatchStatus", "BatchResult", "BatchReport", "run_batch", "failure_message", "BatchCase", "StopBatch",
    "find_inputs", "file_cases", "volume_cases", "shard", "BatchOutput", "process_case", "BatchFolder",
    "automatic_segmenter", "segment_cases", "SUMMARY_NAME", "OUTPUT_FORMATS",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

BatchStatus = Literal["done", "skipped", "failed", "not run"]
#: The order the summary lists the statuses in.
_STATUSES: tuple[BatchStatus, ...] = ("done", "skipped", "failed", "not run")


@dataclass
class BatchResult:
    """What became of one item: its status, a message (why skipped, why failed) and its time."""

    name: str
    status: BatchStatus
    message: str = ""
    seconds: float = 0.0
    #: Who did it: the host (and, on a cluster, the worker's process); empty when nothing ran.
    worker: str = ""


@dataclass
class BatchReport:
    """One result per item, in the order of the items."""

    results: list[BatchResult] = field(default_factory=list)

    def with_status(self, status: BatchStatus) -> list[BatchResult]:
        """The results with ``status``, in order."""
        return [result for result in self.results if result.status == status]

    @property
    def cancelled(self) -> bool:
        """Whether the batch was stopped before its end."""
        return bool(self.with_status("not run"))

    def summary(self) -> str:
        """One line such as "3 done, 1 failed (case_b: <message>), 1 not run (cancelled)"."""
        parts = []
        for status in _STATUSES:
            results = self.with_status(status)
            if not results:
                continue
            part = f"{len(results)} {status}"
            if status == "failed":
                part += " (" + "; ".join(f"{r.name}: {r.message}" for r in results) + ")"
            elif status == "not run":
                part += " (cancelled)"
            parts.append(part)
        return ", ".join(parts) or "nothing to do"


def run_batch(
    items: Sequence[T],
    process: Callable[[T, ProgressCallback, CancelToken], Optional[str]],
    *,
    name: Callable[[T], str],
    should_skip: Optional[Callable[[T], Optional[str]]] = None,
    on_result: Optional[Callable[[BatchResult], None]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> BatchReport:
    """Run ``process(item, progress, cancel)`` on each item in order; report what became of each.

    - ``process`` returns an optional note for the item's message, or raises. A ``VISTA3DError``
      marks the item failed with its message; any other exception marks it failed as
      "TypeName: message" and is logged with its traceback (at debug level: the report carries
      the message). Either way the batch goes on.
    - ``should_skip(item)`` returns why to skip the item (e.g. its output exists), or None.
    - ``Cancelled`` from ``process``, or ``cancel`` set, stops the batch: the item being
      processed and the rest are "not run" (an item that finished before stays "done").
    - ``progress`` gets each item's progress with the message prefixed by the item's position
      and name ("[2/5] case_b: window 3 of 8"), and ``(0, 0, "[2/5] case_b")`` as it starts.
    - ``on_result`` is called with each result as it is recorded (e.g. to advance a bar).
    """
    cancel = cancel if cancel is not None else CancelToken()
    batch = BatchReport()

    def record(result: BatchResult) -> None:
        batch.results.append(result)
        if on_result is not None:
            on_result(result)

    for position, item in enumerate(items, start=1):
        item_name = name(item)
        if cancel.cancelled:
            record(BatchResult(item_name, "not run", "cancelled"))
            continue
        started = time.perf_counter()
        prefix = f"[{position}/{len(items)}] {item_name}"

        def item_progress(done: int, total: int, message: str, prefix: str = prefix) -> None:
            report(progress, done, total, f"{prefix}: {message}" if message else prefix)

        reason = should_skip(item) if should_skip is not None else None
        if reason is not None:
            record(BatchResult(item_name, "skipped", reason, time.perf_counter() - started))
            continue
        report(progress, 0, 0, prefix)
        try:
            note = process(item, item_progress, cancel)
        except Cancelled:
            cancel.cancel()  # the rest are not run either
            record(BatchResult(item_name, "not run", "cancelled", time.perf_counter() - started))
        except Exception as error:  # one broken case must not stop a night's batch; it is reported
            record(BatchResult(item_name, "failed", failure_message(error, item_name), time.perf_counter() - started,
                               THIS_HOST))
        else:
            record(BatchResult(item_name, "done", note or "", time.perf_counter() - started, THIS_HOST))
    return batch


#: The summary's "worker" of a case done by this process.
THIS_HOST = socket.gethostname() or "this computer"


def failure_message(error: Exception, name: str) -> str:
    """What a failed case's report says: a ``VISTA3DError``'s message (the user can act on it), else
    "TypeName: message" with the traceback logged at debug level (the report carries the message)."""
    if isinstance(error, VISTA3DError):
        return str(error)
    _log.debug("batch item %s failed", name, exc_info=error)
    return f"{type(error).__name__}: {error}"


# ------------------------------------------------------------------------- segmenting into a folder

#: The summary of a batch in its output folder: one row per case, rewritten after each case.
SUMMARY_NAME = "vista3d_summary.csv"
#: Labelmap formats a batch writes (``io.write_labelmap`` chooses the writer by the ending); "dicom-seg"
#: writes a DICOM Segmentation object per DICOM series input (``dicom_seg``).
OUTPUT_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "mha", "dicom-seg")
#: A format's file ending, where it is not the format's name.
_ENDINGS = {"dicom-seg": "seg.dcm"}
_SUMMARY_FIELDS = ("case", "input", "output", "status", "seconds", "worker", "message")


@dataclass(frozen=True)
class BatchCase:
    """One volume of a batch: ``name`` names its outputs (``<name>.<format>``, ``<name>_preview.png``),
    ``source`` says where it came from in the summary (a path, a Slicer volume's name), and
    ``read()`` gives the CT, on the thread that runs the batch."""

    name: str
    source: str
    read: Callable[[], "Image"]


class StopBatch(Exception):
    """Raised by ``segment_cases``' ``segment`` when no case can be done (the model does not load):
    the batch stops, the summary keeps what was done, and the cause is raised after it."""


def find_inputs(pattern: str) -> list[Path]:
    """The volumes of a folder (files with an image ending, DICOM series sub-folders) or of a glob
    pattern, sorted. Hidden files are left out: among them an interrupted write's temporary file."""
    from .io import IMAGE_EXTENSIONS

    folder = Path(pattern)
    candidates = sorted(folder.iterdir()) if folder.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    found = [
        path for path in candidates
        if not path.name.startswith(".") and (
            (path.is_file() and path.name.lower().endswith(IMAGE_EXTENSIONS) and not path.name.endswith(".seg.nrrd"))
            or (path.is_dir() and _holds_dicom_series(path))
        )
    ]
    if not found:
        raise VISTA3DError(
            f"No volumes found in {pattern!r}: give a folder holding {', '.join(IMAGE_EXTENSIONS)} files "
            "(or DICOM series folders), or a quoted glob pattern."
        )
    return found


def _holds_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def file_cases(paths: Sequence[Path], out_dir: Path, read: Callable[[Path], "Image"]) -> list[BatchCase]:
    """The cases of volume files, each named after its file without the image ending.

    Cases whose names differ only by that ending or by case (``a.nii.gz`` and ``a.nrrd``, the DICOM
    folder ``A``) keep it (``a_nii_gz``, ``a_nrrd``, ``A_dicom``), so that no case takes another's output,
    on a disk that ignores case too. Refused: an output folder that holds inputs, where a result could
    replace one and would be taken for a case by the next batch.
    """
    out_dir = out_dir.resolve()
    inside = [path for path in paths if path.resolve().parent == out_dir]
    if inside:
        raise VISTA3DError(
            f"The output folder {out_dir} holds the inputs ({inside[0].name}{', ...' if len(inside) > 1 else ''}): "
            "results written there could replace them, and the next batch would take the results for cases. "
            "Give another folder with --output."
        )
    suffixes = [_image_extension(path) for path in paths]
    names = _unique_names(
        [path.name[: len(path.name) - len(suffix)] for path, suffix in zip(paths, suffixes)],
        [suffix.strip(".").replace(".", "_") or "dicom" for suffix in suffixes],
    )
    return [BatchCase(name, str(path), lambda path=path: read(path)) for name, path in zip(names, paths)]


def volume_cases(names: Sequence[str], read: Sequence[Callable[[], "Image"]]) -> list[BatchCase]:
    """The cases of loaded volumes (Slicer's), named after the volumes: characters a file name cannot
    hold become "_", and volumes of the same name (two "CT") get their position ("CT_1", "CT_2")."""
    stems = [re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", name).strip(" .") or "volume" for name in names]
    unique = _unique_names(stems, [str(position) for position in range(1, len(stems) + 1)])
    return [BatchCase(name, source, reader) for name, source, reader in zip(unique, names, read)]


def _unique_names(stems: Sequence[str], qualifiers: Sequence[str]) -> list[str]:
    """``stems``, where those that clash ignoring case get ``_<qualifier>``; refused if any still clash."""
    counts = Counter(stem.casefold() for stem in stems)
    names = [stem if counts[stem.casefold()] == 1 else f"{stem}_{qualifier}" for stem, qualifier in zip(stems, qualifiers)]
    clashes = [name for name, count in Counter(name.casefold() for name in names).items() if count > 1]
    if clashes:  # e.g. a.nii and a_nii.nii.gz next to a.nii.gz: too rare to name more cleverly
        raise VISTA3DError(
            f"Several inputs would write the outputs named {clashes[0]!r}: rename one of them, or run them "
            "in separate batches with different output folders."
        )
    return names


def shard(cases: Sequence[T], part_id: int, num_parts: int) -> list[T]:
    """Part ``part_id`` (0 .. ``num_parts`` - 1) of ``cases``: every ``num_parts``-th case from the
    ``part_id``-th, as nnU-Net splits its ``-num_parts``. The inputs are sorted (``find_inputs``) and
    named before they are split, so ``num_parts`` jobs of a scheduler's array, each given its own
    part, cover the cohort without overlap and write the outputs one batch would."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise VISTA3DError(f"--part-id {part_id} --num-parts {num_parts}: give N of 1 or more and K from 0 to N - 1 "
                           "(Slurm: --part-id $SLURM_ARRAY_TASK_ID with --array=0-(N-1)).")
    return list(cases[part_id::num_parts])


def _image_extension(path: Path) -> str:
    """The image ending of ``path``'s name (``.nii.gz``), or "" (a DICOM folder)."""
    from .io import IMAGE_EXTENSIONS

    return next((suffix for suffix in IMAGE_EXTENSIONS if path.name.lower().endswith(suffix)), "")


def _check_format(output_format: str) -> None:
    if output_format not in OUTPUT_FORMATS:
        raise VISTA3DError(f"Batch output format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}.")


@dataclass(frozen=True)
class BatchOutput:
    """Where and how a batch writes its cases: ``<name>.<format>`` in ``out_dir`` (and
    ``<name>_preview.png`` with ``preview``), each written under a temporary name and renamed, so an
    existing output always marks a finished case. ``label_space``: the model's labels (the outputs'
    names and colours; default VISTA3D's). A cluster's workers get a copy: it holds only paths and names."""

    out_dir: Path
    output_format: str = "nii.gz"
    overwrite: bool = False
    preview: bool = False
    label_space: Optional["LabelSpace"] = None

    def __post_init__(self) -> None:
        _check_format(self.output_format)

    def path(self, case: BatchCase) -> Path:
        return self.out_dir / f"{case.name}.{_ENDINGS.get(self.output_format, self.output_format)}"

    def skip_reason(self, case: BatchCase) -> Optional[str]:
        """Why ``case`` is not run (its output exists), or None."""
        return "output exists (use overwrite to redo it)" if self.path(case).exists() and not self.overwrite else None

    def check_inputs(self, cases: Sequence[BatchCase]) -> None:
        """Refuse, before anything runs, inputs this format cannot be written for (DICOM SEG needs a series)."""
        if self.output_format != "dicom-seg":
            return
        others = [case.source for case in cases if not Path(case.source).is_dir()]
        if others:
            raise VISTA3DError(
                f"DICOM SEG output needs DICOM series inputs (folders), and {len(others)} input(s) are not: "
                f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}. Give those another --format "
                "(nii.gz, nrrd, seg.nrrd, mha), in a batch of their own.")

    def write(self, case: BatchCase, image: "Image", labelmap: "Image") -> None:
        """Write the case's outputs: the preview first, then the labelmap (its existence marks the case done)."""
        from .io import write_labelmap
        from .preview import write_preview_png

        output = self.path(case)
        if self.preview:
            # A preview without its labelmap is a killed run's leftover, and is replaced. Once the
            # labelmap exists (another batch on this folder finished the case meanwhile), the preview
            # is that batch's: it is kept, and the case fails with "exists" before writing anything.
            write_preview_png(image, labelmap, self.out_dir / f"{case.name}_preview.png",
                              overwrite=self.overwrite or not output.exists(), label_space=self.label_space)
        if self.output_format == "dicom-seg":
            from .dicom_seg import write_dicom_seg

            write_dicom_seg(labelmap, Path(case.source), output, label_space=self.label_space,
                            overwrite=self.overwrite)
        else:
            write_labelmap(labelmap, output, overwrite=self.overwrite, label_space=self.label_space)

    def leftovers(self, case: BatchCase) -> list[Path]:
        """Temporary files of the case's writes (``atomic_write``'s ``.<name>.<hex>.tmp<ext>``): what a
        worker killed while writing leaves. Only the batch holding the folder may delete them."""
        names = [self.path(case).name] + ([f"{case.name}_preview.png"] if self.preview else [])
        return [path for name in names for path in self.out_dir.glob(f".{glob.escape(name)}.*.tmp*")]


def process_case(case: BatchCase, segment: Callable[[BatchCase, "Image", ProgressCallback, CancelToken], "Image"],
                 output: Optional[BatchOutput], *, on_labelmap: Optional[Callable[[BatchCase, "Image"], None]] = None,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> None:
    """One case of a batch, wherever it runs: read it, ``segment`` it, hand the labelmap to
    ``on_labelmap`` and write it with ``output``."""
    image = case.read()
    labelmap = segment(case, image, progress, cancel if cancel is not None else CancelToken())
    if on_labelmap is not None:
        on_labelmap(case, labelmap)
    if output is not None:
        output.write(case, image, labelmap)


class BatchFolder:
    """A batch's hold on its output folder: the lock (a second batch there would rewrite the summary
    under the first) and the summary, ``summary_name``, rewritten after each case with a row per case
    in the order of the cases. Cases skipped because their output exists keep, from the summary an
    earlier run left, when and in how long they were done."""

    def __init__(self, output: BatchOutput, cases: Sequence[BatchCase], summary_name: str = SUMMARY_NAME):
        self.output, self.summary = output, output.out_dir / summary_name
        # ".vista3d_batch.lock"; a part of a cohort (its own summary) has its own, so parts run at once.
        self._lock_path = output.out_dir / f".{Path(summary_name).stem.replace('summary', 'batch')}.lock"
        self._order = {case.name: position for position, case in enumerate(cases)}
        self._earlier: dict[str, dict] = {}
        self._rows: dict[str, dict] = {}
        self._lock = None

    def __enter__(self) -> "BatchFolder":
        from filelock import FileLock, Timeout

        try:
            self.output.out_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self._lock_path))
            lock.acquire(timeout=0)
        except Timeout:  # an OSError too: caught first
            raise VISTA3DError(
                f"Another vista3d batch is writing to {self.output.out_dir}. Wait for it to finish (cases it has "
                "done are skipped when you run this batch again), or give another output folder."
            ) from None
        except OSError as error:
            raise VISTA3DError(f"Cannot write to the output folder {self.output.out_dir}: "
                               f"{error.strerror or error}. Choose a writable folder.") from None
        self._lock = lock
        self._earlier = _read_summary(self.summary)
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    def record(self, case: BatchCase, result: BatchResult) -> None:
        """Add the case's row and rewrite the summary (atomically: a kill leaves the previous one whole)."""
        output = self.output.path(case)
        self._rows[case.name] = _summary_row(case, output, result, self._earlier.get(str(output)))
        _write_summary(self.summary, [self._rows[name] for name in sorted(self._rows, key=self._order.__getitem__)])


def automatic_segmenter(model: "SegmentationModel", labels: Optional[str], modality: Optional[str],
                        load_engine: Callable[[], "Engine"], say: Callable[[str], None] = _log.warning,
                        ) -> Callable[[BatchCase, "Image", ProgressCallback, CancelToken], "Image"]:
    """The ``segment`` of a batch's automatic segmentation: ``labels`` (a prompt) of each case, as its
    own modality (``ct_check.choose_modality``: a cohort may mix CT and MR; notes go to ``say``), with
    the engine ``load_engine()`` gives, loaded at the first case that needs it (a batch of finished
    cases loads nothing). A model that cannot load raises ``StopBatch``: no case could be done."""
    from .ct_check import choose_modality

    model.labels.automatic_prompt(labels, modality)  # a bad prompt fails before anything loads
    engine: Optional["Engine"] = None

    def segment(case: BatchCase, image: "Image", progress: ProgressCallback, cancel: CancelToken) -> "Image":
        nonlocal engine
        choice = choose_modality(model, image, modality)
        if choice.message:
            say(f"{'warning' if choice.warning else 'note'}: {case.name}: {choice.message}")
        label_ids = model.labels.automatic_prompt(labels, choice.modality)
        if engine is None:
            try:
                engine = load_engine()
            except Exception as error:  # a model that cannot load fails the whole batch, once
                raise StopBatch() from error
        return engine.segment(image, label_ids, progress=progress, cancel=cancel)

    return segment


def segment_cases(
    cases: Sequence[BatchCase],
    segment: Callable[[BatchCase, "Image", ProgressCallback, CancelToken], "Image"],
    *,
    out_dir: Optional[Path] = None,
    output_format: str = "nii.gz",
    overwrite: bool = False,
    preview: bool = False,
    on_labelmap: Optional[Callable[[BatchCase, "Image"], None]] = None,
    on_result: Optional[Callable[[BatchResult], None]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    label_space: Optional["LabelSpace"] = None,
    summary_name: str = SUMMARY_NAME,
) -> BatchReport:
    """Segment each case with ``segment(case, image, progress, cancel)`` (it returns the labelmap).

    ``on_labelmap(case, labelmap)`` receives each result (the Slicer Logic makes a segmentation of it).
    With ``out_dir``, each labelmap is also written there (``BatchOutput``) while this batch holds the
    folder (``BatchFolder``); a case whose output exists is skipped unless ``overwrite``, so that
    running a killed batch again finishes it; and the summary (``summary_name``) is rewritten after
    each case. ``StopBatch`` from ``segment`` stops the batch and its cause is raised once the summary
    is written. ``label_space``: the model's labels (names and colours of the outputs; default VISTA3D's).
    """
    _check_format(output_format)  # without a folder too: a wrong format is a mistake to say at once
    output = BatchOutput(out_dir, output_format, overwrite, preview, label_space) if out_dir is not None else None
    if output is not None:
        output.check_inputs(cases)
    stopped: list[BaseException] = []

    def process(case: BatchCase, case_progress: ProgressCallback, token: CancelToken) -> None:
        try:
            process_case(case, segment, output, on_labelmap=on_labelmap, progress=case_progress, cancel=token)
        except StopBatch as stop:  # no case can be done: stop here, raise the cause after the summary
            stopped.append(stop.__cause__ or stop)
            raise Cancelled() from stop

    # The summary is rewritten after each case, so that a killed batch leaves one of what it finished.
    # A kill can also leave the temporary file of a write under way (".<name>.<hex>.tmp<ext>", see
    # atomic_write.write_atomically): it stays, since it may be another batch's write in progress in this
    # folder; being hidden, it is never taken for an output, nor for an input by find_inputs.
    remaining = iter(cases)  # the results come one per case, in the order of the cases
    with BatchFolder(output, cases, summary_name) if output is not None else contextlib.nullcontext() as folder:

        def record(result: BatchResult) -> None:
            case = next(remaining)
            if on_result is not None:
                on_result(result)
            if folder is not None and not (stopped and result.status == "not run"):  # nothing was done to those
                folder.record(case, result)

        outcome = run_batch(cases, process, name=lambda case: case.name,
                            should_skip=output.skip_reason if output is not None else None, on_result=record,
                            progress=progress, cancel=cancel)
    if stopped:
        raise stopped[0]
    return outcome


def _summary_row(case: BatchCase, output: Path, result: BatchResult, earlier: Optional[dict] = None) -> dict:
    """The summary CSV's row of one case. ``earlier`` is the previous summary's row of the same output:
    a case skipped because its output exists keeps from it when the output was made, and in how long."""
    message, worker = result.message, result.worker
    if result.status == "skipped" and earlier is not None:
        worker = earlier.get("worker") or ""  # who made the output (summaries before this column have none)
        if earlier["status"] == "done":
            message += f"; done in an earlier run in {earlier['seconds']} s"
        elif earlier["status"] == "skipped":
            message = earlier["message"]  # skipped for the same reason, with what the run before knew
    return {
        "case": result.name,
        "input": case.source,
        "output": str(output),
        "status": result.status,
        "seconds": f"{result.seconds:.1f}",
        "worker": worker,
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
    required = [field for field in _SUMMARY_FIELDS if field != "worker"]  # added later: older summaries lack it
    return {row["output"]: row for row in rows if all(row.get(field) is not None for field in required)}


def _write_summary(path: Path, rows: list[dict]) -> None:
    """Replace the summary atomically: a kill leaves the previous one whole, never a part of this one."""
    from .atomic_write import write_atomically

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=_SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, ".csv", True, write)
