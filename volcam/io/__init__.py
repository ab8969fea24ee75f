"""Reading scans and writing heat volumes on the scan's own grid.

:mod:`volcam.io.nifti` reads and writes NIfTI and takes a heat volume back through the
inverse of the preprocessing. The names below are re-exported here, so ``from volcam import
io; io.save_heat(...)`` keeps working.
"""

from volcam.io.nifti import (
    NIFTI_SUFFIXES,
    atomic_write,
    invert_to_source,
    load_image,
    save_heat,
    save_heat_preprocessed,
    save_nifti,
)

__all__ = [
    "NIFTI_SUFFIXES",
    "load_image",
    "invert_to_source",
    "save_nifti",
    "save_heat",
    "save_heat_preprocessed",
    "atomic_write",
]
