"""Registration pipelines: objective, multi-resolution driver and the result type."""

from .objective import Objective  # noqa: F401
from .pipeline import RegistrationResult, register, register_files  # noqa: F401
