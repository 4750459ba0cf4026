"""Landmark sets: read and write MNI .tag, Slicer .fcsv / .mrk.json and plain .csv files.

Every reader returns points in LPS millimetres (the engine's convention), whatever the file
stores; every writer states its coordinate system in the file so that the readers read it back
exactly. Landmarks are paired by order (row i of the fixed set with row i of the moving set);
labels are carried for reports only.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError, existing_file
from ..spatial.frames import lps_to_ras_points, ras_to_lps_points

PathLike = Union[str, "os.PathLike[str]"]

#: Suffixes ``read_landmarks`` understands (``.tag`` needs a ``:1`` / ``:2`` volume selector).
SUPPORTED_SUFFIXES = (".tag", ".fcsv", ".mrk.json", ".json", ".csv")


@dataclass
class Landmarks:
    """N points in LPS millimetres with one label each (labels default to "1".."N")."""

    points: np.ndarray
    labels: Optional[List[str]] = None

    def __post_init__(self):
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.ndim == 1 and pts.size == 3:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"landmark points must be an (N, 3) array, got shape {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise InputError("landmark points contain NaN or infinite coordinates")
        self.points = pts
        if self.labels is None:
            self.labels = [str(i + 1) for i in range(len(pts))]
        self.labels = [str(label) for label in self.labels]
        if len(self.labels) != len(pts):
            raise InputError(f"{len(self.labels)} labels given for {len(pts)} landmark points")

    def __len__(self) -> int:
        return len(self.points)


def _coordinate_system(name: str, where: str) -> str:
    """Normalise 'LPS'/'RAS' (any case); anything else is an InputError naming ``where``."""
    value = str(name).strip().upper()
    if value not in ("LPS", "RAS"):
        raise InputError(f"{where}: coordinate system must be 'LPS' or 'RAS', got {name!r}")
    return value


def _to_lps(points: np.ndarray, system: str) -> np.ndarray:
    """Points read in ``system`` -> LPS (a copy)."""
    return ras_to_lps_points(points) if system == "RAS" else np.array(points, dtype=np.float64)


def _from_lps(points: np.ndarray, system: str) -> np.ndarray:
    """LPS points -> ``system``, for writing (a copy)."""
    return lps_to_ras_points(points) if system == "RAS" else np.array(points, dtype=np.float64)


def _read_text(path: PathLike) -> str:
    path = existing_file(path, "landmark")
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read landmark file {path}: {exc}") from exc


def _finish(path: PathLike, points: List[Sequence[float]], labels: List[str], system: str) -> Landmarks:
    if not points:
        raise InputError(f"{os.fspath(path)}: the file holds no landmark points")
    return Landmarks(_to_lps(np.asarray(points, dtype=np.float64), system), labels)


def _check_labels(labels: Sequence[str]) -> None:
    for label in labels:
        if "\n" in label or "\r" in label:
            raise InputError(f"landmark label {label!r} contains a line break, which these files cannot hold")


# MNI .tag -------------------------------------------------------------------------------------
_QUOTED = re.compile(r'"([^"]*)"')


def read_tag(path: PathLike) -> Tuple[Landmarks, Optional[Landmarks]]:
    """Read an MNI tag file: (volume-1 points, volume-2 points or None for a 1-volume file).

    Tag coordinates are RAS world millimetres; they are returned in LPS. Each point row holds
    3 x Volumes numbers, optionally the three numbers weight, structure id and patient id, and
    optionally a quoted label; the last row ends with ';'. Empty labels become "1".."N".
    For RESECT files volume 1 is the MRI and volume 2 the ultrasound.
    """
    path = os.fspath(path)
    text = _read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip().startswith("MNI Tag Point File"):
        raise InputError(f"{path}: not an MNI tag file (the first line must be 'MNI Tag Point File')")
    volumes = None
    start = None
    for i, line in enumerate(lines[1:], start=1):
        stripped = line.strip()
        m = re.match(r"Volumes\s*=\s*(\d+)\s*;", stripped)
        if m:
            volumes = int(m.group(1))
        elif stripped.startswith("Points"):
            if not re.match(r"Points\s*=", stripped):
                raise InputError(f"{path}, line {i + 1}: expected 'Points =', got {stripped!r}")
            lines[i] = stripped.split("=", 1)[1]  # a first point may share the line
            start = i
            break
    if volumes not in (1, 2):
        raise InputError(f"{path}: the header must declare 'Volumes = 1;' or 'Volumes = 2;'")
    if start is None:
        raise InputError(f"{path}: no 'Points =' section")
    ncoord = 3 * volumes
    pts: List[List[float]] = []
    labels: List[str] = []
    ended = False
    for i in range(start, len(lines)):
        row = lines[i].strip()
        if not row or row.startswith("%"):
            continue
        if ended:
            raise InputError(f"{path}, line {i + 1}: text after the closing ';' of the points")
        quoted = _QUOTED.findall(row)
        rest = _QUOTED.sub(" ", row).strip()
        if rest.endswith(";"):
            ended = True
            rest = rest[:-1].strip()
        if not rest and ended and not quoted:
            continue  # a lone ';' closing the list
        try:
            numbers = [float(tok) for tok in rest.split()]
        except ValueError:
            raise InputError(f"{path}, line {i + 1}: cannot parse point row {row!r}") from None
        if len(numbers) not in (ncoord, ncoord + 3) or len(quoted) > 1:
            raise InputError(
                f"{path}, line {i + 1}: expected {ncoord} coordinates (Volumes = {volumes}), optionally "
                f"3 more numbers and a quoted label, got {row!r}"
            )
        pts.append(numbers[:ncoord])
        labels.append(quoted[0] if quoted and quoted[0] else str(len(pts)))
    if not ended:
        raise InputError(f"{path}: the point list does not end with ';' (truncated file?)")
    if not pts:
        raise InputError(f"{path}: the file holds no landmark points")
    arr = np.asarray(pts, dtype=np.float64)
    first = Landmarks(_to_lps(arr[:, :3], "RAS"), labels)
    second = Landmarks(_to_lps(arr[:, 3:6], "RAS"), list(labels)) if volumes == 2 else None
    return first, second


# Slicer .fcsv ---------------------------------------------------------------------------------
# Default columns of Slicer 4.x/5.x files, and of unversioned Slicer 3 files.
_FCSV_COLUMNS = ["id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc",
                 "associatedNodeID"]
_FCSV3_COLUMNS = ["label", "x", "y", "z", "sel", "vis"]


def read_fcsv(path: PathLike) -> Landmarks:
    """Read a Slicer Markups fiducial CSV (.fcsv) file; points are returned in LPS.

    The ``# CoordinateSystem =`` header may say LPS, RAS, 0 (RAS) or 1 (LPS). Without it the
    file is taken as RAS: Slicer 4.11 and later always write the header, and the older versions
    that did not write it stored RAS. Columns follow the ``# columns =`` header when present.
    """
    path = os.fspath(path)
    text = _read_text(path)
    system = "RAS"
    columns: Optional[List[str]] = None
    versioned = False
    data_lines = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "markups fiducial file version":
                versioned = True
            elif key == "coordinatesystem":
                code = {"0": "RAS", "1": "LPS"}.get(value, value)
                system = _coordinate_system(code, f"{path}, line {lineno}")
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif line.strip():
            data_lines.append((lineno, line))
    if columns is None:
        columns = _FCSV_COLUMNS if versioned else _FCSV3_COLUMNS
    try:
        ix, iy, iz = (columns.index(c) for c in ("x", "y", "z"))
    except ValueError:
        raise InputError(f"{path}: the '# columns =' header lacks an x, y or z column: {columns}") from None
    ilabel = columns.index("label") if "label" in columns else None
    pts, labels = [], []
    for lineno, line in data_lines:
        fields = next(csv.reader([line]))
        try:
            pts.append([float(fields[ix]), float(fields[iy]), float(fields[iz])])
        except (ValueError, IndexError):
            raise InputError(f"{path}, line {lineno}: cannot read x, y, z from {line.strip()!r}") from None
        labels.append(fields[ilabel] if ilabel is not None and ilabel < len(fields) else str(len(pts)))
    return _finish(path, pts, labels, system)


def write_fcsv(path: PathLike, landmarks: Landmarks, coordinate_system: str = "LPS") -> None:
    """Write a Slicer Markups fiducial CSV file (version 4.11 layout) in LPS or RAS."""
    system = _coordinate_system(coordinate_system, "write_fcsv")
    _check_labels(landmarks.labels)
    pts = _from_lps(landmarks.points, system)
    buf = io.StringIO()
    buf.write("# Markups fiducial file version = 4.11\n")
    buf.write(f"# CoordinateSystem = {system}\n")
    buf.write("# columns = " + ",".join(_FCSV_COLUMNS) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    for i, (p, label) in enumerate(zip(pts, landmarks.labels)):
        writer.writerow([str(i + 1)] + [repr(float(v)) for v in p] + [0, 0, 0, 1, 1, 1, 0, label, "", ""])
    with open(os.fspath(path), "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())


# Slicer .mrk.json -----------------------------------------------------------------------------
_MRK_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
               "Resources/Schema/markups-schema-v1.0.3.json#")


def read_mrk_json(path: PathLike) -> Landmarks:
    """Read a Slicer Markups JSON file holding one point list; points are returned in LPS.

    A markup without ``coordinateSystem`` is LPS, as Slicer reads it. Control points whose
    position is undefined raise an InputError, because pairing by order would silently break.
    """
    path = os.fspath(path)
    try:
        doc = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups:
        raise InputError(f"{path}: no 'markups' list; is this a Slicer .mrk.json file?")
    lists = [m for m in markups if isinstance(m, dict) and m.get("type") in ("Fiducial", "PointList")]
    if len(lists) != 1:
        types = [m.get("type") if isinstance(m, dict) else None for m in markups]
        raise InputError(f"{path}: expected exactly one point list (type 'Fiducial'), found markups of types {types}")
    markup = lists[0]
    system = _coordinate_system(markup.get("coordinateSystem", "LPS"), path)
    pts, labels = [], []
    for k, cp in enumerate(markup.get("controlPoints") or []):
        label = str(cp.get("label", str(k + 1))) if isinstance(cp, dict) else str(k + 1)
        pos = cp.get("position") if isinstance(cp, dict) else None
        if pos is None or cp.get("positionStatus", "defined") != "defined":
            raise InputError(f"{path}: control point {k + 1} ({label!r}) has no defined position")
        try:
            xyz = [float(v) for v in pos]
        except (TypeError, ValueError):
            xyz = []
        if len(xyz) != 3:
            raise InputError(f"{path}: control point {k + 1} ({label!r}) has position {pos!r}, expected [x, y, z]")
        pts.append(xyz)
        labels.append(label)
    return _finish(path, pts, labels, system)


def write_mrk_json(path: PathLike, landmarks: Landmarks, coordinate_system: str = "LPS") -> None:
    """Write a Slicer Markups JSON point list in LPS or RAS."""
    system = _coordinate_system(coordinate_system, "write_mrk_json")
    pts = _from_lps(landmarks.points, system)
    control_points = [
        {"id": str(i + 1), "label": label, "position": [float(v) for v in p], "positionStatus": "defined"}
        for i, (p, label) in enumerate(zip(pts, landmarks.labels))
    ]
    doc = {"@schema": _MRK_SCHEMA,
           "markups": [{"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm",
                        "controlPoints": control_points}]}
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


# plain .csv -----------------------------------------------------------------------------------
_CSV_HEADERS = {("l", "p", "s"): "LPS", ("r", "a", "s"): "RAS"}
_CSV_HELP = ("the first row must name the coordinate system through its columns: 'label,L,P,S' or "
             "'L,P,S' for LPS, 'label,R,A,S' or 'R,A,S' for RAS")


def read_csv(path: PathLike) -> Landmarks:
    """Read a CSV whose header says the coordinate system (label,L,P,S or label,R,A,S).

    The coordinate system is never guessed: any other header is an InputError.
    """
    path = os.fspath(path)
    rows = [(n, r) for n, r in enumerate(csv.reader(io.StringIO(_read_text(path))), start=1)
            if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"{path}: empty file; {_CSV_HELP}")
    header = tuple(c.strip().lower() for c in rows[0][1])
    has_label = len(header) == 4 and header[0] == "label"
    system = _CSV_HEADERS.get(header[1:] if has_label else header)
    if system is None:
        raise InputError(f"{path}: unrecognised header {','.join(rows[0][1])!r}; {_CSV_HELP}")
    pts, labels = [], []
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(f"{path}, line {lineno}: expected {len(header)} fields, got {len(row)}: {row}")
        try:
            pts.append([float(v) for v in row[-3:]])
        except ValueError:
            raise InputError(f"{path}, line {lineno}: cannot read coordinates from {row}") from None
        labels.append(row[0] if has_label else str(len(pts)))
    return _finish(path, pts, labels, system)


def write_csv(path: PathLike, landmarks: Landmarks, coordinate_system: str = "LPS") -> None:
    """Write ``label,L,P,S`` (or ``label,R,A,S``) rows that ``read_csv`` reads back exactly."""
    system = _coordinate_system(coordinate_system, "write_csv")
    _check_labels(landmarks.labels)
    pts = _from_lps(landmarks.points, system)
    with open(os.fspath(path), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["label"] + list(system))
        for p, label in zip(pts, landmarks.labels):
            writer.writerow([label] + [repr(float(v)) for v in p])


# dispatch -------------------------------------------------------------------------------------
def read_landmarks(spec: PathLike) -> Landmarks:
    """Read landmarks (LPS mm) from a .fcsv, .mrk.json/.json, .csv or ``<file>.tag:<1|2>`` spec.

    A tag file holds one point set per volume, so its spec must name the volume, e.g.
    ``Case24-MRI-beforeUS.tag:2`` for the RESECT ultrasound points.
    """
    spec = os.fspath(spec)
    lower = spec.lower()
    m = re.match(r"^(.*\.tag):([0-9]+)$", spec, flags=re.IGNORECASE)
    if m:
        path, volume = m.group(1), int(m.group(2))
        if volume not in (1, 2):
            raise InputError(f"{spec}: a tag file volume must be 1 or 2, got {volume}")
        first, second = read_tag(path)
        if volume == 1:
            return first
        if second is None:
            raise InputError(f"{path}: volume 2 requested but the tag file holds only one volume")
        return second
    if lower.endswith(".tag"):
        raise InputError(
            f"{spec}: a tag file holds one point set per volume; append ':1' or ':2' to choose one "
            f"(for RESECT, ':1' is the MRI and ':2' the ultrasound)"
        )
    if lower.endswith(".fcsv"):
        return read_fcsv(spec)
    if lower.endswith(".json"):
        return read_mrk_json(spec)
    if lower.endswith(".csv"):
        return read_csv(spec)
    raise InputError(f"{spec}: unsupported landmark file type; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
