"""Which cases a re-run may skip: each finished case folder ends with ``done.json``, written last,
holding the fingerprint of what made it (input sizes and SHA-256, the options) and the size of
every output. A case is complete when that marker exists, its fingerprint equals today's and
every output it lists is still there with its size; anything else is redone.

The thread count chosen by the batch is recorded but not fingerprinted (a result is reproducible
for one thread count: pass ``threads`` to pin it), so a finished study is not redone because it
is resumed on a machine with other cores; an explicit ``threads`` option is fingerprinted.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

from .manifest import CaseSpec

#: The marker a finished case folder holds (written last).
DONE_FILE = "done.json"
#: Version of the marker's layout; a marker of another version is not trusted.
DONE_FORMAT = 1
#: Bytes read at a time while hashing.
CHUNK = 1 << 22


def file_digest(path: str) -> dict[str, object]:
    """Size and SHA-256 of a file (a landmark ``FILE.tag:1`` spec hashes FILE.tag)."""
    from .manifest import landmark_file

    real = landmark_file(path)
    sha = hashlib.sha256()
    with open(real, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
    return {"path": path, "size": os.path.getsize(real), "sha256": sha.hexdigest()}


def canonical(value):
    """Options as JSON values that compare equal when the run would be the same (a parsed
    metric by its text, tuples as lists)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def fingerprint(spec: CaseSpec, options: Mapping[str, object]) -> dict[str, object]:
    """What a finished case must match to be skipped: inputs (sizes, hashes) and options."""
    inputs = {name: file_digest(path) for name, path in spec.inputs().items()}
    weights = options.get("weights")
    if weights:
        inputs["weights"] = file_digest(os.fspath(weights))
    return {"format": DONE_FORMAT, "inputs": inputs, "options": canonical(dict(options))}


def output_sizes(folder: str) -> dict[str, int]:
    """Size of every file in a case folder but the marker."""
    return {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
            if name != DONE_FILE and os.path.isfile(os.path.join(folder, name))}


def write_done(folder: str, fp: Mapping[str, object], row: Mapping[str, object]) -> None:
    """The marker, written last (the case folder is complete once it exists)."""
    record = {"fingerprint": dict(fp), "outputs": output_sizes(folder), "row": dict(row)}
    with open(os.path.join(folder, DONE_FILE), "w") as fh:
        json.dump(record, fh, indent=2)


def finished_record(folder: str, fp: Mapping[str, object]) -> dict | None:
    """The marker of a complete, current case folder; None when the case must be (re)done."""
    try:
        with open(os.path.join(folder, DONE_FILE)) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != json.loads(json.dumps(dict(fp))):
        return None
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    for name, size in outputs.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            return None
    return record
