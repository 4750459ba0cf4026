"""``disa benchmark`` (the Case 24 suite): the ``disa-oracle`` row registers the bundled case
through DISA-LC²'s path with the MIND-SSC oracle in place of the network, and ``--spacings``
reaches the engine's methods (4 and 2 mm run two levels where Case 24's small fan gets one by
default: DISA keeps 48 coarse voxels across the fixed content)."""
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
    # the oracle through the DISA path ends about 2 mm from the expert landmarks (20 starts: 2.03-2.08 mm)
    assert "error" not in oracle and oracle["tre"] < 3.0 < initial
    assert len(oracle["info"]["evaluations"]) == 1  # the fan spans under 48 mm: one level at 1 mm
    assert "disa-oracle" in data["report_markdown"] and data["disa"] is None  # no network rows without "disa"

    coarse = run_benchmark(runs=1, methods=["disa-oracle"], output_dir=tmp_path / "coarse", device="cpu",
                           log=io.StringIO(), print_fn=lambda *a: None, spacings=[4.0, 2.0])
    run = coarse["methods"]["disa-oracle"]["runs"][0]
    assert len(run["info"]["evaluations"]) == 2 and np.isfinite(run["tre"])
    saved = json.loads((tmp_path / "coarse" / "results.json").read_text())
    assert saved["settings"]["spacings"] == [4.0, 2.0] and "working spacings 4, 2 mm" in saved["report_markdown"]

    args = build_parser().parse_args(["benchmark", "--methods", "disa-oracle", "--spacings", "2,1"])
    assert args.spacings == [2.0, 1.0]
