"""Checkpoint selection by registration: the snapshot that registers the held-out pairs best.

The learning curve says how well a network approximates LC²; what a user needs is that it
registers. :func:`select_checkpoint` runs the held-out registration check
(:mod:`.heldout`, never RESECT Case 24) on the last ``candidates`` snapshots of a run, keeps
the one with the lowest median error (ties: the larger share under 2 mm), and writes it as a
weights file with a model card that records the recipe, the curve point, the held-out figures
of every candidate and the targets it passes or fails.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Optional


from ..errors import InputError
from ..features.weights import load_weights, read_card, save_weights
from .checkpoints import snapshots, step_of
from .heldout import TARGET_MEDIAN_MM, TARGET_SHARE_2MM, heldout_registration


def select_checkpoint(run_dir: str, source_dir: str, out_path: str, candidates: int = 4, pairs=None,
                      perturbations: int = 3, extra: Optional[dict] = None, fine: bool = False, fine_pairs=None,
                      progress: Callable[[str], None] = print) -> dict:
    """Register the held-out pairs with the last ``candidates`` snapshots of ``run_dir``, write
    the best as ``out_path`` (+ model card) and return the selection record. ``fine``: also
    register the 0.5 mm ultrasound pairs (``scale="fine"``, ``fine_pairs``: a subset) and record
    them per candidate, for a run that trains at that scale; the choice stays the standard
    check's."""
    files = snapshots(run_dir)[-int(candidates):]
    if not files:
        raise InputError(f"no snapshots in {run_dir}/snapshots: train first (disa train)")
    records = []
    for path in files:
        model, _ = load_weights(path)
        res = heldout_registration(source_dir, ("disa",), model=model, pairs=pairs, perturbations=perturbations,
                                   progress=progress)["disa"]
        rec = {"snapshot": os.path.basename(path), "step": step_of(path), **_summary(res), "passes": res["passes"]}
        line = f"held-out median {rec['median_mm']:.2f} mm, {100 * rec['share_below_2mm']:.0f}% < 2 mm"
        if fine:
            f = heldout_registration(source_dir, ("disa",), model=model, pairs=fine_pairs, perturbations=perturbations,
                                     scale="fine", progress=progress)["disa"]
            rec["fine"] = _summary(f)
            line += f"; at 0.5 mm median {f['median_mm']:.2f} mm, {100 * f['share_below_2mm']:.0f}% < 2 mm"
        records.append(rec)
        progress(f"snapshot step {rec['step']}: {line}")
    best = min(records, key=lambda r: (r["median_mm"], -r["share_below_2mm"]))
    model, _ = load_weights(os.path.join(run_dir, "snapshots", best["snapshot"]))
    card = read_card(os.path.join(run_dir, "snapshots", best["snapshot"])) or {}
    curve = _read_curve(run_dir)
    meta = {"kind": "DISA-LC2",
            "target": "LC2 mean over radii 3,5,7, ridge 1e-3 (slopes), var floor 1e-2",
            "training": curve.get("config", {}), "device": curve.get("device"),
            "curve_point": card.get("curve"), "curve_baselines": curve.get("baselines"),
            "checkpoint_selection": {"method": "held-out synthetic registration (disa.train.heldout); "
                                               "RESECT Case 24 never consulted",
                                     "candidates": records, "chosen": best["snapshot"]},
            "targets": {"heldout_median_mm": TARGET_MEDIAN_MM, "heldout_share_below_2mm": TARGET_SHARE_2MM,
                        "passes_heldout": best["passes"]}}
    meta.update(extra or {})
    digest = save_weights(out_path, model, meta)
    return {"weights": out_path, "sha256": digest, "chosen": best, "candidates": records}


def _summary(res: dict) -> dict:
    """What the selection record keeps of one check's ``heldout_registration`` entry."""
    return {"median_mm": res["median_mm"], "share_below_2mm": res["share_below_2mm"], "max_mm": res["max_mm"],
            "errors_mm": [round(e, 3) for e in res["errors_mm"]], "runs": res["runs"]}


def _read_curve(run_dir: str) -> dict:
    path = os.path.join(run_dir, "curve.json")
    if not os.path.exists(path):
        return {}
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


__all__ = ["select_checkpoint"]
