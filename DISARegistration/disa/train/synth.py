"""Volume pairs for DISA training: synthetic multimodal appearances of brain templates and real
ultrasound paired with templates.

The network must not learn one modality pair, so every synthetic volume is a random draw:
tissue classes (grey/white matter, CSF from probability maps, label maps or a 3-class
clustering of the T1) are mapped to intensities by random curves (T1/T2/PD/FLAIR/CT-like
orderings and fully random, non-monotone ones); each volume gets random blur, a smooth
multiplicative bias field and noise. The ultrasound-like simulation multiplies an
echogenicity map plus beam-facing boundary reflections by depth attenuation and Rayleigh
speckle (optionally darkened behind strong reflectors: acoustic shadows, used by the synthetic
cases of :mod:`disa.cases`, not by training), log-compresses it and cuts a fan (a cone from a
random probe position).
Real RESECT ultrasound (``resect/us_only``) is paired with a random template appearance; such
pairs are unregistered, which the sampling of :mod:`disa.train.patches` handles.
RESECT Case 24 is the project's evaluation case and is refused as training data.

Every volume is at 1 mm and normalized like the registration engine does it
(``foreground_mask(..., "auto")`` then ``normalize_intensity``: zero mean, unit standard
deviation over the foreground, zero outside it), so training sees what inference sees.
"""
from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError
from ..spatial.image import Image, foreground_mask, load_image, normalize_intensity, resample_to_spacing
from .packed import PACKED_SUFFIX, fine_storage, packed_path, read_packed_ultrasound, read_packed_volume

#: Cases never used for training (the evaluation case of this project).
HELD_OUT_CASES = ("Case24",)
#: Template names under ``templates/`` and what they provide.
TEMPLATES = ("icbm152", "mni", "colin27", "vxm")
#: Appearances a template volume can take. "us" is simulated ultrasound (always the fitted B).
APPEARANCES = ("t1", "t2", "pd", "flair", "ct", "random", "labels", "us")
#: Appearances that make sense as volume A (intensity + gradient provider).
A_APPEARANCES = ("t1", "t2", "pd", "flair", "ct", "random", "labels")
#: Working spacing (mm).
SPACING = 1.0


@dataclass
class PairSpec:
    """A recipe for one training volume pair (JSON-able, stored in each shard's metadata).

    ``kind``: "synthetic" (two appearances of one template, same grid), "us" (real ultrasound
    file as B, a template appearance as A) or "files" (two user volumes, A = ``path_a``,
    B = ``path_b``, unregistered).
    """

    kind: str
    seed: int
    template: Optional[str] = None
    appearance_a: Optional[str] = None
    appearance_b: Optional[str] = None
    path_a: Optional[str] = None
    path_b: Optional[str] = None

    def name(self) -> str:
        if self.kind == "synthetic":
            return f"syn-{self.template}-{self.appearance_a}-{self.appearance_b}-{self.seed}"
        if self.kind == "us":
            base = os.path.basename(self.path_b or "us").split(".")[0]
            return f"us-{base}-{self.template}-{self.appearance_a}-{self.seed}"
        return f"files-{os.path.basename(self.path_a or 'a').split('.')[0]}-" \
               f"{os.path.basename(self.path_b or 'b').split('.')[0]}-{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VolumePair:
    """Normalized (Z, Y, X) float32 volumes at 1 mm, their content masks (None: everywhere) and
    whether one voxel is the same point in both (synthetic pairs)."""

    a: np.ndarray
    b: np.ndarray
    mask_a: Optional[np.ndarray] = None
    mask_b: Optional[np.ndarray] = None
    same_grid: bool = False
    info: Dict = field(default_factory=dict)


def check_not_held_out(path: str) -> None:
    """Refuse the evaluation case as training data (a leak would make every benchmark moot)."""
    for case in HELD_OUT_CASES:
        if case.lower() in os.path.basename(os.fspath(path)).lower() or \
                f"{os.sep}{case}{os.sep}".lower() in os.fspath(path).lower():
            raise InputError(f"{path} belongs to {case}, the held-out evaluation case; "
                             "it must not be used for training")


# ---------------------------------------------------------------------------------------------
# templates
@dataclass
class Template:
    """A T1 template with soft tissue maps ``tissues`` (csf, gm, wm; sum <= 1, 0 outside the
    brain), an optional integer ``labels`` map, all (Z, Y, X) at 1 mm."""

    name: str
    t1: np.ndarray
    tissues: Dict[str, np.ndarray]
    labels: Optional[np.ndarray]
    brain: np.ndarray


def _read(path: str) -> np.ndarray:
    if not os.path.exists(path):  # checked before the import: a packed folder's machine has no SimpleITK
        if os.path.exists(packed_path(path)):  # disa train --pack-sources
            return read_packed_volume(packed_path(path)).astype(np.float32)
        raise InputError(f"training data file not found: {path}")
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float32)


def crop_box(mask: np.ndarray, margin: int) -> Tuple[slice, slice, slice]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))


def tissues_from_t1(t1: np.ndarray, brain: np.ndarray, seed: int = 0) -> Dict[str, np.ndarray]:
    """Soft CSF/GM/WM maps from a T1 alone: 3-class k-means on brain intensities, then Gaussian
    memberships (for templates that ship no tissue maps)."""
    rng = np.random.default_rng(seed)
    vals = t1[brain]
    sample = vals[rng.integers(0, vals.size, min(vals.size, 200000))]
    centres = np.percentile(sample, [15, 50, 85]).astype(np.float64)
    for _ in range(20):
        lab = np.argmin(np.abs(sample[:, None] - centres[None]), 1)
        centres = np.array([sample[lab == k].mean() if np.any(lab == k) else centres[k] for k in range(3)])
    width = max(float(np.diff(np.sort(centres)).min()) / 2.0, 1e-6)
    w = np.exp(-0.5 * ((t1[..., None] - np.sort(centres)) / width) ** 2) * brain[..., None]
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-6) * brain[..., None]
    return {"csf": w[..., 0].astype(np.float32), "gm": w[..., 1].astype(np.float32),
            "wm": w[..., 2].astype(np.float32)}


# FreeSurfer labels grouped into tissue classes (vxm segmentation).
_FS_WM = (2, 7, 16, 28, 41, 46, 60, 77, 85, 251, 252, 253, 254, 255)
_FS_CSF = (4, 5, 14, 15, 24, 43, 44, 72)


@lru_cache(maxsize=8)
def load_template(data_dir: str, name: str) -> Template:
    """Load one template (cached per process), cropped to the brain plus a 24 mm margin (room
    for a simulated skull and for 33^3 patches at the border)."""
    tdir = os.path.join(data_dir, "templates")
    labels = None
    if name == "icbm152":
        t1 = _read(os.path.join(tdir, "icbm152_2009a_t1.nii.gz"))
        gm = _read(os.path.join(tdir, "icbm152_2009a_gm.nii.gz")) / 255.0
        wm = _read(os.path.join(tdir, "icbm152_2009a_wm.nii.gz")) / 255.0
        brain = t1 > 0
        csf = np.clip(brain - gm - wm, 0.0, 1.0)
        tissues = {"csf": csf * brain, "gm": gm * brain, "wm": wm * brain}
    elif name == "mni":
        t1 = _read(os.path.join(tdir, "mni_t1.nii.gz"))
        labels = _read(os.path.join(tdir, "mni_labels.nii.gz")).astype(np.int32)
        brain = t1 > 0
        tissues = tissues_from_t1(t1, brain)
    elif name == "colin27":
        t1 = _read(os.path.join(tdir, "colin27_t1.nii.gz"))
        brain = t1 > 0
        tissues = tissues_from_t1(t1, brain)
    elif name == "vxm":
        path = os.path.join(tdir, "vxm_t1_seg.npz")
        if not os.path.exists(path):
            raise InputError(f"training data file not found: {path}")
        with np.load(path) as z:
            t1 = z["vol"].astype(np.float32)
            labels = z["seg"].astype(np.int32)
        brain = labels > 0
        wm = np.isin(labels, _FS_WM).astype(np.float32)
        csf = np.isin(labels, _FS_CSF).astype(np.float32)
        gm = (brain & (wm == 0) & (csf == 0)).astype(np.float32)
        tissues = {k: ndimage.gaussian_filter(v, 0.6) * brain for k, v in
                   (("csf", csf), ("gm", gm), ("wm", wm))}
    else:
        raise InputError(f"unknown template {name!r}; choose from {', '.join(TEMPLATES)}")
    box = crop_box(brain, 24)
    t1, brain = t1[box], brain[box]
    tissues = {k: v[box].astype(np.float32) for k, v in tissues.items()}
    if labels is not None:
        labels = labels[box]
    return Template(name, t1.astype(np.float32), tissues, labels, brain.astype(bool))


# ---------------------------------------------------------------------------------------------
# appearances
def _class_mix(tpl: Template, values: Dict[str, float], background: float = 0.0) -> np.ndarray:
    out = np.full(tpl.t1.shape, 0.0, np.float32)
    total = np.zeros_like(out)
    for k, v in values.items():
        out += tpl.tissues[k] * np.float32(v)
        total += tpl.tissues[k]
    # brain voxels not covered by the maps (partial volume at the edge) take the mean value
    out += np.clip(tpl.brain - total, 0, 1) * np.float32(np.mean(list(values.values())))
    return np.where(tpl.brain, out, np.float32(background)).astype(np.float32)


def random_curve(x: np.ndarray, rng: np.random.Generator, knots: int = 6, monotone: bool = False) -> np.ndarray:
    """A random piecewise-linear intensity curve over the range of ``x`` (non-monotone unless
    ``monotone``)."""
    lo, hi = np.percentile(x, [1, 99])
    xs = np.linspace(lo, hi, knots)
    ys = rng.uniform(0, 1, knots)
    if monotone:
        ys = np.sort(ys) if rng.uniform() < 0.5 else np.sort(ys)[::-1]
    return np.interp(x, xs, ys).astype(np.float32)


def _skull(tpl: Template, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Soft bone and scalp shells around the brain (distance from the brain mask)."""
    dist = ndimage.distance_transform_edt(~tpl.brain).astype(np.float32)
    gap = rng.uniform(1.0, 3.0)
    thick = rng.uniform(4.0, 8.0)
    bone = ((dist > gap) & (dist <= gap + thick)).astype(np.float32)
    scalp = ((dist > gap + thick) & (dist <= gap + thick + rng.uniform(3.0, 6.0))).astype(np.float32)
    return ndimage.gaussian_filter(bone, 0.7), ndimage.gaussian_filter(scalp, 0.7)


def appearance(tpl: Template, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One template rendered as modality ``kind`` (before blur, bias and noise)."""
    u = rng.uniform
    if kind == "t1":
        x = tpl.t1 / max(float(np.percentile(tpl.t1[tpl.brain], 99)), 1e-6)
        return np.where(tpl.brain, np.clip(x, 0, None) ** u(0.6, 1.6), 0).astype(np.float32)
    if kind == "t2":
        return _class_mix(tpl, {"csf": u(0.85, 1.0), "gm": u(0.5, 0.65), "wm": u(0.3, 0.45)})
    if kind == "pd":
        return _class_mix(tpl, {"csf": u(0.8, 0.95), "gm": u(0.65, 0.8), "wm": u(0.5, 0.65)})
    if kind == "flair":
        return _class_mix(tpl, {"csf": u(0.05, 0.15), "gm": u(0.6, 0.75), "wm": u(0.4, 0.55)})
    if kind == "ct":
        brain = _class_mix(tpl, {"csf": u(0, 15), "gm": u(35, 45), "wm": u(25, 32)}, background=-1000.0)
        bone, scalp = _skull(tpl, rng)
        # air (-1000 HU) outside the brain, raised to bone / soft-tissue HU in the shells
        out = brain + bone * (u(700, 1500) + 1000.0) + scalp * (u(20, 60) + 1000.0)
        return out.astype(np.float32)
    if kind == "random":
        x = random_curve(tpl.t1, rng, knots=int(rng.integers(3, 8)))
        mix = _class_mix(tpl, {"csf": u(), "gm": u(), "wm": u()})
        w = u(0, 1)
        return np.where(tpl.brain, w * x + (1 - w) * mix, 0).astype(np.float32)
    if kind == "labels":
        if tpl.labels is None:
            return appearance(tpl, "random", rng)
        n = int(tpl.labels.max()) + 1
        lut = rng.uniform(0, 1, n).astype(np.float32)
        lut[0] = 0.0
        base = _class_mix(tpl, {"csf": u(), "gm": u(), "wm": u()})
        lab = lut[tpl.labels]
        return np.where(tpl.labels > 0, lab, base).astype(np.float32)
    if kind == "us":
        return simulate_ultrasound(tpl, rng)[0]
    raise InputError(f"unknown appearance {kind!r}; choose from {', '.join(APPEARANCES)}")


def simulate_ultrasound(tpl: Template, rng: np.random.Generator,
                        shadowing: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Ultrasound-like volume and its fan mask.

    Echogenicity (random tissue values) plus reflections at impedance boundaries that face the
    beam (|grad Z . beam direction|), times exp(-alpha depth) attenuation and Rayleigh speckle
    (envelope of Gaussian-correlated complex noise), log-compressed; zero outside a cone whose
    apex (the probe) sits on a random point of the brain surface, looking inwards.
    ``shadowing`` > 0 also darkens what lies behind strong reflectors (acoustic shadows, see
    :func:`shadow_transmission`); it draws nothing from ``rng`` (training leaves it at 0).
    """
    u = rng.uniform
    echo = _class_mix(tpl, {"csf": u(0.0, 0.2), "gm": u(0.1, 0.8), "wm": u(0.1, 0.8)})
    imped = ndimage.gaussian_filter(_class_mix(tpl, {"csf": u(0, 1), "gm": u(0, 1), "wm": u(0, 1)}), 1.0)
    if tpl.labels is not None and u() < 0.5:
        lut = rng.uniform(0, 1, int(tpl.labels.max()) + 1).astype(np.float32)
        lut[0] = 0
        imped = ndimage.gaussian_filter(np.where(tpl.labels > 0, lut[tpl.labels], imped), 1.0)
    shape = np.array(tpl.t1.shape, dtype=np.float64)
    centre = (shape - 1) / 2.0
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    # probe on the brain surface along -direction from the centre
    surface = np.argwhere(tpl.brain)
    proj = (surface - centre) @ direction
    apex = surface[np.argmin(proj)].astype(np.float64)
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in tpl.t1.shape], indexing="ij")
    rel = np.stack([zz - apex[0], yy - apex[1], xx - apex[2]])
    depth = np.sqrt((rel ** 2).sum(0)) + 1e-3
    beam = rel / depth
    grads = np.stack(np.gradient(imped))
    reflect = np.abs((grads * beam).sum(0))
    reflect /= max(float(np.percentile(reflect[tpl.brain], 99.5)), 1e-6)
    cos = (rel * direction.reshape(3, 1, 1, 1)).sum(0) / depth
    half_angle = np.deg2rad(u(35, 50))
    max_depth = u(60, 100)
    fan = (cos >= np.cos(half_angle)) & (depth <= max_depth) & (depth > 2)
    # at 1 mm, speckle is partly averaged out (as in resampled RESECT volumes): correlated
    # Rayleigh noise with a damped contrast, and a final resolution blur
    sigma = u(0.8, 1.5)
    n1 = ndimage.gaussian_filter(rng.standard_normal(tpl.t1.shape).astype(np.float32), sigma)
    n2 = ndimage.gaussian_filter(rng.standard_normal(tpl.t1.shape).astype(np.float32), sigma)
    speckle = np.sqrt(n1 * n1 + n2 * n2) ** u(0.3, 0.8)
    speckle /= max(float(speckle.mean()), 1e-6)
    signal = (echo + u(1.0, 4.0) * reflect) * np.exp(-u(0.005, 0.03) * depth) * speckle
    if shadowing > 0:
        signal = signal * shadow_transmission(reflect, apex, fan, shadowing)
    signal = ndimage.gaussian_filter(signal, u(0.4, 1.0))
    out = np.log1p(u(2.0, 20.0) * signal).astype(np.float32)
    out = np.where(fan, np.maximum(out, 1e-3), 0.0).astype(np.float32)
    return out, fan


def shadow_transmission(reflect: np.ndarray, apex, fan: np.ndarray, strength: float,
                        step: float = 1.5) -> np.ndarray:
    """Share of the beam energy that reaches each fan voxel: exp(-strength * integral of
    ``reflect`` (per mm) along the straight ray from ``apex`` (voxel z, y, x) to the voxel),
    1 outside ``fan``. The integral sums samples every ``step`` mm from the apex, the same
    along a ray for every depth, so a deeper voxel never receives more."""
    apex = np.asarray(apex, dtype=np.float64)
    pts = np.argwhere(fan).astype(np.float64)
    rel = pts - apex
    depth = np.linalg.norm(rel, axis=1)
    unit = rel / np.maximum(depth, 1e-9)[:, None]
    acc = np.zeros(len(pts))
    for k in range(int(np.ceil(depth.max(initial=0.0) / step))):
        s = (k + 0.5) * step
        live = depth > s
        acc[live] += step * ndimage.map_coordinates(reflect, (apex + s * unit[live]).T, order=1)
    out = np.ones(reflect.shape, np.float32)
    out[fan] = np.exp(-strength * acc)
    return out


def corrupt(volume: np.ndarray, rng: np.random.Generator, mask: Optional[np.ndarray] = None,
            noise: bool = True) -> np.ndarray:
    """Random blur, smooth multiplicative bias field and Gaussian noise (inside ``mask`` when
    given, so an ultrasound fan keeps its zero outside)."""
    u = rng.uniform
    x = volume.astype(np.float32)
    if u() < 0.5:
        x = ndimage.gaussian_filter(x, u(0.3, 1.0))
    if u() < 0.7:
        coarse = rng.standard_normal((4, 4, 4)).astype(np.float32)
        field = ndimage.zoom(coarse, np.array(x.shape) / 4.0, order=3)[:x.shape[0], :x.shape[1], :x.shape[2]]
        field = np.pad(field, [(0, s - f) for s, f in zip(x.shape, field.shape)], mode="edge")
        x = x * np.exp(u(0.05, 0.3) * field / max(float(np.abs(field).max()), 1e-6))
    if noise and u() < 0.8:
        fg = x[x != 0] if np.any(x != 0) else x.ravel()
        sd = float(fg.std()) * u(0.01, 0.08)
        n = rng.standard_normal(x.shape).astype(np.float32) * sd
        if mask is not None:
            n *= mask
        elif u() < 0.5:
            n *= (x != 0)
        x = x + n
    return x.astype(np.float32)


def normalize(volume: np.ndarray, mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Normalize like the engine: given mask, else ``foreground_mask(auto)``; zero outside."""
    img = Image.from_array(volume)
    m = torch.as_tensor(np.asarray(mask, dtype=bool))[None] if mask is not None else foreground_mask(img, "auto")
    out = normalize_intensity(img, m)
    return out.data[0].numpy().astype(np.float32), (None if m is None else m[0].numpy())


def _fit_shape(x: np.ndarray, minimum: int, value: float = 0.0) -> np.ndarray:
    pad = [(0, max(0, minimum - s)) for s in x.shape]
    return np.pad(x, pad, constant_values=value) if any(p[1] for p in pad) else x


def load_ultrasound(path: str, spacing: float = SPACING) -> Tuple[np.ndarray, np.ndarray]:
    """A real ultrasound volume at ``spacing`` mm (anti-aliased; 1 mm, or finer for the fine
    us-self pairs), normalized over its fan, and the fan (from the NIfTI file, or from its packed
    form: :mod:`disa.train.packed`; a finer volume as the packed form stores it, in float16)."""
    check_not_held_out(path)
    fine = spacing != SPACING
    if path.endswith(PACKED_SUFFIX):
        voxels, fan = read_packed_ultrasound(path, spacing if fine else None)
    else:
        voxels, fan = ultrasound_at_training_grid(path, spacing)
        if fine:
            voxels = fine_storage(voxels)
    return normalize(voxels, fan)


def ultrasound_at_training_grid(path: str, spacing: float = SPACING) -> Tuple[np.ndarray, np.ndarray]:
    """An ultrasound file resampled to the training grid (1 mm, or ``spacing``; anti-aliased) and
    its fan mask (non-zero voxels), before normalization."""
    return ultrasound_at_spacings(path, (spacing,))[0]


def ultrasound_at_spacings(path: str, spacings: Sequence[float]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``ultrasound_at_training_grid`` at each of ``spacings``, reading the file once."""
    check_not_held_out(path)
    img = load_image(path, "ultrasound")
    img.mask = foreground_mask(img, "nonzero")
    out = []
    for spacing in spacings:
        grid = resample_to_spacing(img, spacing)
        out.append((grid.data[0].numpy(), grid.mask[0].numpy()))
    return out


def load_volume(path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Any scalar volume at 1 mm, normalized like the engine (auto foreground)."""
    check_not_held_out(path)
    img = resample_to_spacing(load_image(path, "training volume"), SPACING)
    return normalize(img.data[0].numpy())


def make_pair(spec: PairSpec, data_dir: Optional[str] = None, min_size: int = 40) -> VolumePair:
    """Render the volume pair a :class:`PairSpec` describes (deterministic in ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    if spec.kind == "files":
        a, ma = load_volume(spec.path_a)
        b, mb = load_volume(spec.path_b)
        return VolumePair(_fit_shape(a, min_size), _fit_shape(b, min_size),
                          None if ma is None else _fit_shape(ma, min_size, False),
                          None if mb is None else _fit_shape(mb, min_size, False), False, spec.to_dict())
    if data_dir is None:
        raise InputError("synthetic and ultrasound training pairs need the data folder (templates/)")
    tpl = load_template(os.fspath(data_dir), spec.template)
    # template background is image content (air, zero), not missing data: no sampling mask
    a, _ = normalize(corrupt(appearance(tpl, spec.appearance_a, rng), rng))
    ma = None
    if spec.kind == "synthetic":
        if spec.appearance_b == "us":
            b_raw, fan = simulate_ultrasound(tpl, rng)
            b, mb = normalize(corrupt(b_raw, rng, mask=fan), fan)
            # keep the fan's neighbourhood only: B centres lie in the fan, and a smaller A
            # makes scoring candidates cheaper
            box = crop_box(fan, 24)
            a, b, mb = _fit_shape(a[box], min_size), _fit_shape(b[box], min_size), _fit_shape(mb[box], min_size, False)
        else:
            b, _ = normalize(corrupt(appearance(tpl, spec.appearance_b, rng), rng))
            mb = None
        return VolumePair(a, b, ma, mb, True, spec.to_dict())
    if spec.kind == "us":
        b, mb = load_ultrasound(spec.path_b)
        return VolumePair(a, _fit_shape(b, min_size), ma, _fit_shape(mb, min_size, False), False, spec.to_dict())
    raise InputError(f"unknown pair kind {spec.kind!r} (synthetic, us or files)")


def ultrasound_files(data_dir: str) -> List[str]:
    """The RESECT ultrasound volumes under ``resect/us_only`` (held-out cases left out)."""
    folder = os.path.join(os.fspath(data_dir), "resect", "us_only")
    files = sorted(glob.glob(os.path.join(folder, "*.nii*")) + glob.glob(os.path.join(folder, "*" + PACKED_SUFFIX)))
    return [f for f in files if not any(c.lower() in os.path.basename(f).lower() for c in HELD_OUT_CASES)]


def make_pair_specs(data_dir: str, n_synthetic: int = 32, us_pairs_per_file: int = 1, seed: int = 0,
                    templates: Sequence[str] = TEMPLATES) -> List[PairSpec]:
    """Random recipes: ``n_synthetic`` template pairs with two different appearances (one of
    them simulated ultrasound in about a third of them; B is the fitted one, the ultrasound
    when there is one), and ``us_pairs_per_file`` template partners for each real ultrasound."""
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(int(n_synthetic)):
        tpl = str(rng.choice(list(templates)))
        if rng.uniform() < 1.0 / 3.0:
            app_a, app_b = str(rng.choice(A_APPEARANCES)), "us"
        else:
            app_a, app_b = (str(x) for x in rng.choice(A_APPEARANCES, 2, replace=False))
        specs.append(PairSpec("synthetic", int(rng.integers(2 ** 31)), tpl, app_a, app_b))
    for path in ultrasound_files(data_dir):
        for _ in range(int(us_pairs_per_file)):
            specs.append(PairSpec("us", int(rng.integers(2 ** 31)), str(rng.choice(list(templates))),
                                  str(rng.choice(A_APPEARANCES)), None, None, os.path.abspath(path)))
    return specs


__all__ = ["PairSpec", "VolumePair", "Template", "TEMPLATES", "APPEARANCES", "HELD_OUT_CASES", "load_template",
           "appearance", "simulate_ultrasound", "shadow_transmission", "corrupt", "normalize", "load_ultrasound",
           "ultrasound_at_training_grid", "ultrasound_at_spacings", "load_volume",
           "make_pair", "make_pair_specs", "ultrasound_files", "check_not_held_out", "tissues_from_t1",
           "random_curve", "A_APPEARANCES"]
