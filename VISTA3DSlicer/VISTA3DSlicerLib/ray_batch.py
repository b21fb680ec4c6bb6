"""``vista3d batch --executor ray``: a cohort's cases on a Ray cluster (a laptop's local one included).

Ray schedules; the batch workflow stays ``batch``'s. Each worker is a Ray actor that loads the model
once, on its own GPU (or CPU cores), and runs ``batch.process_case`` on the cases it is given, as the
local batch does: the same names, the same atomic writes, the same failure messages. Only the
case's name and input path travel through Ray, never a volume, and the worker writes the outputs
to the shared output folder itself.

The driver (this process) holds the output folder (``batch.BatchFolder``): it skips the cases
whose output exists, hands the others to idle workers, and is the only one to write the summary
(with the worker and the time of each case). A case that fails is tried once more, on another
worker where there is one, and then reported; the run goes on. A worker that dies (killed, out of
memory, its node lost) is replaced, the temporary files of its case deleted, and the case tried
again. Ctrl-C stops the workers and leaves the finished cases, and the summary of what was done.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .batch import (
    SUMMARY_NAME, BatchCase, BatchFolder, BatchOutput, BatchReport, BatchResult, StopBatch, automatic_segmenter,
    failure_message, process_case,
)
from .errors import VISTA3DError

if TYPE_CHECKING:
    import ray

__all__ = ["EngineRecipe", "RayOptions", "run_on_ray"]

#: Attempts per case: a failure is tried once more (on another worker where there is one), then reported.
ATTEMPTS = 2


@dataclass(frozen=True)
class EngineRecipe:
    """What a worker needs to load the model and segment a case: names and a path only (it is sent
    to every worker). ``weights`` None: each node's own (its environment variable, else its cache)."""

    model: str
    weights: Optional[str]
    device: str = "auto"
    precision: str = "fp32"
    runtime: str = "torch"
    labels: Optional[str] = None
    modality: Optional[str] = None

    def load_engine(self):
        from .engine import Engine

        return Engine.from_weights(self.weights, device=self.device, precision=self.precision, runtime=self.runtime,
                                   model=self.model)


@dataclass(frozen=True)
class RayOptions:
    """Where and how many workers: ``address`` None starts a local cluster unless ``RAY_ADDRESS`` names
    one ("auto": the cluster this machine belongs to, "ray://HOST:PORT": a remote one); ``workers``
    None: one per GPU of the cluster, or one on a cluster without GPUs; ``gpus_per_worker`` None: 1
    where the cluster has GPUs, else 0."""

    address: Optional[str] = None
    workers: Optional[int] = None
    gpus_per_worker: Optional[float] = None


class CaseWorker:
    """One Ray actor: the model, loaded once, and the batch workflow on the cases it is handed."""

    def __init__(self, recipe: EngineRecipe, output: BatchOutput):
        from .models import MODELS

        self.output = output
        self.segment = automatic_segmenter(MODELS[recipe.model], recipe.labels, recipe.modality, recipe.load_engine,
                                           say=partial(print, flush=True))
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, name: str, source: str) -> dict:
        """Segment and write one case; returns its status ("done", "failed", or "stop": the model cannot
        load here), message, seconds and this worker's name."""
        from .io import read_image

        started = time.perf_counter()
        try:
            process_case(BatchCase(name, source, partial(read_image, source)), self.segment, self.output)
        except StopBatch as stop:
            status, message = "stop", failure_message(stop.__cause__ or stop, name)
        except Exception as error:  # reported by the driver, which decides whether to try again
            status, message = "failed", failure_message(error, name)
        else:
            status, message = "done", ""
        return {"status": status, "message": message, "seconds": time.perf_counter() - started, "worker": self.name}


def _import_ray() -> "ray":
    from .dependencies import require

    require("ray")
    import ray

    return ray


def _start(ray, address: Optional[str]) -> None:
    """Join the cluster at ``address`` (None: ``RAY_ADDRESS``, else a new local one), saying what to do when it fails."""
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:  # what ray.init raises for a cluster it cannot use
        where = f"at {address}" if address else "(RAY_ADDRESS, or a new local one)"
        raise VISTA3DError(f"Could not start or join the Ray cluster {where}: {error}. Check that the cluster runs "
                           "(`ray status` on its head node) and the address; leave --address out to start one on "
                           "this machine.") from None


def run_on_ray(
    cases: Sequence[BatchCase],
    recipe: EngineRecipe,
    output: BatchOutput,
    options: RayOptions = RayOptions(),
    *,
    summary_name: str = SUMMARY_NAME,
    on_result: Optional[Callable[[BatchResult], None]] = None,
    on_start: Optional[Callable[[BatchCase, str], None]] = None,
    say: Callable[[str], None] = print,
) -> BatchReport:
    """Segment ``cases`` on Ray workers into ``output``; one result per case, in the order of the cases.

    ``on_result`` gets each result as it is recorded (skipped ones first), ``on_start(case, worker)``
    each case as it is handed to a worker (the actor's Ray name). The cause of a model that cannot
    load is raised once the summary is written, as the local batch does.
    """
    ray = _import_ray()
    output.check_inputs(cases)
    results: dict[str, BatchResult] = {}
    with BatchFolder(output, cases, summary_name) as folder:

        def record(case: BatchCase, result: BatchResult) -> None:
            results[case.name] = result
            folder.record(case, result)
            if on_result is not None:
                on_result(result)

        pending = []
        for case in cases:
            reason = output.skip_reason(case)
            if reason is None:
                pending.append(case)
            else:
                record(case, BatchResult(case.name, "skipped", reason))
        if pending:
            started_here = not ray.is_initialized()
            if started_here:
                _start(ray, options.address)
            try:
                _Dispatcher(ray, recipe, output, options, len(pending), record, on_start, say).run(pending)
            finally:
                if started_here:
                    ray.shutdown()
    return BatchReport([results[case.name] for case in cases])


class _Dispatcher:
    """The driver's loop: idle workers take the next case; results, failures and dead workers are handled."""

    def __init__(self, ray, recipe: EngineRecipe, output: BatchOutput, options: RayOptions, cases: int,
                 record: Callable[[BatchCase, BatchResult], None],
                 on_start: Optional[Callable[[BatchCase, str], None]], say: Callable[[str], None]):
        self.ray, self.recipe, self.record, self.on_start = ray, recipe, record, on_start
        # The workers may start elsewhere (another folder, another node): they get absolute paths.
        self.output = replace(output, out_dir=output.out_dir.absolute())
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1 if gpus else 0)
        count = options.workers
        if count is None:  # one per GPU, or one on a cluster without GPUs
            count = max(1, int(gpus // per_worker)) if per_worker else 1
        if count < 1 or per_worker < 0:
            raise VISTA3DError("--workers must be 1 or more and --gpus-per-worker 0 or more.")
        if per_worker > gpus:
            raise VISTA3DError(f"Each worker asks for {per_worker:g} GPU(s) and the Ray cluster has {gpus:g}: "
                               "pass --gpus-per-worker 0 to run on CPUs, or add GPU nodes.")
        count = min(count, cases)
        # CPU workers share the cluster's cores: Ray sets each one's OMP_NUM_THREADS, which torch follows.
        cpus = 1 if per_worker else max(1, int(resources.get("CPU", 1) // count))
        self.actor = ray.remote(num_cpus=cpus, num_gpus=per_worker, max_restarts=0)(CaseWorker)
        self.names = [""] * count
        self.workers = [self._new_worker(index) for index in range(count)]
        say(f"Ray: {count} worker(s) with {per_worker:g} GPU and {cpus} CPU(s) each, for {cases} case(s)")

    def _new_worker(self, index: int):
        """A new actor in slot ``index``, named (``ray.get_actor``) after this driver, the slot and a counter."""
        self.names[index] = f"vista3d-batch-{os.getpid()}-{index}-{time.monotonic_ns()}"
        return self.actor.options(name=self.names[index]).remote(self.recipe, self.output)

    def run(self, cases: Sequence[BatchCase]) -> None:
        ray = self.ray
        queue = deque((case, 1) for case in cases)
        idle = list(range(len(self.workers)))
        failed_on: dict[str, set[int]] = {}  # the worker slots a case failed in: its retry goes elsewhere
        running: dict = {}  # Ray reference -> (case, attempt, worker slot, start time)
        stop: Optional[str] = None
        try:
            while running or (queue and stop is None):
                while idle and stop is None:
                    assigned = self._assign(queue, idle, failed_on)
                    if assigned is None:
                        break
                    case, attempt, index = assigned
                    reference = self.workers[index].run.remote(case.name, str(Path(case.source).absolute()))
                    running[reference] = (case, attempt, index, time.perf_counter())
                    if self.on_start is not None:
                        self.on_start(case, self.names[index])
                (ready,), _ = ray.wait(list(running), num_returns=1)
                case, attempt, index, started = running.pop(ready)
                try:
                    outcome = ray.get(ready)
                except ray.exceptions.RayActorError:  # the worker died with the case: a new one takes its place
                    self._delete_leftovers([case])
                    self.workers[index] = self._new_worker(index)
                    outcome = {"status": "failed", "worker": "", "seconds": time.perf_counter() - started,
                               "message": "its worker stopped while segmenting it (killed, out of memory, or its "
                                          "node was lost)"}
                idle.append(index)
                if outcome["status"] == "stop":  # the model cannot load: no case can be done
                    stop = stop or outcome["message"]
                elif outcome["status"] == "failed" and attempt < ATTEMPTS:
                    failed_on.setdefault(case.name, set()).add(index)
                    queue.append((case, attempt + 1))
                else:
                    self.record(case, BatchResult(case.name, outcome["status"], outcome["message"],
                                                  outcome["seconds"], outcome["worker"]))
        except KeyboardInterrupt:
            self._stop_workers()
            self._record_stopped(running)
            for case, _attempt in queue:
                self.record(case, BatchResult(case.name, "not run", "cancelled"))
            raise
        self._stop_workers()
        if stop is not None:
            raise VISTA3DError(f"The model could not be loaded on the Ray workers: {stop}")

    def _assign(self, queue: deque, idle: list[int], failed_on: dict[str, set[int]]):
        """The first queued case an idle worker may take, and that worker (taken off the queue and the
        idle list), or None. A case that failed goes to a worker it has not failed on: it waits for one
        when they are busy, and takes any when there is no other (a run with one worker)."""
        for position, (case, attempt) in enumerate(queue):
            avoid = failed_on.get(case.name, set())
            fresh = [index for index in idle if index not in avoid]
            if fresh or len(avoid) >= len(self.workers):
                index = (fresh or idle)[0]
                del queue[position]
                idle.remove(index)
                return case, attempt, index
        return None

    def _record_stopped(self, running: dict) -> None:
        """Record the cases the stopped workers had: done where the worker finished (it may have, as it was
        stopped: an output is only ever whole, so one in place is a finished case), else "not run", with the
        temporary files of their writes deleted."""
        ray = self.ray
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=30)  # each finished, or its worker gone
        for reference, (case, _attempt, _index, started) in running.items():
            try:
                outcome = ray.get(reference, timeout=0)
            except Exception:  # its worker was stopped first (Ray's errors differ by where it was stopped)
                outcome = None
            if outcome is not None and outcome["status"] == "done":
                self.record(case, BatchResult(case.name, "done", "", outcome["seconds"], outcome["worker"]))
            elif self.output.path(case).exists():
                self.record(case, BatchResult(case.name, "done", "finished as the run was stopped",
                                              time.perf_counter() - started))
            else:
                self._delete_leftovers([case])
                self.record(case, BatchResult(case.name, "not run", "cancelled"))

    def _stop_workers(self) -> None:
        for worker in self.workers:
            self.ray.kill(worker)

    def _delete_leftovers(self, cases: Sequence[BatchCase]) -> None:
        """The temporary files of writes a stopped worker left (this driver holds the folder: they are its own)."""
        for case in cases:
            for leftover in self.output.leftovers(case):
                leftover.unlink(missing_ok=True)
