"""One case, as a worker runs it (a process of the local pool or a Dask task): register, write
what ``disa register`` writes plus the evaluation into a temporary folder of the output folder,
write ``done.json`` last and rename the folder into place. A failure is returned as the row's
one-line error, never raised, so one case never stops the others; an interruption (Ctrl-C)
removes the temporary folder, so no half-written case is ever left under its name.

Files of a case folder ``DIR/<case>/``:

    transform.h5             the result (fixed LPS -> moving LPS), initial transform included
    moving_resampled.nii.gz  the moving volume resampled on the fixed grid
    result.json              as ``disa register --json``, plus the case, inputs and options
    evaluation.json          landmark errors, Dice/HD95, Jacobian statistics (what applies)
    done.json                the resume marker (see resume.py), written last
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..outputs import TEMP_PREFIX
from .evaluation import (
    JACOBIAN_COLUMNS,
    LABEL_COLUMNS,
    TRE_COLUMNS,
    evaluate_case,
    summary_values,
)
from .manifest import CaseSpec
from .resume import canonical, write_done

TRANSFORM_FILE = "transform.h5"
RESAMPLED_FILE = "moving_resampled.nii.gz"
RESULT_FILE = "result.json"
EVALUATION_FILE = "evaluation.json"
#: Columns of a summary row, in table order.
ROW_COLUMNS = ("case", "status", "error") + TRE_COLUMNS + LABEL_COLUMNS + JACOBIAN_COLUMNS + ("seconds", "threads")
#: Longest error message kept in the summary (one line).
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class CaseJob:
    """What a worker needs: the case, its full register options (``threads`` pinned), the
    cohort's output folder (absolute; shared by every worker) and the fingerprint to record."""

    spec: CaseSpec
    options: dict[str, object]
    output_dir: str
    fingerprint: dict[str, object]


def empty_row(case: str, status: str, error: str = "") -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(ROW_COLUMNS)
    row.update(case=case, status=status, error=error)
    return row


def one_line(exc: BaseException) -> str:
    """A short one-line message for the summary (ITK's C++ locations dropped)."""
    from ..errors import DISAError, itk_error_summary

    text = itk_error_summary(exc) if isinstance(exc, (RuntimeError, OSError)) else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    if not isinstance(exc, DISAError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def write_json(path: str, data) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2)


def temp_name(folder: str, case: str) -> str:
    """A fresh temporary folder name in ``folder`` (not created)."""
    return os.path.join(folder, f"{TEMP_PREFIX}{case}-{uuid.uuid4().hex[:12]}")


def place(temp: str, final: str) -> None:
    """Rename the finished ``temp`` folder to ``final``, an earlier ``final`` moved aside first
    and removed after (in between there is no case folder, never a mixed one)."""
    if os.path.lexists(final):
        aside = temp_name(os.path.dirname(final), "old-" + os.path.basename(final))
        os.replace(final, aside)
        os.replace(temp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(temp, final)


def write_case(job: CaseJob, result, folder: str) -> dict[str, object]:
    """The case's files into ``folder``; returns the evaluation."""
    from ..transforms.itk_io import write_resampled

    spec = job.spec
    result.save_transform(os.path.join(folder, TRANSFORM_FILE))
    transform = result.matrix if result.linear else result.sitk_transform()
    write_resampled(spec.moving, spec.fixed, transform, os.path.join(folder, RESAMPLED_FILE))
    record = dict(result.as_dict(), case=spec.case, inputs=spec.inputs(), options=canonical(job.options))
    write_json(os.path.join(folder, RESULT_FILE), record)
    evaluation = evaluate_case(spec, result)
    write_json(os.path.join(folder, EVALUATION_FILE), evaluation)
    return evaluation


def run_case(job: CaseJob, cancel: Callable[[], bool] | None = None) -> dict[str, object]:
    """Register one case into ``job.output_dir/<case>``; returns its summary row (status "done"
    or "failed" with a one-line error). ``cancel``: polled by the registration (a cancelled
    case fails with "cancelled" and leaves no folder)."""
    from ..registration import register_files

    start = time.perf_counter()
    spec = job.spec
    row = empty_row(spec.case, "done")
    temp = None
    try:
        temp = temp_name(job.output_dir, spec.case)
        os.mkdir(temp)  # with the user's umask, unlike mkdtemp's 0700
        result = register_files(spec.fixed, spec.moving, spec.initial_transform, cancel=cancel, **job.options)
        evaluation = write_case(job, result, temp)
        row.update(summary_values(evaluation))
        row.update(seconds=round(time.perf_counter() - start, 3), threads=result.threads)
        write_done(temp, job.fingerprint, row)
        place(temp, os.path.join(job.output_dir, spec.case))
        temp = None
    except Exception as exc:  # noqa: BLE001  (recorded in the summary; the other cases go on)
        row = empty_row(spec.case, "failed", one_line(exc))
        row["seconds"] = round(time.perf_counter() - start, 3)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return row


def skipped_row(record: Mapping[str, object], case: str) -> dict[str, object]:
    """The summary row of a case a re-run skips: its finished row, status "skipped"."""
    row = empty_row(case, "skipped")
    stored = record.get("row") if isinstance(record.get("row"), Mapping) else {}
    row.update({k: v for k, v in stored.items() if k in ROW_COLUMNS and k not in ("case", "status", "error")})
    return row
