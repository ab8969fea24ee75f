"""DICOM in and out: series discovery and selection, loading with an exact affine, and the
heat written back as a Parametric Map and a SEG on the source series.

This module gathers the public names of :mod:`volcam.io.dicom_series` (finding and choosing
series, case names), :mod:`volcam.io.dicom_geometry` (the checks and the voxel grid),
:mod:`volcam.io.dicom_read` (the MONAI reader and :func:`load_series`) and
:mod:`volcam.io.dicom_write` (the objects). It needs the ``dicom`` extra
(``pip install "volcam[dicom]"``: pydicom and highdicom)::

    from volcam.io import dicom, invert_to_source, save_heat

    x_src = dicom.load_series("exports/case17", modality="CT")   # MetaTensor [1, columns, rows, slices]
    x = preprocess(x_src)
    heat = cam(x[None], targets=...)[0]
    heat_src = invert_to_source(heat, x, preprocess)              # back on the series' grid
    save_heat(heat_src, "out/case_heat.nii.gz")                    # NIfTI on the series' geometry
    dicom.save_parametric_map(heat_src, x_src, "out/case_heat_pmap.dcm")
    dicom.save_seg(heat_src, x_src, "out/case_heat_seg.dcm", threshold=0.5)
"""

from __future__ import annotations

from volcam.io.dicom_geometry import SeriesGeometry, decoder_problem, series_geometry
from volcam.io.dicom_read import META_KEYS, DicomSeriesReader, load_series
from volcam.io.dicom_series import Series, SeriesChoice, SeriesList, case_name, find_series, select_series
from volcam.io.dicom_write import save_parametric_map, save_seg, source_geometry

__all__ = [
    "Series",
    "SeriesList",
    "SeriesChoice",
    "SeriesGeometry",
    "find_series",
    "select_series",
    "case_name",
    "series_geometry",
    "decoder_problem",
    "DicomSeriesReader",
    "load_series",
    "META_KEYS",
    "save_parametric_map",
    "save_seg",
    "source_geometry",
]
