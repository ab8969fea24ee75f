"""Reading scans and writing heat volumes on the scan's own grid.

:mod:`volcam.io.nifti` reads and writes NIfTI and takes a heat volume back through the
inverse of the preprocessing. The names below are re-exported here, so ``from volcam import
io; io.save_heat(...)`` keeps working.

:mod:`volcam.io.dicom` reads DICOM series and writes Parametric Maps and SEGs (the ``dicom``
extra). Its main names are reachable from here too (``io.load_series``, ``io.find_series``
...), loaded on first use, so that ``import volcam.io`` never imports pydicom or highdicom.
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

_DICOM_NAMES = (
    "find_series",
    "select_series",
    "case_name",
    "load_series",
    "DicomSeriesReader",
    "save_parametric_map",
    "save_seg",
)


def __getattr__(name: str):
    if name in _DICOM_NAMES:
        from volcam.io import dicom

        return getattr(dicom, name)
    raise AttributeError(f"module 'volcam.io' has no attribute {name!r}")
