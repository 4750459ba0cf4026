"""Small pieces of the panel that need Slicer's application only when called: the landmark
error as one line, the point a similarity map is computed at, showing a table, and readable
labels for the combo boxes."""
from __future__ import annotations

import numbers

import numpy as np

from disa.registration.defaults import SEARCH_PRESETS

__all__ = ["format_measures", "map_point_ras", "show_table", "CHOICE_LABELS", "relabel_choices"]


def format_measures(measures: dict) -> str:
    """'mean after 1.23 mm, max after 2.34 mm, ...' from the numbers of a computeFRE() result."""
    return ", ".join(f"{key} {value:.2f} mm" if isinstance(value, float) else f"{key} {value}"
                     for key, value in measures.items()
                     if isinstance(value, numbers.Real) and not isinstance(value, bool)) or "no landmark pairs"


def map_point_ras(pointListNode, scene) -> np.ndarray:
    """World RAS of the first control point of ``pointListNode``, or of the crosshair if None."""
    if pointListNode is not None:
        if pointListNode.GetNumberOfControlPoints() < 1:
            raise ValueError(f"'{pointListNode.GetName()}' has no point yet; place one or choose "
                             "'Crosshair position'")
        position = [0.0, 0.0, 0.0]
        pointListNode.GetNthControlPointPositionWorld(0, position)
        return np.array(position)
    crosshair = scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
    if crosshair is None:
        raise ValueError("the scene has no crosshair; choose a point list for the similarity map")
    return np.array(crosshair.GetCrosshairRAS())


def show_table(tableNode) -> None:
    """Show ``tableNode`` in a table view, switching to a layout that has one if needed (no-op
    without Slicer's GUI)."""
    import slicer

    app = getattr(slicer, "app", None)
    layoutManager = app.layoutManager() if app is not None else None
    if layoutManager is None:
        return
    layoutNode = layoutManager.layoutLogic().GetLayoutNode()
    if "vtkMRMLTableViewNode" not in (layoutNode.GetCurrentLayoutDescription() or ""):
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
    app.applicationLogic().PropagateTableSelection()


#: What the panel's combo boxes show for each stored choice (the engine's names).
CHOICE_LABELS = {
    "mind": "MIND-SSC", "lc2": "LC²", "disa": "DISA-LC² (learned descriptors, preview weights)",
    "mi": "Mutual information", "ncc": "Normalized cross-correlation", "lncc": "Local NCC",
    "ngf": "Normalized gradient fields", "mse": "Mean squared difference", "combined": "Weighted combination",
    "rigid": "Rigid (6 parameters)", "affine": "Affine (12 parameters)",
    "pressure": "Rigid + probe pressure (8 parameters)",
    "deformable": "Deformable (discrete search + convex smoothing + instance optimization)",
    "diffeomorphic": "Diffeomorphic (stationary velocity field)",
    "neural-ode": "Diffeomorphic (Neural ODE velocity network)",
    "global": "Global (many starting poses)", "local": "Local (from the current pose)",
    "auto": "Automatic (GPU when available)", "cpu": "CPU", "cuda": "CUDA GPU",
    "float32": "float32 (reference)", "bfloat16": "bfloat16 (faster)", "float16": "float16 (CUDA GPU only)",
    **{name: f"{name.capitalize()} (±{rot:g}°, ±{mm:g} mm)" for name, (rot, mm) in SEARCH_PRESETS.items()},
}


def relabel_choices(combos) -> None:
    """Replace each combo box item's stored name by its CHOICE_LABELS label (unknown names stay)."""
    for combo in combos:
        for i in range(combo.count):
            combo.setItemText(i, CHOICE_LABELS.get(combo.itemText(i), combo.itemText(i)))
