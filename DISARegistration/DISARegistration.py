"""DISA Registration: multimodal (ultrasound / MR / CT) rigid and affine registration in 3D Slicer.

This file only runs inside Slicer (it imports qt and uses slicer.app). Everything between MRML
nodes and the engine lives in DISARegistrationLib (importable without Qt); the registration
engine is the ``disa`` package next to this file. The engine and torch are imported lazily so
that the module loads, and shows a useful message, even before PyTorch is installed.
"""
import importlib.util
import logging
import os
from typing import Annotated, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTransformNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Similarity measures the engine offers (``disa.similarity``); lc2 is the DISA paper's target.
METRICS = ["lc2", "mind", "mi", "ncc", "lncc", "ngf", "mse"]
TRANSFORM_MODELS = ["rigid", "affine"]
DEVICES = ["auto", "cpu", "cuda"]

#: Python packages the engine needs besides torch, as (import name, pip requirement).
ENGINE_REQUIREMENTS = [("scipy", "scipy"), ("SimpleITK", "SimpleITK"), ("pybobyqa", "Py-BOBYQA>=1.4")]


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
with LC<sup>2</sup>, MIND-SSC, mutual information, (local) normalized cross-correlation, NGF or MSE.
<br>Choose a fixed and a moving volume; the result is a linear transform that moves the moving
volume onto the fixed one (the moving volume is placed under it), and optionally a resampled
output volume. The same engine runs outside Slicer as the <code>disa</code> command; transform
files it writes load here unchanged.
"""
        self.parent.acknowledgementText = """
Based on the method of M. Ronchetti, W. Wein, N. Navab, O. Zettinig and R. Prevost,
"DISA: DIfferentiable Similarity Approximation for Universal Multimodal Registration",
MICCAI 2023. This is an independent open-source implementation, not the authors' code.
<br>Sample data: RESECT database (Y. Xiao et al., Medical Physics 2017), licensed CC BY 4.0.
"""


#
# DISARegistrationParameterNode
#
@parameterNodeWrapper
class DISARegistrationParameterNode:
    """What the user chose: inputs, outputs and the registration settings.

    initialTransform - optional pre-alignment (a transform that moves the moving volume roughly
                       onto the fixed one, as Slicer shows transforms).
    outputTransform  - receives the result ("to parent": moving -> fixed).
    outputVolume     - optional: the moving volume resampled on the fixed volume's grid.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    initialTransform: vtkMRMLTransformNode
    outputTransform: vtkMRMLTransformNode
    outputVolume: vtkMRMLScalarVolumeNode
    metric: Annotated[str, Choice(METRICS)] = "lc2"
    transformModel: Annotated[str, Choice(TRANSFORM_MODELS)] = "rigid"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = 0


#
# DISARegistrationWidget
#
class DISARegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin GUI: binds widgets to the parameter node and calls the logic."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        # The designed panel is optional until it exists; the fallback form keeps the module usable.
        uiPath = self.resourcePath("UI/DISARegistration.ui")
        uiWidget = slicer.util.loadUI(uiPath) if os.path.exists(uiPath) else self._createFallbackPanel()
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = DISARegistrationLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.layout.addStretch(1)
        self.initializeParameterNode()

    def _createFallbackPanel(self):
        """A plain form, one widget per parameter, bound through the SlicerParameterName property."""
        panel = slicer.qMRMLWidget()
        form = qt.QFormLayout(panel)

        def nodeSelector(name, nodeType, label, tip, optional, creatable):
            combo = slicer.qMRMLNodeComboBox()
            combo.objectName = name + "Selector"
            combo.nodeTypes = [nodeType]
            combo.selectNodeUponCreation = True
            combo.addEnabled = creatable
            combo.removeEnabled = creatable
            combo.renameEnabled = creatable
            combo.noneEnabled = optional
            combo.showHidden = False
            combo.toolTip = tip
            combo.setProperty("SlicerParameterName", name)
            panel.connect("mrmlSceneChanged(vtkMRMLScene*)", combo, "setMRMLScene(vtkMRMLScene*)")
            form.addRow(label, combo)

        def choice(name, label, tip, widget=None):
            widget = widget or qt.QComboBox()
            widget.objectName = name + "Widget"
            widget.toolTip = tip
            widget.setProperty("SlicerParameterName", name)
            form.addRow(label, widget)

        nodeSelector("fixedVolume", "vtkMRMLScalarVolumeNode", "Fixed volume:",
                     "Reference volume (e.g. the intra-operative ultrasound).", False, False)
        nodeSelector("movingVolume", "vtkMRMLScalarVolumeNode", "Moving volume:",
                     "Volume to align to the fixed one (e.g. the pre-operative MR).", False, False)
        nodeSelector("initialTransform", "vtkMRMLTransformNode", "Initial transform:",
                     "Optional rough pre-alignment of the moving volume.", True, False)
        nodeSelector("outputTransform", "vtkMRMLTransformNode", "Output transform:",
                     "Receives the result; a new one is created if none is selected.", True, True)
        nodeSelector("outputVolume", "vtkMRMLScalarVolumeNode", "Output volume:",
                     "Optional: the moving volume resampled on the fixed grid.", True, True)
        choice("metric", "Similarity:", "lc2 and mind suit ultrasound; mi/ncc/lncc/ngf/mse suit MR/CT.")
        choice("transformModel", "Transform:", "rigid (6 parameters) or affine (12).")
        choice("device", "Device:", "Where the engine runs: auto picks a CUDA GPU when available.")
        seed = qt.QSpinBox()
        choice("seed", "Random seed:", "Fixes any random choices of the engine for repeatable runs.", seed)

        applyButton = qt.QPushButton("Apply")
        applyButton.objectName = "applyButton"
        applyButton.enabled = False
        form.addRow(applyButton)
        statusLabel = qt.QLabel("")
        statusLabel.objectName = "statusLabel"
        statusLabel.wordWrap = True
        form.addRow(statusLabel)
        return panel

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.fixedVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[DISARegistrationParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameterNode
        if p and p.fixedVolume and p.movingVolume and p.fixedVolume != p.movingVolume:
            self.ui.applyButton.toolTip = "Register the moving volume to the fixed volume"
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = "Select two different fixed and moving volumes"
            self.ui.applyButton.enabled = False

    def _showStatus(self, text):
        if hasattr(self.ui, "statusLabel"):
            self.ui.statusLabel.text = text
        slicer.app.processEvents()  # keep the panel responsive during the synchronous run

    def onApplyButton(self):
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Registration failed.", waitCursor=True):
            self.logic.progressCallback = lambda stage, fraction, message: self._showStatus(
                f"{stage}: {100 * fraction:.0f}% {message}")
            outputTransform = self.logic.registerVolumesUsingParameterNode(p)
            p.outputTransform = outputTransform
            if p.outputVolume:
                slicer.util.setSliceViewerLayers(background=p.outputVolume, foreground=p.fixedVolume,
                                                 foregroundOpacity=0.5)
            else:
                # Show the result directly: the moving volume follows the output transform.
                p.movingVolume.SetAndObserveTransformNodeID(outputTransform.GetID())
                slicer.util.setSliceViewerLayers(background=p.movingVolume, foreground=p.fixedVolume,
                                                 foregroundOpacity=0.5)
            self._showStatus(self.logic.lastResult.summary())


#
# DISARegistrationLogic
#
class DISARegistrationLogic(ScriptedLoadableModuleLogic):
    """Scripting API. Usable from the Python console without the widget::

        logic = slicer.util.getModuleLogic("DISARegistration")  # or DISARegistrationLogic()
        transformNode = logic.registerVolumes(fixedVolumeNode=us, movingVolumeNode=mr, metric="lc2")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        #: Called as progressCallback(stage, fraction 0..1, message) during a run.
        self.progressCallback = None
        #: Set to True (e.g. from a Cancel button) to stop a run at its next evaluation.
        self.cancelRequested = False
        #: The engine's RegistrationResult of the last run (matrix, similarities, timings).
        self.lastResult = None

    def getParameterNode(self):
        return DISARegistrationParameterNode(super().getParameterNode())

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

    def registerVolumesUsingParameterNode(self, parameterNode):
        """``registerVolumes`` with the inputs and settings stored in a parameter node."""
        return self.registerVolumes(
            fixedVolumeNode=parameterNode.fixedVolume,
            movingVolumeNode=parameterNode.movingVolume,
            outputTransformNode=parameterNode.outputTransform,
            initialTransformNode=parameterNode.initialTransform,
            outputVolumeNode=parameterNode.outputVolume,
            metric=parameterNode.metric,
            transformModel=parameterNode.transformModel,
            device=parameterNode.device,
            seed=parameterNode.seed,
        )

    def registerVolumes(self, fixedVolumeNode, movingVolumeNode, outputTransformNode=None,
                        initialTransformNode=None, outputVolumeNode=None, metric="lc2",
                        transformModel="rigid", device="auto", seed=0):
        """Register ``movingVolumeNode`` to ``fixedVolumeNode``; return the output transform node.

        The output transform's "to parent" moves the moving volume (in its own frame) onto the
        fixed volume as shown in world coordinates, so placing the moving volume under it shows
        the result. The search starts from ``initialTransformNode`` (moving -> world) when given,
        else from where the moving volume is shown now (its parent transforms, if any); a linear
        parent transform of the fixed volume is taken into account. The input nodes are not
        modified. Raises ``disa.errors.InputError`` for problems the user can fix.
        """
        self.ensureEngineDependencies()
        from DISARegistrationLib import mrml_bridge as bridge
        from disa.errors import InputError
        from disa.registration import register
        from disa.spatial import resample_image

        if fixedVolumeNode is None or movingVolumeNode is None:
            raise InputError("select both a fixed and a moving volume")
        if fixedVolumeNode is movingVolumeNode:
            raise InputError("the fixed and the moving volume must be different volumes")
        if outputVolumeNode is not None and outputVolumeNode in (fixedVolumeNode, movingVolumeNode):
            raise InputError("the output volume must not be one of the input volumes; "
                             "create a new volume for it")
        scene = fixedVolumeNode.GetScene()
        if outputTransformNode is not None and _isAncestorTransform(outputTransformNode, fixedVolumeNode):
            raise InputError("the fixed volume is under the output transform; choose another output "
                             "transform or move the fixed volume out from under it")

        fixedImage = bridge.image_from_volume_node(fixedVolumeNode, "fixed volume")
        movingImage = bridge.image_from_volume_node(movingVolumeNode, "moving volume")
        # Engine frames are the volumes' own (local) frames: fixed local -> moving local.
        fixedToWorld = bridge.local_to_world_lps(fixedVolumeNode)
        if initialTransformNode is not None:
            worldToMoving = bridge.itk_matrix_from_transform_node(initialTransformNode, world=True)
        else:
            worldToMoving = np.linalg.inv(bridge.local_to_world_lps(movingVolumeNode))
        initial = worldToMoving @ fixedToWorld

        self.cancelRequested = False
        result = register(fixedImage, movingImage, metric=metric, transform=transformModel,
                          initial=initial, device=device, seed=int(seed),
                          progress=self.progressCallback, cancel=lambda: self.cancelRequested)
        self.lastResult = result
        logging.info("DISA Registration: " + result.summary())

        if outputTransformNode is None:
            outputTransformNode = scene.AddNewNodeByClass(
                "vtkMRMLLinearTransformNode",
                scene.GenerateUniqueName(f"{movingVolumeNode.GetName()} to {fixedVolumeNode.GetName()}"))
        # World -> moving local, expressed relative to the output transform's own parent.
        worldMatrix = result.matrix @ np.linalg.inv(fixedToWorld) @ bridge.local_to_world_lps(outputTransformNode)
        bridge.set_linear_transform_node_from_itk(outputTransformNode, worldMatrix)
        bridge.set_registration_references(outputTransformNode, fixedVolumeNode, movingVolumeNode)

        if outputVolumeNode is not None:
            resampled = resample_image(movingImage, fixedImage, result.matrix)
            bridge.update_volume_node_from_image(outputVolumeNode, resampled)
            outputVolumeNode.SetAndObserveTransformNodeID(fixedVolumeNode.GetTransformNodeID())
        return outputTransformNode


def _isAncestorTransform(transformNode, node):
    """Whether ``transformNode`` is among the parent transforms of ``node``."""
    parent = node.GetParentTransformNode()
    while parent is not None:
        if parent is transformNode or parent.GetID() == transformNode.GetID():
            return True
        parent = parent.GetParentTransformNode()
    return False


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
    """Quick real checks inside Slicer: node conversion and a known shift recovered."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_BridgeRoundTrip()
        self.setUp()
        self.test_RecoverKnownShift()

    def _addVolume(self, name, array, originRas):
        from DISARegistrationLib import mrml_bridge as bridge
        from disa.spatial import Image

        lps = np.asarray(originRas, dtype=float) * [-1.0, -1.0, 1.0]
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        bridge.update_volume_node_from_image(node, Image.from_array(array, spacing=(1.0, 1.0, 1.0), origin=lps))
        return node

    def test_BridgeRoundTrip(self):
        self.delayDisplay("Volume node <-> engine image")
        from DISARegistrationLib import mrml_bridge as bridge

        DISARegistrationLogic.ensureEngineDependencies(askConfirmation=False)
        array = makeSyntheticVolumeArray((10, 11, 12))
        node = self._addVolume("roundTrip", array, (5.0, -3.0, 2.0))
        image = bridge.image_from_volume_node(node)
        self.assertTrue(np.allclose(image.data[0].numpy(), array))
        self.assertTrue(np.allclose(image.origin, [-5.0, 3.0, 2.0]))
        self.assertTrue(np.allclose(slicer.util.arrayFromVolume(node), array))
        self.delayDisplay("Test passed")

    def test_RecoverKnownShift(self):
        self.delayDisplay("Registering a volume to a shifted copy of itself")
        from DISARegistrationLib import mrml_bridge as bridge

        array = makeSyntheticVolumeArray()
        shiftRas = np.array([3.0, -2.0, 1.5])
        fixed = self._addVolume("fixed", array, (0.0, 0.0, 0.0))
        moving = self._addVolume("moving", array, shiftRas)
        logic = DISARegistrationLogic()
        transformNode = logic.registerVolumes(fixedVolumeNode=fixed, movingVolumeNode=moving,
                                              metric="ncc", transformModel="rigid", device="cpu")
        # Moving content sits shiftRas further along: its to-parent transform moves it back.
        toParent = slicer.util.arrayFromTransformMatrix(transformNode)
        self.assertLess(np.abs(toParent[:3, 3] + shiftRas).max(), 0.5)
        self.assertLess(np.abs(toParent[:3, :3] - np.eye(3)).max(), 0.02)
        itk = bridge.itk_matrix_from_transform_node(transformNode)
        self.assertLess(np.abs(itk[:3, 3] - shiftRas * [-1.0, -1.0, 1.0]).max(), 0.5)
        self.delayDisplay("Test passed")
