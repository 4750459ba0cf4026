"""``disa benchmark`` (the Case 24 suite): the ``disa-oracle`` row registers the bundled case
through DISA-LC²'s path with the MIND-SSC oracle in place of the network, and ``--spacings``
reaches the engine's methods (one 2 mm level where Case 24's small fan at 0.5 mm gets a 0.98 mm
coarse and a 0.5 mm fine level by default: see ``DISA.fine_spacing``)."""
from __future__ import annotations

import io
import json

import numpy as np


def test_oracle_row_and_spacings(tmp_path):
    from disa.bench.benchmark import run_benchmark
    from disa.cli import build_parser

    out = tmp_path / "bench"
    data = run_benchmark(runs=1, methods=["disa-oracle", "mind"], output_dir=out, device="cpu", log=io.StringIO(),
                         print_fn=lambda *a: None)
    initial = data["initial"]["mean_tre"]
    oracle = data["methods"]["disa-oracle"]["runs"][0]
    # the oracle through the DISA path ends under 2 mm from the expert landmarks (20 starts: 1.72-1.76 mm)
    assert "error" not in oracle and oracle["tre"] < 3.0 < initial
    assert len(oracle["info"]["evaluations"]) == 2  # a 47 mm fan at 0.5 mm: 0.98 and 0.5 mm levels
    assert "disa-oracle" in data["report_markdown"] and data["disa"] is None  # no network rows without "disa"

    coarse = run_benchmark(runs=1, methods=["disa-oracle"], output_dir=tmp_path / "coarse", device="cpu",
                           log=io.StringIO(), print_fn=lambda *a: None, spacings=[2.0])
    run = coarse["methods"]["disa-oracle"]["runs"][0]
    assert len(run["info"]["evaluations"]) == 1 and np.isfinite(run["tre"])
    saved = json.loads((tmp_path / "coarse" / "results.json").read_text())
    assert saved["settings"]["spacings"] == [2.0] and "working spacings 2 mm" in saved["report_markdown"]

    args = build_parser().parse_args(["benchmark", "--methods", "disa-oracle", "--spacings", "2,1"])
    assert args.spacings == [2.0, 1.0]


def test_every_timed_disa_run_describes_both_images(tmp_path):
    """The benchmark times what a user's one registration costs: no timed DISA run takes a
    descriptor from the run before it (the fixed image's would otherwise come from the cache)."""
    from disa.bench.benchmark import run_benchmark
    from disa.features.descriptors import DEFAULT_CACHE

    hits, misses = DEFAULT_CACHE.hits, DEFAULT_CACHE.misses
    data = run_benchmark(runs=2, methods=["disa"], output_dir=tmp_path, device="cpu", log=io.StringIO(),
                         print_fn=lambda *a: None, spacings=[2.0])
    runs = data["methods"]["disa"]["runs"]
    assert len(runs) == 2 and all("error" not in r and np.isfinite(r["tre"]) for r in runs)
    assert DEFAULT_CACHE.hits == hits and DEFAULT_CACHE.misses - misses >= 2 * len(runs)
