"""DISA Registration: multimodal (ultrasound / MR / CT) rigid and affine registration in 3D Slicer.

This file only runs inside Slicer (it imports qt and uses slicer.app). It holds the module, the
parameter node, a thin widget, a thin Slicer logic and the self-test; the work between MRML nodes
and the engine is done by ``DISARegistrationLib.logic.RegistrationLogic`` (importable and tested
without Qt), the registration itself by the ``disa`` package next to this file. Both are imported
lazily so that the module loads, and says what is missing, before PyTorch is installed.
"""
import importlib.util
import logging
import numbers
import os
import urllib.parse
import urllib.request
from typing import Annotated, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# Choices are stored as the engine's names (what scripts pass); the combo boxes show the labels.
METRIC_LABELS = {
    "disa": "DISA-LC² (learned descriptors)",
    "lc2": "LC²",
    "mind": "MIND-SSC",
    "mi": "Mutual information",
    "ncc": "Normalized cross-correlation",
    "lncc": "Local NCC",
    "ngf": "Normalized gradient fields",
    "mse": "Mean squared difference",
    "combined": "Weighted combination",
}
METRICS = list(METRIC_LABELS)
MAP_METRICS = ["disa", "lc2", "mind"]  # the measures disa.similarity.maps implements
TRANSFORM_LABELS = {"rigid": "Rigid (6 parameters)", "affine": "Affine (12 parameters)"}
TRANSFORM_MODELS = list(TRANSFORM_LABELS)
SEARCH_LABELS = {"global": "Global (many starting poses)", "local": "Local (from the current pose)"}
SEARCHES = list(SEARCH_LABELS)
DEVICE_LABELS = {"auto": "Automatic (GPU when available)", "cpu": "CPU", "cuda": "CUDA GPU"}
DEVICES = list(DEVICE_LABELS)

#: Python packages the engine needs besides torch, as (import name, pip requirement).
ENGINE_REQUIREMENTS = [("scipy", "scipy"), ("SimpleITK", "SimpleITK"), ("pybobyqa", "Py-BOBYQA>=1.4")]

#: The bundled sample case (RESECT Case 24, CC BY 4.0): ultrasound fixed, T1 MR moving.
SAMPLE_CATEGORY = "DISA Registration"
SAMPLE_NAME = "DISA Case24 US-MR"
SAMPLE_FOLDER = os.path.join(os.path.dirname(__file__), "Resources", "SampleData", "Case24")
SAMPLE_FILES = ["Case24-US.nii.gz", "Case24-T1.nii.gz"]
SAMPLE_NODE_NAMES = ["Case24-US", "Case24-T1"]
# SampleData copies files into its cache and reuses them while the checksum matches.
SAMPLE_CHECKSUMS = ["SHA256:c2d5e7dc14ceb3bd68f0aaa9f7ae46de8ac36ac7faa7157e4382846345aba291",
                    "SHA256:0bbf3c5020a982118c1749b96d708451962ec7298968fab10742b945a4af8ecc"]
SAMPLE_LANDMARKS = "Case24-MRI-beforeUS.tag"  # MRI xyz then US xyz per row, RAS


#
# DISARegistration
#
class DISARegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DISA Registration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []  # PyTorchUtils is used when present, not required to load
        self.parent.contributors = ["DISARegistration contributors"]
        self.parent.helpText = """
Rigid and affine registration of multimodal volumes (intra-operative ultrasound to MR, MR to CT)
with DISA-LC<sup>2</sup>, LC<sup>2</sup>, MIND-SSC, mutual information, NCC or a weighted
combination. Choose a fixed and a moving volume and click Apply: the moving volume is placed under
the resulting transform and shown over the fixed one. Optional landmarks give the registration
error (FRE) per landmark; a similarity map shows how well a measure localizes a chosen point.
The same engine runs outside Slicer as the <code>disa</code> command.
"""
        self.parent.acknowledgementText = """
Based on the method of M. Ronchetti, W. Wein, N. Navab, O. Zettinig and R. Prevost,
"DISA: DIfferentiable Similarity Approximation for Universal Multimodal Registration",
MICCAI 2023. This is an independent open-source implementation, not the authors' code.
<br>Sample data: RESECT database (Y. Xiao et al., Medical Physics 2017), licensed CC BY 4.0.
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """One click in the Sample Data module loads the bundled ultrasound/MR pair (local files)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "DISARegistration.png"),
        uris=[urllib.parse.urljoin("file:", urllib.request.pathname2url(os.path.join(SAMPLE_FOLDER, f)))
              for f in SAMPLE_FILES],
        fileNames=SAMPLE_FILES,
        nodeNames=SAMPLE_NODE_NAMES,
        checksums=SAMPLE_CHECKSUMS,
        loadFileTypes=["VolumeFile", "VolumeFile"],
    )


#
# DISARegistrationParameterNode
#
@parameterNodeWrapper
class DISARegistrationParameterNode:
    """The panel's state. Each field is bound to the .ui widget whose SlicerParameterName is the
    field's name (Testing/test_static.py checks both directions).

    metric             - a measure, or "combined": then metricExpression ("0.5*disa+0.5*mind").
    resolution         - finest working voxel size in mm; 0 = chosen by the engine.
    maxEvaluations     - evaluation limit per optimization; 0 = the engine's default.
    registeredLandmarks, freTable, mapVolume - outputs; None = created on first use.
    mapPoint           - the similarity map is computed at its first point; None = crosshair.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    initialTransform: vtkMRMLTransformNode
    metric: Annotated[str, Choice(METRICS)] = "disa"
    metricExpression: str = "0.5*disa+0.5*mind"
    transformModel: Annotated[str, Choice(TRANSFORM_MODELS)] = "rigid"
    search: Annotated[str, Choice(SEARCHES)] = "global"
    searchRotation: Annotated[float, WithinRange(0.0, 90.0)] = 10.0
    searchTranslation: Annotated[float, WithinRange(0.0, 100.0)] = 15.0
    resolution: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    maxEvaluations: Annotated[int, WithinRange(0, 100000)] = 0
    device: Annotated[str, Choice(DEVICES)] = "auto"
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0
    # Linear until deformable models arrive (the result is written as a matrix).
    outputTransform: vtkMRMLLinearTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    registeredLandmarks: vtkMRMLMarkupsFiducialNode
    freTable: vtkMRMLTableNode
    mapMetric: Annotated[str, Choice(MAP_METRICS)] = "disa"
    mapPoint: vtkMRMLMarkupsFiducialNode
    mapVolume: vtkMRMLScalarVolumeNode


#
# DISARegistrationWidget
#
class DISARegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: widgets are bound to the parameter node; buttons call DISARegistrationLogic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running RegistrationJob, if any
        self._jobParameterNode = None  # the run's own: the user may leave the module meanwhile

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DISARegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DISARegistrationLogic()

        # The engine runs on a worker thread; the GUI thread polls it, so Slicer stays responsive.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._onPollJob)

        self.ui.mapPointPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.mapPointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.mapPointPlaceWidget.setCurrentNode)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.updateFREButton.connect("clicked(bool)", self.onUpdateFREButton)
        self.ui.loadSampleLandmarksButton.connect("clicked(bool)", self.onLoadSampleLandmarksButton)
        self.ui.computeMapButton.connect("clicked(bool)", self.onComputeMapButton)
        self.ui.fadeSliderWidget.connect("valueChanged(double)", self.onFadeChanged)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self._dropJob()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self._dropJob()  # its outputs would belong to a scene that is going away
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.fixedVolume:
            p.fixedVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: Optional[DISARegistrationParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self._relabelChoices()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    def _relabelChoices(self):
        """connectGui fills the combo boxes with the stored names; show readable labels instead
        (the connector reads by index, so the text is free)."""
        for combo, labels in ((self.ui.metricComboBox, METRIC_LABELS), (self.ui.mapMetricComboBox, METRIC_LABELS),
                              (self.ui.transformModelComboBox, TRANSFORM_LABELS),
                              (self.ui.searchComboBox, SEARCH_LABELS), (self.ui.deviceComboBox, DEVICE_LABELS)):
            for i in range(combo.count):
                combo.setItemText(i, labels.get(combo.itemText(i), combo.itemText(i)))

    def _updateGUI(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        running = self._job is not None
        volumes = bool(p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        for section in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton,
                        self.ui.advancedCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = not running  # a run uses the settings it started with
        self.ui.metricExpressionLineEdit.enabled = p.metric == "combined"
        self.ui.searchRotationSliderWidget.enabled = p.search == "global"
        self.ui.searchTranslationSliderWidget.enabled = p.search == "global"
        self.ui.updateFREButton.enabled = bool(p.fixedLandmarks and p.movingLandmarks) and not running
        self.ui.computeMapButton.enabled = volumes and not running
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = volumes or running
        self.ui.applyButton.toolTip = (
            "Stop the running registration" if running else
            "Register the moving volume to the fixed volume" if volumes else
            "Select two different fixed and moving volumes")

    # registration -------------------------------------------------------------------------------
    def onApplyButton(self):
        if self._job is not None:
            self._cancelJob()
            self.ui.statusLabel.text = "Cancelling..."
            return
        with slicer.util.tryWithErrorDisplay("Registration could not start.", waitCursor=True):
            self._job = self.logic.registerAsyncUsingParameterNode(self._parameterNode)
            self._jobParameterNode = self._parameterNode
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting..."
            self._pollTimer.start()
        self._updateGUI()

    def _cancelJob(self):
        if self._job is not None:
            self._job.cancel()

    def _dropJob(self):
        """Cancel the run and forget it: the worker stops at its next evaluation, unobserved."""
        self._cancelJob()
        self._pollTimer.stop()
        self._job = self._jobParameterNode = None

    def _onPollJob(self):
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        stage, fraction, message = job.progress or ("", 0.0, "")
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = f"Running, {job.elapsed:.0f} s: {message or stage or 'preparing'}"
        if not job.done:
            return
        p = self._jobParameterNode
        self._pollTimer.stop()
        self._job = self._jobParameterNode = None
        self._updateGUI()
        from disa.errors import CancelledError

        if isinstance(job.error, CancelledError):
            self.ui.statusLabel.text = f"Cancelled after {job.elapsed:.0f} s; nothing was changed."
            return
        with slicer.util.tryWithErrorDisplay("Registration failed.", waitCursor=True):
            self.ui.statusLabel.text = "Failed."  # replaced below on success
            self._showResult(job.finish(), job, p)

    def _showResult(self, outputTransform, job, p):
        p.outputTransform = outputTransform
        p.movingVolume.SetAndObserveTransformNodeID(outputTransform.GetID())
        self.ui.fadeSliderWidget.value = 0.5
        slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=p.movingVolume, foregroundOpacity=0.5)
        self.ui.progressBar.value = 100
        lines = [f"Done in {job.elapsed:.1f} s."]
        if self.logic.lastResult is not None:
            lines.append(self.logic.lastResult.summary())  # metric, similarity before -> after, device
        if p.fixedLandmarks and p.movingLandmarks:
            try:  # the registration itself succeeded: report a landmark problem, don't fail the run
                lines.append(self._updateFRE(p))
            except Exception as exc:
                lines.append(f"FRE not computed: {exc}")
        self.ui.statusLabel.text = "\n".join(lines)

    # landmarks ----------------------------------------------------------------------------------
    def _updateFRE(self, p):
        fre = self.logic.computeFREUsingParameterNode(p)
        self.logic.updateRegisteredLandmarks(p)
        showTable(p.freTable)
        text = "FRE: " + formatMeasures(fre)
        self.ui.freLabel.text = text
        return text

    def onUpdateFREButton(self):
        with slicer.util.tryWithErrorDisplay("Could not compute the landmark error.", waitCursor=True):
            self._updateFRE(self._parameterNode)

    def onLoadSampleLandmarksButton(self):
        with slicer.util.tryWithErrorDisplay("Could not load the sample landmarks.", waitCursor=True):
            p = self._parameterNode
            p.fixedLandmarks, p.movingLandmarks = self.logic.loadSampleLandmarks()

    # similarity map and display -----------------------------------------------------------------
    def onComputeMapButton(self):
        with slicer.util.tryWithErrorDisplay("Could not compute the similarity map.", waitCursor=True):
            p = self._parameterNode
            mapNode = self.logic.similarityMapUsingParameterNode(p, mapPointRAS(p.mapPoint))
            mapNode.CreateDefaultDisplayNodes()
            mapNode.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeRainbow")
            self.ui.fadeSliderWidget.value = 0.5
            slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=mapNode, foregroundOpacity=0.5)

    def onFadeChanged(self, value):
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            compositeNode.SetForegroundOpacity(value)


def formatMeasures(measures):
    """'mean 1.23 mm, max 2.34 mm, ...' from the numbers of a computeFRE() result."""
    return ", ".join(f"{key} {value:.2f} mm" if isinstance(value, float) else f"{key} {value}"
                     for key, value in measures.items()
                     if isinstance(value, numbers.Real) and not isinstance(value, bool)) or "no landmark pairs"


def mapPointRAS(pointListNode):
    """World RAS of the first control point of ``pointListNode``, or of the crosshair if None."""
    if pointListNode is not None:
        if pointListNode.GetNumberOfControlPoints() < 1:
            raise ValueError(f"'{pointListNode.GetName()}' has no point yet; place one or choose "
                             "'Crosshair position'")
        position = [0.0, 0.0, 0.0]
        pointListNode.GetNthControlPointPositionWorld(0, position)
        return np.array(position)
    return np.array(slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode").GetCrosshairRAS())


def showTable(tableNode):
    """Show ``tableNode`` in a table view, switching to a layout that has one if needed."""
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:  # no GUI (e.g. running headless)
        return
    layoutNode = layoutManager.layoutLogic().GetLayoutNode()
    if "vtkMRMLTableViewNode" not in (layoutNode.GetCurrentLayoutDescription() or ""):
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
    slicer.app.applicationLogic().PropagateTableSelection()


#
# DISARegistrationLogic
#
class DISARegistrationLogic(ScriptedLoadableModuleLogic):
    """Slicer side of the scripting API: the parameter node, installing the engine's dependencies
    and the sample data. Registration, FRE and similarity maps are delegated to
    ``DISARegistrationLib.logic.RegistrationLogic`` (see ``core``), usable on its own::

        logic = slicer.util.getModuleLogic("DISARegistration")  # or DISARegistrationLogic()
        transformNode = logic.registerVolumes(fixedVolumeNode=us, movingVolumeNode=mr, metric="disa")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None
        self._coreDevice = None

    def getParameterNode(self):
        return DISARegistrationParameterNode(super().getParameterNode())

    def core(self, device="auto"):
        """The Qt-free RegistrationLogic on slicer.mrmlScene (created on first use, which may ask
        to install PyTorch; recreated when the device changes)."""
        if self._core is None or self._coreDevice != device:
            self.ensureEngineDependencies()
            from DISARegistrationLib.logic import RegistrationLogic

            self._core, self._coreDevice = RegistrationLogic(slicer.mrmlScene, device=device), device
        return self._core

    @property
    def lastResult(self):
        """The engine's RegistrationResult of the last run (matrix, similarities, timings)."""
        return self._core.lastResult if self._core is not None else None

    @staticmethod
    def ensureEngineDependencies(askConfirmation=True):
        """Install what the engine needs and Slicer lacks: torch through the PyTorch extension
        (which matches the build to the GPU driver), the rest with pip."""
        missing = [req for name, req in ENGINE_REQUIREMENTS if importlib.util.find_spec(name) is None]
        if missing:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    "DISA Registration needs these Python packages: " + ", ".join(missing)
                    + ". Install them now?"):
                raise RuntimeError("Required Python packages are not installed: " + ", ".join(missing))
            slicer.util.pip_install(missing)
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError("PyTorch is not installed. Install the 'PyTorch' extension from the "
                                   "Extensions Manager, restart Slicer and try again.") from exc
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation) is None:
                raise RuntimeError("DISA Registration needs PyTorch; its installation was cancelled.")

    # registration -------------------------------------------------------------------------------
    def registerVolumes(self, fixedVolumeNode, movingVolumeNode, device="auto", **kwargs):
        """Register ``movingVolumeNode`` to ``fixedVolumeNode``; returns the output transform node.
        Keyword arguments are those of RegistrationLogic.register (metric, transform, search, ...)."""
        return self.core(device).register(fixedVolumeNode, movingVolumeNode, **kwargs)

    @staticmethod
    def registrationArguments(p):
        """RegistrationLogic.register keyword arguments from a parameter node."""
        return dict(
            fixedVolumeNode=p.fixedVolume, movingVolumeNode=p.movingVolume,
            metric=p.metricExpression.strip() if p.metric == "combined" else p.metric,
            transform=p.transformModel, search=p.search,
            initialTransformNode=p.initialTransform, outputTransformNode=p.outputTransform,
            outputVolumeNode=p.outputVolume, searchRotation=p.searchRotation,
            searchTranslation=p.searchTranslation, resolution=p.resolution or None,
            maxEvaluations=p.maxEvaluations or None, seed=p.seed)

    def registerUsingParameterNode(self, p, progress=None, cancel=None):
        """Synchronous run (scripts, tests); stores the result in p.outputTransform."""
        p.outputTransform = self.core(p.device).register(**self.registrationArguments(p),
                                                         progress=progress, cancel=cancel)
        return p.outputTransform

    def registerAsyncUsingParameterNode(self, p):
        """Start a run on a worker thread; the caller polls the job and calls job.finish()."""
        return self.core(p.device).registerAsync(**self.registrationArguments(p))

    # landmarks ----------------------------------------------------------------------------------
    @staticmethod
    def _currentTransform(p):
        # Before any registration, the landmarks are compared where the moving volume is shown.
        if p.outputTransform is not None or p.movingVolume is None:
            return p.outputTransform
        return p.movingVolume.GetParentTransformNode()

    def computeFREUsingParameterNode(self, p):
        """Landmark error of the current result into p.freTable (created if None); returns the
        summary dict of RegistrationLogic.computeFRE."""
        if not (p.fixedLandmarks and p.movingLandmarks):
            raise ValueError("select both a fixed and a moving landmark point list")
        if p.freTable is None:
            p.freTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "DISA FRE")
        return self.core(p.device).computeFRE(self._currentTransform(p), p.fixedLandmarks, p.movingLandmarks,
                                              tableNode=p.freTable)

    def updateRegisteredLandmarks(self, p):
        """The moving landmarks moved by the current result, into p.registeredLandmarks."""
        p.registeredLandmarks = self.core(p.device).registeredLandmarks(
            p.movingLandmarks, self._currentTransform(p), outputNode=p.registeredLandmarks)
        return p.registeredLandmarks

    def similarityMapUsingParameterNode(self, p, pointRAS):
        """Similarity map at ``pointRAS`` with the moving volume where it is shown now."""
        p.mapVolume = self.core(p.device).similarityMap(
            p.fixedVolume, p.movingVolume, pointRAS, metric=p.mapMetric,
            transformNode=p.movingVolume.GetParentTransformNode() if p.movingVolume else None,
            outputVolumeNode=p.mapVolume)
        return p.mapVolume

    # sample data --------------------------------------------------------------------------------
    @staticmethod
    def loadSampleData():
        """Load the bundled pair through Sample Data; returns (fixed ultrasound, moving MR)."""
        import SampleData

        registerSampleData()
        fixed, moving = SampleData.SampleDataLogic().downloadSamples(SAMPLE_NAME)
        return fixed, moving

    def loadSampleLandmarks(self):
        """The sample's expert landmarks as two point lists; returns (ultrasound, MR) nodes."""
        self.ensureEngineDependencies()
        from DISARegistrationLib import mrml_bridge as bridge
        from disa.evaluate.landmarks import read_tag

        mri, us = read_tag(os.path.join(SAMPLE_FOLDER, SAMPLE_LANDMARKS))
        nodes = []
        for name, landmarks in ((SAMPLE_NODE_NAMES[0] + " landmarks", us), (SAMPLE_NODE_NAMES[1] + " landmarks", mri)):
            node = (slicer.util.getFirstNodeByClassByName("vtkMRMLMarkupsFiducialNode", name)
                    or slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name))
            nodes.append(bridge.markups_from_points(node, landmarks.points, landmarks.labels))
        return tuple(nodes)


def makeSyntheticVolumeArray(shape=(28, 30, 32), seed=0):
    """A smooth random volume (sum of Gaussian blobs), [z, y, x], for quick self-tests."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    volume = np.zeros(shape, np.float32)
    for _ in range(12):
        c = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        s = rng.uniform(3.0, 7.0)
        volume += rng.uniform(0.5, 1.5) * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * s * s))
    return volume


#
# DISARegistrationTest
#
class DISARegistrationTest(ScriptedLoadableModuleTest):
    """Real checks inside Slicer: node conversion, a known shift recovered, and the sample case
    registered back from a known perturbation with DISA-LC², judged by its expert landmarks."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_BridgeRoundTrip, self.test_RecoverKnownShift, self.test_SampleCaseDISA):
            self.setUp()
            test()

    def _addVolume(self, name, array, originRas):
        from DISARegistrationLib import mrml_bridge as bridge
        from disa.spatial import Image

        lps = np.asarray(originRas, dtype=float) * [-1.0, -1.0, 1.0]
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        bridge.update_volume_node_from_image(node, Image.from_array(array, spacing=(1.0, 1.0, 1.0), origin=lps))
        return node

    def test_BridgeRoundTrip(self):
        self.delayDisplay("Volume node <-> engine image")
        DISARegistrationLogic.ensureEngineDependencies(askConfirmation=False)
        from DISARegistrationLib import mrml_bridge as bridge

        array = makeSyntheticVolumeArray((10, 11, 12))
        node = self._addVolume("roundTrip", array, (5.0, -3.0, 2.0))
        image = bridge.image_from_volume_node(node)
        self.assertTrue(np.allclose(image.data[0].numpy(), array))
        self.assertTrue(np.allclose(image.origin, [-5.0, 3.0, 2.0]))
        self.assertTrue(np.allclose(slicer.util.arrayFromVolume(node), array))
        self.delayDisplay("Test passed")

    def test_RecoverKnownShift(self):
        self.delayDisplay("Registering a volume to a shifted copy of itself")
        array = makeSyntheticVolumeArray()
        shiftRas = np.array([3.0, -2.0, 1.5])
        fixed = self._addVolume("fixed", array, (0.0, 0.0, 0.0))
        moving = self._addVolume("moving", array, shiftRas)
        transformNode = DISARegistrationLogic().registerVolumes(
            fixedVolumeNode=fixed, movingVolumeNode=moving, metric="ncc", transform="rigid", search="local",
            device="cpu")
        # Moving content sits shiftRas further along: its to-parent transform moves it back.
        toParent = slicer.util.arrayFromTransformMatrix(transformNode)
        self.assertLess(np.abs(toParent[:3, 3] + shiftRas).max(), 0.5)
        self.assertLess(np.abs(toParent[:3, :3] - np.eye(3)).max(), 0.02)
        self.delayDisplay("Test passed")

    def test_SampleCaseDISA(self):
        self.delayDisplay("Sample case: perturb the MR by a known transform, register it back with DISA-LC²")
        logic = DISARegistrationLogic()
        fixed, moving = logic.loadSampleData()
        fixedLandmarks, movingLandmarks = logic.loadSampleLandmarks()
        # The shipped pair is nearly aligned: move the MR 8 degrees and about 12 mm away about the
        # ultrasound centre (its landmarks stay in the MR's own frame, as the logic expects).
        bounds = [0.0] * 6
        fixed.GetRASBounds(bounds)
        centre = np.array(bounds).reshape(3, 2).mean(axis=1)
        perturbation = vtk.vtkTransform()
        perturbation.PostMultiply()
        perturbation.Translate(*(-centre))
        perturbation.RotateWXYZ(8.0, 0.6, 0.0, 0.8)
        perturbation.Translate(*(centre + [8.0, -6.0, 6.0]))
        perturbationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "perturbation")
        perturbationNode.SetMatrixTransformToParent(perturbation.GetMatrix())
        moving.SetAndObserveTransformNodeID(perturbationNode.GetID())

        fixedPoints = slicer.util.arrayFromMarkupsControlPoints(fixedLandmarks, world=True)
        movingPoints = slicer.util.arrayFromMarkupsControlPoints(movingLandmarks, world=True)
        toParent = slicer.util.arrayFromTransformMatrix(perturbationNode)
        before = np.linalg.norm(fixedPoints - (movingPoints @ toParent[:3, :3].T + toParent[:3, 3]), axis=1)

        p = logic.getParameterNode()
        p.fixedVolume, p.movingVolume, p.metric, p.search = fixed, moving, "disa", "global"
        p.fixedLandmarks, p.movingLandmarks = fixedLandmarks, movingLandmarks
        transformNode = logic.registerUsingParameterNode(p)
        fre = logic.computeFREUsingParameterNode(p)
        registered = logic.updateRegisteredLandmarks(p)
        after = np.linalg.norm(fixedPoints - slicer.util.arrayFromMarkupsControlPoints(registered, world=True), axis=1)
        logging.info(f"Sample case FRE before {before.mean():.2f} mm, after {after.mean():.2f} mm; "
                     f"computeFRE: {formatMeasures(fre)}")

        self.assertIsNotNone(transformNode)
        self.assertEqual(len(after), len(fixedPoints))
        self.assertGreater(p.freTable.GetNumberOfRows(), 0)
        self.assertLess(after.mean(), 3.0)
        self.assertLess(after.mean(), before.mean())
        self.delayDisplay(f"Test passed: FRE {before.mean():.1f} mm -> {after.mean():.1f} mm")
