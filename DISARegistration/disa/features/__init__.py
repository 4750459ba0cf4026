"""Dense descriptors computed once per image: MIND-SSC (and the DISA network, later)."""

from .mind import mind_ssc  # noqa: F401
