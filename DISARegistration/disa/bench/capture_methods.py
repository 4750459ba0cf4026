"""The methods of the capture-range benchmark, each behind one call:
``runner(fixed, moving, fixed_mask) -> {"matrix", "seconds", "evaluations", "info"}``.

- ``mind-local`` / ``mind-global``, ``lc2-local``, ``disa-local`` / ``disa-global``: this
  engine's ``disa.registration.register``, local search from the start or the global search over
  the widest search preset (``disa.registration.defaults.SEARCH_PRESETS``);
- ``sitk-mi``, ``elastix``: the runners of ``disa benchmark`` (:mod:`.peers`);
- ``ants``: ANTsPy rigid registration (antspyx, optional: ``pip install antspyx``).

Matrices map fixed LPS points to moving LPS points. ``evaluations``: objective evaluations of
the run (the engine counts every global-search pose and local step; SimpleITK's gradient
descent one per iteration; elastix its fixed iteration budget; ANTs does not report it: None).
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Optional, Sequence, Tuple

from ..errors import InputError
from .records import choose_methods

#: Method name -> (metric, search) of the engine's methods.
ENGINE_METHODS = {"mind-local": ("mind", "local"), "mind-global": ("mind", "global"),
                  "lc2-local": ("lc2", "local"), "disa-local": ("disa", "local"), "disa-global": ("disa", "global")}
PEER_METHODS = ("sitk-mi", "elastix", "ants")
METHODS = tuple(ENGINE_METHODS) + PEER_METHODS
#: Global-search ranges when the engine has no named presets: +-degrees, +-mm per axis.
FALLBACK_RANGES = (40.0, 150.0)


def global_ranges() -> Tuple[float, float]:
    """The widest global-search ranges the engine names (the largest translation preset)."""
    from ..registration import defaults

    presets = getattr(defaults, "SEARCH_PRESETS", None)
    if not presets:
        return FALLBACK_RANGES
    rotation, translation = max(presets.values(), key=lambda v: (v[1], v[0]))
    return float(rotation), float(translation)


def check_methods(methods: Optional[Sequence[str]]) -> list:
    """Known method names in report order (None: every method)."""
    return choose_methods(methods, METHODS, "capture")


def ants_available() -> Optional[str]:
    try:
        import ants  # noqa: F401
    except Exception as exc:  # ImportError, or a broken binary install
        return f"antspyx unavailable ({type(exc).__name__}: {exc}); pip install antspyx"
    return None


def register_ants(fixed, moving, fixed_mask=None, seed: int = 0):
    """ANTsPy ``registration(type_of_transform="Rigid")`` (its defaults: Mattes MI, 4 levels);
    the forward transform file is an ITK transform, read as the fixed -> moving matrix."""
    import ants
    import numpy as np

    from ..transforms.itk_io import read_itk_transform
    from .peers import PeerResult

    def to_ants(image, array=None):
        arr = image.data[0].detach().cpu().numpy().astype(np.float32) if array is None else array
        # ANTsPy arrays are indexed (x, y, z), SimpleITK's and the engine's (z, y, x)
        return ants.from_numpy(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))),
                               origin=[float(v) for v in image.origin], spacing=[float(v) for v in image.spacing],
                               direction=np.asarray(image.direction, dtype=np.float64))

    started = time.perf_counter()
    f, m = to_ants(fixed), to_ants(moving)
    kwargs = {}
    if fixed_mask is not None:
        kwargs["mask"] = to_ants(fixed, np.asarray(fixed_mask, dtype=np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        out = ants.registration(fixed=f, moving=m, type_of_transform="Rigid", random_seed=int(seed) + 1,
                                outprefix=os.path.join(tmp, "ants_"), **kwargs)
        matrix = read_itk_transform(out["fwdtransforms"][0])
    return PeerResult(matrix, time.perf_counter() - started, {"transform": "Rigid", "evaluations": None})


class MethodRunner:
    """One method: ``available()`` (None or why not), ``warm_up(...)``, ``__call__`` and ``close()``."""

    def __init__(self, method: str, device: str = "auto", threads: Optional[int] = None,
                 spacings: Optional[Sequence[float]] = None, seed: int = 0):
        self.method, self.device, self.threads, self.spacings, self.seed = method, device, threads, spacings, seed
        self.worker = None

    def available(self) -> Optional[str]:
        if self.method.startswith("disa"):
            from ..features.weights import DEFAULT_WEIGHTS, load_weights

            try:
                load_weights(DEFAULT_WEIGHTS)
            except InputError as exc:
                return str(exc)
        if self.method == "ants":
            return ants_available()
        if self.method == "elastix":
            from .peers import ElastixWorker

            self.worker = ElastixWorker()
            reason = self.worker.unavailable()
            if reason is not None:
                self.close()
            return reason
        return None

    def settings(self) -> dict:
        """How the method runs (for the report)."""
        if self.method in ENGINE_METHODS:
            metric, search = ENGINE_METHODS[self.method]
            out = {"metric": metric, "search": search, "spacings": self.spacings or "automatic"}
            if search == "global":
                out["search_rotation_deg"], out["search_translation_mm"] = global_ranges()
            return out
        return {"sitk-mi": {"tool": "SimpleITK Mattes MI, Euler3D, RSGD, 3 levels"},
                "elastix": {"tool": "itk-elastix default rigid map (ASGD, 4 levels)"},
                "ants": {"tool": "ANTsPy registration, type_of_transform=Rigid"}}[self.method]

    def warm_up(self, fixed, moving, fixed_mask) -> None:
        """One untimed run (imports, kernels) on a coarse level."""
        if self.method in ENGINE_METHODS:
            from ..registration import register

            register(fixed, moving, metric=ENGINE_METHODS[self.method][0], search="local",
                     spacings=[max(4.0, max(self.spacings or [0.0]))], max_evals=5, device=self.device, seed=0,
                     threads=self.threads)
        elif self.method == "elastix":
            self(fixed, moving, fixed_mask)

    def __call__(self, fixed, moving, fixed_mask) -> dict:
        if self.method in ENGINE_METHODS:
            from ..registration import register

            metric, search = ENGINE_METHODS[self.method]
            kwargs = {}
            if search == "global":
                kwargs["search_rotation"], kwargs["search_translation"] = global_ranges()
            t0 = time.perf_counter()
            r = register(fixed, moving, metric=metric, search=search, spacings=self.spacings, device=self.device,
                         seed=0, threads=self.threads, **kwargs)
            seconds = time.perf_counter() - t0
            evaluations = getattr(r, "evaluations", None) or sum(lv.evaluations for lv in r.levels)
            return {"matrix": r.matrix, "seconds": seconds, "evaluations": int(evaluations),
                    "info": {"final_similarity": r.final_similarity, "device": r.device}}
        if self.method == "sitk-mi":
            from .peers import register_sitk_mi

            r = register_sitk_mi(fixed, moving, fixed_mask, seed=self.seed)
        elif self.method == "elastix":
            r = self.worker.run(fixed, moving, fixed_mask, seed=self.seed)
        else:
            r = register_ants(fixed, moving, fixed_mask, seed=self.seed)
        info = dict(r.info)
        return {"matrix": r.matrix, "seconds": r.seconds, "evaluations": info.pop("evaluations", None), "info": info}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


__all__ = ["METHODS", "ENGINE_METHODS", "PEER_METHODS", "MethodRunner", "check_methods", "global_ranges",
           "register_ants", "ants_available"]
