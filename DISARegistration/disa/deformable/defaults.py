"""The one table of dense (deformable) registration defaults: ``register_deformable``, the command
line and the Slicer panel take their defaults from ``DENSE_DEFAULTS``.

Units: displacements are optimized in working-grid voxels (the fixed image resampled at the
working ``spacing``); learning rates are therefore voxels per Adam step (Adam moves each
parameter by about ``lr`` per iteration), and smoothness weights multiply mean squared
finite differences of voxel displacements.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..registration.result import DENSE_TRANSFORMS

#: The dense transform models, by the names ``RegistrationResult.transform`` takes.
DENSE_METHODS = DENSE_TRANSFORMS
#: Time integrators of the neural-ODE model.
INTEGRATORS = ("rk4", "euler")
#: Descriptor strides of the discrete search (working voxels between descriptors / search steps).
STRIDES = (1, 2, 4)
#: Similarity terms a dense registration can optimize (``lc2`` has no dense form here).
DENSE_METRICS = ("mind", "disa", "mse", "ncc", "lncc", "mi", "ngf")
#: Linear models a dense registration can start from.
LINEAR_TRANSFORMS = ("rigid", "affine")


@dataclass(frozen=True)
class DenseDefaults:
    """Default settings of ``disa.deformable.register_deformable``."""

    transform: str = "deformable"
    metric: str = "mind"
    linear_transform: str = "rigid"
    # Moving-level oversampling of the linear start (``register``'s ``oversample``; a rigid or
    # affine registration alone uses 2). The dense stage corrects what the finer moving grid
    # would add: on the 4 seed-0 benchmark cases (2 threads) the rigid start took 3.0 s instead of
    # 10.1 s, with the same rigid Dice (0.870 vs 0.871) and deformable Dice 0.911 vs 0.908.
    # Looser L-BFGS tolerances for it (ftol 1e-6, gtol 1e-5 or 1e-6) halved the linear stage
    # (1.96 -> 0.96 s) but cost deformable Dice (0.9106 -> 0.9089; session 16): not used.
    linear_oversample: int = 1
    # MIND-SSC in the linear start scores at most this many fixed voxels per level, on the
    # coarsest lattice that leaves no more (``register``'s ``sample_points``; a rigid or affine
    # registration alone scores every voxel): for a 96 mm box every 2nd voxel per axis at 4 mm,
    # every 3rd at 2 mm. Both tuning sets (8 cases, 2 threads, interleaved): every 2nd voxel on
    # both levels (session 22) mean Dice 0.9221, TRE 0.432 mm; this 0.9221, 0.434 mm, 0.27 s less
    # a run; 3000 (every 4th at 2 mm) 0.9219, 0.446 mm. (Every 2nd against every voxel, session
    # 22: Dice 0.8987 vs 0.8978, TRE 0.578 vs 0.579 mm, 3.5 s instead of 5.1 s a run.)
    linear_sample_points: int = 5000
    # The linear start reads the moving image within this many mm of the fixed box at the start
    # pose (plus a global search's ranges; ``register``'s ``moving_margin``): a whole-head MR
    # around a 96 mm box is cut to about half, and its levels' blur and MIND-SSC with it. Both
    # tuning sets: Dice 0.9227 vs 0.9221, TRE 0.431 vs 0.434 mm, 2.33 vs 2.68 s a run; 20 mm
    # 0.9223, 0.430 mm, 2.11 s (kept 30: room for a start further off).
    linear_moving_margin: Optional[float] = 30.0
    # Working spacing (mm): None chooses the finest of the fixed spacing and the largest fixed
    # extent / ``working_voxels`` (1.5 mm for a 96 mm brain box), never more than 128 across.
    # Measured on the deformable benchmark's 4 cached cases (2 T2-T1, 2 CT-T1, 6 mm deformations;
    # smoothness 10): 2 mm gives mean Dice 0.893, 1.5 mm 0.906 at ~1.5x the time of 2 mm; 1 mm
    # (96 voxels) took 4-10 minutes per diffeomorphic run on this CPU.
    spacing: Optional[float] = None
    working_voxels: int = 64
    # Discrete + convex ("deformable"; Heinrich et al. 2014, ConvexAdam): a control grid about
    # ``grid_spacing_mm`` apart, displacements searched within +-``search_radius_mm`` in steps of
    # ``stride`` working voxels (the DISA paper's descriptor stride, Table 2).
    grid_spacing_mm: float = 8.0
    stride: int = 2
    search_radius_mm: float = 12.0
    # Coupling weights of the convex steps (relative to the normalized matching cost, per
    # squared control-grid spacing of disagreement), increasing.
    coupling: tuple = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    # Coarse to fine: the dense stage runs on ``levels`` working grids, each twice as fine as the
    # one before and the last at ``spacing``; ``iterations`` apply to the finest level and
    # ``coarse_iterations`` (``dense_coarse_iterations`` for the diffeomorphic models) to each
    # coarser one, where an iteration costs about an eighth of a fine one. Measured on the same
    # 4 cases (1 thread, MIND-SSC rigid start at the engine's levels): deformable, one level with
    # 40 iterations mean Dice 0.906; two levels, 40 coarse + 10 fine 0.908 (dense stage 6-9 s
    # instead of 15-18 s), + 5 fine 0.901. Diffeomorphic (rigid start at 4 mm): one level (300)
    # 0.906 in about 100 s; two levels, up to 300 coarse + 30 fine, 0.904 in 25 s.
    levels: int = 2
    coarse_iterations: int = 40
    # The stationary field's coarse level, at most (its velocity on the coarse level's own grid
    # since session 24; both tuning sets, with 20 finest iterations): up to 300 (it stopped after
    # 42-99) mean Dice 0.9243, TRE 0.413 mm, 2.45 s a run; 60: 0.9253, 0.415 mm, 2.25 s; 40:
    # 0.9249, 0.424 mm, 2.10 s.
    dense_coarse_iterations: int = 60
    ode_coarse_iterations: int = 300  # the neural-ODE's coarse level, at most
    # Instance optimization after the discrete step (Adam, combined similarity, diffusion).
    # At the finest level. Its similarity on every second voxel per axis (offset cycling over the
    # 8 phases) made the level 2.7x faster but cost Dice (0.9093 vs 0.9106; 20 iterations 0.904;
    # session 16, seed-0 cases): not used.
    iterations: int = 10
    lr: float = 0.1                  # working voxels per Adam step
    # Instance optimization's squared-difference similarity (MIND-SSC, DISA, MSE) by its
    # Gauss-Newton model (``linearized.LinearizedLoss``), rebuilt once the field has moved this
    # many working voxels; 0: exact (two trilinear warps and their gradients) every iteration.
    # Interleaved on both tuning sets (2 threads, session 20), mean Dice / TRE / dense-stage
    # seconds: exact 0.9106 / 0.548 mm / 3.2 s and 0.8860 / 0.608 mm / 3.1 s; 0.25: 0.9103 /
    # 0.540 mm / 2.0 s and 0.8853 / 0.617 mm / 2.0 s; 0.5: 0.9099 / 0.568 mm and 0.8885 / 0.623 mm
    # (dense stage 1.2-1.4 s); 1.0: 0.898 on seed 0. The stationary velocity field ("diffeomorphic")
    # uses it too since the central-difference derivative (session 23, both sets, 0.25 against
    # exact): Dice 0.9225 vs 0.9222, TRE 0.437 vs 0.441 mm, 7.97 vs 12.33 s a run, no folded
    # voxel (session 20, under the trilinear derivative, Dice had fallen up to 0.9 points). The
    # neural-ODE stays exact: on the seed-0 set 0.25 gave Dice 0.9297 vs 0.9336, TRE 0.457 vs
    # 0.436 mm (18.9 vs 24.3 s).
    linearize: float = 0.25
    # Weight of the first-order (diffusion) regularizer. Swept on the same 4 cases at 2 mm: 3 ->
    # mean Dice 0.884, 10 -> 0.893, 30 -> 0.893, 100 -> 0.885; at 1.5 mm 10 -> 0.906, 30 -> 0.904.
    # At 3, the CT-T1 cases (no contrast inside the brain) ended below their rigid start.
    smoothness: float = 10.0
    bidirectional: bool = True       # forward and backward similarity (Eq. 1 of the paper)
    # Diffeomorphic models ("diffeomorphic": stationary velocity field, scaling and squaring;
    # "neural-ode": velocity from a small network, integrated in time).
    # The stationary field's finest level, at most (each level stops early once converged). With
    # its coarse level on its own grid (session 24, both tuning sets, coarse up to 300): 30 gave
    # mean Dice 0.9243, TRE 0.433 mm, 3.27 s a run; 20: 0.9242, 0.414 mm, 2.71 s; 15: 0.9214,
    # 0.439 mm, 2.32 s.
    dense_iterations: int = 20
    # The neural-ODE's finest level, at most. Every run reached 30 without converging; paired runs
    # (same cases, same network seed; 12 runs: seed-0 and seed-2 tuning cases, network seeds 0 and
    # 2; session 19): 60 raised mean Dice by 0.41 points (0.1 / 0.8 / 0.3 per set) and lowered TRE in
    # every set (0.51 -> 0.49, 0.65 -> 0.61, 0.68 -> 0.65 mm), for about 7 s more a run; 100 gave
    # the same Dice as 60. The stationary field keeps 30: with 60, seed-0 cases 0.909 against 0.911
    # (sessions 10 and 19), seed-2 cases 0.888 against 0.883.
    ode_iterations: int = 60
    dense_lr: float = 0.05           # "diffeomorphic": velocity voxels per Adam step
    ode_lr: float = 2e-3             # "neural-ode": Adam step of the network parameters
    dense_smoothness: float = 10.0   # at 1.5 mm: 2 -> mean Dice 0.891, 10 -> 0.906 (diffeomorphic)
    jacobian_weight: float = 10.0    # penalty on Jacobian determinants below ``jacobian_floor``
    jacobian_floor: float = 0.1
    # The velocity of both diffeomorphic models starts at the discrete + convex step's displacement
    # (its first-order logarithm; for "neural-ode" a fixed offset to which the network's output,
    # zero at first, is added). Neural-ODE from zero on the seed-0 cases (2 threads): mean Dice
    # 0.905, TRE 0.560 mm; from the discrete step 0.910, 0.510 mm, in about 5% more time.
    discrete_start: bool = True
    # Scaling and squaring: v / 2^5, then 5 compositions (with the velocity's magnitude of a few
    # voxels, each first step stays below a fifth of a voxel). Both tuning sets (session 24, 20
    # finest iterations): mean Dice 0.9243 against 0.9242 with 7, TRE 0.413 against 0.414 mm, 2.45
    # against 2.71 s a run (each composition about 1.2 ms of forward and backward on a 34^3
    # velocity grid, every iteration); no folded voxel.
    squaring_steps: int = 5
    integrator: str = "rk4"
    time_steps: int = 8              # neural-ode integration steps over t in [0, 1]
    velocity_grid: int = 2           # the velocity lives on a grid this many working voxels apart
    # The neural-ODE network's grid. On the seed-0 cases (2 threads): 4 voxels apart mean Dice
    # 0.910, TRE 0.53 mm against 0.907 and 0.57 at 2, about a third of the time (the network and
    # its 32 samplings per RK4 flow run on 8x fewer points). The stationary field keeps 2: at 4 its
    # Dice fell to 0.907 (0.911 at 2), TRE 0.52 against 0.54.
    ode_velocity_grid: int = 4
    tolerance: float = 1e-4          # early stop: relative loss change over ``patience`` iterations
    patience: int = 20
    # MIND-SSC of the dense stages (ConvexAdam's radius 1, dilation 2, in working voxels).
    mind_radius: int = 1
    mind_dilation: int = 2
    # Shared principal components of MIND-SSC kept in the dense stage (12: all channels, no
    # projection). Fewer make the dense stage about 40% faster but cost accuracy, so all 12 stay:
    # on the seed-0 benchmark cases (2 threads) 6 gave deformable mean Dice 0.906, TRE 0.574 mm
    # (12: 0.911, 0.548 mm) and diffeomorphic 0.908, 0.596 mm (0.911, 0.540 mm); on the tests'
    # synthetic pair (1.00 mm before) 0.72 / 0.80 / 0.83 mm against 0.67 / 0.73 / 0.74 mm for
    # deformable / diffeomorphic / neural-ode.
    mind_components: int = 12
    seed: int = 0
    device: str = "auto"
    threads: Optional[int] = None

    def as_dict(self) -> dict:
        return asdict(self)


DENSE_DEFAULTS = DenseDefaults()
