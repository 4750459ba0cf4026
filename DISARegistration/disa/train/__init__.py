"""Training the DISA-LC² descriptor network from unregistered volume pairs.

- :mod:`.patches`: the LC² training target and patch-pair sampling (paper, Sect. 3);
- :mod:`.synth`: synthetic multimodal template volumes, simulated and real ultrasound;
- :mod:`.trainer`: ``build_dataset`` (shards of patch pairs) and ``train`` (AdamW, augmentations,
  validation, checkpoints, resume).

Nothing here runs at registration time. The submodules load on first use, so the command line
can declare ``disa train``'s options (:func:`add_train_arguments`) without importing torch.
"""
from __future__ import annotations

import argparse
import importlib

_LAZY = {
    "PatchPairs": "patches", "lc2_target": "patches", "sample_patch_pairs": "patches",
    "PairSpec": "synth", "make_pair": "synth", "make_pair_specs": "synth",
    "TrainConfig": "trainer", "TrainReport": "trainer", "augment_batch": "trainer", "build_dataset": "trainer",
    "predict_pairs": "trainer", "train": "trainer",
}

__all__ = sorted(_LAZY) + ["add_train_arguments", "run_from_args"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``disa train`` (argparse only)."""
    p.add_argument("--data", required=True, metavar="DIR", help="folder of training shards (*.npz); built there with --build")
    p.add_argument("--output-dir", default="disa-train-run", metavar="DIR",
                   help="checkpoint, weights (disa_lc2.pt + .json model card) and report.json (default disa-train-run)")
    g = p.add_argument_group("building the data (--build)")
    g.add_argument("--build", action="store_true", help="first sample training pairs into --data")
    g.add_argument("--build-only", action="store_true", help="build the data and stop")
    g.add_argument("--source-dir", metavar="DIR",
                   help="folder holding templates/ and resect/us_only/ (synthetic and ultrasound pairs)")
    g.add_argument("--synthetic", type=int, default=32, help="synthetic template pairs (default 32)")
    g.add_argument("--us-per-file", type=int, default=1, help="template partners per real ultrasound volume (default 1)")
    g.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), default=[],
                   help="also sample from your own volumes: A gives intensity+gradient, B is fitted (ultrasound); repeatable")
    g.add_argument("--pairs-per-volume", type=int, default=500, help="patch pairs per volume pair (default 500)")
    g.add_argument("--candidates", type=int, default=2000, help="candidate A patches scored per draw (default 2000)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=35, help="epochs (default 35, as in the paper)")
    t.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on the CPU")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    t.add_argument("--weight-decay", type=float, default=1e-3, help="AdamW weight decay (default 1e-3)")
    t.add_argument("--warmup-steps", type=int, default=100, help="linear learning-rate warm-up steps (default 100)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="share of shards held out for validation (default 0.1)")
    t.add_argument("--no-augment", action="store_true", help="no flips, sign or intensity changes")
    t.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    t.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop after the epoch that would pass S seconds")
    t.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap on steps per epoch (smoke tests)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    t.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    t.add_argument("--seed", type=int, default=0, help="seed of the data sampling and the training (default 0)")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    d = p.add_argument_group("dense training (--dense: 64^3 crop pairs, 512 targets each; what a CPU can afford)")
    d.add_argument("--dense", action="store_true",
                   help="train on dense crop pairs rendered on the fly from --source-dir; --data then holds the "
                        "paper-style validation pairs (built there from held-out volume pairs with --build)")
    d.add_argument("--steps", type=int, default=100000, help="dense training steps (default 100000; see --time-limit)")
    d.add_argument("--batch-pairs", type=int, default=2, help="crop pairs per dense step (default 2)")
    d.add_argument("--eval-every", type=int, default=200, help="validate and checkpoint every N dense steps (default 200)")


def run_from_args(args) -> int:
    """Run ``disa train`` from arguments parsed with :func:`add_train_arguments`."""
    from .trainer import run_from_args as run

    return run(args)
