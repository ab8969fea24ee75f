#!/usr/bin/env python
"""Time of volcam's DICOM input and output on a CT-sized synthetic series.

Writes one single-frame CT series (``--size`` x ``--size`` pixels, ``--slices`` slices,
int16, explicit VR little endian) with the tests' series writer, then times, with
``--repeat`` repetitions and medians:

- ``find_series``: walking the folder and grouping by SeriesInstanceUID (headers only),
- ``load_series``: checks, decoding with highdicom, MetaTensor with its affine,
- ``save_parametric_map`` and ``save_seg``: the heat (the normalised image) as DICOM,
- ``save_heat``: the same heat as NIfTI, for comparison,

and prints a Markdown table with the peak resident memory of the process at the end.

Example::

    python scripts/bench_dicom.py --slices 200 --size 512 --repeat 3
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dicom_helpers import SeriesSpec, blob, write_series

from volcam.io import dicom, save_heat


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = SeriesSpec(
            rows=args.size,
            columns=args.size,
            slices=args.slices,
            pixel_spacing=(0.7, 0.7),
            slice_spacing=1.25,
            values=blob((0.0, 0.0, 60.0), sigma=20.0),
        )
        start = time.perf_counter()
        write_series(root / "series", spec)
        written = time.perf_counter() - start
        rows = []
        t, found = timed(lambda: dicom.find_series(root / "series"), args.repeat)
        rows.append(("find_series", t))
        t, image = timed(lambda: dicom.load_series(root / "series"), args.repeat)
        rows.append(("load_series", t))
        heat = (image - image.min()) / (image.max() - image.min())
        choice = dicom.select_series(found)
        steps = {
            "save_heat (NIfTI .nii.gz)": lambda: save_heat(heat, root / "h.nii.gz"),
            "save_parametric_map": lambda: dicom.save_parametric_map(heat, choice, root / "p.dcm"),
            "save_seg": lambda: dicom.save_seg(heat, choice, root / "s.dcm"),
        }
        rows += [(name, timed(step, args.repeat)[0]) for name, step in steps.items()]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    machine = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    print(f"DICOM I/O, {args.size}x{args.size}x{args.slices} CT series (written in {written:.1f} s), ")
    print(f"median of {args.repeat}; {machine}\n")
    print("| step | seconds |")
    print("| --- | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    print(f"\npeak resident memory of the process: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
