"""The DISA rows of ``disa benchmark`` (issue #3): how well the descriptors approximate LC²
and how fast they are. Accuracy of ``--metric disa`` registration runs with the other methods
in :mod:`disa.bench.benchmark`.

- approximation: the patch-wise L2 error (mean squared error of the centre-voxel dot product
  against the exact LC² target, the paper's number) on validation patch pairs sampled the
  paper's way from volume pairs training never saw (``disa train --paper --build-only``), next
  to the error of always predicting the targets' mean; and, around every Case 24 landmark, the
  Pearson correlation of the DISA and exact LC² similarity maps (the paper's Fig. 1) plus the
  distance of each map's peak from the corresponding MR landmark.
- speed: descriptors of a 128^3 volume; one DISA evaluation against one exact LC² evaluation
  at the same working level (1 mm), as the optimizer calls them.
- held-out registration: :mod:`disa.train.heldout` (eight synthetic pairs with exact truth,
  the check that also selects checkpoints; never Case 24), run by :mod:`disa.bench.benchmark`.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
import torch

MAP_WINDOW_MM = 15.0


def approximation(model: torch.nn.Module, val_dir: str) -> dict:
    """Patch-wise L2 error on the paper-style validation shards in ``val_dir``."""
    from ..train.dataset import ShardData, shard_files
    from ..train.paper import predict_pairs

    data = ShardData([(f, None) for f in shard_files(val_dir)], 4 * 2 ** 30)
    preds, targets = [], []
    model.eval()
    with torch.no_grad():
        for pairs, t in data.batches(64, None):
            preds.append(predict_pairs(model, torch.from_numpy(pairs.astype(np.float32))).double().numpy())
            targets.append(t.astype(np.float64))
    p, t = np.concatenate(preds), np.concatenate(targets)
    return {"val_mse": float(np.mean((p - t) ** 2)), "val_mae": float(np.mean(np.abs(p - t))),
            "pearson_r": float(np.corrcoef(p, t)[0, 1]), "pairs": int(len(t)),
            "constant_mse": float(np.var(t)), "val_dir": val_dir}


def map_correlation(model: torch.nn.Module, fixed, moving, fixed_points, moving_points,
                    spacing: float = 1.0, window_mm: float = MAP_WINDOW_MM) -> dict:
    """DISA vs exact LC² similarity maps of each fixed (US) landmark over the moving (MR) volume
    at ``spacing``: correlation within ``window_mm`` of the MR landmark, and peak distances."""
    from ..similarity.maps import similarity_map
    from ..spatial import resample_to_spacing

    a = resample_to_spacing(fixed, spacing)
    b = resample_to_spacing(moving, spacing)
    world = b.index_to_world()
    zyx = np.stack(np.meshgrid(*[np.arange(n) for n in b.shape], indexing="ij"), -1).reshape(-1, 3)
    pts = (world @ np.c_[zyx[:, ::-1], np.ones(len(zyx))].T)[:3].T  # voxel (x, y, z) -> LPS
    corr, peak_disa, peak_lc2 = [], [], []
    for p_fixed, p_moving in zip(np.asarray(fixed_points), np.asarray(moving_points)):
        maps = {m: similarity_map(p_fixed, a, b, m, model=model).data[0].reshape(-1).double().numpy()
                for m in ("disa", "lc2")}
        dist = np.linalg.norm(pts - p_moving, axis=1)
        near = dist <= window_mm
        corr.append(float(np.corrcoef(maps["disa"][near], maps["lc2"][near])[0, 1]))
        for m, out in (("disa", peak_disa), ("lc2", peak_lc2)):
            idx = np.flatnonzero(near)[np.argmax(maps[m][near])]
            out.append(float(dist[idx]))
    return {"correlation_median": float(np.median(corr)), "correlation_min": float(np.min(corr)),
            "correlations": corr, "peak_distance_disa_median_mm": float(np.median(peak_disa)),
            "peak_distance_lc2_median_mm": float(np.median(peak_lc2)), "window_mm": window_mm,
            "spacing_mm": spacing, "landmarks": len(corr)}


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for k in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times)), "repeats": repeats}


def time_descriptors(model: torch.nn.Module, size: int = 128, device: str = "cpu", repeats: int = 5) -> dict:
    """Descriptor extraction (normalization + CNN, stride 4) of a ``size``^3 volume."""
    from ..features.descriptors import compute_descriptors
    from ..spatial import Image

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    img = Image.from_array(torch.randn(size, size, size, generator=g).numpy()).to(dev)
    net = model.to(dev)
    with torch.no_grad():
        out = _median_ms(lambda: compute_descriptors(img, net), repeats, 1, dev)
    model.cpu()
    out.update(size=size, device=str(dev))
    return out


def time_evaluations(fixed, moving, device, model: Optional[torch.nn.Module] = None, repeats: int = 20,
                     batch: int = 256) -> dict:
    """Exact LC² against DISA at the 1 mm level of Case 24 (no gradients), two ways: the latency
    of one call with one pose (dominated by per-call overhead for DISA on a CPU), and the cost
    per pose when ``batch`` poses are scored in one call, as the global search does (the cost
    of an evaluation itself, the paper's comparison; at most one chunk of the objective: 8
    poses for LC², ``batch`` for DISA). ``speedup`` compares each measure's cheaper way (batched LC²
    is memory-bound and costs more per pose than single calls)."""
    from ..registration import Objective
    from ..registration.pipeline import moving_level, prepare_image, resolve_device
    from ..similarity.disa import DISA
    from ..similarity.lc2 import LC2
    from ..spatial import resample_to_spacing
    from ..transforms import make_model

    dev = resolve_device(device)
    fixed_p = prepare_image(fixed, "fixed image")
    f_level = resample_to_spacing(fixed_p, 1.0).to(dev)
    m_level = moving_level(prepare_image(moving, "moving image"), 1.0).to(dev)
    out = {}
    for name, sim in (("lc2", LC2((3, 5, 7))), ("disa", DISA(model=model))):
        objective = Objective(sim.prepare(f_level, m_level), f_level, m_level, make_model("rigid", fixed_p.center()))
        x = torch.as_tensor(objective.model.identity(), dtype=torch.float64)[None]
        g = torch.Generator().manual_seed(0)
        nb = min(batch, objective.chunk)
        xb = x + torch.randn(nb, x.shape[1], generator=g, dtype=torch.float64)  # ~1 deg / 1 mm around
        with torch.no_grad():
            out[name] = _median_ms(lambda: objective.similarity(x), repeats, 3, dev)
            per = _median_ms(lambda: objective.similarity(xb), max(3, repeats // 4), 1, dev)
        out[name].update(per_pose_ms=per["median_ms"] / nb, batch=nb)
    out["speedup_single_call"] = out["lc2"]["median_ms"] / out["disa"]["median_ms"]
    best = {k: min(out[k]["median_ms"], out[k]["per_pose_ms"]) for k in ("lc2", "disa")}
    out["speedup"] = best["lc2"] / best["disa"]
    out["device"] = str(dev)
    return out


def curve_metrics(model: torch.nn.Module, data_dir: str) -> dict:
    """The learning curve's metrics (held-out R², weighted R², correlation, flat-patch norm) of
    ``model`` on the curve's held-out crop pairs, with the constant predictor, a random network
    and the MIND-SSC oracle as baselines (:mod:`disa.train.curve`)."""
    from ..features.network import seeded_model
    from ..train.curve import CurveSet
    from ..train.sources import curve_pairs

    curve = CurveSet(curve_pairs(data_dir))
    return {"network": curve.evaluate(model), "baselines": curve.baselines(seeded_model(0))}


def heldout_baselines(model: torch.nn.Module, data_dir: str, progress: Callable[[str], None] = lambda m: None) -> dict:
    """Held-out registration (:mod:`disa.train.heldout`) of ``model`` beside the MIND-SSC oracle
    through the same DISA path, a random network, MIND-SSC and exact LC²."""
    from ..features.mind_oracle import MINDOracle
    from ..features.network import seeded_model
    from ..train.heldout import heldout_registration

    return heldout_registration(data_dir, ("disa", ("mind_oracle", MINDOracle()), ("random_network", seeded_model(0)),
                                           "mind", "lc2"), model=model, progress=progress)


def heldout_fine(model: torch.nn.Module, data_dir: str, progress: Callable[[str], None] = lambda m: None) -> dict:
    """The held-out ultrasound pairs at 0.5 mm (``heldout_registration(..., scale="fine")``): DISA
    at its automatic levels and at one 1 mm level (the working scale before the fine level),
    beside the MIND-SSC oracle through the same path and MIND-SSC."""
    from ..features.mind_oracle import MINDOracle
    from ..train.heldout import heldout_registration

    return heldout_registration(data_dir, ("disa", ("disa_1mm", model, [1.0]), ("mind_oracle", MINDOracle()), "mind"),
                                model=model, scale="fine", progress=progress)


__all__ = ["approximation", "map_correlation", "time_descriptors", "time_evaluations", "curve_metrics",
           "heldout_baselines", "heldout_fine"]
