"""Where the cases run: a local process pool (default) or an existing Dask cluster.

Locally, the worker count is the largest that the cores and the memory allow: at most one per
case, at most ``cores // threads`` when ``threads`` is given, and at most as many as fit in the
memory available (the largest case's estimate from its file headers, as ``register_files``
checks it); each case then gets ``threads = cores // workers`` torch threads. On Dask, each
task uses ``threads`` (default 1): start the workers with as many task slots per machine as
cases should run at once. The thread count is passed to every registration explicitly, so the
same inputs, options and seed give the same transforms both ways.

Workers are started with "spawn" (torch's OpenMP does not survive a fork), and the cases are
collected by polling their futures, so both kinds of future are driven the same way.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

from .case_run import CaseJob, empty_row, one_line, run_case
from .manifest import CaseSpec

#: Share of the available memory the workers may plan on (the rest: the system, the page cache).
MEMORY_SHARE = 0.8
#: Seconds between two looks at the futures.
POLL_SECONDS = 0.2
#: What a case whose worker process died says (the pool cannot tell which case killed it).
WORKER_DIED = "the worker process died (killed, e.g. out of memory); re-run to retry this case"

OnRow = Callable[[Optional[dict[str, object]], int], None]


def case_bytes(spec: CaseSpec, options: Mapping[str, object]) -> int | None:
    """The memory estimate of one case from its file headers (as ``register_files`` checks it),
    or None when a header cannot be read (the case then fails on its own, when it runs)."""
    try:
        from ..registration.pipeline import file_memory_bytes
        from ..spatial.image import read_volume_info

        fixed = read_volume_info(spec.fixed, "fixed image")
        moving = read_volume_info(spec.moving, "moving image")
        return int(file_memory_bytes(fixed, moving, dict(options)))
    except Exception:  # noqa: BLE001  (an unreadable case is reported when it runs)
        return None


def plan_local(specs: Sequence[CaseSpec], options_of: Callable[[CaseSpec], Mapping[str, object]],
               workers: int | None = None, threads: int | None = None, cores: int | None = None,
               available: int | None = None) -> tuple[int, int]:
    """(workers, threads per case) for the whole cohort (not only the cases left to do, so a
    resumed run uses the counts of the first)."""
    from ..registration.memory import available_bytes
    from ..threads import machine_threads

    cores = cores or machine_threads()
    if workers is None:
        limit = cores if threads is None else max(1, cores // threads)
        needs = [b for b in (case_bytes(s, options_of(s)) for s in specs) if b]
        available = available_bytes() if available is None else available
        if needs and available:
            limit = min(limit, max(1, int(MEMORY_SHARE * available // max(needs))))
        workers = max(1, min(len(specs), limit))
    return workers, threads or max(1, cores // workers)


def _row_of(future, job: CaseJob) -> dict[str, object]:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool:
        return empty_row(job.spec.case, "failed", WORKER_DIED)
    except concurrent.futures.CancelledError:
        return empty_row(job.spec.case, "failed", "cancelled")
    except Exception as exc:  # noqa: BLE001  (e.g. Dask's KilledWorker: recorded, the others go on)
        return empty_row(job.spec.case, "failed", one_line(exc))


def collect(futures: Mapping[object, CaseJob], slots: int, on_row: OnRow, poll: float = POLL_SECONDS) -> None:
    """Call ``on_row(row, running)`` as each case finishes and ``on_row(None, running)`` between
    (to refresh the progress); ``running`` is an estimate: min(slots, cases left)."""
    pending = dict(futures)
    on_row(None, min(slots, len(pending)))
    while pending:
        finished = [f for f in pending if f.done()]
        for future in finished:
            job = pending.pop(future)
            on_row(_row_of(future, job), min(slots, len(pending)))
        if not finished:
            time.sleep(poll)
            on_row(None, min(slots, len(pending)))


#: A pool worker's stop event (set by the parent on Ctrl-C), from the pool's initializer.
_STOP = None


def _start_worker(stop) -> None:
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the worker through ``stop``


def _run_pooled(job: CaseJob) -> dict[str, object]:
    if _STOP is not None and _STOP.is_set():
        return empty_row(job.spec.case, "failed", "cancelled")
    return run_case(job, cancel=None if _STOP is None else _STOP.is_set)


def run_local(jobs: Sequence[CaseJob], workers: int, on_row: OnRow) -> None:
    """The cases on a local pool of ``workers`` processes. Ctrl-C (in the parent): the running
    registrations are cancelled through a shared event (their temporary folders removed), the
    queued cases are dropped and the pool is waited for before KeyboardInterrupt goes on."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                  initializer=_start_worker, initargs=(stop,))
    try:
        futures = {pool.submit(_run_pooled, job): job for job in jobs}
        collect(futures, workers, on_row)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def dask_client(scheduler):
    """A Client of the cluster at ``scheduler`` (an address such as tcp://host:8786), or the
    Client given; (client, whether we opened it)."""
    try:
        from distributed import Client
    except ImportError:
        from ..errors import InputError

        raise InputError("--scheduler needs dask.distributed: pip install \"dask[distributed]\" "
                         "(or the cluster extra: pip install -e \".[cluster]\")") from None
    if isinstance(scheduler, Client):
        return scheduler, False
    try:
        return Client(scheduler, set_as_default=False, timeout="20s"), True
    except (OSError, TimeoutError) as exc:
        from ..errors import InputError

        raise InputError(f"cannot reach the Dask scheduler {scheduler!r}: {exc}") from None


def dask_slots(client) -> int:
    """Task slots of the cluster (the sum of its workers' threads), at least 1."""
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001  (only sizes the progress estimate)
        return 1


def run_dask(jobs: Sequence[CaseJob], client, on_row: OnRow) -> None:
    """The cases as tasks of a Dask cluster (the output folder must be one the workers share).
    Ctrl-C cancels the tasks not yet finished."""
    batch = uuid.uuid4().hex[:8]
    futures = {client.submit(run_case, job, key=f"disa-batch-{batch}-{job.spec.case}", pure=False): job
               for job in jobs}
    try:
        collect(futures, dask_slots(client), on_row)
    except BaseException:
        client.cancel(list(futures))
        raise
