"""Anchor matching and the multibox loss of RetinaFace (SSD-style), for one class: face.

Each annotated face claims its best anchor and every anchor whose IoU with it reaches `match_iou`;
the other anchors are negatives, of which only the hardest `neg_ratio` per positive (at least
`min_negatives` per image) are learnt from. Anchors the frozen pretrained network (the teacher) is
sure hold a face but that overlap no box are *ignored* instead: a scene whose background crowd was
never boxed must not teach that those faces are background. The teacher also supplies the landmark
targets (the scenes have no landmarks), so the five points that align crops keep working.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from facemask.detection.retinaface_mnet import encode, point_form


@dataclass
class Targets:
    """Per anchor, for a batch: box offsets (B, P, 4), positive (B, P) and ignored (B, P) masks."""

    loc: torch.Tensor
    positive: torch.Tensor
    ignored: torch.Tensor


def match_anchors(boxes: torch.Tensor, priors: torch.Tensor, match_iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: annotated boxes (G, 4), normalised x1y1x2y2 -> (offsets (P, 4), positive (P,)).
    Every face gets at least its best anchor, so small faces are never left without one."""
    count = len(priors)
    if len(boxes) == 0:
        return torch.zeros(count, 4, device=priors.device), torch.zeros(count, dtype=torch.bool, device=priors.device)
    iou = box_iou(boxes, point_form(priors))  # (G, P)
    best_iou, best_gt = iou.max(dim=0)
    best_prior = iou.argmax(dim=1)
    best_iou[best_prior] = 2.0
    best_gt[best_prior] = torch.arange(len(boxes), device=priors.device)
    positive = best_iou >= match_iou
    return encode(boxes[best_gt], priors), positive


def build_targets(
    boxes: list[torch.Tensor], priors: torch.Tensor, teacher_face: torch.Tensor, match_iou: float, unboxed_min: float
) -> Targets:
    """Targets for a batch; `teacher_face` (B, P) is the pretrained network's face probability."""
    locs, positives = zip(*(match_anchors(b, priors, match_iou) for b in boxes), strict=True)
    loc, positive = torch.stack(locs), torch.stack(positives)
    return Targets(loc, positive, (teacher_face >= unboxed_min) & ~positive)


def multibox_loss(
    loc: torch.Tensor,
    logits: torch.Tensor,
    landmarks: torch.Tensor,
    targets: Targets,
    teacher_landmarks: torch.Tensor,
    neg_ratio: int,
    min_negatives: int,
    landmark_weight: float,
    box_weight: float = 2.0,
) -> dict[str, torch.Tensor]:
    """Box (smooth L1), face/background (cross-entropy over positives and hard negatives) and
    landmark (smooth L1 to the teacher) losses, each divided by the number of positives."""
    pos = targets.positive
    n_pos = pos.sum().clamp(min=1).float()
    box = F.smooth_l1_loss(loc[pos], targets.loc[pos], reduction="sum") / n_pos
    ce = F.cross_entropy(logits.reshape(-1, 2), pos.reshape(-1).long(), reduction="none").view_as(pos)
    mining = ce.detach().clone()
    mining[pos | targets.ignored] = 0.0
    rank = mining.argsort(dim=1, descending=True).argsort(dim=1)
    n_neg = (neg_ratio * pos.sum(dim=1, keepdim=True)).clamp(min=min_negatives, max=pos.shape[1] - 1)
    neg = (rank < n_neg) & ~pos & ~targets.ignored
    cls = ce[pos | neg].sum() / n_pos
    lms = F.smooth_l1_loss(landmarks[pos], teacher_landmarks[pos], reduction="sum") / n_pos
    total = box_weight * box + cls + landmark_weight * lms
    return {"loss": total, "box": box, "cls": cls, "landmarks": lms}
