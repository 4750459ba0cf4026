"""Images in physical space: geometry, I/O, normalization, resampling and pyramids."""

from .image import (  # noqa: F401
    Image,
    load_image,
    save_image,
    normalize_intensity,
    resample_to_spacing,
    resample_image,
    foreground_mask,
    pyramid,
    crop_to_mask,
)
