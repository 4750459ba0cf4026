"""Slicer-side glue of the DISA Registration module: everything between MRML nodes and the
``disa`` engine. Importable with the slicer-core wheel alone (no Qt, no ``slicer.app``), so
it is tested outside Slicer."""

from .mrml_bridge import (  # noqa: F401
    image_from_volume_node,
    update_volume_node_from_image,
    local_to_world_lps,
    set_linear_transform_node_from_itk,
    itk_matrix_from_transform_node,
    set_registration_references,
    set_grid_transform_node_from_displacement,
    landmarks_from_markups,
    markup_labels,
    markups_from_points,
)
