"""``volcam view CASE_DIR``: (re)build a case's HTML viewer from the files a run wrote."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  volcam view cams/case001
  volcam view cams/case001 --coordinates LPS --convention neurological
  volcam view cams                      # every case of the run, and its index.html

A case folder holds volcam-case.json and <class>/heat.nii.gz; the page is written to
<case>/viewer.html (or --output) and opens offline in any current browser. Given a run's
output folder (with summary.csv), every case's viewer and the run's index.html are rebuilt.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("folders", metavar="CASE_DIR", nargs="+", help="a case folder, or a run's output folder")
    parser.add_argument("--output", metavar="HTML", help="where to write the page (one case folder only)")
    parser.add_argument("--image", metavar="PATH", help="the scan, if it moved since the run (one case folder only)")
    parser.add_argument("--label", metavar="PATH", help="the label map, likewise")
    parser.add_argument(
        "--convention", choices=("radiological", "neurological"), default="radiological", help="left-right display"
    )
    parser.add_argument(
        "--coordinates",
        choices=("RAS", "LPS"),
        default=None,
        help="world coordinates shown (default: LPS for a DICOM case, else RAS)",
    )
    parser.add_argument("--window", metavar="NAME", help="first window: soft_tissue, lung, bone, brain (CT)")
    parser.add_argument("--max-mb", type=float, default=25.0, help="size budget of a page in MB (default 25)")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from volcam.errors import ArgumentError
    from volcam.figures.report import write_index
    from volcam.figures.viewer_case import RECORD_NAME, write_case_viewer

    single = args.output or args.image or args.label
    cases, runs = [], []
    for folder in map(Path, args.folders):
        if (folder / RECORD_NAME).is_file():
            cases.append(folder)
        elif (folder / "summary.csv").is_file():
            runs.append(folder)
            cases.extend(sorted(p.parent for p in folder.glob(f"*/{RECORD_NAME}")))
        else:
            raise ArgumentError(
                f"CASE_DIR must be a case folder (with {RECORD_NAME}) or a run's output folder (with summary.csv), "
                f"not '{folder}'",
                name="folders",
            )
    if single and len(cases) != 1:
        raise ArgumentError(f"--output, --image and --label need exactly one case folder, not {len(cases)}")
    options = dict(convention=args.convention, window=args.window, max_bytes=int(args.max_mb * 1e6))
    if args.coordinates is not None:
        options["coordinates"] = args.coordinates
    for case in cases:
        path = write_case_viewer(case, args.output, image=args.image, label=args.label, **options)
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB)")
    for run in runs:
        print(write_index(run, convention=args.convention, window=args.window))
    return 0
