"""Peer registrations for the benchmark: SimpleITK Mattes MI and elastix (itk-elastix).

Each runner takes engine ``Image`` volumes (fixed, moving) and returns a :class:`PeerResult`
whose ``matrix`` maps fixed LPS points to moving LPS points, like ``disa.registration``.
SimpleITK and itk are imported inside the runners: itk-elastix is optional.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from ..spatial import Image
from ..transforms.itk_io import sitk_to_matrix

#: The SimpleITK configuration (documented in the benchmark's notes).
SITK_SETTINGS = {
    "metric": "MattesMutualInformation", "histogram_bins": 50, "sampling": "RANDOM",
    "sampling_percentage": 0.15, "interpolator": "linear", "transform": "Euler3DTransform",
    "initialization": "identity, centre of rotation at the fixed image centre",
    "optimizer": "RegularStepGradientDescent", "learning_rate": 2.0, "min_step": 1e-4,
    "iterations": 200, "relaxation": 0.5, "scales": "physical shift",
    "shrink_factors": [4, 2, 1], "smoothing_sigmas_vox": [2, 1, 0],
}


@dataclass
class PeerResult:
    matrix: np.ndarray
    seconds: float
    info: Dict[str, object] = field(default_factory=dict)


def _mask_sitk(reference, mask):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    img.CopyInformation(reference)
    return img


def register_sitk_mi(fixed: Image, moving: Image, fixed_mask: Optional[np.ndarray] = None,
                     seed: int = 0) -> PeerResult:
    """SimpleITK ImageRegistrationMethod, Mattes MI, Euler3D, RSGD, 3-level pyramid.

    ``fixed_mask``: (Z, Y, X) array of the fixed voxels the metric samples (None: all).
    """
    import SimpleITK as sitk

    s = SITK_SETTINGS
    started = time.perf_counter()
    f, m = fixed.to_sitk(), moving.to_sitk()
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=s["histogram_bins"])
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(s["sampling_percentage"], seed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(_mask_sitk(f, fixed_mask))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=s["learning_rate"], minStep=s["min_step"],
                                                 numberOfIterations=s["iterations"],
                                                 relaxationFactor=s["relaxation"])
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(s["shrink_factors"])
    reg.SetSmoothingSigmasPerLevel(s["smoothing_sigmas_vox"])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    initial = sitk.Euler3DTransform()
    size = np.array(f.GetSize(), dtype=np.float64)
    initial.SetCenter(f.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    reg.SetInitialTransform(initial, inPlace=False)
    iterations = [0]  # every level's: one metric value and gradient per gradient-descent iteration
    reg.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    out = reg.Execute(f, m)
    matrix = sitk_to_matrix(out, "SimpleITK result")
    return PeerResult(matrix, time.perf_counter() - started,
                      {"iterations": reg.GetOptimizerIteration(), "evaluations": iterations[0],
                       "metric": reg.GetMetricValue(),
                       "stop": reg.GetOptimizerStopConditionDescription()})


# elastix ----------------------------------------------------------------------------------------
def elastix_available() -> Optional[str]:
    """None when itk-elastix can be used, else the reason it cannot."""
    try:
        import itk

        itk.ParameterObject.New()
        itk.elastix_registration_method  # noqa: B018  (lazy attribute: fails if elastix is missing)
    except Exception as exc:  # ImportError, or a broken binary install
        return f"itk-elastix unavailable ({type(exc).__name__}: {exc}); pip install itk-elastix"
    return None


def _itk_image(image: Image, array: Optional[np.ndarray] = None):
    import itk

    arr = image.data[0].detach().cpu().numpy().astype(np.float32) if array is None else array
    img = itk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing([float(v) for v in image.spacing])
    img.SetOrigin([float(v) for v in image.origin])
    img.SetDirection(itk.matrix_from_array(np.ascontiguousarray(image.direction, dtype=np.float64)))
    return img


def elastix_euler_matrix(parameter_map) -> np.ndarray:
    """Fixed -> moving 4x4 of an elastix EulerTransform parameter map.

    elastix's EulerTransform is ITK's Euler3DTransform: angles (rad) about x, y, z, then the
    translation, about ``CenterOfRotationPoint``; ``ComputeZYX`` picks R = Rz Ry Rx instead of
    the default R = Rz Rx Ry.
    """
    import SimpleITK as sitk

    def values(key, default=None):
        v = parameter_map[key] if key in parameter_map else default
        return [str(x) for x in v]

    if values("Transform")[0] != "EulerTransform":
        raise ValueError(f"expected an EulerTransform, got {values('Transform')[0]}")
    if values("HowToCombineTransforms", ["Compose"])[0] != "Compose" or \
            values("InitialTransformParameterFileName", ["NoInitialTransform"])[0] != "NoInitialTransform":
        raise ValueError("initial transforms are not supported by this conversion")
    p = [float(v) for v in values("TransformParameters")]
    c = [float(v) for v in values("CenterOfRotationPoint")]
    tx = sitk.Euler3DTransform()
    tx.SetComputeZYX(values("ComputeZYX", ["false"])[0] == "true")
    tx.SetCenter(c)
    tx.SetRotation(p[0], p[1], p[2])
    tx.SetTranslation(p[3:6])
    return sitk_to_matrix(tx, "elastix result")


def register_elastix(fixed: Image, moving: Image, fixed_mask: Optional[np.ndarray] = None,
                     seed: int = 0) -> PeerResult:
    """itk-elastix with its default "rigid" parameter map (plus a fixed RandomSeed)."""
    import itk

    started = time.perf_counter()
    f, m = _itk_image(fixed), _itk_image(moving)
    parameters = itk.ParameterObject.New()
    pmap = parameters.GetDefaultParameterMap("rigid")
    pmap["RandomSeed"] = [str(int(seed) + 1)]
    kwargs = {}
    if fixed_mask is not None:
        # elastix's RandomCoordinate sampler rejects masks on oblique grids ("could not find
        # enough samples"); its log recommends the RandomSparseMask sampler for masks.
        pmap["ImageSampler"] = ["RandomSparseMask"]
        kwargs["fixed_mask"] = _itk_image(fixed, np.asarray(fixed_mask, dtype=np.uint8))
    parameters.AddParameterMap(pmap)
    try:
        _, result = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False,
                                                    **kwargs)
    except RuntimeError:  # "Internal elastix error: see the log": rerun (deterministic) to read why
        raise RuntimeError(f"elastix failed: {_elastix_failure(f, m, parameters, kwargs)}") from None
    matrix = elastix_euler_matrix(result.GetParameterMap(result.GetNumberOfParameterMaps() - 1))
    # adaptive stochastic gradient descent runs its whole iteration budget on every level
    evaluations = (int(pmap["MaximumNumberOfIterations"][0]) * int(pmap["NumberOfResolutions"][0])
                   if "MaximumNumberOfIterations" in pmap and "NumberOfResolutions" in pmap else None)
    return PeerResult(matrix, time.perf_counter() - started, {"evaluations": evaluations})


def _elastix_failure(f, m, parameters, kwargs) -> str:
    """The error elastix logs for a failing run (it only raises "see the log")."""
    import tempfile

    import itk

    with tempfile.TemporaryDirectory() as tmp:
        try:
            itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False,
                                            log_to_file=True, output_directory=tmp, **kwargs)
            return "unknown (it succeeded when rerun)"
        except RuntimeError:
            pass
        text = ""
        for name in os.listdir(tmp):
            if name.endswith(".log"):
                with open(os.path.join(tmp, name), errors="replace") as fh:
                    text += fh.read()
    found = [line.split("ERROR:", 1)[-1].strip() for line in text.splitlines() if "Description:" in line]
    return found[-1] if found else "unknown (no description in the elastix log)"


def _elastix_job(fixed_state, moving_state, fixed_mask, seed) -> PeerResult:
    fixed = Image.from_array(*fixed_state)
    moving = Image.from_array(*moving_state)
    return register_elastix(fixed, moving, fixed_mask, seed)


def _state(image: Image):
    return (image.data[0].detach().cpu().numpy(), image.spacing, image.origin, image.direction)


class ElastixWorker:
    """Runs :func:`register_elastix` in one child process, so that a crash inside elastix's
    native code (not only a Python exception) cannot take the benchmark down with it.

    ``run`` raises ``ElastixCrashed`` when the child died; other exceptions are elastix's own.
    """

    def __init__(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, fixed: Image, moving: Image, fixed_mask: Optional[np.ndarray] = None, seed: int = 0) -> PeerResult:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(_elastix_job, _state(fixed), _state(moving), fixed_mask, seed).result()
        except BrokenProcessPool as exc:
            raise ElastixCrashed(f"the elastix process died ({exc})") from None

    def unavailable(self) -> Optional[str]:
        """None when itk-elastix runs in the child, else why not (the child may not even start)."""
        try:
            return self.pool.submit(elastix_available).result()
        except Exception as exc:  # the child could not even start or import
            return f"itk-elastix unavailable ({type(exc).__name__}: {exc})"

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class ElastixCrashed(RuntimeError):
    """The child process running elastix terminated abnormally."""
