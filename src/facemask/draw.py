"""Drawing boxes and labels on frames (service `annotate`, camera client)."""

from __future__ import annotations

import cv2
import numpy as np

from facemask.pipeline import FaceResult

BGR = tuple[int, int, int]
COMPLIANT: BGR = (60, 180, 75)  # green
PALETTE: list[BGR] = [(40, 40, 230), (0, 165, 255), (180, 60, 160), (200, 160, 0)]  # red, orange, purple, teal
UNKNOWN: BGR = (200, 200, 200)


def label_colours(labels: list[str], compliant: str) -> dict[str, BGR]:
    """A colour per class: the compliant one green, the others red, orange, ... in their order."""
    others = iter(PALETTE * len(labels))
    return {lb: COMPLIANT if lb == compliant else next(others) for lb in labels}


def hex_colour(bgr: BGR) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def bgr_colour(hex_rgb: str | None) -> BGR:
    """'#rrggbb' (a live answer's track colour) as BGR; grey when absent or malformed."""
    try:
        value = int(str(hex_rgb).lstrip("#"), 16) if hex_rgb and len(hex_rgb) == 7 else None
    except ValueError:
        value = None
    return UNKNOWN if value is None else (value & 255, (value >> 8) & 255, value >> 16)


def _labelled_box(out: np.ndarray, box, text: str, colour: BGR, thickness: int) -> None:
    """A box and its text on a filled tag above it, drawn into `out`."""
    x1, y1, x2, y2 = (round(v) for v in box)
    cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
    size = 0.35 + 0.1 * thickness
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    top = max(0, y1 - th - base - 2)
    cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), colour, -1)
    cv2.putText(out, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)


def draw_faces(
    frame: np.ndarray, faces: list[FaceResult], colours: dict[str, BGR], labels: dict[int, str] | None = None
) -> np.ndarray:
    """A copy of `frame` with each face's box and `label confidence` (plus an optional per-face prefix)."""
    out = frame.copy()
    thickness = max(1, round(max(frame.shape[:2]) / 400))
    for i, face in enumerate(faces):
        prefix = f"{labels[i]} " if labels and i in labels else ""
        text = f"{prefix}{face.label} {face.confidence:.2f}"
        _labelled_box(out, face.box, text, colours.get(face.label, UNKNOWN), thickness)
    return out


def draw_tracks(frame: np.ndarray, tracks: list[dict], scale: float = 1.0, banner: str | None = None) -> np.ndarray:
    """Live view: each track's box with `#id class confidence` in the track's colour (boxes given at
    1/`scale` of the frame), and an alert banner across the top."""
    out = frame.copy()
    thickness = max(1, round(max(frame.shape[:2]) / 400))
    for t in tracks:
        box = [v * scale for v in t["box"]]
        _labelled_box(
            out, box, f"#{t['id']} {t['label']} {t['confidence']:.2f}", bgr_colour(t.get("colour")), thickness
        )
    if banner:
        h = 16 + 12 * thickness
        cv2.rectangle(out, (0, 0), (out.shape[1], h), (30, 20, 200), -1)
        cv2.putText(
            out,
            banner,
            (8, h - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4 + 0.15 * thickness,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return out
