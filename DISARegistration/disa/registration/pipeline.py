"""Multi-resolution linear registration: the pipeline behind ``disa register`` and the Slicer logic.

    result = register(fixed, moving)      # defaults: registration/defaults.py (mind, rigid, global)
    result.matrix   # 4x4 LPS, fixed point -> moving point, initial transform included

Each level resamples both images to the level's working spacing (with anti-aliasing), prepares
the similarity once (descriptors, gradients, weights) and optimizes the transform parameters
starting from the previous level's solution. Parameters are offsets applied in fixed space
before the initial transform: ``matrix = initial @ model(params)``.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InputError
from ..features.descriptors import check_cpu_precision, precision_dtype
from ..optim import OPTIMIZERS, Monitor, PoseSampler
from ..optim.base import ProgressCallback
from ..similarity import MetricSpec, parse_metric
from ..similarity.spec import REGISTRY
from ..similarity.base import Similarity
from ..similarity.mind import MIN_SAMPLED_POINTS
from ..spatial import Image, foreground_mask, normalize_intensity, resample_to_spacing
from ..spatial.image import VolumeInfo as Volume, box_corners, check_image, crop_to_box
from ..threads import machine_threads, torch_threads
from ..transforms import make_model
from ..transforms.linear import Rigid
from ..transforms.probe_pressure import ProbePressure, check_probe
from .defaults import DEFAULTS, DENSE_TRANSFORMS
from .memory import check_memory, estimate_bytes
from .objective import Objective
from .options import check_int, check_range, check_settings, check_spacings
from .result import LevelReport, RegistrationResult  # noqa: F401  (the result types live there)
from .search import SEARCH_PROGRESS, distinct, global_starts, search_bounds, search_reach

#: The optimizer each similarity uses unless told otherwise: BOBYQA for measures evaluated
#: without gradients (LC²), L-BFGS for differentiable ones.
DEFAULT_OPTIMIZER = {"lc2": "bobyqa"}
#: L-BFGS stopping tolerances per metric (others: the optimizer's defaults). DISA's dot products
#: approximate LC² only to a few percent, so refining beyond a 1e-6 relative change chases
#: approximation noise: it costs ~2x the evaluations and moved no result closer on Case 24.
LBFGS_TOLERANCES = {"disa": {"ftol": 1e-6, "gtol": 1e-5}}

#: What a run with exact LC² alone and a global search says: it searches locally instead.
LC2_LOCAL_NOTE = ("lc2: local search from the start pose (exact LC² is too slow for a global search; "
                  "use mind or disa for one)")
#: Share of the fixed foreground that must map into the moving image at the start.
MIN_INITIAL_OVERLAP = 0.10

#: Search bounds around the initial pose: degrees, mm, percent (affine entries). The affine
#: bound admits the rigid one's 45 degree rotations (sin 45 = 71%).
BOUNDS = {"rotation": 45.0, "translation": 60.0, "affine": 75.0}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def default_spacings(fixed: Union[Image, Volume], moving: Union[Image, Volume],
                     similarity: Optional[Similarity] = None, content_extent: Optional[float] = None) -> List[float]:
    """Two levels, coarse then fine (one where the similarity's coarse spacing is not coarser).
    The fine spacing is the similarity's choice for the smaller
    of the fixed content (``content_extent``, mm: the fixed mask's bounding box; default the
    whole grid) and the moving grid (``Similarity.working_spacing``), never finer than the
    images: about 48 voxels across for most measures; DISA works at the scale its network was
    trained at, at the fixed image's own spacing for small content (see ``DISA.fine_spacing``)."""
    f, m = Volume.of(fixed), Volume.of(moving)
    measure = similarity or Similarity()
    extent = float(min(f.extent().min() if content_extent is None else content_extent, m.extent().min()))
    fine = float(np.round(measure.working_spacing(f, m, extent), 2)) or float(min(f.spacing))
    coarse = float(np.round(measure.coarse_spacing(fine, extent), 2))
    return [coarse, fine] if coarse > fine else [fine]


def content_extent(image: Image, mask) -> Optional[float]:
    """The shortest edge (mm) of the bounding box of ``image``'s foreground (``mask``: a mode of
    ``foreground_mask`` or a tensor), or None when the whole grid is foreground. An ultrasound
    fan fills a fraction of its box: the working resolution follows the fan, not the box (with
    the box, a 13 cm volume holding an 8 cm fan registered at 5.2 and 2.6 mm, too coarse for
    LC² and DISA to find a pair 45-77 mm away from the truth)."""
    fg = foreground_mask(image, mask) if isinstance(mask, str) or mask is None else mask
    if fg is None or not bool(fg.any()):
        return None
    size = []  # per axis (z, y, x): extent of the rows that hold foreground, from projections
    for dims in ((1, 2), (0, 2), (0, 1)):
        rows = torch.nonzero(fg[0].any(dim=dims[1]).any(dim=dims[0])).flatten()
        size.append(int(rows.max() - rows.min() + 1))
    return float((np.asarray(image.spacing) * np.asarray(size[::-1])).min())


def _bounds(model, x0: np.ndarray):
    half = np.empty(model.n_params)
    half[:3] = BOUNDS["rotation"] if isinstance(model, Rigid) else BOUNDS["affine"]
    half[3:6] = BOUNDS["translation"]
    half[6:] = BOUNDS["affine"]
    bounds = list(zip(x0 - half, x0 + half))
    return bounds[:6] + model.compression_bounds() if isinstance(model, ProbePressure) else bounds


def prepare_image(image: Image, name: str, mask: Union[str, torch.Tensor, None] = "auto") -> Image:
    """Check an input volume, attach its foreground mask and normalize its intensities."""
    check_image(image, name)
    m = foreground_mask(image, mask) if isinstance(mask, str) or mask is None else mask
    if m is not None and float(m.float().mean()) < 1e-3:
        raise InputError(f"{name}: the foreground mask is (nearly) empty")
    return normalize_intensity(image.same_geometry(image.data[:1].float(), m))


def register(fixed: Image, moving: Image, metric: Union[str, MetricSpec, Similarity] = DEFAULTS.metric,
             transform: str = DEFAULTS.transform, initial: Optional[np.ndarray] = None,
             optimizer: Optional[str] = None, spacings: Optional[Sequence[float]] = None,
             max_evals: Optional[int] = None, device: str = DEFAULTS.device, seed: int = DEFAULTS.seed,
             fixed_mask=DEFAULTS.fixed_mask, moving_mask="auto", oversample: Optional[int] = None,
             sample_points: Optional[int] = None, moving_margin: Optional[float] = None,
             search: str = DEFAULTS.search, search_preset: str = DEFAULTS.search_preset,
             search_rotation: Optional[float] = DEFAULTS.search_rotation,
             search_translation: Optional[float] = DEFAULTS.search_translation,
             search_samples: int = DEFAULTS.search_samples, search_starts: int = DEFAULTS.search_starts,
             precision: str = DEFAULTS.precision, weights=None, threads: Optional[int] = DEFAULTS.threads,
             probe_position: Optional[Sequence[float]] = None, probe_direction: Optional[Sequence[float]] = None,
             dense: Optional[dict] = None,
             progress: Optional[ProgressCallback] = None, cancel: Optional[Callable[[], bool]] = None,
             ) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` and return the fixed -> moving LPS matrix.

    Defaults come from ``disa.registration.defaults.DEFAULTS``. ``metric``: a name (lc2, mind,
    mi, ncc, lncc, ngf, mse, disa; any case), a weighted sum such as ``"0.5*lc2+0.5*mind"``, a
    parsed MetricSpec or a Similarity. ``transform``: rigid, affine or pressure (rigid plus the
    compression under an ultrasound probe, ``disa.transforms.probe_pressure``; the probe at
    ``probe_position`` looking along ``probe_direction``, fixed-image LPS mm, or found from the
    fixed image's field of view; ``result.matrix`` is then the rigid part). ``initial``: a 4x4
    fixed -> moving matrix to start from (identity by default). ``spacings``: working spacings
    in mm, coarse to fine. ``search``: "local" starts one local optimization at the initial
    pose; "global" first scores ``search_samples`` poses within +-``search_rotation`` degrees and
    +-``search_translation`` mm (None: those of ``search_preset``, brain or abdomen, see
    ``defaults.SEARCH_PRESETS``) on the coarsest level, narrows them coarse to fine and optimizes
    locally from the best ``search_starts`` of them (``registration/search.py``); exact LC² alone
    searches locally. ``oversample``: the moving features live on a grid this many times
    finer than the working spacing (see ``moving_level``; None: ``OVERSAMPLE``, or
    ``DENSE_DEFAULTS.linear_oversample`` for the linear start of a dense registration).
    ``sample_points``: a measure that is a mean over independent fixed voxels (MIND-SSC, DISA-LC²) scores
    at most this many per level, on a regular lattice (``Prepared.sampled``; None: every voxel,
    or ``DENSE_DEFAULTS.linear_sample_points`` for the linear start of a dense registration).
    ``moving_margin``: mm; the moving image is read only within this distance of where the fixed
    image's box lies at the initial pose, widened by the global search's ranges when it runs
    (``search.search_reach``): a pose beyond it sees no moving content there. None (default):
    the whole moving image (``DENSE_DEFAULTS.linear_moving_margin`` for a dense registration's
    linear start).
    ``precision``: of DISA descriptors (float32; bfloat16, or float16 on CUDA, on request).
    ``weights``: a DISA weights file.
    ``threads``: CPU threads of the run (None: every CPU of the machine); the result depends on
    the count, which this run pins in its own thread (see ``disa.threads``).
    ``cancel``: polled at every evaluation, every global-search batch and between preparation
    steps; raises CancelledError. ``transform`` deformable, diffeomorphic or neural-ode: this
    linear registration (``dense["linear_transform"]``, rigid by default), then a dense one
    (``disa.deformable.register_deformable``, whose settings ``dense`` holds); ``result.field``
    then holds the displacement applied before ``result.matrix``.

    Reproducible: on one machine, the same inputs, settings, seed and precision give the same
    matrix, bit for bit, whatever else the process runs (no global random state is used or
    changed, and the thread count is the run's own).
    """
    if str(transform).lower() in DENSE_TRANSFORMS:
        from ..deformable import register_deformable

        check_probe("rigid", probe_position, probe_direction)
        return register_deformable(
            fixed, moving, transform=str(transform).lower(), metric=metric, initial=initial, seed=seed,
            device=device, threads=threads, weights=weights, fixed_mask=fixed_mask, progress=progress, cancel=cancel,
            optimizer=optimizer, spacings=spacings, max_evals=max_evals, moving_mask=moving_mask,
            oversample=oversample, sample_points=sample_points, moving_margin=moving_margin, search=search,
            search_preset=search_preset, search_rotation=search_rotation, search_translation=search_translation,
            search_samples=search_samples, search_starts=search_starts, precision=precision, **(dense or {}))
    if dense:
        raise InputError(f"dense settings ({', '.join(sorted(dense))}) need a deformable, diffeomorphic or "
                         f"neural-ode transform, not {transform}")
    n_threads = check_int("threads", threads, 1, 4096) if threads is not None else machine_threads()
    oversample = OVERSAMPLE if oversample is None else check_int("oversample", oversample, 1, 4)
    if sample_points is not None:
        sample_points = check_int("sample points", sample_points, MIN_SAMPLED_POINTS, 1 << 40)
    if moving_margin is not None:
        moving_margin = check_range("moving margin", moving_margin, 1e4)
    with torch_threads(n_threads):
        started = time.perf_counter()
        settings = check_settings(transform, search, search_rotation, search_translation, search_samples,
                                  search_starts, spacings or None, max_evals, seed, precision, search_preset)
        probe = check_probe(settings["transform"], probe_position, probe_direction)
        dev = resolve_device(device)
        if dev.type == "cpu":
            check_cpu_precision(precision_dtype(settings["precision"]))
        similarity, metric_name, base = resolve_metric(metric, weights, settings["precision"], settings["seed"])
        opt_name = optimizer or DEFAULT_OPTIMIZER.get(base, "lbfgs")
        if opt_name not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {opt_name!r}; choose one of {', '.join(OPTIMIZERS)}")
        minimize = OPTIMIZERS[opt_name]
        initial = np.eye(4) if initial is None else np.asarray(initial, dtype=np.float64)
        if initial.shape != (4, 4) or not np.all(np.isfinite(initial)) or abs(np.linalg.det(initial[:3, :3])) < 1e-6:
            raise InputError("the initial transform must be an invertible 4x4 matrix")
        spacings = settings["spacings"] or default_spacings(fixed, moving, similarity,
                                                            content_extent(fixed, fixed_mask))
        monitor = Monitor(progress, cancel)
        fixed, moving = prepare_pair(fixed, moving, spacings, oversample, fixed_mask, moving_mask,
                                     measure_names(similarity), monitor)
        model = (ProbePressure.for_image(fixed, *probe) if settings["transform"] == "pressure"
                 else make_model(settings["transform"], fixed.center()))
        x = model.identity()
        search = settings["search"]
        if search == "global" and base == "lc2":  # exact LC² alone stays local, as in the DISA paper
            search = "local"
            if progress is not None:
                progress("note", 0.0, LC2_LOCAL_NOTE)
        bounds = _bounds(model, x)
        if search == "global":  # every sampled start and the steps beyond it lie inside
            bounds = search_bounds(bounds, model, settings["search_rotation"], settings["search_translation"])
        if moving_margin is not None:  # only the part of the moving image the search can reach
            reach = moving_margin
            if search == "global":
                reach += search_reach(box_corners(fixed), model.center, settings["search_rotation"],
                                      settings["search_translation"])
            moving = crop_to_box(moving, fixed, initial, reach)
        reports: List[LevelReport] = []
        initial_similarity = final_similarity = float("nan")

        evals = settings["max_evals"] or default_evals(opt_name, model)
        survivors = [x]  # the poses carried to the next level, best first
        objectives = {}  # level -> Objective, built on first use (the global search looks one level ahead)

        def objective_at(level: int) -> Objective:
            if level not in objectives:
                spacing = spacings[level]
                f_level = resample_to_spacing(fixed, spacing).to(dev)
                monitor.check()
                m_level = moving_level(moving, spacing, oversample if similarity.oversampled_moving else 1).to(dev)
                monitor.check()
                prepared = similarity.at_scale(min(spacings) / spacing).prepare(f_level, m_level)
                prepared = prepared if sample_points is None else prepared.sampled(sample_points)
                monitor.check()
                objectives[level] = Objective(prepared, f_level, m_level, model, initial)
            return objectives[level]

        def optimize(objective: Objective, start: np.ndarray, max_evals: int, level: int):
            # A sparse objective (a few hundred DISA points) is all per-call overhead: extra
            # threads only contend (OpenMP and MKL pools on few cores made DISA's L-BFGS 2x slower).
            with torch_threads(1 if objective.points is not None and dev.type == "cpu" else None):
                return minimize(lambda p: -objective.similarity(p), start, max_evals=max_evals, bounds=bounds,
                                monitor=monitor, **optimizer_scale(opt_name, spacings[level], level, base))

        for level, spacing in enumerate(spacings):
            t0 = time.perf_counter()
            stage = f"level {level + 1}/{len(spacings)} ({spacing:g} mm)"
            objective = objective_at(level)
            objectives.pop(level - 1, None)  # a finished level's images and features go
            if level == 0:
                overlap = objective.overlap(x)
                if overlap < MIN_INITIAL_OVERLAP:
                    raise InputError(
                        f"the images barely overlap at the initial pose ({100 * overlap:.1f}% of the fixed "
                        "foreground maps into the moving image): give an initial transform that roughly "
                        "aligns them")
                with torch.no_grad():
                    initial_similarity = float(objective.similarity(torch.as_tensor(x)[None])[0])
                if search == "global":  # the schedule of registration/search.py
                    sampler = PoseSampler(settings["search_samples"], settings["search_rotation"],
                                          settings["search_translation"], settings["seed"])
                    coarse = objective.for_search()  # a cheaper stand-in when no coarser level exists
                    # the level that re-scores the refined poses (built when the rounds are done):
                    # the next one, or this one when the rounds ran on its stand-in
                    rescore = min(1, len(spacings) - 1)
                    finer = None if rescore == 0 and coarse is objective else (lambda: objective_at(rescore))
                    survivors = global_starts(coarse, finer, model, x, sampler,
                                              starts=settings["search_starts"], monitor=monitor,
                                              local=lambda obj, start, n: optimize(obj, start, n, 0),
                                              labels=(f"{spacings[0]:g} mm", f"{spacings[rescore]:g} mm"))
            span = (max(level / len(spacings), SEARCH_PROGRESS if search == "global" else 0.0),
                    (level + 1) / len(spacings))
            monitor.begin(stage, span[0], span[1], len(survivors) * evals, starts=len(survivors))
            results = []
            for start in survivors:
                results.append(optimize(objective, start, evals, level))
                monitor.start_done()
            results.sort(key=lambda r: r.cost)
            # Two distinct candidates go on: a coarse level cannot always tell the right optimum
            # from a near one, the next, finer level can.
            survivors = [r.x for r in distinct(results, KEEP_CANDIDATES)]
            best = results[0]
            x, final_similarity = best.x, -best.cost
            reports.append(LevelReport(float(spacing), sum(r.n_evals for r in results), final_similarity,
                                       time.perf_counter() - t0, best.message))

        matrix = initial @ model.matrix(torch.as_tensor(x))[0].cpu().numpy()
        if progress is not None:
            progress("done", 1.0, f"similarity {final_similarity:.4f}, {time.perf_counter() - started:.1f} s")
        return RegistrationResult(matrix, x, model.name, metric_name, model.center, initial_similarity,
                                  final_similarity, time.perf_counter() - started, str(dev), reports,
                                  settings["precision"], settings["seed"], n_threads, monitor.total,
                                  compression=model.compression(x) if isinstance(model, ProbePressure) else None)


def resolve_metric(metric, weights, precision: str, seed: int) -> Tuple[Similarity, str, str]:
    """(similarity, canonical name, base name) of a metric given as text, MetricSpec or Similarity."""
    if isinstance(metric, Similarity):
        if weights is not None:
            raise InputError("give the weights file to the DISA similarity itself, not to register")
        return metric, metric.name, metric.name
    spec = parse_metric(metric)
    return spec.build(weights=weights, precision=precision, seed=seed), str(spec), spec.base


def measure_names(similarity: Similarity) -> List[str]:
    """The names of a similarity's measures (the parts of a weighted sum)."""
    return [sim.name for _, sim in getattr(similarity, "parts", [])] or [similarity.name]


def prepare_pair(fixed: Image, moving: Image, spacings: Sequence[float], oversample: int, fixed_mask, moving_mask,
                 measures: Sequence[str], monitor: Monitor) -> Tuple[Image, Image]:
    """Both inputs checked, their memory needs checked, reduced when large, masked and normalized.

    Cancel is checked between the steps (each can take a second on a busy CPU), so a cancelled
    run stops within one step, not only at the next evaluation.
    """
    check_image(fixed, "fixed image")
    check_image(moving, "moving image")
    check_level_sizes(fixed, moving, spacings)
    reduce_to = [reduced_spacing(image, min(spacings) / oversample) for image in (fixed, moving)]
    levels = level_voxels(fixed, moving, spacings, oversample)
    check_memory(estimate_bytes(Volume.of(fixed), Volume.of(moving), levels, reduce_to, measures, loading=False))
    prepared = []
    for image, name, mask, spacing in ((fixed, "fixed image", fixed_mask, reduce_to[0]),
                                       (moving, "moving image", moving_mask, reduce_to[1])):
        image, mask = reduce_large(image, spacing, mask)
        prepared.append(prepare_image(image, name, mask))
        monitor.check()
    return prepared[0], prepared[1]


#: Fewest voxels along every axis of a working level.
MIN_LEVEL_VOXELS = 4


def check_level_sizes(fixed: Image, moving: Image, spacings: Sequence[float]) -> None:
    """Refuse working spacings too coarse for the images (fewer than 4 voxels along an axis)."""
    extent = float(min(fixed.extent().min(), moving.extent().min()))
    coarsest = max(spacings)
    if coarsest * MIN_LEVEL_VOXELS > extent:
        raise InputError(f"a working spacing of {coarsest:g} mm is too coarse for images {extent:.1f} mm "
                         f"across: use at most {extent / MIN_LEVEL_VOXELS:.3g} mm")


#: Images with more voxels than this, and more than twice as fine as the finest level needs,
#: are first reduced to that level's grid, so the full-resolution volume is never normalized
#: or blurred as a whole. (A fixed size rule, not the free memory: results must not depend on
#: the machine.)
LARGE_IMAGE_VOXELS = 1 << 24


def reduced_spacing(image: Union[Image, Volume], spacing: float) -> Optional[float]:
    """The spacing ``image`` is reduced to before registering at ``spacing``, or None."""
    volume = Volume.of(image)
    if volume.voxels > LARGE_IMAGE_VOXELS and volume.voxels > 2 * volume.voxels_at(spacing):
        return float(spacing)
    return None


def reduce_large(image: Image, spacing: Optional[float], mask):
    """(image, mask) reduced to ``spacing`` (anti-aliased, in slabs) when it is not None."""
    if spacing is None:
        return image, mask
    if isinstance(mask, torch.Tensor):  # a given mask follows the image
        reduced = resample_to_spacing(image.same_geometry(image.data[:1].float(), mask.bool()), spacing)
        return reduced.same_geometry(reduced.data, None), reduced.mask
    reduced = resample_to_spacing(image.same_geometry(image.data[:1].float(), None), spacing)
    return reduced, mask


def level_voxels(fixed, moving, spacings: Sequence[float], oversample: int) -> List[Tuple[int, int]]:
    """(fixed, moving) voxels of each level's grids, as ``moving_level`` chooses them
    (``fixed``/``moving``: Images or VolumeInfo)."""
    f, m = Volume.of(fixed), Volume.of(moving)
    return [(f.voxels_at(s), m.voxels_at(s / oversample if oversamples(m, s, oversample) else s))
            for s in spacings]


#: How many times finer than a level's spacing its moving image is sampled (``moving_level``).
OVERSAMPLE = 2
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
    if oversamples(Volume.of(moving), spacing, oversample):
        return resample_to_spacing(moving, spacing / oversample, resolution=spacing)
    return resample_to_spacing(moving, spacing)


def oversamples(moving: Volume, spacing: float, oversample: int) -> bool:
    """Whether ``moving_level`` samples the moving level ``oversample`` times finer."""
    extent = np.asarray(moving.size, dtype=np.float64) * np.asarray(moving.spacing, dtype=np.float64)
    return oversample > 1 and float(np.prod(extent / spacing)) * oversample ** 3 <= MAX_OVERSAMPLED_VOXELS


#: Candidate poses carried from one level to the next.
KEEP_CANDIDATES = 2


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
    """``register`` on image files, with an optional ITK initial transform file. The memory the
    run needs is checked from the file headers, before any voxel is read."""
    from ..spatial import load_image
    from ..spatial.image import read_volume_info
    from ..transforms.itk_io import read_itk_transform

    fixed_info = read_volume_info(fixed_path, "fixed image")
    moving_info = read_volume_info(moving_path, "moving image")
    initial = None if initial_transform_path is None else read_itk_transform(initial_transform_path)
    check_file_memory(fixed_info, moving_info, kwargs)
    fixed = load_image(fixed_path, "fixed image")
    moving = load_image(moving_path, "moving image")
    return register(fixed, moving, initial=initial, **kwargs)


def check_file_memory(fixed: Volume, moving: Volume, options: dict) -> None:
    """The memory check of ``register`` for images still on disk (their reading included)."""
    check_memory(file_memory_bytes(fixed, moving, options))


def file_memory_bytes(fixed: Volume, moving: Volume, options: dict) -> int:
    """Bytes ``register`` needs for images still on disk with ``options`` (its keywords), their
    reading included (what ``check_file_memory`` checks; a cohort plans its workers with it)."""
    oversample = options.get("oversample") or OVERSAMPLE
    metric = options.get("metric", DEFAULTS.metric)
    spec = None if isinstance(metric, Similarity) else parse_metric(metric)
    names = measure_names(metric) if spec is None else spec.names
    measure = metric if spec is None else REGISTRY.get(spec.base)  # its working-spacing rule (a classmethod)
    spacings = (check_spacings(options["spacings"]) if options.get("spacings")
                else default_spacings(fixed, moving, measure))
    reduce_to = [reduced_spacing(v, min(spacings) / oversample) for v in (fixed, moving)]
    return estimate_bytes(fixed, moving, level_voxels(fixed, moving, spacings, oversample), reduce_to, names,
                          loading=True)
