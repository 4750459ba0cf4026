"""The capture benchmark's report: the table in the DISA paper's Table 3 layout (Markdown and
JSON), the issue's targets, the converged share against the initial error per method
(``capture_rate.png``) and a box plot of the final errors per method (``capture_errors.png``,
as the paper's Fig. 2). Written all-or-nothing."""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional

import numpy as np

from .records import json_default

#: The issue's targets.
MIND_OVER_PEERS_POINTS = 20.0          # MIND global over the best peer, 25-100 mm bins
DISA_GLOBAL_SHARE = 0.90               # DISA global converged share, every bin
DISA_OVER_PEERS_POINTS = 20.0          # DISA global over the best peer, 50-100 mm bins
DISA_CPU_SECONDS, DISA_GPU_SECONDS = 20.0, 2.0
PEERS = ("sitk-mi", "elastix", "ants")
FILES = ("capture.json", "capture.md", "capture_rate.png", "capture_errors.png")


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


def _num(v, spec=".1f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{spec}}"


def _share(doc: dict, method: str, b: int, key: str = "converged") -> Optional[float]:
    s = doc["methods"].get(method, {}).get("summary")
    if not s or not s["bins"][b]["runs"]:
        return None
    return s["bins"][b][key]


def targets(doc: dict) -> List[dict]:
    """The issue's benchmark targets, each PASS / FAIL / NOT RUN with what was measured."""
    bins = doc["settings"]["bins_mm"]
    methods = doc["methods"]
    peers = [p for p in PEERS if methods.get(p, {}).get("summary")]

    def best_peer(b):
        vals = [v for v in (_share(doc, p, b) for p in peers) if v is not None]
        return max(vals) if vals else None

    def label(b):
        return f"{bins[b][0]:g}-{bins[b][1]:g} mm"

    out = []
    g, loc = [[_share(doc, m, b) for b in range(len(bins))] for m in ("mind-global", "mind-local")]
    ok = [a is not None and c is not None for a, c in zip(g, loc)]
    out.append({"target": "MIND-SSC global at least as good as MIND-SSC local in every bin (TRE < 15 mm)",
                "measured": "; ".join(f"{label(b)}: {_pct(g[b])} vs {_pct(loc[b])}" for b in range(len(bins))),
                "verdict": "NOT RUN" if not any(ok) else
                ("PASS" if all(g[b] >= loc[b] for b in range(len(bins)) if ok[b]) else "FAIL")})
    far = [b for b in range(len(bins)) if bins[b][0] >= 25.0]
    for method, gap, bs, name in (("mind-global", MIND_OVER_PEERS_POINTS, far, "MIND-SSC global"),
                                  ("disa-global", DISA_OVER_PEERS_POINTS,
                                   [b for b in range(len(bins)) if bins[b][0] >= 50.0], "DISA-LC2 global")):
        pairs = [(b, _share(doc, method, b), best_peer(b)) for b in bs]
        measured = "; ".join(f"{label(b)}: {_pct(v)} vs best peer {_pct(p)}" for b, v, p in pairs)
        valid = [(v, p) for _, v, p in pairs if v is not None and p is not None]
        out.append({"target": f"{name} at least {gap:g} points above the best peer in the "
                              f"{bins[bs[0]][0]:g}-{bins[bs[-1]][1]:g} mm bins",
                    "measured": measured, "verdict": "NOT RUN" if not valid else
                    ("PASS" if all(v - p >= gap / 100.0 for v, p in valid) else "FAIL")})
    d = [_share(doc, "disa-global", b) for b in range(len(bins))]
    out.append({"target": f"DISA-LC2 global converges (TRE < 15 mm) in >= {100 * DISA_GLOBAL_SHARE:.0f}% of runs "
                          "in every bin up to 100 mm",
                "measured": "; ".join(f"{label(b)}: {_pct(d[b])}" for b in range(len(bins))),
                "verdict": "NOT RUN" if all(v is None for v in d) else
                ("PASS" if all(v is not None and v >= DISA_GLOBAL_SHARE for v in d) else "FAIL")})
    s = methods.get("disa-global", {}).get("summary")
    limit = DISA_GPU_SECONDS if doc["settings"]["device"].startswith("cuda") else DISA_CPU_SECONDS
    out.append({"target": f"DISA-LC2 global under {limit:g} s per registration on {doc['settings']['device']}",
                "measured": None if not s else f"mean {_num(s['mean_seconds'])} s",
                "verdict": "NOT RUN" if not s or s["mean_seconds"] is None else
                ("PASS" if s["mean_seconds"] < limit else "FAIL")})
    return out


def markdown(doc: dict) -> str:
    st = doc["settings"]
    bins = st["bins_mm"]
    kinds: Dict[str, int] = {}
    for c in doc["cases"]:
        kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
    n_runs = len(doc["perturbations"])
    lines = ["# disa benchmark capture: capture range", "",
             f"{len(doc['cases'])} cases ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
             f"{n_runs} perturbed starts "
             f"(initial error = mean landmark distance at the start, drawn uniformly in 0-{bins[-1][1]:g} mm; "
             f"{len(doc['skipped'])} skipped where a case's field of view does not allow them). "
             f"Converged: TRE < {st['converged_mm']:g} mm, precise: TRE < {st['precise_mm']:g} mm. "
             f"Seed {st['seed']}, device {st['device']}"
             + (f", images reduced to {st['image_spacing_mm']:g} mm" if st.get("image_spacing_mm") else "") + ".", "",
             "Share of runs converged < 15 mm / < 5 mm (runs) per initial error:", "",
             "| method | " + " | ".join(f"{lo:g}-{hi:g} mm" for lo, hi in bins)
             + " | all | mean s | mean evaluations |",
             "|---|" + "---:|" * (len(bins) + 3)]
    for method, entry in doc["methods"].items():
        s = entry.get("summary")
        if not s:
            lines.append(f"| {method} | " + " | ".join(["unavailable"] + [""] * (len(bins) + 2)) + " |")
            continue
        cells = [f"{_pct(b['converged'])} / {_pct(b['precise'])} ({b['runs']})" if b["runs"] else "-"
                 for b in s["bins"]]
        a = s["all"]
        name = method + (f" ({s['failed']} failed)" if s["failed"] else "")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(a['converged'])} / {_pct(a['precise'])} "
                     f"({a['runs']}) | {_num(s['mean_seconds'])} | {_num(s['mean_evaluations'], '.0f')} |")
    kind_names = list(kinds)
    lines += ["", "Share converged (< 15 mm) per case kind, all bins:", "",
              "| method | " + " | ".join(kind_names) + " |", "|---|" + "---:|" * len(kind_names)]
    for method, entry in doc["methods"].items():
        if not entry.get("runs"):
            continue
        cells = []
        for k in kind_names:
            tre = np.array([r["tre"] for r in entry["runs"] if r["kind"] == k], dtype=np.float64)
            cells.append(f"{_pct(float((np.nan_to_num(tre, nan=np.inf) < st['converged_mm']).mean()))} ({tre.size})"
                         if tre.size else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    notes = [f"{m}: {e.get('reason')}" for m, e in doc["methods"].items() if not e.get("available", True)]
    notes += [f"{m}: warm-up raised {e['warm_up_error']}" for m, e in doc["methods"].items() if e.get("warm_up_error")]
    settings = "; ".join(f"{m}: " + ", ".join(f"{k} {v}" for k, v in e["settings"].items())
                         for m, e in doc["methods"].items())
    env = doc["environment"]
    load = env.get("load_average_before")
    lines += ["", "Notes:",
              f"- Methods: {settings}.",
              "- Every run starts at the identity (the moved moving image's header); perturbations rotate by up to "
              f"{st['rotation_per_mm_deg']:g} deg per mm of their size about a random axis through the fixed centre "
              f"and keep >= {100 * st['min_overlap']:.0f}% of the fixed content inside the moving volume.",
              "- Seconds: wall time per registration from in-memory images to the matrix, after one untimed warm-up "
              "per method; runs interleaved across methods. Evaluations: objective evaluations per registration "
              "(engine: global-search poses and local steps; sitk-mi: gradient-descent iterations; elastix: its fixed "
              "iteration budget; ants: not reported).",
              f"- Machine: {env.get('cpu_count')} CPU cores"
              + (f", load average {load[0]:.2f} before the run" if load else "")
              + f"; whole benchmark {env.get('total_seconds', math.nan) / 60:.1f} min."]
    lines += [f"- Skipped: {s['case']} at {s['target_error']:.1f} mm ({s['why']})" for s in doc["skipped"][:12]]
    if len(doc["skipped"]) > 12:
        lines.append(f"- ... {len(doc['skipped']) - 12} more skipped starts (capture.json)")
    lines += [f"- Unavailable: {n}" for n in notes]
    lines += ["", "Targets (from the issue):"]
    lines += [f"- {t['verdict']}: {t['target']} (measured: {t['measured'] or 'not measured'})" for t in doc["targets"]]
    return "\n".join(lines)


def plot_rate(doc: dict, path: str) -> None:
    """Converged share (< 15 mm, solid; < 5 mm, dashed) against the initial-error bin centre."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = doc["settings"]["bins_mm"]
    centres = [(lo + hi) / 2 for lo, hi in bins]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, entry in doc["methods"].items():
        s = entry.get("summary")
        if not s:
            continue
        conv = [b["converged"] if b["runs"] else np.nan for b in s["bins"]]
        prec = [b["precise"] if b["runs"] else np.nan for b in s["bins"]]
        line, = ax.plot(centres, 100 * np.asarray(conv), "o-",
                        label=f"{method} (< {doc['settings']['converged_mm']:g} mm)")
        ax.plot(centres, 100 * np.asarray(prec), "s--", color=line.get_color(), alpha=0.5)
    ax.set_xticks(centres, [f"{lo:g}-{hi:g}" for lo, hi in bins])
    ax.set_xlabel("initial error (mm, mean landmark distance)")
    ax.set_ylabel("converged runs (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(f"capture range (solid: TRE < {doc['settings']['converged_mm']:g} mm, "
                 f"dashed: < {doc['settings']['precise_mm']:g} mm)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(doc: dict, path: str) -> None:
    """Box plot of the final TRE per method (log scale; failed runs left out and counted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, data = [], []
    for method, entry in doc["methods"].items():
        tre = np.array([r["tre"] for r in entry.get("runs", [])], dtype=np.float64)
        if tre.size:
            failed = int((~np.isfinite(tre)).sum())
            names.append(method + (f"\n({failed} failed)" if failed else ""))
            data.append(np.maximum(tre[np.isfinite(tre)], 1e-2))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 4.5))
    if data:
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set_yscale("log")
    for y, style in ((doc["settings"]["converged_mm"], "--"), (doc["settings"]["precise_mm"], ":")):
        ax.axhline(y, color="grey", linestyle=style, linewidth=1)
    ax.set_ylabel("final TRE (mm)")
    ax.set_title("final errors per method, all starts")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(doc: dict, outputs) -> dict:
    """Add the targets and the Markdown to ``doc`` and write the four files together
    (``outputs``: ``records.report_files(output_dir, FILES)``)."""
    doc["targets"] = targets(doc)
    text = markdown(doc)
    doc["report_markdown"] = text
    with outputs.staged() as staged:
        with open(staged["capture.json"], "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, default=json_default)
        with open(staged["capture.md"], "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        plot_rate(doc, staged["capture_rate.png"])
        plot_errors(doc, staged["capture_errors.png"])
    return {"markdown": text, "files": list(outputs.paths.values())}


__all__ = ["FILES", "markdown", "targets", "plot_rate", "plot_errors", "write_report"]
