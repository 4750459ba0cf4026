"""The cohort's summary: a table (CSV and Markdown) with one row per case, and a box plot of the
landmark errors per case (PNG, when matplotlib is installed). Written all-or-nothing beside the
case folders: ``summary.csv``, ``summary.md``, ``errors.png``."""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .case_run import EVALUATION_FILE, ROW_COLUMNS

CSV_FILE, MARKDOWN_FILE, PLOT_FILE = "summary.csv", "summary.md", "errors.png"
#: Markdown headers of the row columns.
HEADERS = {"case": "case", "status": "status", "error": "error",
           "tre_before_mean": "TRE before mean (mm)", "tre_before_median": "median", "tre_before_max": "max",
           "tre_after_mean": "TRE after mean (mm)", "tre_after_median": "median", "tre_after_max": "max",
           "dice_before": "Dice before", "dice": "Dice", "hd95": "HD95 (mm)",
           "folding_percent": "det J <= 0 (%)", "seconds": "seconds",
           "threads": "threads"}


@dataclass
class CohortSummary:
    """What ``register_cohort`` returns: one row per case (manifest order) and the files written."""

    rows: list[dict[str, object]]
    output_dir: str
    files: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    threads: int = 1
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row["status"] == status)

    @property
    def failed(self) -> list[dict[str, object]]:
        return [row for row in self.rows if row["status"] == "failed"]

    def row(self, case: str) -> dict[str, object]:
        return next(row for row in self.rows if row["case"] == case)

    def line(self) -> str:
        return (f"{len(self.rows)} cases: {self.count('done')} done, {self.count('skipped')} skipped "
                f"(already complete), {self.count('failed')} failed")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def write_csv(path: str, rows: Sequence[Mapping[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(ROW_COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in ROW_COLUMNS])


def markdown_table(rows: Sequence[Mapping[str, object]]) -> str:
    columns = [c for c in ROW_COLUMNS if c in ("case", "status", "seconds")
               or any(row.get(c) not in (None, "") for row in rows)]
    lines = ["| " + " | ".join(HEADERS[c] for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str, rows: Sequence[Mapping[str, object]], title: str) -> None:
    with open(path, "w") as fh:
        fh.write(f"# {title}\n\n" + markdown_table(rows))


def case_errors(output_dir: str, case: str) -> dict[str, list[float]] | None:
    """The landmark errors before and after of a finished case, or None."""
    try:
        with open(os.path.join(output_dir, case, EVALUATION_FILE)) as fh:
            landmarks = json.load(fh).get("landmarks")
    except (OSError, ValueError):
        return None
    if not landmarks:
        return None
    return {"before": landmarks["errors_before"], "after": landmarks["errors_after"]}


def write_plot(path: str, errors: Mapping[str, Mapping[str, list[float]]]) -> None:
    """Box plots of the landmark errors per case, before (grey) and after (blue)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import (
        Figure,  # no pyplot: the caller's backend stays as it is
    )

    cases = list(errors)
    fig = Figure(figsize=(max(4.0, 0.7 * len(cases) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = range(len(cases))
    before = ax.boxplot([errors[c]["before"] for c in cases], positions=[p - 0.18 for p in positions],
                        widths=0.3, patch_artist=True)
    after = ax.boxplot([errors[c]["after"] for c in cases], positions=[p + 0.18 for p in positions],
                       widths=0.3, patch_artist=True)
    for box in before["boxes"]:
        box.set_facecolor("0.85")
    for box in after["boxes"]:
        box.set_facecolor("tab:blue")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(cases, rotation=45, ha="right")
    ax.set_ylabel("landmark error (mm)")
    ax.legend([before["boxes"][0], after["boxes"][0]], ["before", "after"])
    ax.set_title("Landmark error per case")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")


def write_summary(summary: CohortSummary, inputs: Mapping[str, str], title: str = "disa batch") -> None:
    """summary.csv, summary.md and (landmarks and matplotlib permitting) errors.png, together."""
    from ..outputs import OutputFiles

    errors = {row["case"]: e for row in summary.rows if row["status"] != "failed"
              for e in [case_errors(summary.output_dir, str(row["case"]))] if e}
    plot = None
    if errors:
        try:
            import matplotlib  # noqa: F401
            plot = os.path.join(summary.output_dir, PLOT_FILE)
        except ImportError:
            summary.notes.append("no box plot of the errors: matplotlib is not installed (pip install matplotlib)")
    outputs = OutputFiles({"csv": os.path.join(summary.output_dir, CSV_FILE),
                           "markdown": os.path.join(summary.output_dir, MARKDOWN_FILE), "plot": plot}, inputs=inputs)
    with outputs.staged() as staged:
        write_csv(staged["csv"], summary.rows)
        write_markdown(staged["markdown"], summary.rows, title)
        if plot:
            write_plot(staged["plot"], errors)
    summary.files.update(outputs.paths)
