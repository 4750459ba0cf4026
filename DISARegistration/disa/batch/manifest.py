"""The cohort manifest: one row per case, checked as a whole before any work starts.

A manifest is a CSV file (or, from Python, a list of dicts) with these columns:

    case              the case's name: its output folder DIR/<case> (letters, digits, . _ -)
    fixed, moving     the volumes (NIfTI, NRRD, MHA)
    initial_transform optional ITK transform file (fixed -> moving) to start from
    fixed_landmarks, moving_landmarks   optional, both or neither: landmark error (TRE)
    fixed_labels, moving_labels         optional, both or neither: Dice and HD95
    options           optional per-case options in ``disa register``'s syntax, e.g.
                      ``--metric ncc --transform affine``; they override the cohort's

Paths are relative to the manifest's folder (rows given as dicts: to ``base_dir``, default
the current folder). Every problem found here is one InputError line naming the row.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

from ..errors import InputError

REQUIRED = ("case", "fixed", "moving")
#: Optional file columns, in the order the summary and messages list them.
OPTIONAL_FILES = ("initial_transform", "fixed_landmarks", "moving_landmarks", "fixed_labels", "moving_labels")
COLUMNS = REQUIRED + OPTIONAL_FILES + ("options",)
#: Columns that come in pairs: one without the other is refused.
PAIRS = (("fixed_landmarks", "moving_landmarks"), ("fixed_labels", "moving_labels"))
#: Names the cohort's own files take in the output folder (a case may not take them).
RESERVED_NAMES = ("summary.csv", "summary.md", "errors.png")
#: A safe case name: a plain file name, no folder parts, no leading dot.
CASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: Options a row may not set: the batch chooses them for the whole cohort.
COHORT_ONLY = ("threads",)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class CaseSpec:
    """One checked row: absolute input paths (None where absent) and its own option overrides."""

    case: str
    fixed: str
    moving: str
    initial_transform: str | None = None
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    fixed_labels: str | None = None
    moving_labels: str | None = None
    options: dict[str, object] = field(default_factory=dict)
    options_text: str = ""

    def inputs(self) -> dict[str, str]:
        """The input files by column (present ones only)."""
        return {name: getattr(self, name) for name in ("fixed", "moving") + OPTIONAL_FILES
                if getattr(self, name) is not None}


class _OptionsParser(argparse.ArgumentParser):
    """Parses a row's ``options`` text; errors become InputError instead of an exit."""

    def error(self, message):
        raise InputError(message)


def _options_parser() -> argparse.ArgumentParser:
    from ..cli import (
        add_registration_options,  # argparse only; shared with `disa register`
    )

    parser = _OptionsParser(prog="options", add_help=False)
    add_registration_options(parser)
    return parser


#: What a row's options leave unset (argparse fills no default into a namespace that has one).
_ABSENT = object()


def parse_case_options(text: str, parser: argparse.ArgumentParser | None = None) -> dict[str, object]:
    """``"--metric ncc --transform affine"`` -> ``{"metric": MetricSpec(ncc), "transform": "affine"}``
    (register's keyword names); InputError on anything ``disa register`` would refuse."""
    try:
        tokens = shlex.split(text or "")
    except ValueError as exc:
        raise InputError(f"cannot split the options {text!r}: {exc}") from None
    if not tokens:
        return {}
    from .. import cli

    parser = parser or _options_parser()
    unset = argparse.Namespace(**{name: _ABSENT for name in vars(parser.parse_args([]))})
    parsed = {k: v for k, v in vars(parser.parse_args(tokens, namespace=unset)).items() if v is not _ABSENT}
    parsed.pop("quiet", None)
    for name in COHORT_ONLY:
        if name in parsed:
            raise InputError(f"--{name} applies to the whole cohort, not to one row")
    # The dense stage's settings go to register as one dict, as registration_kwargs puts them.
    dense_names = getattr(cli, "DENSE_ARGUMENTS", {})
    dense = {dense_names[name]: parsed.pop(name) for name in list(parsed) if name in dense_names}
    if dense:
        parsed["dense"] = dense
    return parsed


def check_case_name(name: str) -> str:
    if not CASE_NAME.fullmatch(name) or name.lower() in RESERVED_NAMES:
        raise InputError(f"unsafe case name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
                         f"not starting with '.' (it names the folder DIR/<case>)")
    return name


def _resolve(value: str, base_dir: str) -> str:
    path = os.path.expanduser(value.strip())
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def landmark_file(path: str) -> str:
    """The file behind a landmark column (``FILE.tag:1`` names FILE.tag)."""
    head, sep, tail = path.rpartition(":")
    return head if sep and tail in ("1", "2") and head.lower().endswith(".tag") else path


def _check_file(path: str, where: str) -> None:
    probe = landmark_file(path)
    if not os.path.exists(probe):
        raise InputError(f"{where}: file not found: {probe}")
    if os.path.isdir(probe):
        raise InputError(f"{where}: {probe} is a folder, not a file")


def read_rows(manifest: PathLike) -> list[dict[str, str]]:
    """The rows of a manifest CSV as dicts (header names lower case, values stripped)."""
    path = os.fspath(manifest)
    if not os.path.isfile(path):
        raise InputError(f"manifest not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            lines = [row for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the manifest {path}: {exc}") from None
    if not lines:
        raise InputError(f"the manifest {path} is empty: give a header (case,fixed,moving,...) and one row per case")
    header = [h.strip().lower() for h in lines[0]]
    rows = []
    for number, cells in enumerate(lines[1:], start=2):
        if len(cells) > len(header):
            raise InputError(f"manifest line {number}: {len(cells)} values for {len(header)} columns")
        rows.append({h: c.strip() for h, c in zip(header, cells)})
    if not rows:
        raise InputError(f"the manifest {path} has a header but no case")
    return rows


def check_rows(rows: Iterable[Mapping[str, object]], base_dir: PathLike = ".") -> list[CaseSpec]:
    """Every row checked (columns, names, files, options) before any work; InputError on the first
    problem, naming the row."""
    rows = list(rows)
    if not rows:
        raise InputError("the cohort is empty: give at least one case")
    base = os.path.abspath(os.fspath(base_dir))
    parser = None
    specs: list[CaseSpec] = []
    seen: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise InputError(f"row {number}: a case is a dict of columns, not {type(row).__name__}")
        values = {str(k).strip().lower(): ("" if v is None else str(v).strip()) for k, v in row.items()}
        unknown = sorted(set(values) - set(COLUMNS))
        if unknown:
            raise InputError(f"row {number}: unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)}")
        for name in REQUIRED:
            if not values.get(name):
                raise InputError(f"row {number}: the {name!r} column is empty or missing")
        case = check_case_name(values["case"])
        where = f"case {case!r}"
        if case.lower() in seen:
            raise InputError(f"{where}: duplicate case name (also {seen[case.lower()]!r}); names must be unique")
        seen[case.lower()] = case
        for first, second in PAIRS:
            if bool(values.get(first)) != bool(values.get(second)):
                raise InputError(f"{where}: {first} and {second} go together; give both or neither")
        files = {}
        for name in ("fixed", "moving") + OPTIONAL_FILES:
            if values.get(name):
                files[name] = _resolve(values[name], base)
                _check_file(files[name], f"{where}, {name}")
        text = values.get("options", "")
        if text and parser is None:
            parser = _options_parser()
        try:
            options = parse_case_options(text, parser)
        except InputError as exc:
            raise InputError(f"{where}, options: {exc}") from None
        specs.append(CaseSpec(case=case, options=options, options_text=text, **files))
    return specs


def read_manifest(manifest: PathLike | Sequence[Mapping[str, object]],
                  base_dir: PathLike | None = None) -> list[CaseSpec]:
    """The checked cases of a manifest CSV (paths relative to its folder) or of a list of row
    dicts (paths relative to ``base_dir``, default the current folder)."""
    if isinstance(manifest, (str, bytes, os.PathLike)):
        path = os.fsdecode(manifest)
        folder = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
        return check_rows(read_rows(path), folder)
    return check_rows(manifest, "." if base_dir is None else base_dir)


def check_outputs_apart(specs: Sequence[CaseSpec], output_dir: str) -> None:
    """No input may lie inside a case's output folder (it is replaced as a whole)."""
    out = os.path.realpath(output_dir)
    for spec in specs:
        folder = os.path.join(out, spec.case)
        for name, path in spec.inputs().items():
            real = os.path.realpath(landmark_file(path))
            if os.path.commonpath([real, folder]) == folder:
                raise InputError(f"case {spec.case!r}: the {name} input {path} lies in its output folder "
                                 f"{folder}, which a run replaces; move the input or choose another --output-dir")
