"""``register_cohort``: a whole study in one call, locally or on a Dask cluster, resumable.

    from disa.batch import register_cohort
    summary = register_cohort("study/manifest.csv", "study-out", metric="mind", search="local")
    summary = register_cohort(rows, "study-out", scheduler="tcp://head:8786", threads=4)
    print(summary.line()); summary.rows  # one dict per case: status, error, TRE, Dice, HD95, seconds

Everything a user can fix is refused before any case runs: the manifest (see manifest.py), the
options (as ``disa register`` checks them, per case) and the output folder. Finished cases whose
inputs and options are unchanged are skipped; the others are (re)done; a failing case records
its one-line error and the others go on.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

from ..errors import InputError
from ..outputs import TEMP_PREFIX, check_writable
from .case_run import CaseJob, skipped_row
from .manifest import (
    CaseSpec,
    PathLike,
    check_outputs_apart,
    landmark_file,
    read_manifest,
)
from .progress import CohortProgress
from .resume import fingerprint, finished_record
from .summary import CSV_FILE, CohortSummary, write_summary

#: The keyword options of ``disa.registration.register`` a cohort passes on (``disa register``'s).
REGISTER_OPTIONS = ("metric", "transform", "optimizer", "search", "search_preset", "search_rotation",
                    "search_translation", "search_samples", "search_starts", "spacings", "max_evals",
                    "fixed_mask", "precision", "weights", "device", "threads", "seed", "probe_position",
                    "probe_direction", "dense")
#: Settings ``check_settings`` checks and normalizes.
CHECKED = ("transform", "search", "search_rotation", "search_translation", "search_samples", "search_starts",
           "spacings", "max_evals", "seed", "precision", "search_preset")


def cohort_options(options: Mapping[str, object]) -> dict[str, object]:
    """The cohort's register options: unknown names refused; ``progress`` and ``cancel`` are the
    batch's own (a CLI's progress callback is dropped)."""
    options = {k: v for k, v in options.items() if k not in ("progress", "cancel", "quiet")}
    unknown = sorted(set(options) - set(REGISTER_OPTIONS))
    if unknown:
        raise InputError(f"unknown registration option {unknown[0]!r}; use {', '.join(REGISTER_OPTIONS)}")
    return options


def case_options(cohort: Mapping[str, object], spec: CaseSpec) -> dict[str, object]:
    """The case's full options: defaults, the cohort's, the row's; checked and normalized as
    ``register`` would (a refusal names the case), None values left out, so that the same run
    asked from the command line or from Python has the same fingerprint. ``threads`` excluded."""
    from ..registration.defaults import DEFAULTS
    from ..registration.options import check_settings
    from ..similarity import parse_metric

    merged = {**DEFAULTS.as_dict(), **cohort, **spec.options}
    dense = {**(cohort.get("dense") or {}), **(spec.options.get("dense") or {})}  # a row's add to the cohort's
    merged["dense"] = dense or None
    merged.pop("threads", None)
    try:
        merged.update(check_settings(**{k: merged.get(k) for k in CHECKED}))
        merged["metric"] = str(parse_metric(merged["metric"]))
        if merged.get("weights") is not None:
            merged["weights"] = os.path.abspath(os.fspath(merged["weights"]))
            if not os.path.isfile(merged["weights"]):
                raise InputError(f"weights file not found: {merged['weights']}")
    except InputError as exc:
        raise InputError(f"case {spec.case!r}: {exc}") from None
    return {k: v for k, v in merged.items() if v is not None}


def _positive(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


def remove_partial(output_dir: str) -> None:
    """Temporary case folders an interrupted run left (one batch writes a folder at a time)."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(TEMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def _all_inputs(specs: Sequence[CaseSpec], manifest) -> dict[str, str]:
    inputs = {f"{s.case}:{k}": landmark_file(v) for s in specs for k, v in s.inputs().items()}
    if isinstance(manifest, (str, os.PathLike)):
        inputs["manifest"] = os.fspath(manifest)
    return inputs


def register_cohort(rows: PathLike | Sequence[Mapping[str, object]], output_dir: PathLike,
                    scheduler=None, workers: int | None = None, quiet: bool = False,
                    base_dir: PathLike | None = None, stream=None, **register_options) -> CohortSummary:
    """Register every case of ``rows`` (a manifest CSV path, or dicts with the manifest's columns,
    paths relative to ``base_dir``) into ``output_dir/<case>/`` and write the summary there.

    ``scheduler``: None runs on a local process pool of ``workers`` processes (default: what
    the cores and memory allow); an address (``tcp://host:8786``) or a ``distributed.Client``
    runs the cases as tasks of that Dask cluster (``output_dir`` and the inputs must be on a
    file system the workers share). ``register_options``: any keyword of
    ``disa.registration.register`` that ``disa register`` offers (metric, transform, search,
    spacings, seed, threads, ...), for every case; a row's ``options`` override them.
    ``threads`` pins each case's torch threads (locally default cores // workers, on Dask 1);
    the same inputs, options, seed and threads give the same transforms locally and on Dask.
    Progress goes to ``stream`` (stderr) unless ``quiet``. Ctrl-C stops the run with
    KeyboardInterrupt, every finished case kept, no half-written one left.
    """
    from .scheduling import dask_client, dask_slots, plan_local, run_dask, run_local

    cohort = cohort_options(register_options)
    threads = _positive(cohort.pop("threads", None), "threads")
    workers = _positive(workers, "workers")
    specs = read_manifest(rows, base_dir)
    options = {spec.case: case_options(cohort, spec) for spec in specs}
    out = os.path.abspath(os.fspath(output_dir))
    check_writable(os.path.join(out, CSV_FILE), "the summary in --output-dir")
    check_outputs_apart(specs, out)
    inputs = _all_inputs(specs, rows)
    extra = {} if threads is None else {"threads": threads}  # an explicit count is fingerprinted
    prints = {spec.case: fingerprint(spec, {**options[spec.case], **extra}) for spec in specs}

    client, own_client = (None, False) if scheduler is None else dask_client(scheduler)
    try:
        if client is None:
            workers, threads = plan_local(specs, lambda s: options[s.case], workers, threads)
        else:
            threads, workers = threads or 1, dask_slots(client)
        os.makedirs(out, exist_ok=True)
        remove_partial(out)
        results: dict[str, dict[str, object]] = {}
        jobs: list[CaseJob] = []
        for spec in specs:
            record = finished_record(os.path.join(out, spec.case), prints[spec.case])
            if record is not None:
                results[spec.case] = skipped_row(record, spec.case)
            else:
                jobs.append(CaseJob(spec, {**options[spec.case], "threads": threads}, out, prints[spec.case]))
        progress = CohortProgress(len(specs), skipped=len(results), workers=workers, stream=stream, quiet=quiet)
        where = "locally" if client is None else f"on the Dask cluster {getattr(client.scheduler, 'address', '')}"
        progress.note(f"{len(jobs)} of {len(specs)} cases to run {where}: {workers} at once, "
                      f"{threads} thread{'s' if threads > 1 else ''} each")
        counts = {"done": 0, "failed": 0}

        def on_row(row, running):
            if row is not None:
                results[str(row["case"])] = row
                counts[row["status"]] += 1
            progress.update(counts["done"], counts["failed"], running)

        try:
            if jobs:
                (run_local(jobs, workers, on_row) if client is None else run_dask(jobs, client, on_row))
        except KeyboardInterrupt:
            if client is None:
                remove_partial(out)
            raise
        finally:
            progress.close()
    finally:
        if own_client:
            client.close()
    summary = CohortSummary([results[spec.case] for spec in specs], out, workers=workers, threads=threads)
    write_summary(summary, inputs)
    return summary
