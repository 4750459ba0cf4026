"""``disa benchmark``: accuracy and speed on RESECT Case 24 against SimpleITK and elastix.

``benchmark`` holds the driver and the report, ``peers`` the SimpleITK and elastix runners.
Nothing here is imported by the engine; itk-elastix is optional (the ``bench`` extra).
"""
