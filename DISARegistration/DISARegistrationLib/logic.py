"""The module's logic without Qt: registration (synchronous or on a worker thread), landmark
errors into a table, registered landmarks and similarity maps, on any MRML scene.

    logic = RegistrationLogic(scene)                    # slicer.mrmlScene inside Slicer
    transformNode = logic.register(usNode, mrNode, metric="mind", search="global")
    job = logic.registerAsync(usNode, mrNode)           # poll job.done, then job.finish()
    stats = logic.computeFRE(transformNode, usLandmarks, mrLandmarks)

Frames (see mrml_bridge): the engine registers the volumes' *local* frames; the output transform's
"to parent" maps the moving volume's local frame to world, so the moving volume placed directly
under it lands on the fixed volume as shown (including the fixed volume's own parents). Its ITK
file is the CLI's output for the same inputs.

Threads: MRML nodes are created and changed only on the thread that calls ``register`` or polls
the job (the scene's thread). The worker only runs the engine on Image copies taken before it
starts, so a cancelled or failed run leaves the scene exactly as it was.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import vtk

from disa.errors import CancelledError, InputError
from disa.features.descriptors import DescriptorCache
from disa.registration.defaults import DEFAULTS
from disa.registration.defaults import DENSE_TRANSFORMS
from disa.spatial.frames import lps_to_ras_points, ras_to_lps_points

from . import mrml_bridge as bridge
from .job import RegistrationJob

__all__ = ["RegistrationLogic", "RegistrationJob"]

#: Colour table for similarity maps, when the scene has Slicer's default colour nodes.
MAP_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"
#: Row names of the summary rows of the FRE table, with the statistic each shows.
FRE_SUMMARY_ROWS = (("mean", "mean"), ("median", "median"), ("75th percentile", "p75"), ("max", "max"))
FRE_COLUMNS = ("label", "error before (mm)", "error after (mm)")


@dataclass
class _Run:
    """Everything one registration needs: engine inputs (copies) and the nodes to fill later."""

    engine: Dict[str, Any]
    fixedNode: Any
    movingNode: Any
    outputTransformNode: Any
    outputVolumeNode: Any
    jacobianVolumeNode: Any
    fixedToWorld: np.ndarray
    metricName: str


def _isUnder(node, transformNode) -> bool:
    """Whether ``transformNode`` is among the parent transforms of ``node``."""
    parent = node.GetParentTransformNode()
    while parent is not None:
        if parent.GetID() == transformNode.GetID():
            return True
        parent = parent.GetParentTransformNode()
    return False


def _asCancelCallable(cancel) -> Optional[Callable[[], bool]]:
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):  # threading.Event
        return cancel.is_set
    if not callable(cancel):
        raise InputError("cancel must be a callable returning True to stop, or a threading.Event")
    return cancel


def _spacings(resolution) -> Optional[List[float]]:
    """Working spacings from ``resolution``: one number r gives the two levels (2r, r)."""
    if resolution is None:
        return None
    values = [float(v) for v in np.atleast_1d(np.asarray(resolution, dtype=np.float64))]
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"the resolution must be positive millimetres, got {resolution!r}")
    return [2.0 * values[0], values[0]] if len(values) == 1 else values


class RegistrationLogic:
    """Registration and evaluation on the MRML ``scene`` (no Qt, no slicer.app).

    ``device``: "auto", "cpu" or "cuda". ``threads``: CPU threads of each run, pinned by the
    engine in the thread that runs it (None: every CPU, the engine's default, as for
    ``disa register``). A result depends on the count (parallel sums add one partial sum per
    thread), so ``register``, ``registerAsync`` and the command line agree bit for bit at the
    same count; a smaller count leaves Slicer's GUI thread more CPU on a small machine, at the
    price of a result that differs in the last bits.
    """

    def __init__(self, scene, device: str = DEFAULTS.device, threads: Optional[int] = DEFAULTS.threads):
        if scene is None:
            raise InputError("RegistrationLogic needs an MRML scene")
        self.scene = scene
        self.device = device
        self.threads = threads
        #: The engine's RegistrationResult of the last successful run.
        self.lastResult = None
        #: DISA descriptors of unchanged volumes are reused across registrations.
        self.descriptorCache = DescriptorCache()

    # registration -------------------------------------------------------------------------------
    def register(self, fixedVolumeNode, movingVolumeNode, metric=DEFAULTS.metric, transform=DEFAULTS.transform,
                 search=DEFAULTS.search, initialTransformNode=None, outputTransformNode=None, outputVolumeNode=None,
                 searchRotation=DEFAULTS.search_rotation, searchTranslation=DEFAULTS.search_translation,
                 resolution=None, maxEvaluations=None, seed=DEFAULTS.seed, precision=DEFAULTS.precision,
                 weightsPath=None, searchPreset=DEFAULTS.search_preset, jacobianVolumeNode=None,
                 probeMarkupsNode=None, progress=None, cancel=None, **engineOptions):
        """Register ``movingVolumeNode`` to ``fixedVolumeNode``; returns the output transform node.

        Defaults are the engine's (``disa.registration.defaults.DEFAULTS``), as for ``disa register``.
        ``metric``: mind, lc2, disa, mi, ncc, lncc, ngf, mse (any case) or a weighted sum
        ("0.5*lc2+0.5*mind"). ``transform``: rigid, affine or pressure (rigid + the compression under
        the ultrasound probe; the node then holds the rigid part after a displacement field, and the
        probe is found from the fixed volume's field of view unless ``probeMarkupsNode`` is given: its
        first point on the probe's contact surface, its second deeper along the beam axis, placed
        where the fixed volume is shown; or ``probe_position`` and ``probe_direction`` as engine
        options, LPS mm in the fixed volume's own frame).
        ``search``: "global" (+-``searchRotation``
        degrees, +-``searchTranslation`` mm first; None: those of ``searchPreset``, "brain" or "abdomen",
        see ``disa.registration.defaults.SEARCH_PRESETS``) or "local" (from the start pose). The start pose
        is ``initialTransformNode`` (moving -> world, as Slicer shows it) or where the moving volume
        is shown now. ``resolution``: finest working spacing in mm (levels 2r and r), or a list of
        spacings, coarse to fine; None chooses from the image size. ``maxEvaluations``: per level
        and start. ``seed``: the global search's and mutual information's random choices (the same
        seed gives the same matrix, bit for bit). ``precision``: of DISA descriptors (float32;
        bfloat16, or float16 on CUDA). ``weightsPath``: a DISA weights file (checked against the
        .json model card beside it; default: the shipped weights). ``progress(stage, fraction,
        message)``: the message names the search stage or level, the starts done out of all and the best
        similarity so far (the panel's status line; a "note" stage says that lc2 searches locally); ``cancel``: callable returning True, or a threading.Event (raises
        disa.errors.CancelledError). ``engineOptions`` go to ``disa.registration.register``
        unchanged (optimizer, search_samples, search_starts, fixed_mask, ...).

        ``transform`` deformable, diffeomorphic or neural-ode: a dense registration after a linear one
        (``disa.deformable``); the output is a grid transform node holding the whole mapping (a new
        vtkMRMLGridTransformNode if None) and, when ``jacobianVolumeNode`` is given, the Jacobian
        determinant of the dense part on the fixed side (<= 0 where the deformation folds).
        Options of the dense stage (``disa.deformable`` defaults) go in ``dense=dict(...)``.

        The output transform node (a new vtkMRMLLinearTransformNode if None) and the optional
        output volume (the moving volume resampled on the fixed grid) are written only after the
        engine succeeded; input nodes are never modified. Raises InputError for fixable problems.
        """
        settings = {name: value for name, value in locals().items() if name not in ("self", "progress", "cancel")}
        run = self._prepare(**settings)
        engineResult = self._runEngine(run, progress, _asCancelCallable(cancel))
        return self._finish(run, engineResult)

    def registerAsync(self, fixedVolumeNode, movingVolumeNode, progress=None, cancel=None,
                      **settings) -> "RegistrationJob":
        """``register`` (same settings, same defaults) with the engine on a worker thread; returns
        the running RegistrationJob.

        Inputs are checked and copied now (errors raise here). Poll ``job.done`` (a timer in
        Slicer), then call ``job.finish()`` on this thread: it creates/updates the output nodes and
        returns the output transform node. ``progress`` is called from ``job.poll()``/``wait()`` on
        the polling thread, never from the worker.
        """
        bound = inspect.signature(self.register).bind(fixedVolumeNode, movingVolumeNode, **settings)
        bound.apply_defaults()  # register's defaults: one definition for both
        arguments = {name: value for name, value in bound.arguments.items() if name not in ("progress", "cancel")}
        run = self._prepare(**arguments)
        return RegistrationJob(lambda report, cancelled: self._runEngine(run, report, cancelled),
                               lambda engineResult: self._finish(run, engineResult),
                               progress, _asCancelCallable(cancel))

    def _similarity(self, metric, weightsPath, precision, seed):
        """(what the engine gets as its metric, the metric's canonical name), parsed now so that a
        bad name raises here, not on the worker. DISA terms are built here, with this logic's
        descriptor cache (its hit and miss counts then describe this logic's runs) and their weights
        file checked and loaded here; other measures go as canonical text, which the engine builds
        exactly as for the command line."""
        from disa.similarity import Similarity, parse_metric

        if isinstance(metric, Similarity):  # built by the caller, used as it is
            if weightsPath is not None:
                raise InputError("give the weights file to the DISA similarity itself, not as weightsPath")
            return metric, metric.name
        spec = parse_metric(metric)
        if "disa" not in spec.names and weightsPath is None:
            return str(spec), str(spec)
        return spec.build(weights=weightsPath, precision=precision, seed=seed, cache=self.descriptorCache), str(spec)

    def _prepare(self, fixedVolumeNode, movingVolumeNode, metric, transform, search, initialTransformNode,
                 outputTransformNode, outputVolumeNode, searchRotation, searchTranslation, resolution,
                 maxEvaluations, seed, precision, weightsPath, searchPreset, jacobianVolumeNode,
                 probeMarkupsNode, engineOptions) -> _Run:
        from disa.registration.options import check_settings
        from disa.registration.pipeline import resolve_device
        from disa.spatial.image import check_image

        fixedNode, movingNode = fixedVolumeNode, movingVolumeNode
        if fixedNode is None or movingNode is None:
            raise InputError("select both a fixed and a moving volume")
        for node, what in ((fixedNode, "fixed volume"), (movingNode, "moving volume")):
            if node.GetScene() is not self.scene:
                raise InputError(f"the {what} '{node.GetName()}' is not in this logic's scene")
        if fixedNode.GetID() == movingNode.GetID():
            raise InputError("the fixed and the moving volume must be different volumes")
        for output, what in ((outputVolumeNode, "output volume"), (jacobianVolumeNode, "Jacobian volume")):
            if output is not None and output.GetID() in (fixedNode.GetID(), movingNode.GetID()):
                raise InputError(f"the {what} must not be one of the input volumes; create a new volume for it")
        if jacobianVolumeNode is not None and str(transform).lower() not in DENSE_TRANSFORMS:
            raise InputError("a Jacobian determinant volume needs a deformable, diffeomorphic or neural-ode result")
        if outputTransformNode is not None:
            if not outputTransformNode.IsA("vtkMRMLTransformNode"):
                raise InputError(f"output transform '{outputTransformNode.GetName()}' is not a transform node")
            # checked now rather than after a long run; a probe-pressure result replaces any content
            dense = str(transform).lower() in DENSE_TRANSFORMS
            if dense and not outputTransformNode.IsA("vtkMRMLGridTransformNode"):
                raise InputError(f"output transform '{outputTransformNode.GetName()}' is not a grid transform; "
                                 f"choose a grid transform node (or none, to create one) for a {transform} result")
            if not dense and not outputTransformNode.IsLinear() and str(transform).lower() != "pressure":
                raise InputError(f"output transform '{outputTransformNode.GetName()}' is not linear; choose a "
                                 "linear transform node for a rigid or affine result")
            if _isUnder(fixedNode, outputTransformNode):
                raise InputError("the fixed volume is under the output transform; choose another output "
                                 "transform or move the fixed volume out from under it")
        spacings = _spacings(resolution)
        if spacings is not None and "spacings" in engineOptions:
            raise InputError("give either resolution or spacings, not both")
        # The engine's own checks, run now so that a bad setting is refused before the worker starts.
        settings = check_settings(transform, search, searchRotation, searchTranslation,
                                  engineOptions.get("search_samples", DEFAULTS.search_samples),
                                  engineOptions.get("search_starts", DEFAULTS.search_starts),
                                  spacings or engineOptions.get("spacings"), maxEvaluations, seed, precision,
                                  searchPreset)
        resolve_device(self.device)  # a missing GPU is reported now, not from the worker
        dense = settings["transform"] in DENSE_TRANSFORMS
        if engineOptions.get("dense") and not dense:
            raise InputError(f"dense settings need a deformable, diffeomorphic or neural-ode transform, not "
                             f"{settings['transform']}")
        if dense:  # the dense engine builds its measures from the expression (and the weights file)
            from disa.similarity import Similarity, parse_metric

            if isinstance(metric, Similarity):
                raise InputError("a deformable registration takes the metric as a name or expression, not a "
                                 "Similarity object")
            similarity = metricName = str(parse_metric(metric))
        else:
            similarity, metricName = self._similarity(metric, weightsPath, settings["precision"], settings["seed"])

        fixedImage = bridge.image_from_volume_node(fixedNode, "fixed volume")
        movingImage = bridge.image_from_volume_node(movingNode, "moving volume")
        check_image(fixedImage, f"fixed volume '{fixedNode.GetName()}'")
        check_image(movingImage, f"moving volume '{movingNode.GetName()}'")
        # Engine frames are the volumes' own (local) frames: fixed local -> moving local.
        fixedToWorld = bridge.local_to_world_lps(fixedNode)
        if initialTransformNode is not None:
            worldToMoving = bridge.itk_matrix_from_transform_node(initialTransformNode, world=True)
        else:
            worldToMoving = np.linalg.inv(bridge.local_to_world_lps(movingNode))
        if outputTransformNode is not None:
            bridge.local_to_world_lps(outputTransformNode)  # its parents must be linear, checked now

        engine = dict(fixed=fixedImage, moving=movingImage, metric=similarity, transform=settings["transform"],
                      initial=worldToMoving @ fixedToWorld, search=settings["search"],
                      search_preset=settings["search_preset"],
                      search_rotation=settings["search_rotation"], search_translation=settings["search_translation"],
                      max_evals=settings["max_evals"], seed=settings["seed"], precision=settings["precision"],
                      device=self.device, threads=self.threads, resample=outputVolumeNode is not None)
        if spacings is not None:
            engine["spacings"] = spacings
        if dense and weightsPath is not None:
            engine["weights"] = weightsPath
        if probeMarkupsNode is not None:
            engine.update(self._probeFromMarkups(probeMarkupsNode, settings["transform"], fixedToWorld))
        engine.update(engineOptions)
        return _Run(engine, fixedNode, movingNode, outputTransformNode, outputVolumeNode, jacobianVolumeNode,
                    fixedToWorld, metricName)

    @staticmethod
    def _probeFromMarkups(node, transform: str, fixedToWorld: np.ndarray) -> dict:
        """Engine probe options (fixed-frame LPS) from a point list: contact point, then a point
        deeper along the beam."""
        from disa.transforms.probe_pressure import check_probe

        points = bridge.landmarks_from_markups(node)
        if len(points) < 2:
            raise InputError(f"the probe point list '{node.GetName()}' needs two points: one on the probe's contact "
                             "surface, one deeper along the beam")
        toFixed = np.linalg.inv(fixedToWorld)
        local = points[:2] @ toFixed[:3, :3].T + toFixed[:3, 3]
        position, direction = check_probe(transform, local[0], local[1] - local[0])
        return {"probe_position": position.tolist(), "probe_direction": direction.tolist()}

    @staticmethod
    def _runEngine(run: _Run, progress, cancel):
        """The engine part of a run: touches no MRML node (safe on a worker thread)."""
        from disa.registration import register
        from disa.spatial import resample_image
        from disa.threads import torch_threads

        kwargs = dict(run.engine)
        resample = kwargs.pop("resample")
        result = register(progress=progress, cancel=cancel, **kwargs)  # pins its own thread count
        if not resample:
            return result, None
        if cancel is not None and cancel():
            raise CancelledError("registration cancelled")
        with torch_threads(kwargs["threads"]):
            return result, resample_image(kwargs["moving"], kwargs["fixed"], result.matrix,
                                          displacement=None if result.linear else result.displacement)

    def _finish(self, run: _Run, engineResult):
        """Write a finished run into the scene (on the scene's thread); returns the transform node."""
        result, resampled = engineResult
        for node in (run.fixedNode, run.movingNode, run.outputTransformNode, run.outputVolumeNode,
                     run.jacobianVolumeNode):
            if node is not None and node.GetScene() is not self.scene:
                raise InputError(f"'{node.GetName()}' was removed from the scene during the registration")
        result.metric = run.metricName
        node = run.outputTransformNode
        if node is None:
            name = f"{run.movingNode.GetName()} to {run.fixedNode.GetName()}"
            kind = "vtkMRMLLinearTransformNode" if result.field is None else "vtkMRMLGridTransformNode"
            node = self.scene.AddNewNodeByClass(kind, self.scene.GenerateUniqueName(name))
        # World -> moving local, expressed relative to the output transform's own parent.
        if result.field is not None:  # the whole mapping (linear part included) as one grid
            from disa.transforms.displacement import mapping_displacement

            toFixed = np.linalg.inv(run.fixedToWorld) @ bridge.local_to_world_lps(node)
            bridge.set_grid_transform_node_from_displacement(node, mapping_displacement(result.field, result.matrix,
                                                                                        toFixed))
            if run.jacobianVolumeNode is not None:
                from disa.deformable import jacobian_image

                bridge.update_volume_node_from_image(run.jacobianVolumeNode, jacobian_image(result.field))
                run.jacobianVolumeNode.SetAndObserveTransformNodeID(run.fixedNode.GetTransformNodeID())
        elif result.compression is None:
            worldMatrix = result.matrix @ np.linalg.inv(run.fixedToWorld) @ bridge.local_to_world_lps(node)
            bridge.set_linear_transform_node_from_itk(node, worldMatrix)
        else:  # probe pressure: parent frame -> fixed frame, the compression there, then the rigid part
            toFixed = np.linalg.inv(run.fixedToWorld) @ bridge.local_to_world_lps(node)
            bridge.set_composite_transform_node_from_itk(node, result.matrix, result.compression.field(),
                                                         None if np.allclose(toFixed, np.eye(4)) else toFixed)
        bridge.set_registration_references(node, run.fixedNode, run.movingNode)
        if run.outputVolumeNode is not None and resampled is not None:
            bridge.update_volume_node_from_image(run.outputVolumeNode, resampled)
            run.outputVolumeNode.SetAndObserveTransformNodeID(run.fixedNode.GetTransformNodeID())
        self.lastResult = result
        return node

    # landmarks ----------------------------------------------------------------------------------
    def _worldToMovingFrame(self, transformNode):
        """(N, 3) LPS world points -> the frame below ``transformNode`` (identity for None)."""
        if transformNode is None:
            return lambda p: np.array(p, dtype=np.float64)
        if transformNode.IsTransformToWorldLinear():
            m = bridge.itk_matrix_from_transform_node(transformNode, world=True)
            return lambda p: p @ m[:3, :3].T + m[:3, 3]  # as disa.evaluate.transform_points
        fromWorld = vtk.vtkGeneralTransform()
        transformNode.GetTransformFromWorld(fromWorld)
        return lambda p: ras_to_lps_points(
            np.reshape([fromWorld.TransformPoint(*q) for q in lps_to_ras_points(p)], (-1, 3)))

    def _movingPoints(self, movingLandmarksNode, transformNode) -> np.ndarray:
        """Moving landmarks in the moving frame (the one ``transformNode`` maps to world).

        Landmarks that already sit under ``transformNode`` are taken back through it; others are
        taken where they are (they mark the moving volume's content as loaded).
        """
        points = bridge.landmarks_from_markups(movingLandmarksNode)
        if transformNode is not None and _isUnder(movingLandmarksNode, transformNode):
            points = self._worldToMovingFrame(transformNode)(points)
        return points

    @staticmethod
    def _pairs(fixedLabels: Sequence[str], movingLabels: Sequence[str]) -> List[int]:
        """Index of the moving landmark paired with each fixed one: by label when both lists hold
        the same unique labels (in any order), else by order."""
        if (len(set(fixedLabels)) == len(fixedLabels) and sorted(fixedLabels) == sorted(movingLabels)):
            index = {label: i for i, label in enumerate(movingLabels)}
            return [index[label] for label in fixedLabels]
        return list(range(len(fixedLabels)))

    def _landmarkPairs(self, transformNode, fixedLandmarksNode, movingLandmarksNode):
        fixed = bridge.landmarks_from_markups(fixedLandmarksNode)
        moving = self._movingPoints(movingLandmarksNode, transformNode)
        if len(fixed) == 0 or len(moving) == 0:
            empty = fixedLandmarksNode if len(fixed) == 0 else movingLandmarksNode
            raise InputError(f"the landmark list '{empty.GetName()}' has no points")
        if len(fixed) != len(moving):
            raise InputError(f"landmark counts differ: {len(fixed)} fixed ('{fixedLandmarksNode.GetName()}') vs "
                             f"{len(moving)} moving ('{movingLandmarksNode.GetName()}'); pairs are matched by order")
        fixedLabels = bridge.markup_labels(fixedLandmarksNode)
        movingLabels = bridge.markup_labels(movingLandmarksNode)
        order = self._pairs(fixedLabels, movingLabels)
        labels = [f if f == movingLabels[j] else f"{f} / {movingLabels[j]}" for f, j in zip(fixedLabels, order)]
        return fixed, moving[order], labels

    def computeFRE(self, transformNode, fixedLandmarksNode, movingLandmarksNode, tableNode=None) -> dict:
        """Landmark error before and after ``transformNode``, into a table node; returns the numbers.

        Per pair: ||T(p_fixed) - p_moving|| in mm with T the transform's world -> moving-frame
        mapping (identity "before"), fixed points in world and moving points in the moving frame:
        exactly ``disa evaluate`` on the transform's ITK file and the landmarks' files. The table
        (created if ``tableNode`` is None; its contents are replaced) has columns label,
        error before (mm), error after (mm), one row per pair, then rows mean, median,
        75th percentile and max. The returned dict has flat summary numbers ("n",
        "mean before", "mean after", "median after", "75th percentile after", "max after"), the
        full statistics ("before", "after": disa.evaluate.error_statistics), per-pair "labels",
        "errorsBefore", "errorsAfter", and "tableNode".
        """
        from disa.evaluate import error_statistics, registration_errors

        fixed, moving, labels = self._landmarkPairs(transformNode, fixedLandmarksNode, movingLandmarksNode)
        before = registration_errors(np.eye(4), fixed, moving)
        after = registration_errors(self._worldToMovingFrame(transformNode), fixed, moving)
        statsBefore, statsAfter = error_statistics(before), error_statistics(after)

        table = vtk.vtkTable()
        columns = [vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray()]
        for column, name in zip(columns, FRE_COLUMNS):
            column.SetName(name)
            table.AddColumn(column)
        rows = [(label, b, a) for label, b, a in zip(labels, before, after)]
        rows += [(row, statsBefore[key], statsAfter[key]) for row, key in FRE_SUMMARY_ROWS]
        for label, b, a in rows:
            columns[0].InsertNextValue(label)
            columns[1].InsertNextValue(float(b))
            columns[2].InsertNextValue(float(a))
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", self.scene.GenerateUniqueName("FRE"))
        was = tableNode.StartModify()
        try:
            tableNode.SetAndObserveTable(table)
            tableNode.SetUseColumnTitleAsColumnHeader(True)
            for name in FRE_COLUMNS[1:]:
                tableNode.SetColumnUnitLabel(name, "mm")
            tableNode.SetColumnDescription(FRE_COLUMNS[1], "landmark distance without the registration")
            tableNode.SetColumnDescription(FRE_COLUMNS[2], "landmark distance after the registration")
        finally:
            tableNode.EndModify(was)
        summary = {"n": statsAfter["n"], "mean before": statsBefore["mean"], "mean after": statsAfter["mean"],
                   "median after": statsAfter["median"], "75th percentile after": statsAfter["p75"],
                   "max after": statsAfter["max"]}
        summary.update(before=statsBefore, after=statsAfter, labels=labels, errorsBefore=before.tolist(),
                       errorsAfter=after.tolist(), tableNode=tableNode)
        return summary

    def registeredLandmarks(self, movingLandmarksNode, transformNode, outputNode=None):
        """The moving landmarks under the result: a markups point list observing ``transformNode``.

        The copy holds the moving landmarks' moving-frame positions and sits under the transform
        (not hardened), so it lands on the fixed landmarks as the moving volume lands on the fixed
        volume, and follows the transform if it is refined later. ``outputNode`` (replaced) or a new
        node; the moving landmarks node itself is not changed.
        """
        if outputNode is not None and outputNode.GetID() == movingLandmarksNode.GetID():
            raise InputError("the registered landmarks need their own node, not the moving landmarks")
        points = self._movingPoints(movingLandmarksNode, transformNode)
        labels = bridge.markup_labels(movingLandmarksNode)
        if outputNode is None:
            name = self.scene.GenerateUniqueName(f"{movingLandmarksNode.GetName()} registered")
            outputNode = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        outputNode.SetAndObserveTransformNodeID(None)  # place the points in the moving frame first
        bridge.markups_from_points(outputNode, points, labels)
        outputNode.SetAndObserveTransformNodeID(transformNode.GetID() if transformNode is not None else None)
        if outputNode.GetDisplayNode() is None:
            outputNode.CreateDefaultDisplayNodes()
        return outputNode

    # similarity map -----------------------------------------------------------------------------
    def similarityMap(self, fixedVolumeNode, movingVolumeNode, pointRAS, metric=DEFAULTS.metric, transformNode=None,
                      outputVolumeNode=None, weightsPath=None):
        """Similarity of the fixed volume at ``pointRAS`` (world) to every moving voxel.

        Returns a scalar volume node on the moving volume's grid (``outputVolumeNode`` or a new
        one), placed like the moving volume: under ``transformNode`` when given (the moving frame
        -> world mapping to compare in), else under the moving volume's own parent. ``metric``:
        mind, lc2 or disa (disa.similarity.maps); ``weightsPath``: the DISA weights file, as for
        ``register``. The frames are related by that linear mapping; an affine one with shear is
        approximated by its column scales in the map's resampling.
        """
        import torch
        from disa.similarity.maps import similarity_map
        from disa.spatial import Image

        if fixedVolumeNode is None or movingVolumeNode is None:
            raise InputError("select both a fixed and a moving volume")
        if outputVolumeNode is not None and outputVolumeNode.GetID() in (fixedVolumeNode.GetID(),
                                                                         movingVolumeNode.GetID()):
            raise InputError("the similarity map needs its own volume node, not an input volume")
        fixed = bridge.image_from_volume_node(fixedVolumeNode, "fixed volume")
        moving = bridge.image_from_volume_node(movingVolumeNode, "moving volume")
        if transformNode is not None:
            movingToWorld = np.linalg.inv(bridge.itk_matrix_from_transform_node(transformNode, world=True))
            parentID = transformNode.GetID()
        else:
            movingToWorld = bridge.local_to_world_lps(movingVolumeNode)
            parentID = movingVolumeNode.GetTransformNodeID()
        # Compare in the moving frame: the fixed image's geometry moved there (exact when rigid).
        fixedToMoving = np.linalg.inv(movingToWorld) @ bridge.local_to_world_lps(fixedVolumeNode)
        indexToMoving = fixedToMoving @ fixed.index_to_world()
        spacing = np.linalg.norm(indexToMoving[:3, :3], axis=0)
        fixedInMoving = Image(fixed.data, spacing, indexToMoving[:3, 3], indexToMoving[:3, :3] / spacing, fixed.mask)
        point = ras_to_lps_points(np.asarray(pointRAS, dtype=np.float64).reshape(3))
        point = (np.linalg.inv(movingToWorld) @ np.r_[point, 1.0])[:3]
        model = None
        if str(metric).lower() == "disa" or weightsPath is not None:  # the network, loaded and checked as register does
            model = self._similarity(metric, weightsPath, DEFAULTS.precision, DEFAULTS.seed)[0].model
        with torch.no_grad():
            # The moving volume's DISA descriptors are reused for maps at other points.
            result = similarity_map(point, fixedInMoving, moving, metric=metric, model=model,
                                    cache=self.descriptorCache)
        if outputVolumeNode is None:
            name = self.scene.GenerateUniqueName(f"{metric} similarity map")
            outputVolumeNode = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        bridge.update_volume_node_from_image(outputVolumeNode, result.same_geometry(result.data, None))
        outputVolumeNode.SetAndObserveTransformNodeID(parentID)
        display = outputVolumeNode.GetDisplayNode()
        if display is not None and self.scene.GetNodeByID(MAP_COLOR_NODE_ID) is not None:
            display.SetAndObserveColorNodeID(MAP_COLOR_NODE_ID)
            display.AutoWindowLevelOn()
        return outputVolumeNode
