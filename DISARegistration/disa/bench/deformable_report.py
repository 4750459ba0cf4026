"""The deformable benchmark's report: per method the mean over cases of TRE, Dice (mean and the
25/50/75th percentiles over every label of every case), HD95, folding and seconds, the ratio
to ANTs SyN's seconds, the issue's targets (Markdown and JSON), and a figure with the Dice per
label per method (box plot) and the mean seconds per method (``deformable.png``). Written
all-or-nothing."""
from __future__ import annotations

import json
import math
from typing import List, Optional

import numpy as np

from .deformable_methods import DIFFEOMORPHIC, ENGINE_DENSE, PEERS
from .records import json_default

#: The issue's targets.
DICE_OVER_PEERS_POINTS = 3.0
FOLDING_PERCENT = 0.0
ANTS_TIME_FRACTION = 1.0 / 3.0
FILES = ("deformable.json", "deformable.md", "deformable.png")


def _mean(values) -> Optional[float]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _num(v, spec=".2f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{spec}}"


def summarize(runs: List[dict]) -> Optional[dict]:
    """Means over the successful runs; Dice percentiles over every label of every case."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return None
    labels = np.array([d for r in ok for d in r["dice_per_label"].values()], dtype=np.float64)
    p25, p50, p75 = np.percentile(labels, [25, 50, 75])
    return {"runs": len(ok), "failed": len(runs) - len(ok),
            "tre_mean": _mean(r["tre_mean"] for r in ok), "tre_median": _mean(r["tre_median"] for r in ok),
            "dice_mean": _mean(r["dice_mean"] for r in ok),
            "dice_p25": float(p25), "dice_p50": float(p50), "dice_p75": float(p75),
            "hd95_mean": _mean(r["hd95_mean"] for r in ok),
            "folding_percent_mean": _mean(r["folding_percent"] for r in ok),
            "folding_percent_max": float(max(r["folding_percent"] for r in ok)),
            "folding_voxels": int(sum(r["folding_voxels"] for r in ok)),
            "seconds_mean": _mean(r["seconds"] for r in ok)}


def summaries(doc: dict) -> None:
    """Add ``summary`` to every method with runs, and ``seconds_vs_ants`` where ANTs ran."""
    for entry in doc["methods"].values():
        entry["summary"] = summarize(entry["runs"]) if entry.get("runs") else None
    ants = (doc["methods"].get("ants") or {}).get("summary")
    ants_seconds = ants["seconds_mean"] if ants else None
    for entry in doc["methods"].values():
        s = entry["summary"]
        if s is not None:
            s["seconds_vs_ants"] = (s["seconds_mean"] / ants_seconds
                                    if s["seconds_mean"] is not None and ants_seconds else None)


def targets(doc: dict) -> List[dict]:
    """The issue's benchmark targets, each PASS / FAIL / NOT RUN with what was measured."""
    methods = doc["methods"]

    def summary(m):
        return (methods.get(m) or {}).get("summary")

    peers = [(p, summary(p)["dice_mean"]) for p in PEERS if summary(p)]
    best = max(peers, key=lambda t: t[1]) if peers else None
    out = []
    for m in ENGINE_DENSE:
        s = summary(m)
        if s is None or best is None:
            out.append({"target": f"{m}: mean Dice at least {DICE_OVER_PEERS_POINTS:g} points above the best peer",
                        "measured": None if s is None else f"{100 * s['dice_mean']:.1f} (no peer ran)",
                        "verdict": "NOT RUN"})
            continue
        gap = 100 * (s["dice_mean"] - best[1])
        out.append({"target": f"{m}: mean Dice at least {DICE_OVER_PEERS_POINTS:g} points above the best peer",
                    "measured": f"{100 * s['dice_mean']:.1f} vs {best[0]} {100 * best[1]:.1f} ({gap:+.1f} points)",
                    "verdict": "PASS" if gap >= DICE_OVER_PEERS_POINTS else "FAIL"})
    for m in DIFFEOMORPHIC:
        s = summary(m)
        out.append({"target": f"{m}: {FOLDING_PERCENT:g}% folding (det J <= 0) in every case",
                    "measured": None if s is None else
                    f"max {s['folding_percent_max']:.4f}% ({s['folding_voxels']} voxels in {s['runs']} cases)",
                    "verdict": "NOT RUN" if s is None else
                    ("PASS" if s["folding_percent_max"] <= FOLDING_PERCENT else "FAIL")})
    ants = summary("ants")
    for m in ENGINE_DENSE:
        s = summary(m)
        name = f"{m}: wall time at most {ANTS_TIME_FRACTION:.3g} of ANTs SyN's"
        if s is None or ants is None or s["seconds_mean"] is None:
            out.append({"target": name, "measured": None if s is None else
                        f"{_num(s['seconds_mean'], '.1f')} s (ANTs SyN did not run)", "verdict": "NOT RUN"})
            continue
        out.append({"target": name, "measured": f"{s['seconds_mean']:.1f} s vs {ants['seconds_mean']:.1f} s "
                                                f"(ratio {s['seconds_vs_ants']:.2f})",
                    "verdict": "PASS" if s["seconds_vs_ants"] <= ANTS_TIME_FRACTION else "FAIL"})
    return out


def markdown(doc: dict) -> str:
    st = doc["settings"]
    kinds = {}
    for c in doc["cases"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    what = (f"synthetic pairs with a rigid perturbation ({st['rotation_deg']:g} deg, {st['translation_mm']:g} mm) "
            f"and a smooth deformation of up to {st['deform_mm']:g} mm" if st.get("deform_mm") else "given case folders")
    lines = ["# disa benchmark deformable", "",
             (f"{len(doc['cases'])} cases ({', '.join(f'{n} {k}' for k, n in kinds.items())}): {what}; seed "
             f"{st['seed']}, {st['threads']} CPU threads for every method. Means over cases; Dice percentiles over "
             "every label of every case; folding: voxels of the fixed grid with det J <= 0."), "",
             ("| method | TRE mean (mm) | TRE median (mm) | Dice mean | Dice p25 / p50 / p75 | HD95 (mm) "
             "| folding % (max) | seconds | x ANTs SyN |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, entry in doc["methods"].items():
        s = entry.get("summary")
        if not s:
            why = "not run" if not entry.get("available", True) else "failed"
            lines.append(f"| {method} | {why} |  |  |  |  |  |  |  |")
            continue
        name = method + (f" ({s['failed']} failed)" if s["failed"] else "")
        lines.append(f"| {name} | {_num(s['tre_mean'])} | {_num(s['tre_median'])} | {_num(s['dice_mean'], '.3f')} | "
                     f"{s['dice_p25']:.3f} / {s['dice_p50']:.3f} / {s['dice_p75']:.3f} | {_num(s['hd95_mean'])} | "
                     f"{s['folding_percent_mean']:.4f} ({s['folding_percent_max']:.4f}) | "
                     f"{_num(s['seconds_mean'], '.1f')} | {_num(s['seconds_vs_ants'])} |")
    kind_names = list(kinds)
    if len(kind_names) > 1:
        lines += ["", "Mean Dice / TRE (mm) per case kind:", "",
                  "| method | " + " | ".join(kind_names) + " |", "|---|" + "---:|" * len(kind_names)]
        for method, entry in doc["methods"].items():
            ok = [r for r in entry.get("runs", []) if "error" not in r]
            if not ok:
                continue
            cells = []
            for k in kind_names:
                rs = [r for r in ok if r["kind"] == k]
                cells.append(f"{_mean(r['dice_mean'] for r in rs):.3f} / {_mean(r['tre_mean'] for r in rs):.2f}"
                             if rs else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    env = doc["environment"]
    before, after = env.get("load_average_before"), env.get("load_average_after")
    lines += ["", "Notes:"]
    lines += [f"- {m}: {e['settings']}." for m, e in doc["methods"].items()]
    lines += [("- Seconds: wall time of the registration call from in-memory images to the transform (peers: "
              "measured in their own process, after its start and imports); identity and truth have none. "
              "Methods run case by case, all methods on a case before the next."),
              f"- Machine: {env.get('cpu_count')} CPU cores"
              + (f", load average {before[0]:.2f} at the start" if before else "")
              + (f", {after[0]:.2f} at the end" if after else "")
              + f"; whole benchmark {env.get('total_seconds', math.nan) / 60:.1f} min."]
    lines += [f"- Not run: {m}: {e.get('reason')}" for m, e in doc["methods"].items() if not e.get("available", True)]
    failures = [(m, r) for m, e in doc["methods"].items() for r in e.get("runs", []) if "error" in r]
    lines += [f"- Failed: {m} on {r['case']}: {r['error']}" for m, r in failures[:12]]
    lines += ["", "Targets (from the issue):"]
    lines += [f"- {t['verdict']}: {t['target']} (measured: {t['measured'] or 'not measured'})" for t in doc["targets"]]
    return "\n".join(lines)


def plot(doc: dict, path: str) -> None:
    """Left: Dice per label (every case) per method, box plot; right: mean seconds per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, dice, secs = [], [], []
    for method, entry in doc["methods"].items():
        ok = [r for r in entry.get("runs", []) if "error" not in r]
        if not ok:
            continue
        names.append(method)
        dice.append([d for r in ok for d in r["dice_per_label"].values()])
        secs.append(_mean(r["seconds"] for r in ok))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(max(9, 1.6 * len(names) + 4), 4.8),
                                 gridspec_kw={"width_ratios": [3, 2]})
    if names:
        ax.boxplot(dice, showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=8)
        timed = [(n, s) for n, s in zip(names, secs) if s is not None]
        if timed:
            bx.bar(range(len(timed)), [s for _, s in timed], color="tab:blue")
            bx.set_xticks(range(len(timed)), [n for n, _ in timed], rotation=35, ha="right", fontsize=8)
            bx.set_yscale("log")
            for i, (_, s) in enumerate(timed):
                bx.annotate(f"{s:.1f}", (i, s), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("Dice per label")
    ax.set_ylim(0, 1.02)
    ax.set_title("label overlap after registration (all cases)")
    ax.grid(alpha=0.3, axis="y")
    bx.set_ylabel("seconds per registration (mean)")
    bx.set_title("wall time")
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(doc: dict, outputs) -> dict:
    """Add the summaries, targets and Markdown to ``doc`` and write the three files together
    (``outputs``: ``records.report_files(output_dir, FILES)``)."""
    summaries(doc)
    doc["targets"] = targets(doc)
    text = markdown(doc)
    doc["report_markdown"] = text
    with outputs.staged() as staged:
        with open(staged["deformable.json"], "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, default=json_default)
        with open(staged["deformable.md"], "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        plot(doc, staged["deformable.png"])
    return {"markdown": text, "files": list(outputs.paths.values())}


__all__ = [
    "ANTS_TIME_FRACTION",
    "DICE_OVER_PEERS_POINTS",
    "FILES",
    "markdown",
    "plot",
    "summaries",
    "summarize",
    "targets",
    "write_report",
]
