"""Dense registration: discrete + convex deformable, combined-metric instance optimization and
diffeomorphic (stationary velocity, neural ODE) models; see ``pipeline.register_deformable``."""

from .defaults import (  # noqa: F401
    DENSE_DEFAULTS,
    DENSE_METHODS,
    DENSE_METRICS,
    INTEGRATORS,
    DenseDefaults,
)
from .fields import (  # noqa: F401
    field_image,
    jacobian_determinant,
    jacobian_determinant_voxels,
    jacobian_image,
    jacobian_statistics,
    lps_to_voxel,
    voxel_to_lps,
    working_grid,
)
from .instance import instance_optimize  # noqa: F401
from .losses import DenseTerm, build_term, combined_loss  # noqa: F401
from .pipeline import default_spacing, register_deformable  # noqa: F401
