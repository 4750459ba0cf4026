"""Cohorts: register a whole study in one command, on one machine or a Dask cluster.

    disa batch study/manifest.csv --output-dir study-out [--scheduler tcp://head:8786]

    from disa.batch import register_cohort
    summary = register_cohort("study/manifest.csv", "study-out", metric="mind")

Modules: ``manifest`` (the rows, checked before any work), ``cohort`` (``register_cohort``),
``scheduling`` (local process pool or Dask), ``case_run`` (one case, as a worker runs it),
``evaluation`` (TRE, Dice, HD95, Jacobian), ``resume`` (the done.json marker), ``summary``
(CSV, Markdown, box plot), ``progress`` (the bar), ``cli`` (``disa batch``; argparse only),
``bench`` (pool vs one case after another).

The package loads without torch (the command line declares ``disa batch`` from it); the parts
that register are imported on first use (PEP 562).
"""
from ..lazy import lazy_exports

#: Public names and the submodule that defines each.
_LAZY = {"register_cohort": ".cohort", "read_manifest": ".manifest", "CaseSpec": ".manifest",
         "CohortSummary": ".summary", "measure_speedup": ".bench"}
__all__ = list(_LAZY)
__getattr__ = lazy_exports(__name__, _LAZY)
