"""The engine's Python packages inside Slicer: which are missing or too old, what to tell the
user, and installing them in a child process that never freezes Slicer.

Decisions (:func:`check_dependencies`, :func:`install_commands`) are plain Python and tested
without Slicer. :class:`InstallJob` runs the commands one after another and is polled, as
SlicerElastix runs elastix: Slicer's own ``slicer.util.pip_install`` and PyTorchUtils wait for
the process and refresh the GUI only when it prints a line, and a torch download prints nothing
for minutes. torch is installed as the PyTorch extension (PyTorchUtils) installs it, through
light-the-torch, which picks the build that matches the GPU driver; the version is the engine's
minimum (``disa.MIN_TORCH``), which PyTorchUtils alone would not enforce on an existing torch.

Nothing here imports torch or the engine's numerical code, so the module loads before torch is
installed.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from disa import MIN_TORCH, REQUIREMENTS

__all__ = ["Requirement", "DependencyCheck", "check_dependencies", "install_commands", "python_executable",
           "InstallJob", "start_install", "install_problem", "ensure_installed"]

#: Import name of each distribution the engine needs (pip and import names differ for some).
IMPORT_NAMES = {"torch": "torch", "numpy": "numpy", "scipy": "scipy", "SimpleITK": "SimpleITK",
                "Py-BOBYQA": "pybobyqa"}
#: The installer PyTorchUtils uses for torch.
LIGHT_THE_TORCH = "light-the-torch>=0.5"
#: Output lines an InstallJob keeps (pip prints thousands for a large install).
KEPT_LINES = 200


@dataclass(frozen=True)
class Requirement:
    distribution: str  # as pip names it
    module: str        # as Python imports it
    minimum: str       # oldest version accepted

    @property
    def spec(self) -> str:
        return f"{self.distribution}>={self.minimum}"


def engine_requirements() -> List[Requirement]:
    """disa.REQUIREMENTS as Requirement objects (torch first)."""
    out = []
    for text in REQUIREMENTS:
        name, minimum = text.split(">=")
        out.append(Requirement(name, IMPORT_NAMES[name], minimum))
    return out


def version_tuple(version: str) -> Tuple[int, ...]:
    """The numeric release part of a version: "2.13.0+cpu" -> (2, 13, 0), "2.1.0a0" -> (2, 1, 0)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(version))
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def is_at_least(installed: str, minimum: str) -> bool:
    a, b = version_tuple(installed), version_tuple(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution``, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class DependencyCheck:
    """What is missing or too old. ``loaded``: outdated packages already imported in this process,
    so an upgrade takes effect only after Slicer restarts."""

    missing: List[Requirement] = field(default_factory=list)
    outdated: List[Tuple[Requirement, str]] = field(default_factory=list)
    loaded: List[Requirement] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.missing and not self.outdated

    @property
    def to_install(self) -> List[Requirement]:
        return self.missing + [req for req, _ in self.outdated]

    @property
    def needs_restart(self) -> bool:
        return bool(self.loaded)

    def message(self) -> str:
        """One paragraph for the user: what is needed and why, or that all is there."""
        if self.ready:
            return "All Python packages DISA Registration needs are installed."
        parts = [f"{req.spec} (not installed)" for req in self.missing]
        parts += [f"{req.spec} (installed: {version}, too old)" for req, version in self.outdated]
        text = "DISA Registration needs " + ", ".join(parts) + "."
        if any(req.distribution == "torch" for req in self.to_install):
            text += (f" PyTorch {MIN_TORCH} or newer is the oldest version the registration engine runs on;"
                     " it is installed through light-the-torch, which picks the build for your GPU driver"
                     " (a download of up to a few GB).")
        if self.needs_restart:
            names = ", ".join(req.distribution for req in self.loaded)
            text += f" {names} is already loaded: restart Slicer after the upgrade."
        return text


def check_dependencies(version_of: Callable[[str], Optional[str]] = installed_version,
                       is_loaded: Callable[[str], bool] = lambda module: module in sys.modules) -> DependencyCheck:
    """Compare what is installed (``version_of(distribution)``) with the engine's requirements."""
    check = DependencyCheck()
    for req in engine_requirements():
        version = version_of(req.distribution)
        if version is None:
            check.missing.append(req)
        elif not is_at_least(version, req.minimum):
            check.outdated.append((req, version))
            if is_loaded(req.module):
                check.loaded.append(req)
    return check


def python_executable() -> str:
    """The Python that installs into this process's environment: Slicer's PythonSlicer when it
    is on the PATH (inside Slicer), else the running interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def install_commands(check: DependencyCheck, python: str,
                     has_light_the_torch: Optional[bool] = None) -> List[List[str]]:
    """The commands that install or upgrade what ``check`` found missing or too old."""
    pip = [python, "-m", "pip", "install"]
    others = [req.spec for req in check.to_install if req.distribution != "torch"]
    commands = [pip + others] if others else []
    torch = next((req for req in check.to_install if req.distribution == "torch"), None)
    if torch is not None:
        if has_light_the_torch is None:
            has_light_the_torch = importlib.util.find_spec("light_the_torch") is not None
        if not has_light_the_torch:
            commands.append(pip + [LIGHT_THE_TORCH])
        commands.append([python, "-m", "light_the_torch", "install", torch.spec])
    return commands


def _popen(command: Sequence[str]):
    return subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")


class InstallJob:
    """Runs ``commands`` one after another in child processes; poll it, it never blocks.

    ``launch(command)`` starts one and returns a Popen-like object whose ``stdout`` gives text
    lines (inside Slicer: ``slicer.util.launchConsoleProcess``, which hides the console window on
    Windows). A thread reads the output, so a silent download does not stall anything.
    ``lines``: the latest output lines. ``error``: None, or one line saying what failed.
    """

    def __init__(self, commands: Sequence[Sequence[str]], launch: Callable = _popen,
                 check: Optional[DependencyCheck] = None):
        if not commands:
            raise ValueError("nothing to install")
        self.check = check  # what the commands install, if known
        self._pending = [list(c) for c in commands]
        self._launch = launch
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.lines: List[str] = []
        self.error: Optional[str] = None
        self.done = False
        self.command: List[str] = []
        self._process = None
        self._reading = False
        self._start_next()

    def _start_next(self) -> None:
        self.command = self._pending.pop(0)
        try:
            self._process = self._launch(self.command)
        except OSError as exc:
            self._fail(f"could not start '{' '.join(self.command)}': {exc}")
            return
        self._reading = True
        threading.Thread(target=self._read, args=(self._process,), name="DISA install output", daemon=True).start()

    def _read(self, process) -> None:
        try:
            for line in process.stdout:
                self._lines.put(line.rstrip())
        finally:
            self._lines.put(None)  # end of this process's output

    def _fail(self, message: str) -> None:
        self.error, self.done = message, True

    def poll(self) -> bool:
        """Collect output; start the next command when one finishes. Returns ``done``."""
        while not self.done:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._reading = False
            elif line:
                self.lines = (self.lines + [line])[-KEPT_LINES:]
        if self.done or self._reading or self._process.poll() is None:
            return self.done
        code = self._process.returncode
        if code != 0:
            last = self.lines[-1] if self.lines else "no output"
            self._fail(f"'{' '.join(self.command)}' failed with exit code {code}: {last}")
        elif self._pending:
            self._start_next()
        else:
            importlib.invalidate_caches()  # let the running Python find what was just installed
            self.done = True
        return self.done

    def wait(self, timeout: Optional[float] = None, idle: Optional[Callable[[], None]] = None) -> bool:
        """Poll until done (calling ``idle``, e.g. Slicer's processEvents, in between) or ``timeout``."""
        end = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            if end is not None and time.monotonic() > end:
                break
            if idle is not None:
                idle()
            time.sleep(0.05)
        return self.done

    def cancel(self) -> None:
        """Stop the running command; nothing further starts."""
        if self.done:
            return
        self._pending = []
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._fail("installation cancelled")


def start_install(check: DependencyCheck, launch: Callable = _popen) -> InstallJob:
    """Start installing what ``check`` found missing or too old; returns the job to poll."""
    return InstallJob(install_commands(check, python_executable()), launch=launch, check=check)


def install_problem(job: InstallJob) -> Optional[str]:
    """Once ``job`` (from :func:`start_install`) is done: None when the engine can run now, else
    what stands in the way, in one line."""
    if job.error is not None:
        return f"Installation failed: {job.error}"
    if job.check is not None and job.check.needs_restart:
        return "The packages were upgraded; restart Slicer to use them."
    still = check_dependencies()
    return None if still.ready else still.message()


def ensure_installed(confirm: Optional[Callable[[str], bool]] = None, launch: Callable = _popen,
                     idle: Optional[Callable[[], None]] = None, check: Optional[DependencyCheck] = None) -> None:
    """Install what is missing or too old and wait for it (scripts, self-tests; the panel polls an
    InstallJob instead). ``confirm(message)`` may decline; ``idle`` runs while waiting (Slicer's
    processEvents, so the application keeps repainting). Raises RuntimeError saying what is wrong
    when the user declines, the installation fails, or Slicer must restart to use an upgrade."""
    check = check_dependencies() if check is None else check
    if check.ready:
        return
    if confirm is not None and not confirm(check.message() + "\n\nInstall now?"):
        raise RuntimeError(check.message())
    job = start_install(check, launch)
    job.wait(idle=idle)
    problem = install_problem(job)
    if problem is not None:
        raise RuntimeError(problem)
