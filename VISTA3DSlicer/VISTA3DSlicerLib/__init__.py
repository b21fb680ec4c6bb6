"""VISTA3DSlicerLib: the VISTA3D engine and everything that is not Qt or MRML.

Importing this package is cheap: torch, monai and SimpleITK are imported inside the
functions that need them, because 3D Slicer imports every module at start-up.
"""

__version__ = "0.1.0"
