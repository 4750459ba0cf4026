"""Synthetic registration cases with exact ground truth (``disa synth``, the capture benchmark).

A case is two appearances of one brain template (:mod:`disa.train.synth`, the simulator that
training uses: tissue-class appearances, simulated ultrasound with a fan, speckle, beam-facing
boundary reflections and depth attenuation; cases also get its acoustic shadows behind strong
reflectors, which training leaves off), so one template voxel is the same anatomy in both:

- ``us-mr``: simulated ultrasound (fixed, cropped to its fan) against a T1-like MR (moving);
- ``ct-mr``: CT-like (fixed) against T1-like MR (moving);
- ``t2-t1``: T2-like (fixed) against T1-like MR (moving).

The MR/CT fixed volumes are cut to a ``CROP_MM`` box around the brain centre (an
intra-operative field of view); the moving volume keeps the whole template, so a large
perturbation still leaves the fixed content inside it.

The truth. Template voxel (x, y, z) is the LPS point (x, y, z) mm. The moving image is
``M(y) = A(W(y))`` with ``W(y) = z + d(z)``, ``z = P^-1 y``: ``A`` the moving appearance on the
template grid, ``P`` the rigid perturbation (about the fixed centre) and ``d`` an optional smooth
displacement (a sum of Gaussian bumps, analytic). A fixed point ``x`` therefore lies on the
moving point ``T(x) = P (x + D(x))``, where ``x + D(x)`` inverts ``z + d(z)`` (solved by
fixed-point iteration, exact to 1e-6 mm). Without ``d``, ``T = P`` is ``truth.tfm``. The
moving grid itself is the template grid moved by ``P`` and a small random rigid offset, so the
truth never puts moving voxels on fixed voxels (see :mod:`disa.train.heldout`). Landmarks are
fixed-content points (spread out by farthest-point sampling) and their exact images ``T(x)``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import InputError
from . import KINDS
#: Landmark pairs per case.
N_LANDMARKS = 24
#: Landmarks keep this distance (mm) from the fixed box border.
LANDMARK_MARGIN_MM = 4.0
#: Largest smooth displacement (mm); with ``DEFORM_SIGMA_MM`` wide bumps it stays invertible.
MAX_DEFORM_MM = 10.0
DEFORM_SIGMA_MM = 20.0
DEFORM_BUMPS = 6
#: Spacing (mm) of the stored displacement field of a deformed case.
FIELD_SPACING_MM = 2.0
#: Acoustic shadowing of simulated ultrasound (:func:`disa.train.synth.shadow_transmission`):
#: a strong boundary (reflection 1 over 2 mm) takes about 10% of the beam behind it.
SHADOWING = 0.05
#: The ultrasound fixed volume is its fan's bounding box plus this margin (voxels).
FAN_MARGIN = 2
#: Every file ``write_case`` may write, by role.
FILES = {"fixed": "fixed.nii.gz", "moving": "moving.nii.gz", "fixed_landmarks": "fixed_landmarks.fcsv",
         "moving_landmarks": "moving_landmarks.fcsv", "fixed_labels": "fixed_labels.nii.gz",
         "moving_labels": "moving_labels.nii.gz", "truth": "truth.tfm", "truth_deformed": "truth_deformed.h5",
         "case": "case.json"}


@dataclass
class SyntheticCase:
    """A rendered case. ``truth``: the rigid 4x4 fixed LPS -> moving LPS (the whole truth when
    ``displacement`` is None); ``displacement``: D (3 channels, LPS mm) on a 2 mm grid over the
    fixed box, applied before ``truth``. ``reference``: the moving appearance on the fixed grid
    before it was moved (for checks). Label images are None for templates without labels."""

    fixed: object
    moving: object
    truth: np.ndarray
    fixed_points: np.ndarray
    moving_points: np.ndarray
    reference: object
    fixed_labels: Optional[object] = None
    moving_labels: Optional[object] = None
    displacement: Optional[object] = None
    info: Dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.info['kind']}-{self.info['template']}-{self.info['seed']}"


def find_data_dir(given: Optional[str] = None) -> str:
    """The development data folder (holding ``templates/``): ``given``, else ``../shared/data``
    from the working folder or from the repository."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [given] if given else [os.path.join("..", "shared", "data"),
                                         os.path.join(here, "..", "..", "..", "..", "shared", "data")]
    for c in candidates:
        if os.path.isdir(os.path.join(c, "templates")):
            return os.path.abspath(c)
    where = given if given else " or ".join(candidates[:1])
    raise InputError(f"no templates/ folder in {where}: give --source-dir DIR, the folder holding templates/")


def random_pose(rng: np.random.Generator, rotation_deg: float, translation_mm: float, center) -> dict:
    """A rigid pose: ``rotation_deg`` about a random axis and ``translation_mm`` along a random
    direction, about ``center`` (LPS); its rotation vector, translation and 4x4 matrix."""
    from ..sample_data import rigid_matrix

    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    rotvec, shift = axis * float(rotation_deg), direction * float(translation_mm)
    return {"rotation_deg": float(rotation_deg), "translation_mm": float(translation_mm),
            "rotation_vector_deg": rotvec.tolist(), "translation_vector_mm": shift.tolist(),
            "center_lps": [float(v) for v in center], "matrix": rigid_matrix(rotvec, shift, center)}


# the smooth displacement --------------------------------------------------------------------------
@dataclass
class Bumps:
    """d(z) = sum_k a_k exp(-|z - c_k|^2 / (2 sigma^2)), z in LPS mm (template frame)."""

    centers: np.ndarray
    vectors: np.ndarray
    sigma: float

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        out = np.zeros_like(z)
        for c, a in zip(self.centers, self.vectors):
            g = np.exp(-((z - c) ** 2).sum(-1, keepdims=True) / (2.0 * self.sigma ** 2))
            out += g * a
        return out

    def inverse_offsets(self, x: np.ndarray, iterations: int = 100) -> np.ndarray:
        """D(x) with (x + D) + d(x + D) = x: the fixed-point iteration z <- x - d(z)."""
        x = np.asarray(x, dtype=np.float64)
        z = x.copy()
        for _ in range(iterations):
            new = x - self(z)
            done = np.abs(new - z).max() < 1e-9
            z = new
            if done:
                break
        return z - x


def random_bumps(rng: np.random.Generator, brain: np.ndarray, magnitude: float) -> Bumps:
    """Bumps centred in the brain whose largest displacement over the brain is ``magnitude``."""
    vox = np.argwhere(brain)[:, ::-1].astype(np.float64)  # (x, y, z) = LPS
    centers = vox[rng.integers(0, len(vox), DEFORM_BUMPS)]
    vectors = rng.standard_normal((DEFORM_BUMPS, 3))
    bumps = Bumps(centers, vectors, DEFORM_SIGMA_MM)
    probe = vox[:: max(1, len(vox) // 20000)]
    peak = float(np.linalg.norm(bumps(probe), axis=1).max())
    bumps.vectors = vectors * (magnitude / max(peak, 1e-9))
    # invertible: the largest singular value of the Jacobian stays well under 1
    eps = 0.5
    jac = np.stack([(bumps(probe + eps * e) - bumps(probe - eps * e)) / (2 * eps) for e in np.eye(3)], -1)
    worst = float(np.linalg.norm(jac, ord=2, axis=(1, 2)).max())
    if worst >= 0.8:
        raise InputError(f"the displacement of {magnitude:g} mm folds the anatomy for this seed "
                         f"(Jacobian norm {worst:.2f}); use a smaller --deform")
    return bumps


# rendering ----------------------------------------------------------------------------------------
def _box_image(array: np.ndarray, box) -> object:
    """The template-grid sub-volume ``box`` (slices z, y, x) as an Image with its geometry."""
    from ..spatial import Image

    mask = np.zeros(array.shape, dtype=bool)
    mask[box] = True
    full = Image.from_array(array, mask=torch.from_numpy(mask)[None])
    from ..spatial.image import crop_to_mask

    out = crop_to_mask(full)
    out.mask = None
    out.data = out.data.contiguous()
    return out


def _warp(source: np.ndarray, target, to_source: np.ndarray, bumps: Optional[Bumps], mode: str) -> torch.Tensor:
    """``source`` (template grid, (Z, Y, X)) sampled at W(y) for every voxel y of ``target``:
    ``to_source`` maps target LPS to template LPS (P^-1), then ``bumps`` add d. Slab by slab."""
    from ..spatial.image import sample

    src = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32))[None]
    size = np.asarray(source.shape[::-1], dtype=np.float64)  # x, y, z
    m = to_source @ target.index_to_world()
    nz, ny, nx = target.shape
    jj, ii = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    out = torch.zeros(1, nz, ny, nx)
    step = max(1, (1 << 21) // (ny * nx))
    for k0 in range(0, nz, step):
        k1 = min(nz, k0 + step)
        kk = np.arange(k0, k1, dtype=np.float64)[:, None, None]
        idx = np.stack(np.broadcast_arrays(ii[None], jj[None], kk), -1)  # (k, Y, X, 3) x y z
        z = idx @ m[:3, :3].T + m[:3, 3]
        if bumps is not None:
            z = z + bumps(z)
        grid = torch.from_numpy((2.0 * z / (size - 1.0) - 1.0).astype(np.float32))[None]
        out[:, k0:k1] = sample(src, grid, mode=mode)[0][0]
    return out


def _landmarks(content: np.ndarray, image, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` LPS points in ``content`` (a (Z, Y, X) mask on ``image``'s grid), at least
    ``LANDMARK_MARGIN_MM`` inside the box and off the voxel lattice, spread out."""
    from scipy import ndimage

    m = int(np.ceil(LANDMARK_MARGIN_MM / float(np.min(image.spacing))))
    inner = np.zeros_like(content)
    inner[m:-m, m:-m, m:-m] = True
    inner &= ndimage.binary_erosion(content, iterations=m)
    vox = np.argwhere(inner)[:, ::-1].astype(np.float64)
    if len(vox) < n:
        raise InputError("the fixed content is too small to place landmarks in")
    k = min(len(vox), 4000)
    cand = vox[rng.choice(len(vox), k, replace=False)] + rng.uniform(-0.4, 0.4, (k, 3))
    chosen = [int(np.argmin(np.linalg.norm(cand - cand.mean(0), axis=1)))]
    dist = np.linalg.norm(cand - cand[chosen[0]], axis=1)
    while len(chosen) < n:  # farthest-point sampling
        k = int(np.argmax(dist))
        chosen.append(k)
        dist = np.minimum(dist, np.linalg.norm(cand - cand[k], axis=1))
    idx = cand[chosen]
    return idx @ image.index_to_world()[:3, :3].T + image.index_to_world()[:3, 3]


def check_case_options(kind: str, template: str, seed, rotation, translation, deform) -> dict:
    """The case settings, checked (InputError with the valid range)."""
    from ..registration.options import MAX_ROTATION_DEG, MAX_SEED, MAX_TRANSLATION_MM, check_int, check_range
    from ..train.synth import TEMPLATES

    if kind not in KINDS:
        raise InputError(f"unknown case kind {kind!r}; choose from {', '.join(KINDS)}")
    if template not in TEMPLATES:
        raise InputError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
    return {"kind": kind, "template": template, "seed": check_int("the seed", seed, 0, MAX_SEED),
            "rotation": check_range("the rotation (degrees)", rotation, MAX_ROTATION_DEG),
            "translation": check_range("the translation (mm)", translation, MAX_TRANSLATION_MM),
            "deform": check_range("the deformation (mm)", deform, MAX_DEFORM_MM)}


def build_case(kind: str = "us-mr", template: str = "mni", seed: int = 0, rotation: float = 10.0,
               translation: float = 10.0, deform: float = 0.0, data_dir: Optional[str] = None) -> SyntheticCase:
    """Render one case (deterministic in its settings; rendered on one thread, so the same on
    every machine). ``rotation`` (degrees, about a random axis) and ``translation`` (mm, along a
    random direction) set the rigid perturbation; ``deform`` the largest smooth displacement."""
    from ..threads import torch_threads

    opts = check_case_options(kind, template, seed, rotation, translation, deform)
    data_dir = find_data_dir(data_dir)
    with torch_threads(1):
        return _render(opts, data_dir)


def _render(o: dict, data_dir: str) -> SyntheticCase:
    from ..sample_data import move_image, rigid_matrix
    from ..spatial import Image
    from ..train.synth import appearance, corrupt, load_template, simulate_ultrasound

    fixed_app, moving_app = KINDS[o["kind"]]
    seed = o["seed"]
    rng = np.random.default_rng(seed)  # the draws of disa.train.synth.make_pair, in its order
    tpl = load_template(data_dir, o["template"])
    a = corrupt(appearance(tpl, moving_app, rng), rng)
    fan = None
    if fixed_app == "us":
        b, fan = simulate_ultrasound(tpl, rng, shadowing=SHADOWING)
        b = corrupt(b, rng, mask=fan)
    else:
        b = corrupt(appearance(tpl, fixed_app, rng), rng)
    box = _crop_box(fixed_app, tpl, b, fan)
    fixed = _box_image(b, box)
    reference = _box_image(a, box)
    content = tpl.brain[box] if fan is None else (fan & tpl.brain)[box]

    template = Image.from_array(a)
    pose = random_pose(np.random.default_rng([seed, 2]), o["rotation"], o["translation"], fixed.center())
    p = pose.pop("matrix")
    off = np.random.default_rng([seed, 3])
    lattice = rigid_matrix(off.uniform(-4, 4, 3), off.uniform(-1.5, 1.5, 3), template.center())
    bumps = random_bumps(np.random.default_rng([seed, 4]), tpl.brain, o["deform"]) if o["deform"] > 0 else None
    moving = move_image(template, p @ lattice)  # the grid; its voxels are sampled next
    to_template = np.linalg.inv(p)
    moving = moving.same_geometry(_warp(a, moving, to_template, bumps, "bilinear"), None)

    fixed_points = _landmarks(content, fixed, np.random.default_rng([seed, 5]), N_LANDMARKS)
    shift = np.zeros_like(fixed_points) if bumps is None else bumps.inverse_offsets(fixed_points)
    moving_points = (fixed_points + shift) @ p[:3, :3].T + p[:3, 3]

    fixed_labels = moving_labels = displacement = None
    if tpl.labels is not None:
        labels = tpl.labels.astype(np.float32)
        fixed_labels = _box_image(labels, box)
        moving_labels = moving.same_geometry(_warp(labels, moving, to_template, bumps, "nearest"), None)
    if bumps is not None:
        displacement = _displacement_image(fixed, bumps)
    info = {"kind": o["kind"], "template": o["template"], "seed": seed,
            "appearances": {"fixed": fixed_app, "moving": moving_app},
            "perturbation": dict(pose, matrix_fixed_to_moving=p.tolist()),
            "deform": None if bumps is None else {
                "max_mm": o["deform"], "sigma_mm": bumps.sigma, "centers_lps": bumps.centers.tolist(),
                "vectors_mm": bumps.vectors.tolist(),
                "model": "moving(y) = A(z + d(z)), z = P^-1 y; d(z) = sum_k a_k exp(-|z - c_k|^2 / (2 sigma^2))"},
            "lattice_offset": {"matrix": lattice.tolist(),
                               "why": "the moving grid is the template grid moved by P and this small offset, so "
                                      "no moving voxel sits on a fixed voxel at the truth"},
            "fixed_crop_zyx": [[s.start, s.stop] for s in box]}
    return SyntheticCase(fixed, moving, p, fixed_points, moving_points, reference, fixed_labels, moving_labels,
                         displacement, info)


def _displacement_image(fixed, bumps: Bumps):
    """D on a ``FIELD_SPACING_MM`` grid over the fixed box (3 channels x, y, z in LPS mm)."""
    from ..spatial import Image
    from ..transforms.displacement import grid_points

    size = np.maximum(np.ceil(fixed.extent() / FIELD_SPACING_MM).astype(int) + 1, 2)
    origin = fixed.center() - fixed.direction @ (FIELD_SPACING_MM * (size - 1) / 2.0)
    grid = Image(torch.zeros(1, *size[::-1].tolist()), np.full(3, FIELD_SPACING_MM), origin, fixed.direction)
    pts = grid_points(grid)
    d = bumps.inverse_offsets(pts.reshape(-1, 3)).reshape(pts.shape)
    return grid.same_geometry(torch.from_numpy(np.moveaxis(d, -1, 0).astype(np.float64)), None)


def _crop_box(fixed_app: str, tpl, b: np.ndarray, fan: Optional[np.ndarray]):
    if fixed_app == "us":
        idx = np.argwhere(fan)
        lo, hi = np.maximum(idx.min(0) - FAN_MARGIN, 0), np.minimum(idx.max(0) + FAN_MARGIN + 1, fan.shape)
    else:
        from ..train.heldout import CROP_MM

        c = np.round(np.argwhere(tpl.brain).mean(0)).astype(int)
        lo = np.clip(c - CROP_MM // 2, 0, None)
        hi = np.minimum(lo + CROP_MM, b.shape)
    return tuple(slice(int(a), int(z)) for a, z in zip(lo, hi))


# writing ------------------------------------------------------------------------------------------
def check_destination(folder, overwrite: bool = False) -> str:
    """``folder`` as an absolute path, if a case may be written there: a new or empty folder,
    or (with ``overwrite``) an earlier case folder (one holding ``case.json``)."""
    from ..outputs import check_writable

    folder = os.path.abspath(os.fspath(folder))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"'{folder}' is a file, not a folder")
    if os.path.isdir(folder) and os.listdir(folder):
        if not overwrite:
            raise InputError(f"'{folder}' already holds files; give --overwrite to replace the case there, "
                             "or choose another folder")
        if not os.path.isfile(os.path.join(folder, FILES["case"])):
            raise InputError(f"'{folder}' holds files but no {FILES['case']}: not a disa synth case, so "
                             "--overwrite does not replace it; choose another folder")
    check_writable(os.path.join(folder, FILES["case"]), "the case folder")
    return folder


def write_case(case: SyntheticCase, folder, overwrite: bool = False, command: Optional[str] = None) -> Dict[str, str]:
    """Write ``case`` into ``folder`` all-or-nothing (built in a temporary folder beside it, then
    renamed into place); returns the written files by role. See :func:`check_destination`."""
    from ..evaluate import Landmarks, write_fcsv
    from ..outputs import TEMP_PREFIX
    from ..spatial import save_image
    from ..transforms.itk_io import write_itk_transform

    folder = check_destination(folder, overwrite)
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
    try:
        files = {}

        def path(role):
            files[role] = FILES[role]
            return os.path.join(stage, FILES[role])

        save_image(case.fixed, path("fixed"))
        save_image(case.moving, path("moving"))
        labels = [f"L{i + 1}" for i in range(len(case.fixed_points))]
        write_fcsv(path("fixed_landmarks"), Landmarks(case.fixed_points, labels))
        write_fcsv(path("moving_landmarks"), Landmarks(case.moving_points, labels))
        if case.fixed_labels is not None:
            _save_labels(case.fixed_labels, path("fixed_labels"))
            _save_labels(case.moving_labels, path("moving_labels"))
        write_itk_transform(path("truth"), case.truth, center=case.fixed.center(), kind="rigid")
        if case.displacement is not None:
            _save_deformed_truth(case, path("truth_deformed"))
        from ..evaluate import registration_errors

        initial = registration_errors(np.eye(4), case.fixed_points, case.moving_points)
        doc = {"generator": "disa synth", "format": 1, **{k: case.info[k] for k in ("kind", "template", "seed")},
               "command": command, "appearances": case.info["appearances"],
               "perturbation": case.info["perturbation"], "deform": case.info["deform"],
               "lattice_offset": case.info["lattice_offset"], "fixed_crop_zyx": case.info["fixed_crop_zyx"],
               "landmarks": len(case.fixed_points),
               "initial_landmark_error_mm": {"mean": float(initial.mean()), "max": float(initial.max())},
               "truth": ("truth.tfm maps fixed LPS points to moving LPS points (ITK resampling direction; in "
                         "Slicer, the moving volume's inverse 'to parent' transform)"
                         + ("; the whole truth is truth_deformed.h5: the displacement field, then truth.tfm"
                            if case.displacement is not None else "")),
               "files": dict(files, case=FILES["case"])}
        with open(path("case"), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
        _replace_folder(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {role: os.path.join(folder, name) for role, name in files.items()}


def _save_labels(image, path: str) -> None:
    import SimpleITK as sitk

    img = sitk.Cast(image.to_sitk(), sitk.sitkInt16)
    sitk.WriteImage(img, path)


def _save_deformed_truth(case: SyntheticCase, path: str) -> None:
    """The whole truth as one ITK composite: the displacement field first, then the rigid part."""
    import SimpleITK as sitk

    from ..transforms.itk_io import matrix_to_sitk

    field_img = sitk.Cast(case.displacement.to_sitk(channel=None), sitk.sitkVectorFloat64)
    composite = sitk.CompositeTransform([matrix_to_sitk(case.truth, case.fixed.center(), "rigid"),
                                         sitk.DisplacementFieldTransform(field_img)])
    sitk.WriteTransform(composite, path)


def _replace_folder(stage: str, folder: str) -> None:
    """Rename ``stage`` to ``folder``; an existing ``folder`` is moved aside first and removed
    once the new one is in place."""
    old = None
    if os.path.isdir(folder):
        old = tempfile.mkdtemp(prefix=".disa-old-", dir=os.path.dirname(folder))
        os.rmdir(old)
        os.replace(folder, old)
    try:
        os.replace(stage, folder)
    except OSError:
        if old is not None:
            os.replace(old, folder)
        raise
    os.chmod(folder, 0o755)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["KINDS", "N_LANDMARKS", "MAX_DEFORM_MM", "FILES", "SyntheticCase", "Bumps", "build_case", "write_case",
           "check_destination", "check_case_options", "find_data_dir", "random_pose", "random_bumps"]
