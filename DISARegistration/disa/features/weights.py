"""Saving and loading DISA network weights with a SHA-256 checksum.

A weights file ``NAME.pt`` is a ``torch.save`` of ``{"format", "state_dict", "metadata"}``
(plain tensors, strings and numbers only, so it loads with ``torch.load(weights_only=True)``
and never runs code). Next to it, ``NAME.json`` is the model card: the training metadata plus
``sha256`` of the ``.pt`` bytes. Loading checks the bytes against that checksum (or an explicit
one) before unpickling anything, so a truncated download or an edited file is refused with a
message naming it instead of silently giving wrong descriptors.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from ..errors import InputError
from .network import PARAMETER_COUNT, DISANet, count_parameters

PathLike = Union[str, "os.PathLike[str]"]

#: Format tag stored in every weights file.
FORMAT = "disa-net-v1"
#: Folder of the shipped weights, relative to the installed package.
MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "Resources" / "Models"
#: The shipped DISA-LC² weights.
DEFAULT_WEIGHTS = MODELS_DIR / "disa_lc2.pt"

#: Keys of the model card that ``save_weights`` owns (metadata cannot override them).
RESERVED_KEYS = ("weights_file", "sha256", "format", "architecture", "trainable_parameters")


def sha256_of(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_path(path: PathLike) -> Path:
    """The model card (sidecar JSON) of a weights file: same name, ``.json`` suffix."""
    return Path(path).with_suffix(".json")


def _jsonable(metadata: dict) -> dict:
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"weights metadata must be JSON-serializable: {exc}") from exc


def save_weights(path: PathLike, model: torch.nn.Module, metadata: Optional[dict] = None) -> str:
    """Write ``model``'s state dict and ``metadata`` to ``path`` and the model card next to it.

    The card (``path`` with suffix ``.json``) holds the metadata plus the file's SHA-256; an
    existing card is replaced. Returns the SHA-256 hex digest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in _jsonable(dict(metadata or {})).items() if k not in RESERVED_KEYS}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "state_dict": state, "metadata": meta}, tmp)
    os.replace(tmp, path)
    digest = sha256_of(path)
    card = dict(meta)
    card.update({"weights_file": path.name, "sha256": digest, "format": FORMAT,
                 "architecture": "DISANet", "trainable_parameters": count_parameters(model)})
    with open(card_path(path), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.write("\n")
    return digest


def read_card(path: PathLike) -> Optional[dict]:
    """The model card of weights file ``path``, or None when there is none."""
    card = card_path(path)
    if not card.exists():
        return None
    try:
        with open(card, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the model card {card}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"the model card {card} is not a JSON object")
    return data


def load_weights(path: PathLike = DEFAULT_WEIGHTS, expected_sha256: Optional[str] = None,
                 require_checksum: bool = True) -> Tuple[DISANet, dict]:
    """Load a :class:`DISANet` (in eval mode) and its metadata from ``path``.

    The file's SHA-256 must equal ``expected_sha256`` or, when that is None, the ``sha256`` of
    the model card next to it. With ``require_checksum=False`` a file without a card loads
    unchecked (e.g. a training checkpoint). Raises InputError naming the file when it is
    missing, fails the checksum, or is not a readable DISA weights file.
    """
    path = Path(path)
    if not path.exists():
        default = path.resolve() == DEFAULT_WEIGHTS.resolve()
        hint = (" The shipped weights are missing from this installation: reinstall the extension "
                "(or the disa package), or pass a weights file trained with disa train." if default else "")
        raise InputError(f"DISA weights file not found: {path}.{hint}")
    if path.is_dir():
        raise InputError(f"DISA weights path is a folder, not a file: {path}")
    card = read_card(path)
    expected = expected_sha256 or (card or {}).get("sha256")
    if expected is None and require_checksum:
        raise InputError(f"no checksum for DISA weights file {path}: its model card "
                         f"{card_path(path).name} is missing or has no sha256")
    if expected is not None:
        actual = sha256_of(path)
        if actual.lower() != str(expected).strip().lower():
            raise InputError(f"DISA weights file {path} is corrupt or modified: its SHA-256 is "
                             f"{actual}, expected {expected}")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"cannot read DISA weights file {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
        raise InputError(f"{path} is not a DISA weights file (expected format {FORMAT!r})")
    model = DISANet()
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise InputError(f"DISA weights file {path} does not match the network architecture: {exc}") from exc
    assert count_parameters(model) == PARAMETER_COUNT
    metadata = dict(blob.get("metadata") or {})
    if card:
        metadata.setdefault("sha256", card.get("sha256"))
    return model.eval(), metadata
