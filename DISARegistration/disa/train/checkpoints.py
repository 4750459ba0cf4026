"""Checkpoints of a training run (resume), per-evaluation snapshots (checkpoint selection) and
the shipped weights with their model card.

- ``checkpoint.pt``: model, optimizer, step, history, config; written atomically at every
  evaluation, loaded with ``weights_only=True`` and refused unless its format tag matches.
- ``snapshots/step_NNNNNNN.pt``: the weights of every evaluation (plain DISA weights files
  with a model card), so a checkpoint can be chosen afterwards by registration
  (:mod:`.select`) rather than by the loss.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch

from ..errors import InputError
from ..features.weights import save_weights

CHECKPOINT_FORMAT = "disa-train-checkpoint-v2"
CHECKPOINT_NAME = "checkpoint.pt"
SNAPSHOTS = "snapshots"


def save_checkpoint(path: str, model, optimizer, step: int, history: list, config: dict, rendered: int,
                    device: str) -> None:
    ck = {"format": CHECKPOINT_FORMAT, "step": int(step), "model": model.state_dict(),
          "optimizer": optimizer.state_dict(), "history": history, "config": config, "rendered": int(rendered),
          "device": device}
    torch.save(ck, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path: str, fmt: str = CHECKPOINT_FORMAT, what: str = "DISA training checkpoint") -> dict:
    """A checkpoint's content; InputError when it is unreadable or of another format."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"cannot read the {what} {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise InputError(f"{path} is not a {what} (expected format {fmt!r})")
    return ck


def snapshot_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, SNAPSHOTS, f"step_{int(step):07d}.pt")


def save_snapshot(out_dir: str, step: int, model, entry: dict) -> str:
    """The weights at ``step`` with the curve point as their card."""
    return save_weights(snapshot_path(out_dir, step), model, {"kind": "DISA-LC2 training snapshot", "step": int(step),
                                                              "curve": entry})


def snapshots(out_dir: str) -> List[str]:
    folder = os.path.join(out_dir, SNAPSHOTS)
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.startswith("step_") and f.endswith(".pt"))


def step_of(path: str) -> Optional[int]:
    name = os.path.basename(path)
    try:
        return int(name[len("step_"):-len(".pt")])
    except ValueError:
        return None


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "save_snapshot",
           "snapshots", "snapshot_path", "step_of"]
