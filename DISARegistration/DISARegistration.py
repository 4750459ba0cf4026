"""DISA Registration: multimodal (ultrasound / MR / CT) rigid, affine and deformable registration in 3D Slicer.

This file only runs inside Slicer (it imports qt and uses slicer.app). It holds what Slicer's
module template puts in a module file: the module, the parameter node, a thin widget, the module
logic and the self-test. The work between MRML nodes and the engine is done by
``DISARegistrationLib.logic.RegistrationLogic`` (importable and tested without Qt), the
registration itself by the ``disa`` package next to this file; the other helpers live in
``DISARegistrationLib`` (dependencies, sample data, widget helpers, self-test data). Only
modules that need no torch are imported here, so that the module loads, and offers to install
what is missing, before PyTorch is installed.
"""
import logging
from typing import Annotated, Optional, Union

import numpy as np
import qt
import vtk

import slicer
from slicer import (
    vtkMRMLGridTransformNode,
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

from disa.registration.defaults import (DEFAULTS, DENSE_TRANSFORMS, DEVICES, PRECISIONS, SEARCH_PRESETS, SEARCHES,
                                        TRANSFORMS)
from DISARegistrationLib import dependencies, sample_data
from DISARegistrationLib.self_test_data import add_volume_node, perturb_about_center, synthetic_volume_array
from DISARegistrationLib.widget_helpers import format_measures, map_point_ras, relabel_choices, show_table

# Choices are stored as the engine's names (what scripts pass); the combo boxes show labels
# (widget_helpers.CHOICE_LABELS). "combined" takes the expression in metricExpression.
METRICS = ["mind", "lc2", "disa", "mi", "ncc", "lncc", "ngf", "mse", "combined"]
MAP_METRICS = ["mind", "lc2", "disa"]  # the measures disa.similarity.maps implements


#
# DISARegistration
#
class DISARegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "DISA Registration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []  # PyTorchUtils is used when present, not required to load
        self.parent.contributors = []  # no named contributors yet (not the template's default authors)
        self.parent.helpText = """
Rigid and affine registration of multimodal volumes (intra-operative ultrasound to MR, MR to CT)
with MIND-SSC, LC<sup>2</sup>, DISA-LC<sup>2</sup>, mutual information, NCC or a weighted
combination. Choose a fixed and a moving volume and click Apply: the moving volume is placed under
the resulting transform and shown over the fixed one. Optional landmarks give the registration
error (FRE) per landmark; a similarity map shows how well a measure localizes a chosen point.
The same engine runs outside Slicer as the <code>disa</code> command, with the same defaults.
"""
        self.parent.acknowledgementText = """
Based on the method of M. Ronchetti, W. Wein, N. Navab, O. Zettinig and R. Prevost,
"DISA: DIfferentiable Similarity Approximation for Universal Multimodal Registration",
MICCAI 2023. This is an independent open-source implementation, not the authors' code.
<br>Sample data: RESECT database (Y. Xiao et al., Medical Physics 2017), licensed CC BY 4.0.
"""
        slicer.app.connect("startupCompleted()", sample_data.register_sample_data)


#
# DISARegistrationParameterNode
#
@parameterNodeWrapper
class DISARegistrationParameterNode:
    """The panel's state. Each field is bound to the .ui widget whose SlicerParameterName is the
    field's name (Testing/test_static.py checks both directions). Defaults are the engine's
    (disa.registration.defaults), as for the command line and RegistrationLogic.

    metric             - a measure, or "combined": then metricExpression ("0.5*lc2+0.5*mind").
    resolution         - finest working voxel size in mm; 0 = chosen by the engine.
    maxEvaluations     - evaluation limit per optimization; 0 = the engine's default.
    registeredLandmarks, freTable, mapVolume - outputs; None = created on first use.
    mapPoint           - the similarity map is computed at its first point; None = crosshair.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    initialTransform: vtkMRMLTransformNode
    metric: Annotated[str, Choice(METRICS)] = DEFAULTS.metric
    metricExpression: str = "0.5*lc2+0.5*mind"
    transformModel: Annotated[str, Choice(list(TRANSFORMS))] = DEFAULTS.transform
    search: Annotated[str, Choice(list(SEARCHES))] = DEFAULTS.search
    searchPreset: Annotated[str, Choice(list(SEARCH_PRESETS))] = DEFAULTS.search_preset
    # The preset's ranges (choosing a preset sets both); either slider overrides them.
    searchRotation: Annotated[float, WithinRange(0.0, 90.0)] = SEARCH_PRESETS[DEFAULTS.search_preset][0]
    searchTranslation: Annotated[float, WithinRange(0.0, 200.0)] = SEARCH_PRESETS[DEFAULTS.search_preset][1]
    resolution: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    maxEvaluations: Annotated[int, WithinRange(0, 100000)] = 0
    device: Annotated[str, Choice(list(DEVICES))] = DEFAULTS.device
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = DEFAULTS.seed
    precision: Annotated[str, Choice(list(PRECISIONS))] = DEFAULTS.precision
    # Probe pressure: contact point, then a point deeper along the beam; None: from the fan.
    probePoints: vtkMRMLMarkupsFiducialNode
    # Linear for rigid/affine results, grid for deformable ones (see registrationArguments).
    outputTransform: Union[vtkMRMLLinearTransformNode, vtkMRMLGridTransformNode]
    outputVolume: vtkMRMLScalarVolumeNode
    jacobianVolume: vtkMRMLScalarVolumeNode
    fixedLandmarks: vtkMRMLMarkupsFiducialNode
    movingLandmarks: vtkMRMLMarkupsFiducialNode
    registeredLandmarks: vtkMRMLMarkupsFiducialNode
    freTable: vtkMRMLTableNode
    mapMetric: Annotated[str, Choice(MAP_METRICS)] = DEFAULTS.metric
    mapPoint: vtkMRMLMarkupsFiducialNode
    mapVolume: vtkMRMLScalarVolumeNode


#
# DISARegistrationWidget
#
class DISARegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: widgets are bound to the parameter node; buttons call DISARegistrationLogic.
    Long work (installing packages, registering) runs outside the GUI thread and is polled."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running RegistrationJob, if any
        self._jobParameterNode = None  # the run's own: the user may leave the module meanwhile
        self._install = None  # the running dependencies.InstallJob, if any
        self._afterInstall = None  # what to do once it succeeded

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DISARegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DISARegistrationLogic()

        # Workers run off the GUI thread; the GUI thread polls them, so Slicer stays responsive.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._onPoll)

        self.ui.mapPointPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.mapPointSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.mapPointPlaceWidget.setCurrentNode)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.updateFREButton.connect("clicked(bool)", self.onUpdateFREButton)
        self.ui.loadSampleLandmarksButton.connect("clicked(bool)", self.onLoadSampleLandmarksButton)
        self.ui.computeMapButton.connect("clicked(bool)", self.onComputeMapButton)
        self.ui.fadeSliderWidget.connect("valueChanged(double)", self.onFadeChanged)
        self.ui.searchPresetComboBox.connect("activated(int)", self.onSearchPresetChosen)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        if self._install is not None:
            self._install.cancel()
            self._install = None
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
            # connectGui fills the combo boxes with the stored names; the connector reads by
            # index, so the shown text is free for a readable label.
            relabel_choices([self.ui.metricComboBox, self.ui.mapMetricComboBox, self.ui.transformModelComboBox,
                             self.ui.searchComboBox, self.ui.searchPresetComboBox, self.ui.deviceComboBox,
                             self.ui.precisionComboBox])
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUI)
            self._updateGUI()

    def _updateGUI(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        busy = self._job is not None or self._install is not None
        volumes = bool(p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume)
        for section in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton,
                        self.ui.advancedCollapsibleButton, self.ui.outputsCollapsibleButton):
            section.enabled = not busy  # a run uses the settings it started with
        self.ui.metricExpressionLineEdit.enabled = p.metric == "combined"
        self.ui.searchPresetComboBox.enabled = p.search == "global"
        self.ui.searchRotationSliderWidget.enabled = p.search == "global"
        self.ui.searchTranslationSliderWidget.enabled = p.search == "global"
        self.ui.probePointsSelector.enabled = p.transformModel == "pressure"
        self.ui.jacobianVolumeSelector.enabled = p.transformModel in DENSE_TRANSFORMS
        self.ui.updateFREButton.enabled = bool(p.fixedLandmarks and p.movingLandmarks) and not busy
        self.ui.loadSampleLandmarksButton.enabled = not busy
        self.ui.computeMapButton.enabled = volumes and not busy
        self.ui.applyButton.text = "Cancel" if busy else "Apply"
        self.ui.applyButton.enabled = volumes or busy
        self.ui.applyButton.toolTip = (
            "Stop the installation" if self._install is not None else
            "Stop the running registration" if busy else
            "Register the moving volume to the fixed volume" if volumes else
            "Select two different fixed and moving volumes")

    # dependencies -------------------------------------------------------------------------------
    def _whenEngineReady(self, action):
        """Run ``action`` now if the engine's packages are installed, else install them first
        (after asking) in a child process polled by the timer; Slicer stays usable meanwhile."""
        check = dependencies.check_dependencies()
        if check.ready:
            action()
            return
        if not slicer.util.confirmOkCancelDisplay(check.message() + "\n\nInstall now?",
                                                  windowTitle="DISA Registration"):
            return
        self._install, self._afterInstall = self.logic.startInstall(check), action
        self.ui.statusLabel.text = "Installing Python packages..."
        self._pollTimer.start()
        self._updateGUI()

    def _pollInstall(self):
        job = self._install
        self.ui.statusLabel.text = "Installing: " + (job.lines[-1] if job.lines else " ".join(job.command[1:]))[:120]
        if not job.poll():
            return
        action, self._install, self._afterInstall = self._afterInstall, None, None
        self._pollTimer.stop()
        self._updateGUI()
        problem = dependencies.install_problem(job)
        self.ui.statusLabel.text = "Installed." if problem is None else problem
        if problem is None:
            action()
        else:
            slicer.util.errorDisplay(problem, detailedText="\n".join(job.lines))

    # registration -------------------------------------------------------------------------------
    def onApplyButton(self):
        if self._install is not None:
            self._install.cancel()
            return
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = "Cancelling..."
            return
        self._whenEngineReady(self._startRegistration)

    def _startRegistration(self):
        with slicer.util.tryWithErrorDisplay("Registration could not start.", waitCursor=True):
            self._job = self.logic.registerAsyncUsingParameterNode(self._parameterNode)
            self._jobParameterNode = self._parameterNode
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting..."
            self._pollTimer.start()
        self._updateGUI()

    def _dropJob(self):
        """Cancel the run and forget it: the worker stops at its next evaluation, unobserved."""
        if self._job is not None:
            self._job.cancel()
        if self._install is None:  # an installation goes on: it belongs to no scene
            self._pollTimer.stop()
        self._job = self._jobParameterNode = None

    def _onPoll(self):
        if self._install is not None:
            self._pollInstall()
            return
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
        if job.cancelled:
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

    # landmarks, similarity map, display ---------------------------------------------------------
    def _updateFRE(self, p):
        fre = self.logic.computeFREUsingParameterNode(p)
        self.logic.updateRegisteredLandmarks(p)
        show_table(p.freTable)
        text = "FRE: " + format_measures(fre)
        self.ui.freLabel.text = text
        return text

    def _whenReadyShowingErrors(self, message, function):
        def run():
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                function()

        self._whenEngineReady(run)

    def onUpdateFREButton(self):
        self._whenReadyShowingErrors("Could not compute the landmark error.",
                                     lambda: self._updateFRE(self._parameterNode))

    def onLoadSampleLandmarksButton(self):
        def load():
            p = self._parameterNode
            p.fixedLandmarks, p.movingLandmarks = self.logic.loadSampleLandmarks()

        self._whenReadyShowingErrors("Could not load the sample landmarks.", load)

    def onComputeMapButton(self):
        def compute():
            p = self._parameterNode
            mapNode = self.logic.similarityMapUsingParameterNode(p, map_point_ras(p.mapPoint, slicer.mrmlScene))
            self.ui.fadeSliderWidget.value = 0.5
            slicer.util.setSliceViewerLayers(background=p.fixedVolume, foreground=mapNode, foregroundOpacity=0.5)

        self._whenReadyShowingErrors("Could not compute the similarity map.", compute)

    def onFadeChanged(self, value):
        for compositeNode in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            compositeNode.SetForegroundOpacity(value)

    def onSearchPresetChosen(self, index):
        """A preset the user chose sets both search ranges (the sliders can then override them)."""
        if self._parameterNode is not None:
            rotation, translation = SEARCH_PRESETS[list(SEARCH_PRESETS)[index]]
            self._parameterNode.searchRotation, self._parameterNode.searchTranslation = rotation, translation


#
# DISARegistrationLogic
#
class DISARegistrationLogic(ScriptedLoadableModuleLogic):
    """Slicer side of the scripting API: the parameter node, installing the engine's packages and
    the sample data. Registration, FRE and similarity maps are delegated to
    ``DISARegistrationLib.logic.RegistrationLogic`` (see ``core``), usable on its own::

        logic = slicer.util.getModuleLogic("DISARegistration")  # or DISARegistrationLogic()
        transformNode = logic.registerVolumes(fixedVolumeNode=us, movingVolumeNode=mr)  # engine defaults
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None
        self._coreDevice = None

    def getParameterNode(self):
        return DISARegistrationParameterNode(super().getParameterNode())

    def core(self, device=DEFAULTS.device):
        """The Qt-free RegistrationLogic on slicer.mrmlScene (created on first use, which may ask
        to install the engine's packages; recreated when the device changes)."""
        if self._core is None or self._coreDevice != device:
            self.ensureEngineDependencies()
            from DISARegistrationLib.logic import RegistrationLogic

            self._core, self._coreDevice = RegistrationLogic(slicer.mrmlScene, device=device), device
        return self._core

    @property
    def lastResult(self):
        """The engine's RegistrationResult of the last run (matrix, similarities, timings)."""
        return self._core.lastResult if self._core is not None else None

    # dependencies -------------------------------------------------------------------------------
    @staticmethod
    def _launch(command):
        return slicer.util.launchConsoleProcess(command, useStartupEnvironment=False)  # hides Windows consoles

    def startInstall(self, check):
        """Start installing what ``check`` (dependencies.check_dependencies()) found missing or
        too old; returns the InstallJob to poll."""
        return dependencies.start_install(check, self._launch)

    def ensureEngineDependencies(self, askConfirmation=True):
        """Install what the engine needs and Slicer lacks, waiting while Slicer keeps processing
        events (scripts and the self-test; the panel polls instead). Raises RuntimeError if not."""
        dependencies.ensure_installed(confirm=slicer.util.confirmOkCancelDisplay if askConfirmation else None,
                                      launch=self._launch, idle=lambda: slicer.app.processEvents())

    # registration -------------------------------------------------------------------------------
    def registerVolumes(self, fixedVolumeNode, movingVolumeNode, device=DEFAULTS.device, **kwargs):
        """Register ``movingVolumeNode`` to ``fixedVolumeNode``; returns the output transform node.
        Keyword arguments are those of RegistrationLogic.register (metric, transform, search, ...)."""
        return self.core(device).register(fixedVolumeNode, movingVolumeNode, **kwargs)

    @staticmethod
    def registrationArguments(p):
        """RegistrationLogic.register keyword arguments from a parameter node. A selected output
        transform of the wrong kind (linear for a deformable model, grid for a linear one) is
        left alone and a new one created; the Jacobian volume counts for deformable models only."""
        dense = p.transformModel in DENSE_TRANSFORMS
        output = p.outputTransform
        if output is not None and output.IsA("vtkMRMLGridTransformNode") != dense:
            output = None
        return dict(
            fixedVolumeNode=p.fixedVolume, movingVolumeNode=p.movingVolume,
            metric=p.metricExpression.strip() if p.metric == "combined" else p.metric,
            transform=p.transformModel, search=p.search, searchPreset=p.searchPreset,
            initialTransformNode=p.initialTransform, outputTransformNode=output,
            jacobianVolumeNode=p.jacobianVolume if dense else None,
            probeMarkupsNode=p.probePoints if p.transformModel == "pressure" else None,
            outputVolumeNode=p.outputVolume, searchRotation=p.searchRotation,
            searchTranslation=p.searchTranslation, resolution=p.resolution or None,
            maxEvaluations=p.maxEvaluations or None, seed=p.seed, precision=p.precision)

    def registerUsingParameterNode(self, p, progress=None, cancel=None):
        """Synchronous run (scripts, tests); stores the result in p.outputTransform."""
        p.outputTransform = self.core(p.device).register(**self.registrationArguments(p),
                                                         progress=progress, cancel=cancel)
        return p.outputTransform

    def registerAsyncUsingParameterNode(self, p):
        """Start a run on a worker thread; the caller polls the job and calls job.finish()."""
        return self.core(p.device).registerAsync(**self.registrationArguments(p))

    # landmarks and similarity maps --------------------------------------------------------------
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

        sample_data.register_sample_data()
        fixed, moving = SampleData.SampleDataLogic().downloadSamples(sample_data.SAMPLE_NAME)
        return fixed, moving

    def loadSampleLandmarks(self):
        """The sample's expert landmarks as two point lists; returns (ultrasound, MR) nodes."""
        self.ensureEngineDependencies()
        return sample_data.load_sample_landmarks(slicer.mrmlScene)


#
# DISARegistrationTest
#
class DISARegistrationTest(ScriptedLoadableModuleTest):
    """Real checks inside Slicer: node conversion, a known shift recovered, and the sample case
    registered back from a known perturbation with the default settings (the engine's defaults,
    MIND-SSC with a global search), judged by its expert landmarks."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_BridgeRoundTrip, self.test_RecoverKnownShift, self.test_SampleCase):
            self.setUp()
            test()

    def test_BridgeRoundTrip(self):
        self.delayDisplay("Volume node <-> engine image")
        DISARegistrationLogic().ensureEngineDependencies(askConfirmation=False)
        from DISARegistrationLib import mrml_bridge as bridge

        array = synthetic_volume_array((10, 11, 12))
        node = add_volume_node(slicer.mrmlScene, "roundTrip", array, (5.0, -3.0, 2.0))
        image = bridge.image_from_volume_node(node)
        self.assertTrue(np.allclose(image.data[0].numpy(), array))
        self.assertTrue(np.allclose(image.origin, [-5.0, 3.0, 2.0]))
        self.assertTrue(np.allclose(slicer.util.arrayFromVolume(node), array))
        self.delayDisplay("Test passed")

    def test_RecoverKnownShift(self):
        self.delayDisplay("Registering a volume to a shifted copy of itself")
        array = synthetic_volume_array()
        shiftRas = np.array([3.0, -2.0, 1.5])
        fixed = add_volume_node(slicer.mrmlScene, "fixed", array, (0.0, 0.0, 0.0))
        moving = add_volume_node(slicer.mrmlScene, "moving", array, shiftRas)
        transformNode = DISARegistrationLogic().registerVolumes(
            fixedVolumeNode=fixed, movingVolumeNode=moving, metric="ncc", transform="rigid", search="local",
            device="cpu")
        # Moving content sits shiftRas further along: its to-parent transform moves it back.
        toParent = slicer.util.arrayFromTransformMatrix(transformNode)
        self.assertLess(np.abs(toParent[:3, 3] + shiftRas).max(), 0.5)
        self.assertLess(np.abs(toParent[:3, :3] - np.eye(3)).max(), 0.02)
        self.delayDisplay("Test passed")

    def test_SampleCase(self):
        self.delayDisplay("Sample case: perturb the MR by a known transform, register it back (default settings)")
        logic = DISARegistrationLogic()
        fixed, moving = logic.loadSampleData()
        fixedLandmarks, movingLandmarks = logic.loadSampleLandmarks()
        # The shipped pair is nearly aligned: move the MR 8 degrees and about 12 mm away about the
        # ultrasound centre (its landmarks stay in the MR's own frame, as the logic expects).
        perturbationNode = perturb_about_center(slicer.mrmlScene, fixed, moving)

        fixedPoints = slicer.util.arrayFromMarkupsControlPoints(fixedLandmarks, world=True)
        movingPoints = slicer.util.arrayFromMarkupsControlPoints(movingLandmarks, world=True)
        toParent = slicer.util.arrayFromTransformMatrix(perturbationNode)
        before = np.linalg.norm(fixedPoints - (movingPoints @ toParent[:3, :3].T + toParent[:3, 3]), axis=1)

        p = logic.getParameterNode()
        p.fixedVolume, p.movingVolume = fixed, moving
        p.fixedLandmarks, p.movingLandmarks = fixedLandmarks, movingLandmarks
        transformNode = logic.registerUsingParameterNode(p)
        fre = logic.computeFREUsingParameterNode(p)
        registered = logic.updateRegisteredLandmarks(p)
        after = np.linalg.norm(fixedPoints - slicer.util.arrayFromMarkupsControlPoints(registered, world=True), axis=1)
        logging.info(f"Sample case ({p.metric}) FRE before {before.mean():.2f} mm, after {after.mean():.2f} mm; "
                     f"computeFRE: {format_measures(fre)}")

        self.assertIsNotNone(transformNode)
        self.assertEqual(len(after), len(fixedPoints))
        self.assertGreater(p.freTable.GetNumberOfRows(), 0)
        self.assertLess(after.mean(), 3.0)
        self.assertLess(after.mean(), before.mean())
        self.delayDisplay(f"Test passed: FRE {before.mean():.1f} mm -> {after.mean():.1f} mm")
