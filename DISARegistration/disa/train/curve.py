"""The learning curve: how well the network's dot products approximate LC² on crop pairs from
volume pairs that training never sees, next to the baselines.

At every evaluation the curve records, on one fixed set of held-out crop pairs (all
supervised outputs of each pair, as in training):

- ``r2``: 1 - SSE / SST, the unweighted R² against the constant predictor (the targets' mean);
- ``wr2``: the same with LC²'s weights (local variance of B, capped at 2, plus 0.02), the
  weighting registration applies;
- ``corr``: Pearson correlation of prediction and target;
- ``flat_norm``: the median descriptor norm of outputs whose B cube is flat (variance < 1e-3),
  which should be near 0 (flat patches are similar to nothing);
- descriptor-norm statistics, the mean prediction and the training loss since the last point;
- per kind of volume pair (``synthetic``, ``us_self``: real ultrasound, ``us_template``), when
  the set holds that kind: ``r2_<kind>``, ``corr_<kind>``, ``pred_mean_<kind>`` and
  ``target_mean_<kind>`` (a network can fit the synthetic pairs and miss real ultrasound).

Baselines on the same crops: the constant predictor (R² 0 by definition), the network at its
initialization (step 0 of a fresh run) and the parameter-free MIND-SSC oracle
(:class:`~disa.features.mind_oracle.MINDOracle`), raw and after the best affine map
``a * dot + b`` (what a network distilled from it starts from).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..threads import torch_threads
from .crops import PoolEntry, VolumeAtlas, sample_crop_pairs
from .sources import KINDS, pair_kind
from .targets import dense_targets

#: Crop side and the supervised outputs (stride-4 outputs FIRST..last_output(CROP) per axis: 8^3
#: per 64^3 pair); FIRST = 4 leaves 16 voxels of real context before the first output.
CROP, FIRST = 64, 4


def last_output(crop: int) -> int:
    """The last supervised output of a ``crop``^3 crop: at least 16 voxels of context after it."""
    return (crop - 1 - 16) // 4


LAST = last_output(CROP)
#: Weight of an output: LC²'s patch weight (variance of B), capped, plus a floor.
WEIGHT_CAP, WEIGHT_FLOOR = 2.0, 0.02
#: Variance below which a B cube counts as flat.
FLAT_VARIANCE = 1e-3


def output_weights(var_b: torch.Tensor) -> torch.Tensor:
    return var_b.clamp_max(WEIGHT_CAP) + WEIGHT_FLOOR


def descriptors_at_outputs(model: torch.nn.Module, crops: torch.Tensor) -> torch.Tensor:
    """Norm-clipped descriptors (N, 16, K, K, K) at the supervised outputs of (N, 1, S^3) crops."""
    last = last_output(crops.shape[-1])
    return model(crops)[:, :, FIRST:last + 1, FIRST:last + 1, FIRST:last + 1]


def fit_metrics(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> Dict[str, float]:
    """R² (unweighted, weighted), correlation and MSE of ``pred`` against ``target``."""
    p, t, w = (x.double().flatten() for x in (pred, target, weight))
    sst = ((t - t.mean()) ** 2).sum()
    wm = (w * t).sum() / w.sum()
    return {"r2": float(1 - ((p - t) ** 2).sum() / sst),
            "wr2": float(1 - (w * (p - t) ** 2).sum() / (w * (t - wm) ** 2).sum()),
            "corr": float(torch.corrcoef(torch.stack([p, t]))[0, 1]) if p.std() > 0 else 0.0,
            "mse": float(((p - t) ** 2).mean())}


def affine_fit(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``a * pred + b`` with the least-squares ``a``, ``b``."""
    x = torch.stack([pred.double().flatten(), torch.ones(pred.numel(), dtype=torch.float64, device=pred.device)], 1)
    coef = torch.linalg.lstsq(x, target.double().flatten()[:, None]).solution
    return (x @ coef).view(pred.shape)


class CurveSet:
    """Fixed held-out crop pairs (A, B) with their LC² targets and weights."""

    def __init__(self, pairs: Sequence, n_pairs: int = 48, seed: int = 123, device="cpu", crop: int = CROP):
        if not pairs:
            raise ValueError("the learning curve needs at least one held-out volume pair")
        shape = np.max([p.a.shape for p in pairs] + [p.b.shape for p in pairs], 0)
        atlas = VolumeAtlas(2 * len(pairs), shape)
        pool = []
        for i, p in enumerate(pairs):
            atlas.put(2 * i, p.a)
            atlas.put(2 * i + 1, p.b)
            pool.append(PoolEntry(2 * i, 2 * i + 1, p.centres_a, p.centres_b, p.same_grid, p.scale, p.name))
        rng = np.random.default_rng(seed)
        with torch_threads(1):  # the same crops and targets whatever the caller's thread count
            a, b, index = sample_crop_pairs(atlas, pool, n_pairs, rng, crop, with_index=True)
            target, var_b = dense_targets(a, b, FIRST, last_output(crop))
        self.names = [p.name for p in pairs]
        self.kinds = np.array([pair_kind(self.names[i]) for i in index])
        self.device = torch.device(device)
        self.a, self.b = a.to(self.device), b.to(self.device)
        self.target, self.weight = target.to(self.device), output_weights(var_b).to(self.device)
        self.flat = (var_b < FLAT_VARIANCE).to(self.device)

    def predict(self, model: torch.nn.Module, batch: int = 8):
        """Dot products and descriptor norms (B side) at the supervised outputs."""
        preds, norms = [], []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for s in range(0, len(self.a), batch):
                fa = descriptors_at_outputs(model, self.a[s:s + batch]).float()
                fb = descriptors_at_outputs(model, self.b[s:s + batch]).float()
                preds.append((fa * fb).sum(1, keepdim=True))
                norms.append(torch.linalg.vector_norm(fb, dim=1, keepdim=True))
        model.train(was_training)
        return torch.cat(preds), torch.cat(norms)

    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]:
        pred, norm = self.predict(model)
        out = fit_metrics(pred, self.target, self.weight)
        flat = norm[self.flat]
        out.update(pred_mean=float(pred.mean()), norm_median=float(norm.median()),
                   norm_saturated=float((norm > 0.99).float().mean()),
                   flat_norm=float(flat.median()) if flat.numel() else float("nan"))
        for kind in KINDS:
            sel = torch.from_numpy(self.kinds == kind).to(self.device)
            if int(sel.sum()) < 2:
                continue
            part = fit_metrics(pred[sel], self.target[sel], self.weight[sel])
            key = kind.replace("-", "_")
            out.update({f"r2_{key}": part["r2"], f"corr_{key}": part["corr"],
                        f"pred_mean_{key}": float(pred[sel].mean()), f"target_mean_{key}": float(self.target[sel].mean())})
        return out

    def baselines(self, initial_model: Optional[torch.nn.Module] = None) -> Dict[str, dict]:
        """The constant predictor, the MIND-SSC oracle (raw and affinely fitted) and, when given,
        the network at its initialization."""
        from ..features.mind_oracle import MINDOracle

        t = self.target
        out = {"constant": fit_metrics(torch.full_like(t, float(t.mean())), t, self.weight)}
        pred, _ = self.predict(MINDOracle().to(self.device))
        out["mind_oracle"] = fit_metrics(pred, t, self.weight)
        out["mind_oracle_affine"] = fit_metrics(affine_fit(pred, t).float(), t, self.weight)
        if initial_model is not None:
            out["initial_network"] = self.evaluate(initial_model)
        out["targets"] = {"mean": float(t.mean()), "sd": float(t.std()), "outputs": int(t.numel()),
                          "share_above_0.5": float((t > 0.5).float().mean()), "pairs": self.names}
        return out


def write_curve(path_json: str, history: List[dict], baselines: dict, meta: Optional[dict] = None) -> None:
    """The curve as JSON and, beside it, a PNG plot (R², weighted R², correlation and training
    loss against the step, with the baselines as lines). Both written atomically."""
    report = {"history": history, "baselines": baselines, **(meta or {})}
    tmp = path_json + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path_json)
    plot_curve(report, os.path.splitext(path_json)[0] + ".png")


def plot_curve(report: dict, path_png: str) -> None:
    """The curve as a PNG; nothing without matplotlib (``pip install -e ".[train]"``): the JSON
    holds the same numbers."""
    try:
        import matplotlib
    except ImportError:
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = [h for h in report["history"] if "r2" in h]
    if not hist:
        return
    steps = [h["step"] for h in hist]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("r2", "-o"), ("wr2", "-s"), ("corr", "-^")):
        ax.plot(steps, [h[key] for h in hist], style, ms=3, label=key)
    for kind in KINDS:  # per kind where recorded (curves written before these keys have gaps)
        key = f"r2_{kind.replace('-', '_')}"
        points = [(h["step"], h[key]) for h in hist if key in h]
        if points:
            ax.plot(*zip(*points), ":", lw=1, label=f"r2 {kind}")
    base = report.get("baselines", {})
    for name, colour in (("mind_oracle_affine", "tab:green"), ("initial_network", "tab:red")):
        if name in base:
            ax.axhline(base[name]["r2"], color=colour, ls="--", lw=1, label=f"{name} r2")
    ax.axhline(0.0, color="k", lw=0.8, label="constant predictor")
    ax.set_ylim(max(-1.0, min([0.0] + [h[k] for h in hist for k in ("r2", "wr2")]) - 0.05), 1.0)
    ax.set_xlabel("step")
    ax.set_title("held-out crop pairs")
    ax.legend(fontsize=7)
    for key in ("lc2_loss", "distill_loss"):
        points = [(h["step"], h[key]) for h in hist if h.get(key)]
        if points:
            bx.plot(*zip(*points), "-", label=f"training {key.replace('_', ' ')}")
            bx.set_yscale("log")
    bx.set_xlabel("step")
    bx.legend(fontsize=7)
    fig.tight_layout()
    tmp = path_png + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path_png)


__all__ = ["CurveSet", "write_curve", "plot_curve", "fit_metrics", "affine_fit", "descriptors_at_outputs",
           "output_weights", "last_output", "CROP", "FIRST", "LAST"]
