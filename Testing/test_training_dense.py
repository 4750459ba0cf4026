"""Dense DISA training: the pooled LC² targets against the per-patch target, crops cut from the
atlas against direct sampling, and a short training run whose held-out R² must rise.

Volumes are small smooth random fields with a non-linear second "modality", so everything runs
in seconds on a CPU; the data-driven parts (template rendering, held-out pairs) are exercised by
test_heldout.py when the development data are present.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from disa.errors import InputError
from disa.features.network import seeded_model
from disa.train.crops import VolumeAtlas, sample_crop_pairs
from disa.train.curve import CurveSet, descriptors_at_outputs, write_curve
from disa.train.loop import TrainConfig, distill_weight, learning_rate, random_shifts, step_loss
from disa.features.mind_oracle import MINDOracle
from disa.train.sources import RenderedPair, crop_centres, pair_kind
from disa.train.targets import dense_targets, lc2_target

torch.set_num_threads(1)


def smooth_field(shape, sigma, seed):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return ((x - x.mean()) / x.std()).astype(np.float32)


def rendered(seed, shape=(60, 64, 68), same_grid=True):
    """A one-grid 'modality pair': B is a non-linear, noisy function of A's structures; zero
    padding around it as around real anatomy."""
    a = np.pad(smooth_field(shape, 2.0, seed), 6)
    b = np.pad(np.tanh(2 * a[6:-6, 6:-6, 6:-6]) + 0.1 * smooth_field(shape, 1.0, seed + 1), 6).astype(np.float32)
    b = (b - b.mean()) / b.std()
    rng = np.random.default_rng(seed)
    return RenderedPair(a, b, crop_centres(a, None, rng, 512), crop_centres(b, None, rng, 512), same_grid, 1.0,
                        f"field-{seed}")


def test_dense_targets_equal_the_patch_target():
    xa = torch.from_numpy(smooth_field((2, 1, 40, 40, 40), 1.5, 5))
    xb = torch.tanh(xa) + 0.3 * torch.from_numpy(smooth_field((2, 1, 40, 40, 40), 1.0, 6))
    t, var = dense_targets(xa, xb, 2, 7)
    assert t.shape == (2, 1, 6, 6, 6) and var.shape == t.shape
    for n, (i, j, k) in [(0, (0, 0, 0)), (1, (5, 3, 2)), (0, (2, 5, 1))]:
        z, y, x = (4 * (2 + q) for q in (i, j, k))
        sl = (slice(z - 8, z + 9), slice(y - 8, y + 9), slice(x - 8, x + 9))
        assert abs(float(lc2_target(xa[n, 0][sl], xb[n, 0][sl])) - float(t[n, 0, i, j, k])) < 1e-5
        cube = xb[n, 0][z - 5:z + 6, y - 5:y + 6, x - 5:x + 6].double()
        assert abs(float(cube.var(unbiased=False)) - float(var[n, 0, i, j, k])) < 1e-4
    with pytest.raises(InputError):
        dense_targets(xa, xb, 1, 7)  # output 1 has no room for the radius-7 cube


def test_atlas_crops_equal_direct_sampling_and_never_leak():
    rng = np.random.default_rng(0)
    vols = [smooth_field((30, 36, 40), 1.0, 1), smooth_field((26, 40, 22), 1.0, 2) + 5.0]
    atlas = VolumeAtlas(2, (32, 40, 44))
    for i, v in enumerate(vols):
        atlas.put(i, v)
    frames = np.stack([np.linalg.qr(rng.normal(size=(3, 3)))[0] * 1.3 for _ in range(4)])
    centres = np.array([[15, 18, 20], [2, 2, 38], [13, 20, 11], [25, 39, 21]], float)
    slots = np.array([0, 0, 1, 1])
    crops = atlas.crops(slots, centres, frames, 24)
    o = torch.arange(24, dtype=torch.float64) - 12
    offsets = torch.stack(torch.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    for i in range(4):
        v = torch.from_numpy(vols[slots[i]])
        pts = offsets @ torch.from_numpy(frames[i]).T + torch.from_numpy(centres[i])  # (z, y, x)
        size = torch.tensor(v.shape, dtype=torch.float64)
        grid = (2 * pts / (size - 1) - 1).flip(-1).view(1, 24, 24, 24, 3).float()
        ref = F.grid_sample(v[None, None], grid, align_corners=True, padding_mode="zeros")[0, 0]
        inside = ((pts > -1) & (pts < size)).all(-1).view(24, 24, 24)
        assert float((crops[i, 0] - ref * inside).abs().max()) < 1e-4
    # crops near a border read 0 past it, not the neighbouring slot's values (5 + noise)
    assert float(crops[1].abs().max()) < 4.5 and float(crops[3].min()) == 0.0


def test_aligned_crop_pairs_score_higher_than_shifted_and_unrelated_ones():
    pairs = [rendered(3), rendered(5, same_grid=False)]
    atlas = VolumeAtlas(4, (80, 80, 80))
    from disa.train.crops import PoolEntry

    pool = []
    for i, p in enumerate(pairs):
        atlas.put(2 * i, p.a)
        atlas.put(2 * i + 1, p.b)
        pool.append(PoolEntry(2 * i, 2 * i + 1, p.centres_a, p.centres_b, p.same_grid, 1.0, p.name))
    rng = np.random.default_rng(1)
    aligned = sample_crop_pairs(atlas, pool[:1], 3, rng, 40, aligned_fraction=1.0)
    shifted = sample_crop_pairs(atlas, pool[:1], 3, rng, 40, max_offset=8.0, aligned_fraction=0.0)
    unrelated = sample_crop_pairs(atlas, pool[1:], 3, rng, 40)
    means = [float(dense_targets(a, b, 2, 7)[0].mean()) for a, b in (aligned, shifted, unrelated)]
    assert means[0] > 0.6 and means[0] > means[1] + 0.2 and means[0] > means[2] + 0.3, means


def test_schedules():
    cfg = TrainConfig(source_dir=".", out_dir=".", steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-5,
                      distill=2.0, distill_until=500)
    assert learning_rate(cfg, 50) == pytest.approx(5e-4) and learning_rate(cfg, 100) == pytest.approx(1e-3)
    assert learning_rate(cfg, 1000) == pytest.approx(1e-5) and 1e-5 < learning_rate(cfg, 550) < 1e-3
    assert distill_weight(cfg, 0) == 2.0 and distill_weight(cfg, 250) == 1.0 and distill_weight(cfg, 600) == 0.0
    with pytest.raises(InputError):
        TrainConfig(source_dir=".", out_dir=".", lr=float("nan")).check()
    for mix in ((1.0, -0.5, 0.5), (0.0, 0.0, 0.0), (0.5, 0.5)):
        with pytest.raises(InputError, match="--mix"):
            TrainConfig(source_dir=".", out_dir=".", mix=mix).check()


def test_curve_reports_each_kind_of_pair():
    """The curve's per-kind figures come from the crops of that kind: a flat 'real ultrasound'
    pair (LC² 0 everywhere) next to a structured synthetic one."""
    flat = rendered(21)
    flat = RenderedPair(flat.a, np.zeros_like(flat.b), flat.centres_a, flat.centres_b, True, 1.0, "curve-us-self-X")
    curve = CurveSet([rendered(23), flat], n_pairs=8, seed=3, crop=48)
    assert set(curve.kinds) == {"synthetic", "us-self"}
    assert [pair_kind(n) for n in ("us-self-Case1-7@1.5", "us-Case1-mni-t1-7@1", "curve-syn-mni-us-t1-880002",
                                   "curve-us-self-Case26")] == ["us-self", "us-template", "synthetic", "us-self"]
    us = torch.from_numpy(curve.kinds == "us-self")
    assert float(curve.b[us].std(dim=(1, 2, 3, 4)).max()) < 1e-6 < float(curve.b[~us].std(dim=(1, 2, 3, 4)).min())
    out = curve.evaluate(seeded_model(0))
    assert out["target_mean_us_self"] == 0.0 and out["target_mean_synthetic"] > 0.05
    assert {"r2_synthetic", "corr_synthetic", "pred_mean_us_self"} <= set(out) and "r2_us_template" not in out


def test_short_training_learns_on_held_out_crops(tmp_path):
    """Real learning checks on field pairs, with held-out crops from other fields: a few CPU
    steps of the LC² loss (with shifted comparisons) raise the held-out R² well above its start,
    and a few steps of oracle distillation lower the held-out distillation error."""
    train_pairs = [rendered(s) for s in (11, 13, 15)]
    curve = CurveSet([rendered(101), rendered(103)], n_pairs=6, seed=2, crop=48)
    atlas = VolumeAtlas(6, (80, 80, 80))
    from disa.train.crops import PoolEntry

    pool = []
    for i, p in enumerate(train_pairs):
        atlas.put(2 * i, p.a)
        atlas.put(2 * i + 1, p.b)
        pool.append(PoolEntry(2 * i, 2 * i + 1, p.centres_a, p.centres_b, True, 1.0, p.name))
    oracle = MINDOracle()

    def run(cfg, steps):
        model = seeded_model(0).train().to(memory_format=torch.channels_last_3d)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
        rng = np.random.default_rng(0)
        history = [{"step": 0, **curve.evaluate(model), "distill_error": distill_error(model)}]
        for step in range(1, steps + 1):
            xa, xb = sample_crop_pairs(atlas, pool, 2, rng, 48, max_offset=8.0)
            loss, parts = step_loss(model, oracle, xa, xb, cfg, step, torch.device("cpu"), random_shifts(2, rng))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        history.append({"step": steps, **curve.evaluate(model), **parts, "distill_error": distill_error(model)})
        return history

    def distill_error(model):
        with torch.no_grad():
            out = [(descriptors_at_outputs(model.eval(), x) - descriptors_at_outputs(oracle, x)).square().sum(1).mean()
                   for x in (curve.a, curve.b)]
        model.train()
        return float(sum(out) / 2)

    lc2 = run(TrainConfig(source_dir=".", out_dir=".", lc2=1.0, distill=0.0), 16)
    assert lc2[-1]["r2"] > lc2[0]["r2"] + 0.2, lc2
    distill = run(TrainConfig(source_dir=".", out_dir=".", lc2=0.0, distill=1.0), 16)
    assert distill[-1]["distill_error"] < 0.97 * distill[0]["distill_error"], distill
    write_curve(str(tmp_path / "curve.json"), lc2, curve.baselines())
    assert (tmp_path / "curve.png").stat().st_size > 1000
