"""Dense registration: a linear start, then a deformable or diffeomorphic displacement field.

    result = register_deformable(fixed, moving)                  # discrete + convex + Adam, MIND-SSC
    result = register_deformable(fixed, moving, "diffeomorphic")  # stationary velocity field
    result.matrix  # the linear fixed -> moving matrix (initial included)
    result.field   # fixed-space LPS displacement applied before it: x -> matrix @ (x + field(x))

Defaults: ``disa.deformable.defaults.DENSE_DEFAULTS``. The moving image is resampled once onto
the fixed working grid through the linear matrix; every dense method works there in voxel units
and the result is converted to LPS millimetres (``fields.voxel_to_lps``).
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Union

import numpy as np
import torch

from ..errors import InputError
from ..optim import Monitor
from ..optim.base import ProgressCallback
from ..registration import register
from ..registration.options import check_int
from ..registration.pipeline import prepare_image, resolve_device
from ..registration.result import LevelReport, RegistrationResult
from ..spatial import Image, resample_image
from ..spatial.image import anti_alias_sigma, crop_to_box, gaussian_blur
from ..threads import machine_threads, torch_threads
from .defaults import DENSE_DEFAULTS as D
from .diffeomorphic import register_neural_ode, register_svf
from .discrete import discrete_search
from .fields import field_image, jacobian_statistics, max_length, resize_field, working_grid
from .instance import instance_optimize
from .losses import build_term, combined_loss
from .settings import check_dense_settings, check_metric

#: Most working voxels along any axis.
MAX_ACROSS = 128
#: Share of the progress bar taken by the linear registration when this run computes it.
LINEAR_PROGRESS = 0.3


def default_spacing(fixed: Image, working_voxels: int = D.working_voxels) -> float:
    """The working spacing (mm): the finest fixed spacing, coarser for large volumes (about
    ``working_voxels`` across the largest extent, never more than ``MAX_ACROSS``)."""
    extent = float(((np.asarray(fixed.size) - 1) * fixed.spacing).max())
    return float(np.round(max(float(fixed.spacing.min()), extent / working_voxels, extent / MAX_ACROSS), 3))


def level_grids(fixed: Image, spacing: float, levels: int) -> list:
    """Working grids coarse to fine, each twice as fine as the one before, the last at
    ``spacing``; coarse levels that would have fewer than 8 voxels along an axis are left out."""
    grids = [working_grid(fixed, spacing * 2 ** k) for k in reversed(range(int(levels)))]
    return [g for g in grids[:-1] if min(g.shape) >= 8] + grids[-1:]


def linear_matrix(linear) -> np.ndarray:
    """The 4x4 fixed -> moving matrix of a RegistrationResult or a matrix."""
    m = linear.matrix if isinstance(linear, RegistrationResult) else np.asarray(linear, dtype=np.float64)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-6:
        raise InputError("the linear transform must be an invertible 4x4 matrix or a RegistrationResult")
    return m


def on_grid(image: Image, grid: Image, matrix: Optional[np.ndarray] = None) -> Image:
    """``image`` anti-aliased for and resampled onto ``grid`` (through ``matrix``). Only the part
    the grid reads is blurred (with the blur's support around it: the same values): a whole-head
    moving MR around a smaller fixed box costs several times the blur it needs."""
    sigma = anti_alias_sigma(float(np.mean(grid.spacing)) / image.spacing)
    support = float(((np.ceil(3.0 * sigma) + 2.0) * image.spacing).max())  # blur radius + trilinear's voxel
    image = crop_to_box(image, grid, matrix, support)
    blurred = image.same_geometry(gaussian_blur(image.data.float(), sigma), image.mask)
    return resample_image(blurred, grid, matrix)


def register_deformable(fixed: Image, moving: Image, transform: str = D.transform, metric=D.metric,
                        initial: Optional[np.ndarray] = None, linear: Union[RegistrationResult, np.ndarray, None] = None,
                        linear_transform: str = D.linear_transform, spacing: Optional[float] = D.spacing,
                        grid_spacing_mm: float = D.grid_spacing_mm, stride: int = D.stride,
                        search_radius_mm: float = D.search_radius_mm, iterations: Optional[int] = None,
                        lr: Optional[float] = None, smoothness: Optional[float] = None,
                        levels: int = D.levels, coarse_iterations: Optional[int] = None,
                        jacobian_weight: float = D.jacobian_weight, integrator: str = D.integrator,
                        time_steps: int = D.time_steps, bidirectional: bool = D.bidirectional,
                        mind_components: int = D.mind_components, linearize: float = D.linearize, seed: int = D.seed,
                        device: str = D.device, threads: Optional[int] = D.threads, weights=None,
                        fixed_mask="auto", progress: Optional[ProgressCallback] = None,
                        cancel: Optional[Callable[[], bool]] = None, **linear_options) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a dense displacement field after a linear start.

    ``transform``: "deformable" (discrete search on a ``grid_spacing_mm`` control grid in steps
    of ``stride`` working voxels within +-``search_radius_mm``, coupled convex smoothing, then
    Adam instance optimization of the combined similarity with diffusion ``smoothness``),
    "diffeomorphic" (stationary velocity field, scaling and squaring) or "neural-ode" (velocity
    network integrated by ``integrator`` in ``time_steps``). ``metric``: any expression of
    mind, disa, mse, ncc, lncc, mi, ngf (weights are normalized to sum to one). ``linear``: a
    RegistrationResult or 4x4 fixed -> moving matrix to start from; None runs
    ``disa.registration.register(..., transform=linear_transform, initial=initial,
    **linear_options)`` first. ``spacing``: working spacing in mm (None: ``default_spacing``).
    ``levels``: working grids coarse to fine (each twice as coarse as the next; the finest at
    ``spacing``): ``iterations`` run on the finest, ``coarse_iterations`` on each coarser one.
    ``iterations``, ``coarse_iterations``, ``lr``, ``smoothness``: None takes the method's default
    (DENSE_DEFAULTS). ``mind_components``: MIND-SSC's 12 channels projected onto this many shared
    principal components in the dense stage (12: unprojected). ``linearize`` (deformable,
    diffeomorphic; the neural-ODE stays exact): the squared-difference terms by their
    Gauss-Newton model in the displacement, rebuilt once the field has moved this many working
    voxels (0: exact every iteration).
    ``weights``: a DISA weights file. ``cancel`` is polled every iteration (CancelledError).
    Deterministic on a CPU for given inputs, settings, seed and thread count.
    """
    n_threads = check_int("threads", threads, 1, 4096) if threads is not None else machine_threads()
    with torch_threads(n_threads):
        started = time.perf_counter()
        s = check_dense_settings(transform, spacing, grid_spacing_mm, stride, search_radius_mm, iterations, lr,
                                 smoothness, jacobian_weight, integrator, time_steps, seed, linear_transform,
                                 levels, coarse_iterations, mind_components, linearize)
        spec, terms_spec = check_metric(metric)
        dev = resolve_device(device)
        monitor = Monitor(progress, cancel)
        monitor.check()
        start = 0.0
        if linear is None:
            def scaled(stage, fraction, message):
                if progress is not None:
                    progress(stage, LINEAR_PROGRESS * fraction, message)
            for option, value in (("oversample", D.linear_oversample), ("sample_points", D.linear_sample_points),
                                  ("moving_margin", D.linear_moving_margin)):
                if linear_options.get(option) is None:
                    linear_options[option] = value
            linear = register(fixed, moving, metric=str(spec), transform=s["linear_transform"], initial=initial,
                              seed=s["seed"], device=device, threads=n_threads, progress=scaled, cancel=cancel,
                              weights=weights, **linear_options)
            start = LINEAR_PROGRESS
        elif linear_options:
            raise InputError(f"linear options ({', '.join(sorted(linear_options))}) apply only when the linear "
                             "registration runs here, not with a given linear transform")
        matrix = linear_matrix(linear)

        work_spacing = s["spacing"] or default_spacing(fixed)
        pyramid = level_grids(fixed, work_spacing, s["levels"])
        if min(pyramid[-1].shape) < 8:
            raise InputError(f"the working grid ({' x '.join(map(str, pyramid[-1].size))} voxels at {work_spacing:g} "
                             "mm) is too small for a dense registration: use a finer spacing")
        fixed_ready, moving_ready = prepare_image(fixed, "fixed", fixed_mask), prepare_image(moving, "moving", "auto")
        descriptor = None
        if "disa" in spec.names:
            from ..similarity.disa import DISA

            descriptor = DISA(weights=weights)
        level_terms = []
        for grid in pyramid:
            f_img = on_grid(fixed_ready, grid).to(dev)
            m_img = on_grid(moving_ready, grid, matrix).to(dev)
            f_valid, m_valid = f_img.mask.float()[None], m_img.mask.float()[None]
            level_terms.append([(w, build_term(name, f_img, m_img, f_valid, m_valid, D.mind_radius, D.mind_dilation,
                                               descriptor, s["stride"], s["seed"], s["mind_components"]))
                                for w, name in terms_spec])
            monitor.check()
        grid, terms = pyramid[-1], level_terms[-1]
        shape = grid.shape
        coarse = s["coarse_iterations"]
        levels = [(t, g.shape, coarse) for t, g in zip(level_terms[:-1], pyramid[:-1])]
        levels.append((terms, shape, s["iterations"]))
        t0 = time.perf_counter()
        extra: dict = {}
        method = s["transform"]
        discrete = None
        if method == "deformable" or D.discrete_start:
            step = float(np.mean(grid.spacing))
            cell = s["stride"] * max(1, round(s["grid_spacing_mm"] / (step * s["stride"])))
            radius = max(1, int(np.ceil(s["search_radius_mm"] / (step * s["stride"]) - 1e-6)))
            if min(shape) < cell:
                raise InputError(f"the control grid spacing ({s['grid_spacing_mm']:g} mm) exceeds the image: "
                                 "use a smaller grid spacing")
            monitor.begin("discrete search", start, start + 0.2 * (1 - start), len(D.coupling))
            discrete = discrete_search(terms, cell, s["stride"], radius, D.coupling, monitor)
            extra.update(control_cell_voxels=cell, search_steps=radius, stride=s["stride"],
                         grid_spacing_mm=cell * step, discrete_seconds=time.perf_counter() - t0)
            start = start + 0.2 * (1 - start)
        if method == "deformable":
            disp = discrete
            # instance optimization coarse to fine, each level from the previous one's field
            monitor.begin("instance optimization", start, 1.0, sum(n for _, _, n in levels))
            history = []
            for level_terms_k, level_shape, n in levels:
                started_level = time.perf_counter()
                disp, h = instance_optimize(level_terms_k, resize_field(disp, level_shape), n, s["lr"],
                                            s["smoothness"], bidirectional, smoothing_passes=2, monitor=monitor,
                                            linearize=s["linearize"])
                history.append((h, time.perf_counter() - started_level))
            disp = resize_field(disp, shape)
            extra["linearize_voxels"] = s["linearize"]
        else:
            monitor.begin(method, start, 1.0, sum(n for _, _, n in levels))
            common = {"lr": s["lr"], "smoothness": s["smoothness"], "jacobian_weight": s["jacobian_weight"],
                      "jacobian_floor": D.jacobian_floor, "velocity_grid": D.velocity_grid,
                      "tolerance": D.tolerance, "patience": D.patience, "bidirectional": bidirectional,
                      "monitor": monitor}
            if method == "diffeomorphic":
                disp, history = register_svf(levels, squaring_steps=D.squaring_steps, initial=discrete,
                                             linearize=s["linearize"], **common)
                extra.update(squaring_steps=D.squaring_steps, linearize_voxels=s["linearize"])
            else:
                common["velocity_grid"] = D.ode_velocity_grid
                disp, history = register_neural_ode(levels, integrator=s["integrator"], time_steps=s["time_steps"],
                                                    seed=s["seed"], initial=discrete, **common)
                extra.update(integrator=s["integrator"], time_steps=s["time_steps"])
            extra["velocity_grid_voxels"] = common["velocity_grid"]
        extra["level_iterations"] = [len(h) for h, _ in history]
        extra["level_seconds"] = [round(t, 3) for _, t in history]
        finals = [-h[-1] if h else 0.0 for h, _ in history]
        history = [v for h, _ in history for v in h]
        with torch.no_grad():
            zero = torch.zeros_like(disp)
            before = -float(combined_loss(terms, zero, 0.0, bidirectional=False))
            after = -float(combined_loss(terms, disp, 0.0, bidirectional=False))
        field = field_image(disp.cpu(), grid)
        stats = jacobian_statistics(field)
        seconds = time.perf_counter() - started
        deformation = {"method": method, "metric": str(spec), "iterations": len(history),
                       "seconds": time.perf_counter() - t0, "working_spacing_mm": grid.spacing.tolist(),
                       "working_size_xyz": list(grid.size), "lr": s["lr"], "smoothness": s["smoothness"],
                       "final_loss": history[-1] if history else None,
                       "max_displacement_mm": max_length(field.data), "jacobian": stats, **extra}
        if progress is not None:
            progress("done", 1.0, f"{method}: similarity {before:.4f} -> {after:.4f}, {seconds:.1f} s, "
                                  f"{stats['nonpositive']} folded voxels")
        # per level: its final loss (negated; the finest: the similarity itself) and seconds
        reports = [LevelReport(float(np.mean(g.spacing)), n, after if k == len(pyramid) - 1 else finals[k], t,
                               method) for k, (g, n, t) in enumerate(zip(pyramid, extra["level_iterations"],
                                                                         extra["level_seconds"]))]
        is_result = isinstance(linear, RegistrationResult)
        return RegistrationResult(
            matrix, linear.params if is_result else np.zeros(0), method, str(spec),
            linear.center if is_result else fixed.center(), before, after, seconds, str(dev), reports,
            seed=s["seed"], threads=n_threads, evaluations=len(history) + (linear.evaluations if is_result else 0),
            field=field, deformation=deformation)
