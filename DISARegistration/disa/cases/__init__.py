"""Registration cases with exact ground truth: :mod:`.synthetic` renders them from the brain
templates with the training simulator (``disa synth``); :mod:`.cli` declares the command."""

#: Case kinds: (fixed appearance, moving appearance) of :func:`disa.train.synth.appearance`.
KINDS = {"us-mr": ("us", "t1"), "ct-mr": ("ct", "t1"), "t2-t1": ("t2", "t1")}
