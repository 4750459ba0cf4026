"""Static checks of the panel and its Slicer glue: the .ui file against the module code and its
parameter node (widgets, tooltips, bindings, scene connections, choice labels), and the bundled
sample data's checksums. The rest of the static checks: test_static.py."""
from __future__ import annotations

import ast
import hashlib
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

from test_static import MODULE_DIR, MODULE_NAME, module_file_tree


# (d) the panel: .ui file <-> module code <-> parameter node ------------------------------------
UI_FILE = MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui"
PARAMETER_NODE_CLASS = f"{MODULE_NAME}ParameterNode"
#: Widgets a user operates; each needs a tooltip.
CONTROL_CLASSES = {"qMRMLNodeComboBox", "QComboBox", "QLineEdit", "QSpinBox", "QDoubleSpinBox", "ctkSliderWidget",
                   "QSlider", "QCheckBox", "QPushButton", "QProgressBar", "qSlicerMarkupsPlaceWidget"}
#: Parameter node fields deliberately without a widget (none today).
FIELDS_WITHOUT_WIDGET: set = set()
#: Widget classes parameterNodeWrapper's GUI connectors accept for each kind of field
#: (Slicer's guiConnectors.py matches the exact widget class).
CONNECTOR_WIDGETS = {"node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"}, "choice": {"QComboBox"},
                     "str": {"QLineEdit", "QTextEdit"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
                     "int": {"QSpinBox", "QSlider"}, "bool": {"QCheckBox", "QPushButton"}}


def _ui_root():
    return ET.parse(UI_FILE).getroot()


def _ui_widgets() -> List[ET.Element]:
    return list(_ui_root().iter("widget"))


def _property(widget: ET.Element, name: str) -> Optional[ET.Element]:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _property_text(widget: ET.Element, name: str) -> Optional[str]:
    prop = _property(widget, name)
    return None if prop is None else "".join(prop.itertext()).strip()


def _parameter_widgets() -> Dict[str, ET.Element]:
    """SlicerParameterName -> widget (a name bound twice is reported by its own test)."""
    return {_property_text(w, "SlicerParameterName"): w for w in _ui_widgets()
            if _property(w, "SlicerParameterName") is not None}


def _module_constants(tree: ast.Module) -> Dict[str, object]:
    """Top-level NAME = <literal> assignments, with list(NAME) of a literal dict resolved too."""
    constants: Dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "list"
                    and len(value.args) == 1 and isinstance(value.args[0], ast.Name)
                    and value.args[0].id in constants):
                constants[node.targets[0].id] = list(constants[value.args[0].id])
                continue
            try:
                constants[node.targets[0].id] = ast.literal_eval(value)
            except ValueError:
                pass
    return constants


def _module_namespace(tree: ast.Module) -> Dict[str, object]:
    """The module file's literal constants and the engine's defaults table, as its class body sees them."""
    from disa.registration import defaults

    namespace = {name: getattr(defaults, name) for name in dir(defaults) if not name.startswith("_")}
    namespace.update(_module_constants(tree), list=list)
    return namespace


def _evaluate(node: ast.expr, namespace: Dict[str, object]):
    """The value of a default or Choice argument, or None if it is not a constant expression."""
    try:
        return eval(compile(ast.Expression(node), "<parameter node>", "eval"), {"__builtins__": {}}, namespace)
    except Exception:
        return None


def _parameter_fields() -> Dict[str, dict]:
    """Fields of the @parameterNodeWrapper class: name -> {kind, type, choices, bounded, default}."""
    tree = module_file_tree()
    constants = _module_namespace(tree)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == PARAMETER_NODE_CLASS), None)
    assert cls is not None, f"class {PARAMETER_NODE_CLASS} not found"
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in cls.decorator_list), \
        f"{PARAMETER_NODE_CLASS} must be decorated with @parameterNodeWrapper"
    fields = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        annotation, extras = node.annotation, []
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
            parts = getattr(annotation.slice, "value", annotation.slice)  # ast.Index on Python 3.8
            annotation, extras = parts.elts[0], parts.elts[1:]
        type_name = ast.unparse(annotation)
        choices, bounded = None, False
        for extra in extras:
            if isinstance(extra, ast.Call) and ast.unparse(extra.func) == "Choice":
                arg = extra.args[0]
                choices = _evaluate(arg, constants)
            bounded |= isinstance(extra, ast.Call) and ast.unparse(extra.func) == "WithinRange"
        node_types = [type_name]
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Union":
            node_types = [ast.unparse(e) for e in getattr(annotation.slice, "value", annotation.slice).elts]
        if all(t.startswith("vtkMRML") for t in node_types):
            kind = "node"
        elif choices is not None:
            kind = "choice"
        else:
            kind = type_name
        default = None if node.value is None else _evaluate(node.value, constants)
        fields[node.target.id] = {"kind": kind, "type": type_name, "choices": choices, "bounded": bounded,
                                  "default": default, "node_types": node_types}
    return fields


def _ui_attributes_used(tree: ast.Module) -> Dict[str, int]:
    """``self.ui.<name>`` in the module code: name -> first line."""
    used: Dict[str, int] = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            used.setdefault(node.attr, node.lineno)
    return used


def test_ui_file_is_well_formed_designer_xml():
    root = _ui_root()  # raises on malformed XML
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top is not None and top.get("class") == "qMRMLWidget" and top.get("name") == MODULE_NAME, \
        "the .ui root must be a qMRMLWidget named after the module (slicer.util.loadUI + setMRMLScene)"
    names = [w.get("name") for w in _ui_widgets()]
    assert all(names), "every widget needs an objectName"
    assert len(names) == len(set(names)), f"duplicate objectNames: {sorted({n for n in names if names.count(n) > 1})}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in _ui_widgets() if not w.get("class", "").startswith("Q")}
    assert used <= declared, f"custom widget classes not declared in <customwidgets>: {sorted(used - declared)}"


def test_module_code_uses_only_widgets_of_the_ui():
    names = {w.get("name") for w in _ui_widgets()}
    missing = {name: line for name, line in _ui_attributes_used(module_file_tree()).items() if name not in names}
    assert not missing, "self.ui.<name> without such objectName in the .ui: " + ", ".join(
        f"{n} (line {line})" for n, line in sorted(missing.items()))


def test_every_control_has_a_tooltip():
    bare = [f"{w.get('name')} ({w.get('class')})" for w in _ui_widgets()
            if w.get("class") in CONTROL_CLASSES and not _property_text(w, "toolTip")]
    assert not bare, "controls without a toolTip: " + ", ".join(bare)


def test_ui_parameter_names_match_parameter_node_fields():
    fields = _parameter_fields()
    bound = [_property_text(w, "SlicerParameterName") for w in _ui_widgets()
             if _property(w, "SlicerParameterName") is not None]
    twice = sorted({n for n in bound if bound.count(n) > 1})
    unknown = sorted(set(bound) - set(fields))
    unbound = sorted(set(fields) - set(bound) - FIELDS_WITHOUT_WIDGET)
    problems = ([f"SlicerParameterName bound to several widgets: {twice}"] if twice else []) \
        + ([f"SlicerParameterName without a {PARAMETER_NODE_CLASS} field: {unknown}"] if unknown else []) \
        + ([f"{PARAMETER_NODE_CLASS} fields without a widget in the .ui: {unbound}"] if unbound else [])
    assert not problems, "\n".join(problems)


def test_bound_widgets_suit_their_fields():
    """What connectGui would refuse at run time (no connector for the widget class, a slider for
    an unbounded float), node selectors listing another node class, and defaults outside choices."""
    fields = _parameter_fields()
    problems = []
    for name, widget in _parameter_widgets().items():
        field = fields.get(name)
        if field is None:
            continue
        cls = widget.get("class")
        if cls not in CONNECTOR_WIDGETS.get(field["kind"], set()):
            problems.append(f"{name}: a {field['kind']} field ({field['type']}) cannot bind to {cls}")
        if cls in ("ctkSliderWidget", "QSlider") and not field["bounded"]:
            problems.append(f"{name}: a slider needs WithinRange on the field")
        if field["kind"] == "node":
            prop = _property(widget, "nodeTypes")
            node_types = [] if prop is None else [s.text for s in prop.iter("string")]
            if node_types != field["node_types"]:
                problems.append(f"{name}: nodeTypes {node_types} differ from the field type {field['type']}")
        if field["kind"] == "choice":
            if not field["choices"]:
                problems.append(f"{name}: Choice list could not be read statically")
            elif field["default"] not in field["choices"]:
                problems.append(f"{name}: default {field['default']!r} not among {field['choices']}")
    assert not problems, "\n".join(problems)


def test_mrml_widgets_receive_the_scene():
    """A node selector not connected to mrmlSceneChanged stays empty (a classic .ui bug)."""
    connected = {c.findtext("receiver") for c in _ui_root().iter("connection")
                 if c.findtext("sender") == MODULE_NAME and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in _ui_widgets() if w.get("class", "").startswith(("qMRML", "qSlicer"))}
    mrml.discard(MODULE_NAME)
    assert not mrml - connected, f"not connected to the scene: {sorted(mrml - connected)}"


def _glue(name: str):
    """A DISARegistrationLib module, imported as Slicer does (the module folder on sys.path)."""
    import importlib

    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    return importlib.import_module(f"DISARegistrationLib.{name}")


def test_sample_data_checksums_match_the_bundled_files():
    from disa.sample_data import case24

    sd = _glue("sample_data")
    assert len(sd.SAMPLE_FILES) == len(sd.SAMPLE_CHECKSUMS) == len(sd.SAMPLE_NODE_NAMES)
    case = case24()
    assert [os.path.join(sd.SAMPLE_FOLDER, f) for f in sd.SAMPLE_FILES] == [str(case.fixed), str(case.moving)]
    assert os.path.join(sd.SAMPLE_FOLDER, sd.SAMPLE_LANDMARKS) == str(case.landmarks)
    assert os.path.isfile(sd.ICON)
    for name, checksum in zip(sd.SAMPLE_FILES, sd.SAMPLE_CHECKSUMS):
        digest = hashlib.sha256(Path(sd.SAMPLE_FOLDER, name).read_bytes()).hexdigest()
        assert checksum == f"SHA256:{digest}", f"{name}: update its checksum to SHA256:{digest}"


def test_panel_choices_are_the_engine_names_with_labels():
    """The metric lists name exactly what the engine offers; every stored choice has a label."""
    from disa.similarity.maps import METRICS as MAP_METRICS
    from disa.similarity.spec import METRIC_NAMES

    constants = _module_constants(module_file_tree())
    assert sorted(constants["METRICS"]) == sorted(list(METRIC_NAMES) + ["combined"])
    assert sorted(constants["MAP_METRICS"]) == sorted(MAP_METRICS)
    labels = _glue("widget_helpers").CHOICE_LABELS
    unlabelled = sorted({c for f in _parameter_fields().values() if f["choices"] for c in f["choices"]} - set(labels))
    assert not unlabelled, f"add labels to widget_helpers.CHOICE_LABELS: {unlabelled}"
