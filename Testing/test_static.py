"""Static checks of what Slicer builds and loads: Python 3.9 syntax, the CMake file lists, the
.ui panel against the module code and its parameter node, the extension metadata, and that the
engine and the Slicer-side library import without Qt."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "DISARegistration"
MODULE_NAME = "DISARegistration"
#: Sub-folders with their own CMakeLists (Slicer-side tests), not listed in the module's lists.
OWN_CMAKE_DIRS = ("Testing/",)
PY39_CANDIDATES = ("/root/.pyenv/versions/3.9.18/bin/python3.9", "python3.9")


def module_file_tree() -> ast.Module:
    """The scripted module file's syntax tree."""
    return ast.parse((MODULE_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8"))


# the tree ---------------------------------------------------------------------------------------
def _git_files() -> Optional[List[str]]:
    """Files under DISARegistration/ that git tracks or would track (ignored files excluded)."""
    if shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z",
                              "--", "DISARegistration"], cwd=REPO, capture_output=True, check=True,
                             timeout=60).stdout.decode()
    except (subprocess.SubprocessError, OSError):
        return None
    return [p for p in out.split("\0") if p]


def _walk_files() -> List[str]:
    """Fallback without git: every file except caches and build outputs."""
    found = []
    for root, dirs, files in os.walk(MODULE_DIR):
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d == "__pycache__" or d.endswith(".egg-info"))]
        for name in files:
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            found.append(os.path.relpath(os.path.join(root, name), REPO).replace(os.sep, "/"))
    return found


def all_module_files() -> List[str]:
    """Paths relative to DISARegistration/ of every existing, non-ignored file under it."""
    files = _git_files()
    if files is None:
        files = _walk_files()
    return sorted({p[len("DISARegistration/"):] for p in files
                   if p.startswith("DISARegistration/") and (REPO / p).is_file()})


def module_tree() -> List[str]:
    """The files the module's CMakeLists must list (sub-folders with their own CMake excluded)."""
    return [p for p in all_module_files()
            if not p.startswith(OWN_CMAKE_DIRS) and os.path.basename(p) != "CMakeLists.txt"]


def expected_lists() -> Dict[str, List[str]]:
    tree = module_tree()
    scripts = [p for p in tree if p.endswith(".py")]
    module_file = f"{MODULE_NAME}.py"
    scripts = ([module_file] if module_file in scripts else []) + [p for p in scripts if p != module_file]
    resources = [p for p in tree if not p.endswith(".py")]
    return {"MODULE_PYTHON_SCRIPTS": scripts, "MODULE_PYTHON_RESOURCES": resources}


def python_files() -> List[Path]:
    """Every Python file Slicer may load, Slicer-side tests included."""
    return [MODULE_DIR / p for p in all_module_files() if p.endswith(".py")]


# CMake parsing ----------------------------------------------------------------------------------
def _strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def cmake_set(text: str, variable: str) -> Optional[List[str]]:
    """Items of ``set(variable item...)`` (quotes removed), or None if there is no such set()."""
    match = re.search(r"\bset\s*\(\s*" + re.escape(variable) + r"\b(.*?)\)", _strip_comments(text),
                      re.IGNORECASE | re.DOTALL)
    if match is None:
        return None
    return [item.strip('"') for item in match.group(1).split()]


def _expand(items: List[str], variables: Dict[str, str]) -> List[str]:
    out = []
    for item in items:
        for name, value in variables.items():
            item = item.replace("${" + name + "}", value)
        out.append(item)
    return out


def _format_set(variable: str, items: List[str]) -> str:
    """A set() block as the Slicer template writes it (``${MODULE_NAME}`` for the module's name)."""
    def templated(item: str) -> str:
        folder, name = os.path.split(item)
        stem, dot, suffix = name.partition(".")
        return os.path.join(folder, "${MODULE_NAME}" + dot + suffix) if stem == MODULE_NAME else item

    body = "".join(f"  {templated(item)}\n" for item in items)
    return f"set({variable}\n{body}  )"


def expected_blocks() -> str:
    return "\n\n".join(_format_set(v, items) for v, items in expected_lists().items())


# (a) Python 3.9 ---------------------------------------------------------------------------------
def _uses_pipe_union_at_runtime(tree: ast.Module) -> List[int]:
    """Lines with ``X | Y`` in annotations of a file without ``from __future__ import annotations``
    (evaluated at definition time, a TypeError on Python 3.9)."""
    future = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                 and any(a.name == "annotations" for a in node.names) for node in tree.body)
    if future:
        return []
    lines = []
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            annotations += [a.annotation for a in args.args + args.kwonlyargs + args.posonlyargs]
            annotations += [args.vararg and args.vararg.annotation, args.kwarg and args.kwarg.annotation,
                            node.returns]
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for ann in annotations:
            if ann is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                       for n in ast.walk(ann)):
                lines.append(ann.lineno)
    return lines


def test_python_files_parse_as_python39():
    files = python_files()
    assert any(f.name == f"{MODULE_NAME}.py" for f in files), "the module file is missing"
    problems = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
        except SyntaxError as exc:
            problems.append(f"{path.relative_to(REPO)}:{exc.lineno}: not Python 3.9 syntax: {exc.msg}")
            continue
        for line in _uses_pipe_union_at_runtime(tree):
            problems.append(f"{path.relative_to(REPO)}:{line}: 'X | Y' annotation needs "
                            "'from __future__ import annotations' on Python 3.9")
    assert not problems, "\n".join(problems)


def _python39() -> Optional[str]:
    for candidate in PY39_CANDIDATES:
        exe = candidate if os.path.isabs(candidate) else shutil.which(candidate)
        if not exe or not os.path.exists(exe):
            continue
        try:
            version = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=30).stdout.strip()
        except (subprocess.SubprocessError, OSError):
            continue
        if version == "(3, 9)":
            return exe
    return None


def test_python_files_compile_under_python39():
    exe = _python39()
    if exe is None:
        pytest.skip("no Python 3.9 interpreter found (looked for " + ", ".join(PY39_CANDIDATES) + ")")
    files = [str(p) for p in python_files()]
    with tempfile.TemporaryDirectory() as tmp:
        # cfile into a temporary folder: no __pycache__ left in the source tree.
        script = ("import json, os, py_compile, sys\n"
                  "errors = []\n"
                  "for i, f in enumerate(json.loads(sys.argv[1])):\n"
                  "    try:\n"
                  "        py_compile.compile(f, cfile=os.path.join(sys.argv[2], str(i) + '.pyc'), doraise=True)\n"
                  "    except py_compile.PyCompileError as exc:\n"
                  "        errors.append(exc.msg)\n"
                  "print('\\n'.join(errors))\n"
                  "sys.exit(1 if errors else 0)\n")
        run = subprocess.run([exe, "-c", script, json.dumps(files), tmp], capture_output=True, text=True,
                             timeout=120)
    assert run.returncode == 0, f"py_compile under {exe} failed:\n{run.stdout}{run.stderr}"


# (b) module CMakeLists ----------------------------------------------------------------------------
def test_module_cmakelists_lists_every_script_and_resource():
    cmake = MODULE_DIR / "CMakeLists.txt"
    text = cmake.read_text(encoding="utf-8")
    module_name = cmake_set(text, "MODULE_NAME")
    assert module_name == [MODULE_NAME], f"set(MODULE_NAME {MODULE_NAME}) missing in {cmake}"
    variables = {"MODULE_NAME": MODULE_NAME}
    expected = expected_lists()
    report = []
    for variable, want in expected.items():
        items = cmake_set(text, variable)
        if items is None:
            report.append(f"no set({variable} ...) block")
            continue
        listed = _expand(items, variables)
        duplicates = sorted({item for item in listed if listed.count(item) > 1})
        missing = [p for p in want if p not in listed]
        extra = [p for p in listed if p not in want]
        if duplicates:
            report.append(f"{variable}: listed twice:\n" + "".join(f"  {p}\n" for p in duplicates))
        if missing:
            report.append(f"{variable}: add (file exists, not listed):\n" + "".join(f"  {p}\n" for p in missing))
        if extra:
            why = {p: "no such file" if not (MODULE_DIR / p).exists() else "not part of the module (ignored/test file)"
                   for p in extra}
            report.append(f"{variable}: remove:\n" + "".join(f"  {p}   ({why[p]})\n" for p in extra))
    if report:
        pytest.fail(f"{cmake.relative_to(REPO)} does not match the tree:\n\n" + "\n".join(report)
                    + "\nExpected blocks (paste over the old ones, or print them with "
                    "`python Testing/test_static.py`):\n\n" + expected_blocks(), pytrace=False)


def test_module_cmakelists_builds_and_tests_the_module():
    text = _strip_comments((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    call = re.search(r"slicerMacroBuildScriptedModule\s*\((.*?)\)", text, re.DOTALL)
    assert call, "slicerMacroBuildScriptedModule(...) call missing"
    args = call.group(1).split()
    for expected in (["NAME", "${MODULE_NAME}"], ["SCRIPTS", "${MODULE_PYTHON_SCRIPTS}"],
                     ["RESOURCES", "${MODULE_PYTHON_RESOURCES}"]):
        i = args.index(expected[0]) if expected[0] in args else -1
        assert i >= 0 and args[i + 1] == expected[1], f"slicerMacroBuildScriptedModule needs {' '.join(expected)}"
    assert "WITH_GENERIC_TESTS" in args
    testing = re.search(r"if\s*\(\s*BUILD_TESTING\s*\)(.*?)endif\s*\(", text, re.DOTALL)
    assert testing, "if(BUILD_TESTING) ... endif() block missing"
    assert re.search(r"slicer_add_python_unittest\s*\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", testing.group(1))
    has_testing_dir = (MODULE_DIR / "Testing" / "CMakeLists.txt").exists()
    adds_testing_dir = re.search(r"add_subdirectory\s*\(\s*Testing\s*\)", testing.group(1)) is not None
    assert has_testing_dir == adds_testing_dir, (
        "DISARegistration/Testing/CMakeLists.txt exists: add add_subdirectory(Testing) under BUILD_TESTING"
        if has_testing_dir else "add_subdirectory(Testing) names a folder without a CMakeLists.txt")


def test_module_icon_exists():
    for icon in (MODULE_DIR / "Resources" / "Icons" / f"{MODULE_NAME}.png",
                 REPO / "Resources" / "Icons" / f"{MODULE_NAME}.png"):
        data = icon.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{icon} is not a PNG"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (128, 128), f"{icon} is {width}x{height}; Slicer expects 128x128"


# (c) imports without Qt -------------------------------------------------------------------------
_IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
roots = json.loads(sys.argv[2])
failed, optional = [], []
for root in roots:
    names = [root]
    pkg = importlib.import_module(root)
    if hasattr(pkg, "__path__"):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, root + ".")]
    for name in names:
        if name.endswith(".__main__"):  # runs the command line when imported
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A missing third-party package (an optional benchmark dependency) is not our concern here.
            (failed if (exc.name or "").split(".")[0] in ("disa", "DISARegistrationLib") else optional).append(
                f"{name}: {exc}")
        except Exception as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
gui = sorted(m for m in sys.modules if m.split(".")[0] in ("qt", "ctk", "PythonQt", "PyQt5", "PySide2", "PySide6")
             or m == "slicer.app")
print(json.dumps({"failed": failed, "optional": optional, "gui": gui, "has_app": hasattr(sys.modules.get("slicer"), "app"),
                  "slicer": "slicer" in sys.modules, "vtk": any(m.startswith(("vtk", "vtkmodules")) for m in sys.modules)}))
"""


def _import_in_subprocess(roots: List[str]) -> dict:
    run = subprocess.run([sys.executable, "-c", _IMPORT_ALL, str(MODULE_DIR), json.dumps(roots)],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_engine_imports_without_slicer_or_qt():
    result = _import_in_subprocess(["disa"])
    assert not result["failed"], "disa modules fail to import:\n" + "\n".join(result["failed"])
    assert not result["gui"], f"the engine imported GUI modules: {result['gui']}"
    assert not result["slicer"], "the engine imported slicer; it must stay independent of Slicer"


#: Top-level packages the engine must not import: Slicer, its GUI toolkits and the Slicer-side glue.
SLICER_SIDE = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "DISARegistrationLib", "SampleData"}
#: The one deliberate exception: `disa demo --scene` writes its scene through the glue, imported in
#: that command's handler only (file, function, module).
ALLOWED_SLICER_SIDE_IMPORTS = {("disa/cli.py", "cmd_demo", "DISARegistrationLib.demo_scene")}


def _imports_by_function(tree: ast.Module):
    """(enclosing top-level function or None, imported module) for every import in ``tree``."""
    found = []
    for top in tree.body:
        function = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                found += [(function, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((function, node.module))
    return found


def test_engine_source_never_imports_slicer_side_code():
    """Also imports inside functions, which importing the package does not run."""
    problems = []
    for path in sorted((MODULE_DIR / "disa").rglob("*.py")):
        rel = path.relative_to(MODULE_DIR).as_posix()
        for function, module in _imports_by_function(ast.parse(path.read_text(encoding="utf-8"))):
            if module.split(".")[0] in SLICER_SIDE and (rel, function, module) not in ALLOWED_SLICER_SIDE_IMPORTS:
                problems.append(f"{rel}: {'in ' + function + '(): ' if function else ''}import {module}")
    assert not problems, "the engine imports Slicer-side code:\n" + "\n".join(problems)
    assert not any(".path" in line and "sys" in line and ("append" in line or "insert" in line)
                   for path in (MODULE_DIR / "disa").rglob("*.py")
                   for line in path.read_text(encoding="utf-8").splitlines()), "the engine changes sys.path"


def test_slicer_side_library_imports_without_qt():
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    result = _import_in_subprocess(["DISARegistrationLib"])
    assert not result["failed"], "DISARegistrationLib modules fail to import:\n" + "\n".join(result["failed"])
    assert not result["gui"], f"DISARegistrationLib imported GUI modules: {result['gui']}"
    assert not result["has_app"], "DISARegistrationLib made slicer.app available (it must not need it)"


#: What Slicer's Python may lack before the module offers to install it.
ENGINE_PACKAGES = ("torch", "scipy", "SimpleITK", "pybobyqa")


def _module_file_imports(prefixes=("disa", "DISARegistrationLib")) -> List[str]:
    tree = ast.parse((MODULE_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8"))
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return sorted({n for n in names if n.split(".")[0] in prefixes})


def test_module_file_loads_before_torch_is_installed():
    """DISARegistration.py must load in Slicer before torch is installed (it then offers to
    install it): what it imports from the engine and the glue imports with torch, SciPy,
    SimpleITK and Py-BOBYQA blocked."""
    imported = _module_file_imports()
    assert "disa.registration.defaults" in imported  # the panel's defaults are the engine's table
    script = ("import importlib, sys\n"
              f"for name in {ENGINE_PACKAGES!r}: sys.modules[name] = None  # as if not installed\n"
              "sys.path.insert(0, sys.argv[1])\n"
              "for name in sys.argv[2:]: importlib.import_module(name)\n")
    run = subprocess.run([sys.executable, "-c", script, str(MODULE_DIR)] + imported, capture_output=True, text=True,
                         timeout=120, cwd=str(REPO))
    assert run.returncode == 0, f"the module file's imports need an engine package:\n{run.stderr[-2000:]}"
    tree = module_file_tree()
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {MODULE_NAME, f"{MODULE_NAME}Widget", f"{MODULE_NAME}Logic", f"{MODULE_NAME}Test",
            f"{MODULE_NAME}ParameterNode"} <= classes
    assert len((MODULE_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8").splitlines()) < 600


# (d) the panel's file in the module's lists (the panel itself: test_panel_static.py) ----------
def test_ui_is_listed_in_module_cmakelists():
    items = _expand(cmake_set((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"),
                              "MODULE_PYTHON_RESOURCES") or [], {"MODULE_NAME": MODULE_NAME})
    assert f"Resources/UI/{MODULE_NAME}.ui" in items, "add Resources/UI/${MODULE_NAME}.ui to MODULE_PYTHON_RESOURCES"


def test_engine_requirements_match_pyproject():
    """disa.REQUIREMENTS (what the Slicer module installs and checks) is what pip installs."""
    import disa

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.MULTILINE | re.DOTALL).group(1)
    assert sorted(re.findall(r'"([^"]+)"', block)) == sorted(disa.REQUIREMENTS)
    assert f"torch>={disa.MIN_TORCH}" in disa.REQUIREMENTS


#: How a hand-written RAS/LPS flip looks: a sign vector or diagonal with -1, -1, 1.
_FLIP_PATTERN = re.compile(r"\[\s*-1(?:\.0*)?\s*,\s*-1(?:\.0*)?\s*,\s*1(?:\.0*)?\s*[,\]]")


def test_ras_lps_flips_live_in_one_module():
    owner = "disa/spatial/frames.py"
    found = [f"{p}:{i}" for p in module_tree() if p.endswith(".py") and p != owner
             for i, line in enumerate((MODULE_DIR / p).read_text(encoding="utf-8").splitlines(), 1)
             if _FLIP_PATTERN.search(line)]
    assert not found, f"RAS/LPS flips outside {owner} (call its functions instead): {found}"
    assert _FLIP_PATTERN.search((MODULE_DIR / owner).read_text(encoding="utf-8"))  # the pattern finds the real one


# (e) extension metadata -------------------------------------------------------------------------
#: Words of template placeholders that must not reach the extension index.
PLACEHOLDERS = ("contributors", "todo", "example", "yourname", "firstname", "lastname", "placeholder")


def test_top_level_cmakelists_declares_the_extension():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    depends = cmake_set(text, "EXTENSION_DEPENDS")
    assert depends is not None and "PyTorch" in depends, "EXTENSION_DEPENDS must list PyTorch"
    assert cmake_set(text, "EXTENSION_CATEGORY") == ["Registration"]
    assert cmake_set(text, "EXTENSION_DESCRIPTION"), "EXTENSION_DESCRIPTION is not set"
    body = _strip_comments(text)
    for pattern in (r"find_package\s*\(\s*Slicer\s+REQUIRED\s*\)", r"include\s*\(\s*\$\{Slicer_USE_FILE\}\s*\)",
                    r"add_subdirectory\s*\(\s*DISARegistration\s*\)",
                    r"include\s*\(\s*\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\s*\)",
                    r"include\s*\(\s*\$\{Slicer_EXTENSION_CPACK\}\s*\)"):
        assert re.search(pattern, body), f"top-level CMakeLists.txt lacks {pattern}"


def test_extension_metadata_is_true_or_left_out():
    """No placeholder names; a URL only to a file this repository holds (Slicer fills fields left
    out with empty defaults). The project has no published address yet, so none is set."""
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    contributors = " ".join(cmake_set(text, "EXTENSION_CONTRIBUTORS") or []).lower()
    assert not any(word in contributors for word in PLACEHOLDERS), f"placeholder contributors: {contributors}"
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in cmake_set(text, variable) or []:
            path = re.sub(r"^https?://[^/]+/[^/]+/[^/]+/(?:raw/)?[^/]+/", "", url)
            assert (REPO / path).is_file(), f"{variable} points to {url}, a file this repository does not hold"
    module = module_file_tree()
    init = next(n for n in ast.walk(module) if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    listed = [ast.unparse(n.value) for n in ast.walk(init) if isinstance(n, ast.Assign)
              and any(ast.unparse(t) == "self.parent.contributors" for t in n.targets)]
    assert listed and not any(word in listed[0].lower() for word in PLACEHOLDERS), listed


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


if __name__ == "__main__":
    # Print the set() blocks the module CMakeLists.txt should hold for the current tree.
    print(expected_blocks())
