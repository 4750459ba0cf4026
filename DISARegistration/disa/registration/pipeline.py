"""Multi-resolution linear registration: the pipeline behind ``disa register`` and the Slicer logic.

    result = register(fixed, moving, metric="lc2", transform="rigid")
    result.matrix   # 4x4 LPS, fixed point -> moving point, initial transform included

Each level resamples both images to the level's working spacing (with anti-aliasing), prepares
the similarity once (descriptors, gradients, weights) and optimizes the transform parameters
starting from the previous level's solution. Parameters are offsets applied in fixed space
before the initial transform: ``matrix = initial @ model(params)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import InputError
from ..optim import OPTIMIZERS, Monitor, global_search
from ..optim.base import ProgressCallback
from ..similarity import make_similarity
from ..similarity.base import Similarity
from ..spatial import Image, foreground_mask, normalize_intensity, resample_to_spacing
from ..spatial.image import check_image
from ..threads import torch_threads
from ..transforms import make_model
from .objective import Objective

#: The optimizer each similarity uses unless told otherwise: BOBYQA for measures evaluated
#: without gradients (LC²), L-BFGS for differentiable ones.
DEFAULT_OPTIMIZER = {"lc2": "bobyqa"}
#: L-BFGS stopping tolerances per metric (others: the optimizer's defaults). DISA's dot products
#: approximate LC² only to a few percent, so refining beyond a 1e-6 relative change chases
#: approximation noise: it costs ~2x the evaluations and moved no result closer on Case 24.
LBFGS_TOLERANCES = {"disa": {"ftol": 1e-6, "gtol": 1e-5}}

#: Share of the fixed foreground that must map into the moving image at the start.
MIN_INITIAL_OVERLAP = 0.10

#: Search bounds around the initial pose: degrees, mm, percent (affine entries).
BOUNDS = {"rotation": 45.0, "translation": 60.0, "affine": 40.0}


@dataclass
class LevelReport:
    spacing: float
    evaluations: int
    similarity: float
    seconds: float
    message: str


@dataclass
class RegistrationResult:
    """Outcome of one registration. ``matrix`` maps fixed LPS points to moving LPS points."""

    matrix: np.ndarray
    params: np.ndarray
    transform: str
    metric: str
    center: np.ndarray
    initial_similarity: float
    final_similarity: float
    seconds: float
    device: str
    levels: List[LevelReport] = field(default_factory=list)

    def save_transform(self, path) -> None:
        """Write an ITK transform file (.h5, .tfm) usable to resample the moving image."""
        from ..transforms.itk_io import write_itk_transform

        kind = "rigid" if self.transform == "rigid" else "affine"
        write_itk_transform(path, self.matrix, center=self.center, kind=kind)

    def summary(self) -> str:
        return (f"{self.metric} {self.transform}: similarity {self.initial_similarity:.4f} -> "
                f"{self.final_similarity:.4f} in {self.seconds:.1f} s on {self.device}")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def default_spacings(fixed: Image, moving: Image) -> List[float]:
    """Two levels, coarse then fine. The fine spacing resolves the smaller field of view with
    about 48 voxels (never finer than the images): 1 mm for a 5 cm ultrasound box."""
    finest = float(max(fixed.spacing.min(), moving.spacing.min()))
    extent = float(min(fixed.extent().min(), moving.extent().min()))
    fine = max(finest, extent / 48.0)
    fine = float(np.round(fine, 2)) or finest
    return [2.0 * fine, fine]


def _bounds(model, x0: np.ndarray):
    half = np.empty(model.n_params)
    half[:3] = BOUNDS["rotation"] if model.name == "rigid" else BOUNDS["affine"]
    half[3:6] = BOUNDS["translation"]
    half[6:] = BOUNDS["affine"]
    return list(zip(x0 - half, x0 + half))


def prepare_image(image: Image, name: str, mask: Union[str, torch.Tensor, None] = "auto") -> Image:
    """Check an input volume, attach its foreground mask and normalize its intensities."""
    check_image(image, name)
    m = foreground_mask(image, mask) if isinstance(mask, str) or mask is None else mask
    if m is not None and float(m.float().mean()) < 1e-3:
        raise InputError(f"{name}: the foreground mask is (nearly) empty")
    return normalize_intensity(image.same_geometry(image.data[:1].float(), m))


def register(fixed: Image, moving: Image, metric: Union[str, Similarity] = "lc2", transform: str = "rigid",
             initial: Optional[np.ndarray] = None, optimizer: Optional[str] = None,
             spacings: Optional[Sequence[float]] = None, max_evals: Optional[int] = None,
             device: str = "auto", seed: int = 0, fixed_mask="auto", moving_mask="auto", oversample: int = 2,
             search: str = "global", search_rotation: float = 10.0, search_translation: float = 15.0,
             search_samples: int = 256, search_starts: int = 4,
             progress: Optional[ProgressCallback] = None, cancel: Optional[Callable[[], bool]] = None,
             ) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` and return the fixed -> moving LPS matrix.

    ``metric``: a name (lc2, mind, mi, ncc, lncc, ngf, mse), a weighted sum such as
    ``"0.5*lc2+0.5*mind"``, or a Similarity. ``transform``: rigid or affine. ``initial``: a 4x4
    fixed -> moving matrix to start from (identity by default). ``spacings``: working spacings
    in mm, coarse to fine. ``search``: "local" starts one local optimization at the initial
    pose; "global" first scores ``search_samples`` poses within +-``search_rotation`` degrees and
    +-``search_translation`` mm on the coarsest level and optimizes locally from the best
    ``search_starts`` of them. ``oversample``: the moving features live on a grid this many times
    finer than the working spacing (see ``moving_level``). ``cancel``: polled at every
    evaluation, every global-search batch and between preparation steps; raises CancelledError.
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = resolve_device(device)
    similarity = make_similarity(metric) if isinstance(metric, str) else metric
    metric_name = metric if isinstance(metric, str) else similarity.name
    opt_name = optimizer or DEFAULT_OPTIMIZER.get(metric_name, "lbfgs")
    if opt_name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {opt_name!r}; choose one of {', '.join(OPTIMIZERS)}")
    minimize = OPTIMIZERS[opt_name]
    initial = np.eye(4) if initial is None else np.asarray(initial, dtype=np.float64)
    if initial.shape != (4, 4) or not np.all(np.isfinite(initial)) or abs(np.linalg.det(initial[:3, :3])) < 1e-6:
        raise InputError("the initial transform must be an invertible 4x4 matrix")

    if search not in ("local", "global"):
        raise InputError(f"unknown search {search!r}; use local or global")
    # Cancel is also checked between the preparation steps (each can take a second on a busy
    # CPU), so a cancelled run stops within one step, not only at the next evaluation.
    monitor = Monitor(progress, cancel)
    fixed = prepare_image(fixed, "fixed image", fixed_mask)
    monitor.check()
    moving = prepare_image(moving, "moving image", moving_mask)
    monitor.check()
    model = make_model(transform, fixed.center())
    spacings = list(spacings) if spacings else default_spacings(fixed, moving)
    x = model.identity()
    bounds = _bounds(model, x)
    reports: List[LevelReport] = []
    initial_similarity = final_similarity = float("nan")

    evals = max_evals or default_evals(opt_name, model)
    survivors = [x]  # the poses carried to the next level, best first
    for level, spacing in enumerate(spacings):
        t0 = time.perf_counter()
        stage = f"level {level + 1}/{len(spacings)} ({spacing:g} mm)"
        f_level = resample_to_spacing(fixed, spacing).to(dev)
        monitor.check()
        m_level = moving_level(moving, spacing, oversample).to(dev)
        monitor.check()
        prepared = similarity.at_scale(min(spacings) / spacing).prepare(f_level, m_level)
        monitor.check()
        objective = Objective(prepared, f_level, m_level, model, initial)
        if level == 0:
            overlap = objective.overlap(x)
            if overlap < MIN_INITIAL_OVERLAP:
                raise InputError(
                    f"the images barely overlap at the initial pose ({100 * overlap:.1f}% of the fixed "
                    "foreground maps into the moving image): give an initial transform that roughly "
                    "aligns them")
            with torch.no_grad():
                initial_similarity = float(objective.similarity(torch.as_tensor(x)[None])[0])
            if search == "global":
                monitor.begin("global search", 0.0, 0.05, search_samples)
                survivors = list(global_search(objective.similarity, x, n=search_samples,
                                               rotation_deg=search_rotation, translation_mm=search_translation,
                                               top_k=search_starts, seed=seed, monitor=monitor,
                                               batch=objective.chunk))
        span = (max(level / len(spacings), 0.05 if search == "global" else 0.0), (level + 1) / len(spacings))
        monitor.begin(stage, span[0], span[1], len(survivors) * evals)
        # A sparse objective (a few hundred DISA points) is all per-call overhead: extra
        # threads only contend (OpenMP and MKL pools on few cores made DISA's L-BFGS 2x slower).
        with torch_threads(1 if objective.points is not None and dev.type == "cpu" else None):
            results = [minimize(lambda p: -objective.similarity(p), start, max_evals=evals, bounds=bounds,
                                monitor=monitor, **optimizer_scale(opt_name, spacing, level, metric_name))
                       for start in survivors]
        results.sort(key=lambda r: r.cost)
        # Two distinct candidates go on: a coarse level cannot always tell the right optimum
        # from a near one, the next, finer level can.
        survivors = [r.x for r in _distinct(results, KEEP_CANDIDATES)]
        best = results[0]
        x, final_similarity = best.x, -best.cost
        reports.append(LevelReport(float(spacing), sum(r.n_evals for r in results), final_similarity,
                                   time.perf_counter() - t0, best.message))

    matrix = initial @ model.matrix(torch.as_tensor(x))[0].cpu().numpy()
    if progress is not None:
        progress("done", 1.0, f"similarity {final_similarity:.4f}, {time.perf_counter() - started:.1f} s")
    return RegistrationResult(matrix, x, model.name, metric_name, model.center, initial_similarity,
                              final_similarity, time.perf_counter() - started, str(dev), reports)


#: Largest oversampled moving grid (voxels); beyond it the moving level is not oversampled.
MAX_OVERSAMPLED_VOXELS = 16_000_000


def moving_level(moving: Image, spacing: float, oversample: int = 2) -> Image:
    """The moving image band-limited to ``spacing`` but sampled ``oversample`` times finer.

    Trilinear interpolation smooths a sample by an amount that depends on where it falls
    between grid nodes; on a grid that coincides with the fixed one, the unsmoothed on-grid
    pose then scores differently from every pose around it and creates a false optimum.
    Interpolating a signal that is already band-limited to a coarser resolution is nearly exact,
    which removes that artefact.
    """
    n_voxels = float(np.prod(moving.extent() / spacing)) * oversample ** 3
    if oversample > 1 and n_voxels <= MAX_OVERSAMPLED_VOXELS:
        return resample_to_spacing(moving, spacing / oversample, resolution=spacing)
    return resample_to_spacing(moving, spacing)


#: Candidate poses carried from one level to the next.
KEEP_CANDIDATES = 2


def _distinct(results, k: int, tolerance: float = 0.5):
    """The best ``k`` results whose parameters differ by more than ``tolerance`` (deg, mm, %)."""
    kept = []
    for r in results:
        if all(np.abs(r.x - other.x).max() > tolerance for other in kept):
            kept.append(r)
        if len(kept) == k:
            break
    return kept


def default_evals(optimizer: str, model) -> int:
    return (60 if optimizer == "lbfgs" else 40) * model.n_params


def optimizer_scale(optimizer: str, spacing: float, level: int, metric: str = "") -> Dict[str, float]:
    """Trust-region radii for BOBYQA follow the working spacing (parameter units ~ mm);
    L-BFGS tolerances follow the metric (``LBFGS_TOLERANCES``)."""
    if optimizer == "bobyqa":
        return {"rhobeg": 2.0 * spacing if level == 0 else spacing, "rhoend": 0.02 * spacing}
    if optimizer == "lbfgs":
        return dict(LBFGS_TOLERANCES.get(metric, {}))
    return {}


def register_files(fixed_path, moving_path, initial_transform_path=None, **kwargs) -> RegistrationResult:
    """``register`` on image files, with an optional ITK initial transform file."""
    from ..spatial import load_image
    from ..transforms.itk_io import read_itk_transform

    fixed = load_image(fixed_path, "fixed image")
    moving = load_image(moving_path, "moving image")
    initial = None if initial_transform_path is None else read_itk_transform(initial_transform_path)
    return register(fixed, moving, initial=initial, **kwargs)
