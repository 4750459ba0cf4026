"""Training the DISA-LC² descriptor network from unregistered volume pairs. One concept a file:

- :mod:`.synth`: synthetic multimodal appearances of brain templates, simulated ultrasound;
- :mod:`.sources`: the stream of training volume pairs and the learning curve's held-out pairs;
- :mod:`.targets`: the LC² target (per patch pair, and dense over crop pairs);
- :mod:`.crops`: crop pairs cut from a pool of volumes by one batched sampling call;
- :mod:`.loop`: the dense training loop (checkpoints, resume, time limit, GPU-native);
- :mod:`.curve`: the learning curve on held-out crop pairs, with its baselines (JSON + PNG);
- :mod:`.checkpoints`: checkpoints and per-evaluation snapshots;
- :mod:`.heldout` and :mod:`.select`: the held-out registration check and checkpoint selection;
- :mod:`.patches`, :mod:`.dataset`, :mod:`.paper`: the paper's patch-pair recipe;
- :mod:`.cli`: ``disa train``.

Nothing here runs at registration time. Submodules load on first use, so the command line can
declare ``disa train``'s options without importing torch.
"""
from __future__ import annotations

from .cli import add_train_arguments, run_from_args

__all__ = ["add_train_arguments", "run_from_args"]
