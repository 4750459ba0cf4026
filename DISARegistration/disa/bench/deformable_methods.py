"""The methods of the deformable benchmark (``disa benchmark deformable``), each behind one call
``runner(case) -> MethodOutput``: a SimpleITK transform mapping fixed LPS points to moving LPS
points (ITK's resampling direction), the wall time of the registration and notes.

- ``identity``: no registration; ``truth``: the case's exact mapping (``truth_deformed.h5``),
  the ceiling every measure is checked against;
- ``rigid``: this engine's rigid MIND-SSC registration alone (the linear start of the dense modes);
- ``deformable`` / ``diffeomorphic`` / ``neural-ode``: ``disa.registration.register(metric="mind",
  transform=...)`` (rigid, then the dense model of :func:`disa.deformable.register_deformable`);
- ``elastix``: itk-elastix, its default "rigid" then "bspline" parameter maps (Mattes MI plus
  bending energy, 4 levels, 10 mm final grid);
- ``ants``: ANTsPy ``registration(type_of_transform="SyN", aff_metric="mattes", syn_metric="mattes")``;
- ``convexadam``: the ``convexadam`` package's ``convex_adam_pt`` (MIND-SSC, coupled convex
  optimisation, Adam instance optimisation; its defaults) on the moving image resampled onto the
  fixed grid through the image headers (it has no linear stage).

Peers run in one child process each (spawned, so a crash in native code or a package's import-time
settings stay out of this process), with their thread count pinned to the engine's. Each peer
returns its whole mapping as a displacement field sampled on the fixed grid (fixed -> moving,
LPS mm), which the parent wraps in a ``sitk.DisplacementFieldTransform``; its seconds are the
registration call alone, measured in the child.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import InputError
from .records import choose_methods

ENGINE_DENSE = ("deformable", "diffeomorphic", "neural-ode")
PEERS = ("elastix", "ants", "convexadam")
REFERENCES = ("identity", "truth", "rigid")
METHODS = REFERENCES + ENGINE_DENSE + PEERS
#: The engine's modes whose fields must not fold.
DIFFEOMORPHIC = ("diffeomorphic", "neural-ode")
#: The engine's similarity in every mode of this benchmark.
METRIC = "mind"
#: Environment variables that pin a peer process's threads (ITK, OpenMP, BLAS).
THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS")
PEER_SETTINGS = {
    "elastix": "itk-elastix default 'rigid' then 'bspline' maps (AdvancedMattesMutualInformation + "
               "TransformBendingEnergyPenalty, ASGD, 4 levels, 10 mm final grid)",
    "ants": "ANTsPy registration(type_of_transform='SyN', aff_metric='mattes', syn_metric='mattes'), its defaults "
            "otherwise",
    "convexadam": "convexadam convex_adam_pt defaults (MIND-SSC r1 d2, grid 6, disp_hw 4, lambda 1.25, 80 Adam "
                  "iterations, inverse consistency) on the moving image resampled onto the fixed grid, float32 CPU",
}
#: The pip package of each peer.
PACKAGES = {"elastix": "itk-elastix", "ants": "antspyx", "convexadam": "convexadam"}


@dataclass
class MethodOutput:
    """``transform``: SimpleITK transform, fixed LPS point -> moving LPS point; ``seconds``: the
    registration's wall time (None for the references without one)."""

    transform: object
    seconds: Optional[float]
    info: Dict[str, object] = field(default_factory=dict)


def check_methods(methods: Optional[Sequence[str]]) -> list:
    """Known method names in report order (None: every method)."""
    return choose_methods(methods, METHODS, "deformable")


# child-process side ---------------------------------------------------------------------------
def pin_threads(threads: int) -> None:
    """Initializer of a peer process: every thread pool of the process gets ``threads``."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(int(threads))
    import torch

    torch.set_num_threads(int(threads))


def state_image_sitk(state):
    """A SimpleITK image from ``(array zyx, spacing, origin, direction)``."""
    import SimpleITK as sitk

    array, spacing, origin, direction = state
    img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in origin])
    img.SetDirection([float(v) for v in np.asarray(direction, dtype=np.float64).ravel()])
    return img


def field_on_grid(tx, reference) -> np.ndarray:
    """(Z, Y, X, 3) displacement ``tx(x) - x`` (LPS mm) at the voxels of the SimpleITK ``reference``."""
    import SimpleITK as sitk

    disp = sitk.TransformToDisplacementField(tx, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
                                             reference.GetSpacing(), reference.GetDirection())
    return sitk.GetArrayFromImage(disp)


def peer_available(method: str) -> Optional[str]:
    """None when the peer's package imports (in the child process), else why not."""
    package = PACKAGES[method]
    try:
        if method == "elastix":
            import itk

            itk.ParameterObject.New()
            itk.elastix_registration_method  # noqa: B018  (lazy attribute: fails if elastix is missing)
        elif method == "ants":
            import ants

            ants.registration  # noqa: B018
        else:
            from convexAdam.convex_adam_MIND import convex_adam_pt  # noqa: F401
    except Exception as exc:  # noqa: BLE001  (ImportError, or a broken binary install)
        return f"{package} not installed or broken ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


def elastix_job(fixed_state, moving_state, seed: int) -> dict:
    """elastix rigid then B-spline; the whole mapping on the fixed grid."""
    import itk

    def itk_image(state):
        array, spacing, origin, direction = state
        img = itk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        img.SetSpacing([float(v) for v in spacing])
        img.SetOrigin([float(v) for v in origin])
        img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction, dtype=np.float64)))
        return img

    f, m = itk_image(fixed_state), itk_image(moving_state)
    parameters = itk.ParameterObject.New()
    for name in ("rigid", "bspline"):
        pmap = parameters.GetDefaultParameterMap(name)
        pmap["RandomSeed"] = [str(int(seed) + 1)]
        pmap["WriteResultImage"] = ["false"]
        parameters.AddParameterMap(pmap)
    started = time.perf_counter()
    _, result = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False)
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:  # transformix writes deformationField.nii there (else into the cwd)
        disp = np.asarray(itk.array_from_image(itk.transformix_deformation_field(m, result, output_directory=tmp)),
                          dtype=np.float64)
    return {"field": disp, "seconds": seconds, "info": {"maps": "rigid, bspline"}}


def ants_job(fixed_state, moving_state, seed: int) -> dict:
    """ANTs SyN (affine stage included); its forward transforms (``fwdtransforms``: the warp
    applied first, then the affine) sampled on the fixed grid."""
    import ants
    import SimpleITK as sitk

    def to_ants(state):
        array, spacing, origin, direction = state
        # ANTsPy arrays are indexed (x, y, z), SimpleITK's and the engine's (z, y, x)
        return ants.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(array, np.float32), (2, 1, 0))),
                               origin=[float(v) for v in origin], spacing=[float(v) for v in spacing],
                               direction=np.asarray(direction, dtype=np.float64))

    f, m = to_ants(fixed_state), to_ants(moving_state)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        out = ants.registration(fixed=f, moving=m, type_of_transform="SyN", aff_metric="mattes",
                                syn_metric="mattes", random_seed=int(seed) + 1, outprefix=os.path.join(tmp, "ants_"))
        seconds = time.perf_counter() - started
        files = list(out["fwdtransforms"])
        members = []
        for path in files:
            if path.endswith((".nii.gz", ".nii")):
                img = sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)
                members.append(sitk.DisplacementFieldTransform(img))
            else:
                members.append(sitk.ReadTransform(path))
        # ANTs lists [warp, affine] and applies the warp first: x -> A(x + u(x)); a SimpleITK composite
        # applies its last member first, so the list is reversed (checked against ants.apply_transforms:
        # identical nearest-neighbour label maps)
        tx = sitk.CompositeTransform(members[::-1])
        disp = field_on_grid(tx, state_image_sitk(fixed_state))
    return {"field": disp, "seconds": seconds, "info": {"transforms": [os.path.basename(p) for p in files]}}


def convexadam_job(fixed_state, moving_state) -> dict:
    """ConvexAdam on the moving image resampled onto the fixed grid (identity through the
    headers); its voxel displacement (along the array axes z, y, x) turned into LPS mm."""
    import SimpleITK as sitk
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    f = state_image_sitk(fixed_state)
    m = sitk.Resample(state_image_sitk(moving_state), f, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    started = time.perf_counter()
    disp = convex_adam_pt(sitk.GetArrayFromImage(f), sitk.GetArrayFromImage(m), dtype=torch.float32,
                          device=torch.device("cpu"))
    seconds = time.perf_counter() - started
    _, spacing, _, direction = fixed_state
    # moving index (z, y, x) + disp at fixed index (z, y, x): to x, y, z voxels, then LPS mm
    xyz = np.asarray(disp, dtype=np.float64)[..., ::-1] * np.asarray(spacing, dtype=np.float64)
    return {"field": xyz @ np.asarray(direction, dtype=np.float64).T, "seconds": seconds,
            "info": {"moving": "resampled onto the fixed grid through the image headers"}}


PEER_JOBS = {"elastix": elastix_job, "ants": ants_job, "convexadam": convexadam_job}


# parent side ----------------------------------------------------------------------------------
def image_state(image):
    """``(array zyx, spacing, origin, direction)`` of an engine Image, picklable for a child."""
    return (image.data[0].detach().cpu().numpy(), np.asarray(image.spacing, dtype=np.float64),
            np.asarray(image.origin, dtype=np.float64), np.asarray(image.direction, dtype=np.float64))


def field_transform(disp: np.ndarray, reference):
    """A ``sitk.DisplacementFieldTransform`` of a (Z, Y, X, 3) LPS mm field on the grid of
    the SimpleITK ``reference`` (zero displacement outside it)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(disp, dtype=np.float64), isVector=True)
    img.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(img)


class PeerProcess:
    """One peer in one spawned child process with pinned threads."""

    def __init__(self, method: str, threads: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.method = method
        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=pin_threads, initargs=(int(threads),))

    def unavailable(self) -> Optional[str]:
        try:
            return self.pool.submit(peer_available, self.method).result()
        except Exception as exc:  # noqa: BLE001  (the child could not even start)
            return f"{PACKAGES[self.method]} unavailable ({type(exc).__name__}: {exc})"

    def run(self, *args) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(PEER_JOBS[self.method], *args).result()
        except BrokenProcessPool as exc:
            raise RuntimeError(f"the {self.method} process died ({exc})") from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class MethodRunner:
    """One method: ``available()`` (None or why not), ``__call__(case)`` and ``close()``.

    ``dense``: settings of :func:`disa.deformable.register_deformable` for the engine's modes
    (e.g. ``spacing``, ``iterations``); ``spacings``: the linear stage's working spacings (None:
    the engine's)."""

    def __init__(self, method: str, threads: int, seed: int = 0, dense: Optional[dict] = None,
                 spacings: Optional[Sequence[float]] = None):
        self.method, self.threads, self.seed = method, int(threads), int(seed)
        self.dense, self.spacings = dict(dense or {}), spacings
        self.peer = None

    def available(self) -> Optional[str]:
        if self.method in PEERS:
            self.peer = PeerProcess(self.method, self.threads)
            reason = self.peer.unavailable()
            if reason is not None:
                self.close()
            return reason
        return None

    def settings(self) -> str:
        if self.method in PEERS:
            return PEER_SETTINGS[self.method]
        if self.method == "identity":
            return "no registration"
        if self.method == "truth":
            return "the exact mapping of the case (truth_deformed.h5)"
        spacings = "engine's levels" if self.spacings is None else f"levels {list(self.spacings)} mm"
        if self.method == "rigid":
            return f"disa rigid {METRIC}, local search, {spacings}"
        dense = ", ".join(f"{k} {v}" for k, v in sorted(self.dense.items())) or "defaults"
        return (f"disa {self.method} {METRIC} after rigid {METRIC} ({spacings}, moving levels sampled at the working "
                f"spacing); dense settings: {dense}")

    def warm_up(self, case) -> None:
        """One untimed coarse rigid run of the engine (imports, kernels)."""
        from ..registration import register

        register(case.fixed, case.moving, metric=METRIC, spacings=[8.0], max_evals=5, seed=0,
                 threads=self.threads)

    def __call__(self, case) -> MethodOutput:
        import SimpleITK as sitk

        if self.method == "identity":
            return MethodOutput(sitk.Transform(), None)
        if self.method == "truth":
            from ..transforms.itk_io import read_sitk_transform

            if not case.files.get("truth_deformed"):
                raise InputError(f"case {case.name} has no truth_deformed.h5")
            return MethodOutput(read_sitk_transform(case.files["truth_deformed"]), None)
        if self.method in ("rigid",) + ENGINE_DENSE:
            from ..registration import register

            kwargs = {"dense": self.dense} if self.method in ENGINE_DENSE and self.dense else {}
            transform = "rigid" if self.method == "rigid" else self.method
            started = time.perf_counter()
            r = register(case.fixed, case.moving, metric=METRIC, transform=transform, search="local",
                         spacings=self.spacings, seed=self.seed, threads=self.threads, **kwargs)
            seconds = time.perf_counter() - started
            info = {"final_similarity": r.final_similarity}
            if r.deformation:
                info["deformation"] = r.deformation
            return MethodOutput(r.sitk_transform(), seconds, info)
        if self.method == "convexadam":
            out = self.peer.run(image_state(case.fixed), image_state(case.moving))
        else:
            out = self.peer.run(image_state(case.fixed), image_state(case.moving), self.seed)
        return MethodOutput(field_transform(out["field"], case.fixed.to_sitk()), float(out["seconds"]), out["info"])

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
            self.peer = None


__all__ = [
    "DIFFEOMORPHIC",
    "ENGINE_DENSE",
    "METHODS",
    "METRIC",
    "PEERS",
    "PEER_SETTINGS",
    "REFERENCES",
    "MethodOutput",
    "MethodRunner",
    "PeerProcess",
    "check_methods",
    "field_on_grid",
    "field_transform",
    "image_state",
]
