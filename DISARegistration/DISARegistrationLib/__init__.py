"""Slicer-side glue of the DISA Registration module: everything between MRML nodes and the
``disa`` engine, importable with the slicer-core wheel alone (no Qt, no ``slicer.app``), so it
is tested outside Slicer.

- ``logic``: RegistrationLogic, the scripting API (register, FRE table, similarity maps);
- ``mrml_bridge``: volume, transform and markups nodes <-> engine images, matrices and points;
- ``scene_io``: .mrb scenes on a bare slicer-core scene; ``demo_scene``: ``disa demo --scene``;
- ``dependencies``: checking and installing the engine's packages (torch) without freezing Slicer;
- ``sample_data``, ``widget_helpers``, ``self_test_data``: the sample case, panel helpers, what
  the self-test registers.

Modules are imported one by one (nothing here), so the ones that need no torch load before torch
is installed.
"""
