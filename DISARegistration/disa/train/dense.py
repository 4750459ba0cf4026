"""Dense training of DISA-LC²: hundreds of supervised outputs per network pass.

The paper's recipe (:mod:`disa.train.trainer`) supervises one output voxel per 33^3 patch pair:
about 7 pairs/s on a 2-core CPU, far too slow to train there. Here each step takes two 64^3
crops, one from volume A around ``p + d`` and one from B around ``p``, cut with the same random
rotation, reflection and scale, and supervises every interior stride-4 output voxel (8^3 = 512
per pair): output ``k`` of both crops sees the volume points ``p + d + R k`` and ``p + R k``,
and its target is the paper's training target (``lc2_target``: radii 3/5/7, ridge 1e-3,
variance floor 1e-2) of the two crops' cubes around that voxel. Each output keeps at least 16
voxels of real crop context on every side (the network's receptive field is 49).

Target spread: for pairs on one grid (synthetic appearances of one template, and real
ultrasound paired with an intensity-remapped copy of itself) ``d`` is 0 in 40% of the crops
(aligned: high LC² where there is structure) and a random shift of up to ``max_offset`` voxels
otherwise (misaligned: lower LC²); real ultrasound against an unrelated template region gives
the low end with real speckle. Crop centres are drawn in proportion to the local variance of B,
as the paper draws its B patches. The loss is the squared error weighted by that variance
(capped at 2, plus 0.02) and by the inverse running frequency of the target's histogram bin
(at most 10x), which flattens the target distribution as the paper's uniform draw does.

Volume pairs are rendered by :mod:`disa.train.synth` into a pool that is refreshed as training
goes, so the network sees new appearances all the time. Progress is validated with the
paper's metric on patch pairs sampled the paper's way (``build_dataset`` shards from volume
pairs never seen in training): the patch-wise L2 error of the centre voxel.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .patches import RADII, lc2_target, random_rotations
from .synth import (VolumePair, _random_curve, corrupt, load_ultrasound, make_pair, make_pair_specs,
                    normalize, ultrasound_files)

CHECKPOINT_FORMAT = "disa-dense-checkpoint-v1"
#: Crop side (voxels) and the supervised output range (stride-4 outputs FIRST..LAST inclusive).
CROP = 64
FIRST, LAST = 4, 11
#: Target histogram bins of the loss balancing, and the largest up-weighting of a rare bin.
BINS, MAX_BALANCE = 10, 10.0


# ---------------------------------------------------------------------------------------------
# targets
def output_patches(x: torch.Tensor) -> torch.Tensor:
    """(N * 512, 17, 17, 17): the cube around each supervised output voxel of (N, 1, CROP^3)
    crops, with one voxel of context for the central differences of ``lc2_target``."""
    side = 2 * max(RADII) + 3
    lo = 4 * FIRST - side // 2
    hi = 4 * LAST + side // 2 + 1
    u = x[:, 0, lo:hi, lo:hi, lo:hi].unfold(1, side, 4).unfold(2, side, 4).unfold(3, side, 4)
    return u.reshape(-1, side, side, side)


def predict_dense(model: torch.nn.Module, crops_a: torch.Tensor, crops_b: torch.Tensor) -> torch.Tensor:
    """<phi(A), phi(B)> at the supervised outputs: (N, 1, 8, 8, 8)."""
    n = crops_a.shape[0]
    f = model(torch.cat([crops_a, crops_b], 0))[:, :, FIRST:LAST + 1, FIRST:LAST + 1, FIRST:LAST + 1]
    return (f[:n] * f[n:]).sum(1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# crops
def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation, with a reflection half of the time (LC² is mirror invariant)."""
    r = random_rotations(1, rng)[0]
    if rng.uniform() < 0.5:
        r = r @ np.diag([-1.0, 1.0, 1.0])
    return r


_OFFSETS = {}


def crop_grid(centre_zyx, rotation: np.ndarray, scale: float, shape, size: int = CROP) -> torch.Tensor:
    """grid_sample grid (1, S, S, S, 3) of a rotated, scaled cube centred on a voxel (z, y, x)."""
    if size not in _OFFSETS:  # whole-voxel offsets: without rotation the crop is exact
        o = torch.arange(size, dtype=torch.float32) - size // 2
        _OFFSETS[size] = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    m = torch.from_numpy(scale * rotation.T).float()
    pts = _OFFSETS[size] @ m + torch.tensor(np.asarray(centre_zyx, float), dtype=torch.float32)
    dims = torch.tensor([max(n - 1, 1) for n in shape], dtype=torch.float32)
    norm = 2.0 * pts / dims - 1.0
    return norm.flip(-1).view(1, size, size, size, 3)  # grid_sample wants (x, y, z)


@dataclass
class PoolPair:
    a: torch.Tensor          # (1, 1, Z, Y, X) normalized
    b: torch.Tensor
    centres_b: np.ndarray    # candidate B crop centres (K, 3) voxel (z, y, x)
    centres_a: np.ndarray
    same_grid: bool
    scale: float
    name: str


def _content_voxels(volume: np.ndarray, mask: Optional[np.ndarray], rng: np.random.Generator, k: int = 4096):
    """``k`` crop centres inside the content, drawn in proportion to the local variance (capped
    at 2), LC²'s weight: as the paper draws its B patches."""
    inside = mask if mask is not None else volume != 0
    if not inside.any():
        inside = np.ones_like(volume, dtype=bool)
    r = 2 * RADII[len(RADII) // 2] + 1
    mean = ndimage.uniform_filter(volume, r)
    var = np.clip(ndimage.uniform_filter(volume * volume, r) - mean * mean, 0.0, 2.0)[inside] + 1e-3
    where = np.argwhere(inside)
    return where[rng.choice(len(where), min(k, len(where)), replace=False, p=var / var.sum())]


def self_pair(path: str, seed: int) -> VolumePair:
    """Real ultrasound (B) and an intensity-remapped, smoothed copy of it (A) on one grid: the
    aligned end of LC² with real speckle and anatomy."""
    rng = np.random.default_rng(seed)
    b, fan = load_ultrasound(path)
    smooth = ndimage.gaussian_filter(b, rng.uniform(0.7, 2.0))
    a = _random_curve(smooth, rng, monotone=rng.uniform() < 0.5) * fan
    a, _ = normalize(corrupt(a, rng, mask=fan), fan)
    return VolumePair(a, b, fan, fan, True, {"kind": "us-self", "path": path, "seed": seed})


def to_pool_pair(pair: VolumePair, scale: float, rng: np.random.Generator, name: str) -> PoolPair:
    a, b = pair.a, pair.b
    if scale > 1.0:  # band-limit before cutting crops with a voxel step of ``scale``
        sigma = 0.5 * math.sqrt(scale * scale - 1.0)
        a, b = ndimage.gaussian_filter(a, sigma), ndimage.gaussian_filter(b, sigma)
    return PoolPair(torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None],
                    torch.from_numpy(np.ascontiguousarray(b, np.float32))[None, None],
                    _content_voxels(pair.b, pair.mask_b, rng), _content_voxels(pair.a, pair.mask_a, rng),
                    bool(pair.same_grid), float(scale), name)


class PairSource:
    """An endless stream of training volume pairs (synthetic, real-US self pairs, real US with a
    template), deterministic in ``seed``; ``exclude`` names ultrasound files kept for validation."""

    def __init__(self, data_dir: str, seed: int = 0, exclude: Sequence[str] = (),
                 mix=(0.7, 0.15, 0.15), scales=((1.0, 0.5), (1.5, 0.25), (2.0, 0.25))):
        self.data_dir = os.fspath(data_dir)
        self.us = [f for f in ultrasound_files(self.data_dir)
                   if not any(os.path.basename(f).startswith(e) for e in exclude)]
        self.seed, self.count, self.mix, self.scales = int(seed), 0, mix, scales

    def next(self) -> PoolPair:
        rng = np.random.default_rng([self.seed, self.count])
        self.count += 1
        sub = int(rng.integers(2 ** 31))
        kind = rng.choice(3, p=self.mix) if self.us else 0
        if kind == 0:
            spec = make_pair_specs(self.data_dir, 1, 0, seed=sub)[0]
            pair = make_pair(spec, self.data_dir)
            name = spec.name()
        elif kind == 1:
            path = self.us[int(rng.integers(len(self.us)))]
            pair, name = self_pair(path, sub), f"us-self-{os.path.basename(path).split('.')[0]}-{sub}"
        else:
            path = self.us[int(rng.integers(len(self.us)))]
            spec = make_pair_specs(self.data_dir, 0, 1, seed=sub)  # one spec per file; keep ours
            spec = next(s for s in spec if s.path_b and os.path.basename(s.path_b) == os.path.basename(path))
            pair, name = make_pair(spec, self.data_dir), spec.name()
        values, probs = zip(*self.scales)
        scale = float(rng.choice(values, p=np.asarray(probs) / sum(probs)))
        return to_pool_pair(pair, scale, rng, f"{name}@{scale:g}")


def sample_crops(pool: List[PoolPair], n: int, rng: np.random.Generator, max_offset: float = 12.0,
                 aligned_fraction: float = 0.4):
    """``n`` crop pairs (A crops, B crops), each (n, 1, CROP, CROP, CROP), with random intensity
    augmentation (sign, scale, offset) applied per crop."""
    crops_a, crops_b = [], []
    for _ in range(n):
        p = pool[int(rng.integers(len(pool)))]
        rot = random_rotation(rng)
        cb = p.centres_b[int(rng.integers(len(p.centres_b)))].astype(float)
        if p.same_grid:
            d = np.zeros(3)
            if rng.uniform() >= aligned_fraction:
                v = rng.normal(size=3)
                d = v / np.linalg.norm(v) * rng.uniform(0.5, max_offset) * p.scale
            ca = cb + d
        else:
            ca = p.centres_a[int(rng.integers(len(p.centres_a)))].astype(float)
        for vol, c, out in ((p.a, ca, crops_a), (p.b, cb, crops_b)):
            grid = crop_grid(c, rot, p.scale, vol.shape[-3:])
            out.append(F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0])
    xa, xb = torch.stack(crops_a), torch.stack(crops_b)
    def aug(x):
        k = x.shape[0]
        sign = torch.from_numpy(np.where(rng.uniform(size=k) < 0.5, -1.0, 1.0)).float()
        s = torch.from_numpy(np.exp(rng.uniform(-math.log(1.5), math.log(1.5), k))).float()
        o = torch.from_numpy(rng.uniform(-0.5, 0.5, k)).float()
        return x * (sign * s).view(k, 1, 1, 1, 1) + o.view(k, 1, 1, 1, 1)
    return aug(xa), aug(xb)


def batch_targets(xa: torch.Tensor, xb: torch.Tensor):
    """Exact LC² targets (the paper's ``lc2_target``) and LC²'s weights (variance of the B
    cube of the middle radius), each (N, 1, 8, 8, 8), at the supervised outputs."""
    n, k = xa.shape[0], LAST - FIRST + 1
    with torch.no_grad():
        pa, pb = output_patches(xa), output_patches(xb)
        t = lc2_target(pa, pb)
        c, r = pa.shape[-1] // 2, RADII[len(RADII) // 2]
        var = pb[:, c - r:c + r + 1, c - r:c + r + 1, c - r:c + r + 1].reshape(len(pb), -1).var(1)
    return t.view(n, 1, k, k, k), var.view(n, 1, k, k, k)


# ---------------------------------------------------------------------------------------------
@dataclass
class DenseConfig:
    """Settings of :func:`train_dense`. ``val_data``: paper-style shards (``build_dataset``) from
    volume pairs the stream never produces (``exclude_us`` keeps their ultrasound out)."""

    source_dir: str
    out_dir: str
    val_data: Optional[str] = None
    steps: int = 4000
    batch_pairs: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_steps: int = 100
    pool_size: int = 12
    refresh_every: int = 60
    max_offset: float = 12.0
    eval_every: int = 250
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None
    time_limit_s: Optional[float] = None
    resume: bool = False
    exclude_us: Sequence[str] = ("Case26", "Case27")
    weights_name: str = "disa_lc2.pt"
    metadata: Dict = field(default_factory=dict)


def train_dense(config: DenseConfig, progress=print) -> dict:
    """Train DISANet densely; write ``checkpoint.pt`` at each evaluation and the weights (with
    their model card JSON) at the end. Returns the report (history, weights, sha256)."""
    from ..threads import torch_threads

    with torch_threads(config.threads):
        return _train_dense(config, progress)


def _train_dense(config: DenseConfig, progress) -> dict:
    from ..features.network import DISANet
    from .trainer import _PartData, _device, _shards, evaluate, load_checkpoint

    device = _device(config.device)
    os.makedirs(config.out_dir, exist_ok=True)
    val = _PartData([(f, None) for f in _shards(config.val_data)], 4 * 2 ** 30) if config.val_data else None
    torch.manual_seed(config.seed)
    model = DISANet().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ckpt_path = os.path.join(config.out_dir, "checkpoint.pt")
    history: List[dict] = []
    step0 = 0
    if config.resume and os.path.exists(ckpt_path):
        ck = load_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "dense DISA training checkpoint")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        history, step0 = ck["history"], int(ck["step"])
        progress(f"resuming after step {step0}")
    source = PairSource(config.source_dir, config.seed + 7 * step0, config.exclude_us)
    t0 = time.perf_counter()
    pool = [source.next() for _ in range(config.pool_size)]
    progress(f"pool of {len(pool)} volume pairs rendered in {time.perf_counter() - t0:.0f} s")
    seen = [p.name for p in pool]
    rng = np.random.default_rng([config.seed, step0])
    counts = torch.full((BINS,), 1.0 / BINS, dtype=torch.float64)
    loss_acc, w_acc, t_last = 0.0, 0.0, time.perf_counter()
    step = step0
    for step in range(step0 + 1, config.steps + 1):
        if step % config.refresh_every == 0:
            pool[step // config.refresh_every % len(pool)] = fresh = source.next()
            seen.append(fresh.name)
        xa, xb = sample_crops(pool, config.batch_pairs, rng, config.max_offset)
        target, var = batch_targets(xa, xb)
        # flatten the target distribution (the paper draws targets uniformly in [0, 1])
        bins = (target * BINS).long().clamp(0, BINS - 1)
        counts = 0.99 * counts + 0.01 * torch.bincount(bins.flatten(), minlength=BINS).double() / bins.numel()
        balance = (1.0 / (BINS * counts.clamp_min(1e-6))).clamp(0.1, MAX_BALANCE).float()
        weight = balance[bins] * (var.clamp_max(2.0) + 0.02)
        xa, xb, target, weight = (t.to(device) for t in (xa, xb, target, weight))
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, step / max(1, config.warmup_steps))
        pred = predict_dense(model, xa, xb)
        loss = (weight * (pred - target) ** 2).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_acc += float(loss.detach())
        w_acc += 1
        done = step % config.eval_every == 0 or step == config.steps
        out_of_time = config.time_limit_s is not None and time.perf_counter() - t0 > config.time_limit_s
        if done or out_of_time:
            entry = {"step": step, "train_loss": loss_acc / max(w_acc, 1),
                     "seconds": round(time.perf_counter() - t0, 1),
                     "steps_per_s": round(w_acc / (time.perf_counter() - t_last), 3)}
            if val is not None:
                v = evaluate(model, val, 64, device)
                entry.update(val_mse=v["mse"], val_mae=v["mae"])
                model.train()
            history.append(entry)
            progress(json.dumps(entry))
            loss_acc, w_acc, t_last = 0.0, 0.0, time.perf_counter()
            ck = {"format": CHECKPOINT_FORMAT, "step": step, "model": model.state_dict(),
                  "optimizer": opt.state_dict(), "history": history, "config": _jsonable(config),
                  "seen": seen, "device": str(device)}
            torch.save(ck, ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
        if out_of_time:
            progress(f"time limit reached after step {step}")
            break
    weights = os.path.join(config.out_dir, config.weights_name)
    digest = _save(weights, model.cpu(), _jsonable(config), history, step, str(device),
                   round(time.perf_counter() - t0, 1), seen, config.metadata)
    return {"weights": weights, "sha256": digest, "history": history, "steps": step}


def _save(path, model, config: dict, history, step, device, seconds, seen=None, extra=None) -> str:
    last = history[-1] if history else {}
    meta = {"kind": "DISA-LC2",
            "target": "LC2 mean over radii 3,5,7, ridge 1e-3 (slopes), var floor 1e-2",
            "training": {"method": "dense crop pairs (disa.train.dense)", **config, "steps_completed": step,
                         "device": device, "torch": torch.__version__, "seconds": seconds,
                         "volume_pairs_seen": None if seen is None else len(seen)},
            "validation": {k: last[k] for k in ("val_mse", "val_mae", "train_loss") if k in last},
            "history": history}
    if seen is not None:
        meta["volume_pairs"] = seen
    meta.update(extra or {})
    from ..features.weights import save_weights

    return save_weights(path, model, meta)


def weights_from_checkpoint(checkpoint: str, path: str, extra: Optional[dict] = None) -> str:
    """Write the weights (and model card) of a dense-training checkpoint, e.g. of a run that
    was stopped before its end; returns the SHA-256."""
    from ..features.network import DISANet
    from .trainer import load_checkpoint

    ck = load_checkpoint(checkpoint, CHECKPOINT_FORMAT, "dense DISA training checkpoint")
    model = DISANet()
    model.load_state_dict(ck["model"])
    history = ck["history"]
    return _save(path, model, ck.get("config", {}), history, int(ck["step"]), ck.get("device", "cpu"),
                 history[-1]["seconds"] if history else None, ck.get("seen"), extra)


def _jsonable(config: DenseConfig) -> dict:
    d = asdict(config)
    d["exclude_us"] = list(d["exclude_us"])
    return {k: v for k, v in d.items() if k not in ("metadata",)}


__all__ = ["DenseConfig", "train_dense", "weights_from_checkpoint", "batch_targets", "output_patches", "sample_crops", "PairSource", "predict_dense",
           "crop_grid", "random_rotation"]
