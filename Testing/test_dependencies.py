"""Installing the engine's packages in Slicer (DISARegistrationLib/dependencies.py), without Slicer:
the decisions (what is missing or too old, what to tell the user, which commands) and the
install job, run on real child processes: it never blocks its caller, reports failures in one
line, stops at the first failure and can be cancelled."""
from __future__ import annotations

import sys
import time

import pytest

import disa
from DISARegistrationLib import dependencies as deps

PY = sys.executable


def versions(**installed):
    """version_of for check_dependencies: the given versions, everything else current."""
    current = {"torch": "2.13.0+cpu", "numpy": "2.4.0", "scipy": "1.17.1", "SimpleITK": "2.5.0", "Py-BOBYQA": "1.5.0"}
    current.update({name.replace("_", "-"): v for name, v in installed.items()})
    return current.get


def test_versions_compare_by_release_numbers():
    assert deps.is_at_least("2.13.0+cpu", disa.MIN_TORCH) and deps.is_at_least("2.1", "2.1.0")
    assert deps.is_at_least("10.0", "9.9") and deps.is_at_least("2.1.0a0", "2.1")
    assert not deps.is_at_least("2.0.1", "2.1") and not deps.is_at_least("1.13.1+cu117", "2.1")
    with pytest.raises(ValueError):
        deps.version_tuple("unknown")


def test_this_environment_is_ready():
    check = deps.check_dependencies()
    assert check.ready and not check.needs_restart and "are installed" in check.message()


def test_missing_and_old_torch_are_named_with_the_engine_minimum():
    missing = deps.check_dependencies(versions(torch=None, scipy=None))
    assert [r.distribution for r in missing.missing] == ["torch", "scipy"] and not missing.ready
    text = missing.message()
    assert f"torch>={disa.MIN_TORCH} (not installed)" in text and "scipy>=1.10 (not installed)" in text
    assert "restart" not in text
    old = deps.check_dependencies(versions(torch="1.13.1+cu117"), is_loaded=lambda module: False)
    assert old.outdated == [(deps.engine_requirements()[0], "1.13.1+cu117")] and not old.needs_restart
    assert f"torch>={disa.MIN_TORCH} (installed: 1.13.1+cu117, too old)" in old.message()
    # torch already imported in this process: the upgrade needs a restart, and the user is told.
    loaded = deps.check_dependencies(versions(torch="2.0.1"), is_loaded=lambda module: module == "torch")
    assert loaded.needs_restart and "restart Slicer" in loaded.message()


def test_install_commands_use_light_the_torch_for_torch_only():
    check = deps.check_dependencies(versions(torch="2.0.1", Py_BOBYQA=None), is_loaded=lambda module: False)
    commands = deps.install_commands(check, "PY", has_light_the_torch=False)
    assert commands == [["PY", "-m", "pip", "install", "Py-BOBYQA>=1.4"],
                        ["PY", "-m", "pip", "install", deps.LIGHT_THE_TORCH],
                        ["PY", "-m", "light_the_torch", "install", f"torch>={disa.MIN_TORCH}"]]
    assert deps.install_commands(check, "PY", has_light_the_torch=True)[1:] == [commands[2]]
    assert deps.install_commands(deps.check_dependencies(versions(scipy="1.2")), "PY") == [
        ["PY", "-m", "pip", "install", "scipy>=1.10"]]
    assert deps.install_commands(deps.check_dependencies(versions()), "PY") == []


def test_install_job_runs_commands_in_order_without_blocking(tmp_path):
    marker = tmp_path / "second-ran"
    job = deps.InstallJob([[PY, "-c", "import time; print('first'); time.sleep(1.0); print('still first')"],
                           [PY, "-c", f"open({str(marker)!r}, 'w').close(); print('second')"]])
    started = time.perf_counter()
    assert not job.poll() and not job.done  # the first command sleeps: poll returns at once
    assert time.perf_counter() - started < 0.5
    assert job.wait(timeout=30.0) and job.error is None
    assert job.lines == ["first", "still first", "second"] and marker.exists()


def test_install_job_stops_at_a_failure_with_one_line(tmp_path):
    marker = tmp_path / "must-not-run"
    job = deps.InstallJob([[PY, "-c", "import sys; print('ERROR: no matching distribution'); sys.exit(3)"],
                           [PY, "-c", f"open({str(marker)!r}, 'w').close()"]])
    assert job.wait(timeout=30.0)
    assert "exit code 3" in job.error and "no matching distribution" in job.error and "\n" not in job.error
    assert not marker.exists()
    assert deps.install_problem(job).startswith("Installation failed:")
    missing = deps.InstallJob([[str(tmp_path / "no-such-program")]])
    assert missing.done and "could not start" in missing.error


def test_install_job_cancel_kills_the_running_command(tmp_path):
    marker = tmp_path / "must-not-run"
    job = deps.InstallJob([[PY, "-c", "import time; print('downloading', flush=True); time.sleep(60)"],
                           [PY, "-c", f"open({str(marker)!r}, 'w').close()"]])
    job.wait(timeout=0.5)
    started = time.perf_counter()
    job.cancel()
    assert job.done and job.error == "installation cancelled" and job.poll()
    deadline = time.perf_counter() + 5.0
    while job._process.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert job._process.returncode is not None and time.perf_counter() - started < 5.0
    assert not marker.exists()


def test_after_an_upgrade_of_loaded_torch_the_user_must_restart():
    check = deps.check_dependencies(versions(torch="2.0.1"), is_loaded=lambda module: True)
    job = deps.InstallJob([[PY, "-c", "print('upgraded')"]], check=check)
    assert job.wait(timeout=30.0) and job.error is None
    assert "restart Slicer" in deps.install_problem(job)
    ready = deps.InstallJob([[PY, "-c", "print('ok')"]], check=deps.check_dependencies())
    assert ready.wait(timeout=30.0) and deps.install_problem(ready) is None


def test_declining_installs_nothing_and_says_what_is_missing():
    started = []
    check = deps.check_dependencies(versions(torch=None))
    with pytest.raises(RuntimeError, match=f"torch>={disa.MIN_TORCH}"):
        deps.ensure_installed(confirm=lambda message: False, launch=started.append, check=check)
    assert started == []
    deps.ensure_installed(confirm=lambda message: False, launch=started.append)  # ready here: nothing asked
    assert started == []
