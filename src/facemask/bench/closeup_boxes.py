"""Close-up boxes: do two detectors box large faces alike? The check behind the default detector.

    python -m facemask.bench.closeup_boxes [--reference yunet] [--detector retinaface_ft] [--every 8]

Every `--every`-th photo of the close-up sources (face-mask-2class, maskedface-net-sample in the
mirror) through both detectors at the pipeline's `detect_long_side`, each box mapped by its
`box_fit`; each photo's face is the one the crop stage would cut (`face_crops.photo_faces`: score >=
`crop.min_score`, the largest of several). Prints, per
folder, the share of photos each detector finds a face in, and by face size at 640 px the median
and 10th-percentile IoU between the two boxes and the median vertical offset of the detector's box
centre (in face heights; positive: lower). A detector whose boxes slide onto the mask and chin on
large faces shows a low IoU and a positive offset in the largest bin.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from facemask.boxes import iou_matrix
from facemask.config import compose, validate
from facemask.errors import FacemaskError
from facemask.face_crops import photo_faces
from facemask.imageio import read_image
from facemask.pipeline import FaceFinder, fit_box

FOLDERS = (
    "face-mask-2class/with_mask",
    "face-mask-2class/without_mask",
    "maskedface-net-sample/correct",
    "maskedface-net-sample/incorrect",
)


def compare(reference: str, detector: str, every: int, overrides: list[str]) -> pd.DataFrame:
    """One row per photo: found by each, IoU of the fitted boxes, the face's side at 640, offset."""
    settings = {n: validate(compose([f"detector={n}", *overrides]), f"detector={n}") for n in (reference, detector)}
    finders = {n: FaceFinder.from_params(params) for n, params in settings.items()}
    fits = {n: params.detector.box_fit for n, params in settings.items()}
    pixels = settings[reference].data.max_image_pixels
    datasets = Path(os.environ.get("FACEMASK_MIRROR", "")) / "datasets"
    rows = []
    for folder in FOLDERS:
        for path in sorted((datasets / folder).glob("*.jpg"))[::every]:
            image = read_image(path, pixels)
            ref, got = (photo_faces(finders[n], image, settings[n])[0][1] for n in (reference, detector))
            row = {"folder": folder, reference: ref is not None, detector: got is not None}
            if ref is not None and got is not None:
                a, b = fit_box(ref.box, fits[reference]), fit_box(got.box, fits[detector])
                row["iou"] = float(iou_matrix(a[None], b[None])[0, 0])
                row["side640"] = ref.width * 640 / max(image.shape[:2])
                row["offset"] = ((b[1] + b[3]) / 2 - (a[1] + a[3]) / 2) / (a[3] - a[1])
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="yunet")
    parser.add_argument("--detector", default="retinaface_ft")
    parser.add_argument("--every", type=int, default=8, help="every n-th photo of each folder")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both, e.g. pipeline.detect_long_side=480")
    args = parser.parse_args(argv)
    if not os.environ.get("FACEMASK_MIRROR"):
        parser.error("set FACEMASK_MIRROR to the offline mirror (the close-up photos live there)")
    try:
        table = compare(args.reference, args.detector, max(1, args.every), args.overrides)
    except FacemaskError as err:
        print(f"closeup_boxes: {err}", file=sys.stderr)
        return 2
    found = table.groupby("folder")[[args.reference, args.detector]].mean().round(3)
    print(f"share of photos with a face (score >= crop.min_score)\n{found.to_markdown()}\n")
    pairs = table.dropna(subset=["iou"])
    pairs = pairs.assign(size=pd.cut(pairs.side640, [0, 100, 200, np.inf], labels=["<100", "100-200", ">200"]))
    by_size = pairs.groupby(["folder", "size"], observed=True).agg(
        photos=("iou", "size"),
        iou_median=("iou", "median"),
        iou_p10=("iou", lambda s: s.quantile(0.1)),
        offset_median=("offset", "median"),
    )
    print(f"{args.detector} against {args.reference}, by face side at 640 px\n{by_size.round(3).to_markdown()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
