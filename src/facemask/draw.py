"""Drawing boxes and labels on frames (service `annotate`, camera client)."""

from __future__ import annotations

import cv2
import numpy as np

from facemask.pipeline import FaceResult

COLOURS = {"mask": (60, 180, 75), "no_mask": (40, 40, 230), "incorrect": (0, 165, 255)}  # BGR


def draw_faces(frame: np.ndarray, faces: list[FaceResult], labels: dict[int, str] | None = None) -> np.ndarray:
    """A copy of `frame` with each face's box and `label confidence` (plus an optional per-face prefix)."""
    out = frame.copy()
    thickness = max(1, round(max(frame.shape[:2]) / 400))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (round(v) for v in face.box)
        colour = COLOURS.get(face.label, (200, 200, 200))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = f"{labels[i]} " if labels and i in labels else ""
        text += f"{face.label} {face.confidence:.2f}"
        scale = 0.35 + 0.1 * thickness
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y1 - th - base - 2)
        cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), colour, -1)
        cv2.putText(out, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def draw_tracks(frame: np.ndarray, tracks: list[dict], scale: float = 1.0, banner: str | None = None) -> np.ndarray:
    """Live view: each track's box with `#id class confidence` (boxes given at 1/`scale` of the
    frame), and an alert banner across the top."""
    out = frame.copy()
    thickness = max(1, round(max(frame.shape[:2]) / 400))
    for t in tracks:
        x1, y1, x2, y2 = (round(v * scale) for v in t["box"])
        colour = COLOURS.get(t["label"], (200, 200, 200))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = f"#{t['id']} {t['label']} {t['confidence']:.2f}"
        size = 0.35 + 0.1 * thickness
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
        top = max(0, y1 - th - base - 2)
        cv2.rectangle(out, (x1, top), (x1 + tw + 4, top + th + base + 2), colour, -1)
        cv2.putText(out, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)
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
