"""Scene-level metrics: COCO-style AP per class (torchmetrics on pycocotools), detector recall by
face size, and the confusion of matched faces.

Two views of the same predictions:
- AP is class-aware: a face given the wrong class is a miss of its true class *and* a false
  positive of the predicted one (COCO/VOC convention). Two figures: `ap_top1` scores each face once,
  under the class the pipeline serves; `ap` follows COCO's convention for multi-class detectors and
  scores each face under every class (detector score x that class's probability), so a face the
  classifier got wrong can still be found, lower in the ranking, under its true class.
- Recall by size and the confusion are class-agnostic matches (what the detector found, then what
  the classifier said about it), so a detector miss and a classifier error are told apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facemask.boxes import match

SIZES = ("small", "medium", "large")
MISSED = "missed"


@dataclass
class Prediction:
    """The pipeline's output for one scene: boxes (N, 4), labels, detector scores and class confidences."""

    boxes: np.ndarray
    labels: list[str]
    scores: np.ndarray
    confidences: np.ndarray
    probabilities: np.ndarray | None = None  # (N, classes) in the classifier's label order

    @property
    def ranking(self) -> np.ndarray:
        """Score a detection is ranked by for AP: detector score x class confidence."""
        return self.scores * self.confidences

    def subset(self, index: list[int]) -> Prediction:
        """These answers only (`index` into them)."""
        i = np.asarray(index, dtype=int)
        return Prediction(
            self.boxes[i].reshape(-1, 4), [self.labels[k] for k in i], self.scores[i], self.confidences[i],
            None if self.probabilities is None else self.probabilities[i],
        )  # fmt: skip

    def every_class(self, labels: list[str], min_probability: float = 0.05) -> Prediction:
        """Each face once per class whose probability is at least `min_probability`, ranked by
        detector score x that probability (COCO's convention for multi-class detectors, with the
        usual 0.05 floor); itself when it carries no probabilities."""
        if self.probabilities is None:
            return self
        face, cls = np.nonzero(self.probabilities >= min_probability)
        return Prediction(
            boxes=self.boxes[face].reshape(-1, 4),
            labels=[labels[c] for c in cls],
            scores=self.scores[face],
            confidences=self.probabilities[face, cls].astype(np.float32),
        )


def size_bin(box: np.ndarray, bins: tuple[int, int]) -> str:
    side = float(np.sqrt(max(box[2] - box[0], 0) * max(box[3] - box[1], 0)))
    return SIZES[0] if side < bins[0] else SIZES[1] if side < bins[1] else SIZES[2]


def average_precision(
    gts: list[tuple[np.ndarray, list[str]]], preds: list[Prediction], labels: list[str], iou_threshold: float
) -> dict:
    """Per-class AP and mAP at one IoU threshold (101-point interpolation) plus PR curves."""
    index = {lb: i for i, lb in enumerate(labels)}
    from torchmetrics.detection import MeanAveragePrecision  # here: it imports torchvision (seconds)

    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        iou_thresholds=[iou_threshold],
        class_metrics=True,
        extended_summary=True,
        backend="pycocotools",
    )
    metric.warn_on_many_detections = False  # COCO keeps each image's 100 best-ranked detections, as here
    targets = [
        {
            "boxes": torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([index[x] for x in lb], dtype=torch.long),
        }
        for b, lb in gts
    ]
    outputs = [
        {
            "boxes": torch.as_tensor(p.boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.as_tensor(p.ranking, dtype=torch.float32),
            "labels": torch.tensor([index[x] for x in p.labels], dtype=torch.long),
        }
        for p in preds
    ]
    metric.update(outputs, targets)
    result = metric.compute()
    classes = [int(c) for c in torch.atleast_1d(result["classes"])]
    per_class = torch.atleast_1d(result["map_per_class"]).tolist()
    ap = {labels[c]: float(v) for c, v in zip(classes, per_class, strict=True) if v >= 0}
    precision = result["precision"][0, :, :, 0, -1]  # (recall points, classes) for all areas, max dets
    curves = {labels[c]: precision[:, k].clamp(min=0).tolist() for k, c in enumerate(classes) if labels[c] in ap}
    return {"map": float(result["map"]), "ap": ap, "pr": curves, "recall_points": np.linspace(0, 1, 101).tolist()}


def ap_by_size(
    gts: list[tuple[np.ndarray, list[str]]],
    preds: list[Prediction],
    pairs: list[dict[int, int]],
    labels: list[str],
    iou_threshold: float,
    size_bins: tuple[int, int],
) -> dict[str, dict]:
    """mAP and AP per class over the faces of each size bin, COCO's way: the annotated faces of other
    sizes are set aside with the answers matched to them (`pairs`: per scene, the class-agnostic
    matching the recall by size uses), and an unmatched answer counts against a bin only when its own
    box is of that size."""
    gt_bins = [[size_bin(b, size_bins) for b in boxes] for boxes, _ in gts]
    answer_bins = []
    for pred, scene_pairs, bins in zip(preds, pairs, gt_bins, strict=True):
        matched_to = {p: g for g, p in scene_pairs.items()}
        answer_bins.append([bins[matched_to[p]] if p in matched_to else size_bin(pred.boxes[p], size_bins)
                            for p in range(len(pred.labels))])  # fmt: skip
    out = {}
    for size in SIZES:
        sized_gts = [
            (
                boxes[[b == size for b in bins]].reshape(-1, 4),
                [lb for lb, b in zip(truth, bins, strict=True) if b == size],
            )
            for (boxes, truth), bins in zip(gts, gt_bins, strict=True)
        ]
        sized_preds = [
            pred.subset([p for p, b in enumerate(bins) if b == size]).every_class(labels)
            for pred, bins in zip(preds, answer_bins, strict=True)
        ]
        result = average_precision(sized_gts, sized_preds, labels, iou_threshold)
        faces = sum(len(b) for b, _ in sized_gts)
        out[size] = {"map": result["map"] if faces else None, "ap": result["ap"], "faces": faces}
    return out


def recall_at_precision(hits: list[tuple[float, bool]], n_faces: int, precision: float) -> dict:
    """The operating point on the class-agnostic ranking: the most faces found while at least
    `precision` of what is answered is a face. `hits` holds (score, matched) per answer, matched by
    the greedy score-ordered matching (so every prefix of the ranking keeps its matches); the score
    is the lowest one answered at that point."""
    out = {"precision": precision, "recall": 0.0, "min_score": None}
    if not hits or not n_faces:
        return out
    order = sorted(hits, key=lambda h: -h[0])
    tp = np.cumsum([m for _, m in order])
    prec = tp / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(prec >= precision)
    if len(ok):
        i = int(ok[np.argmax(tp[ok])])
        out.update(recall=float(tp[i] / n_faces), min_score=float(order[i][0]))
    return out


def scene_metrics(
    gts: list[tuple[np.ndarray, list[str]]],
    preds: list[Prediction],
    labels: list[str],
    iou_threshold: float = 0.5,
    size_bins: tuple[int, int] = (32, 96),
    operating_precision: float = 0.8,
) -> dict:
    """Everything the scenes report shows, from annotated boxes and the pipeline's predictions."""
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} annotated scenes but {len(preds)} predictions")
    found = {lb: {s: [0, 0] for s in SIZES} for lb in labels}  # label -> size -> [found, total]
    confusion = {lb: dict.fromkeys([*labels, MISSED], 0) for lb in labels}
    false_positives = dict.fromkeys(labels, 0)
    hits: list[tuple[float, bool]] = []
    scene_pairs: list[dict[int, int]] = []
    for (boxes, truth), pred in zip(gts, preds, strict=True):
        pairs = match(boxes, pred.boxes, pred.scores, iou_threshold)
        scene_pairs.append(pairs)
        matched = set(pairs.values())
        hits += [(float(score), p in matched) for p, score in enumerate(pred.scores)]
        for g, (box, label) in enumerate(zip(boxes, truth, strict=True)):
            cell = found[label][size_bin(box, size_bins)]
            cell[1] += 1
            if g in pairs:
                cell[0] += 1
                confusion[label][pred.labels[pairs[g]]] += 1
            else:
                confusion[label][MISSED] += 1
        for p in set(range(len(pred.labels))) - set(pairs.values()):
            false_positives[pred.labels[p]] += 1
    recall = {
        lb: {s: {"found": f, "total": t, "recall": f / t if t else None} for s, (f, t) in sizes.items()}
        for lb, sizes in found.items()
    }
    for lb in labels:
        f, t = (sum(found[lb][s][i] for s in SIZES) for i in (0, 1))
        recall[lb]["all"] = {"found": f, "total": t, "recall": f / t if t else None}
    recall["all"] = {}  # every class together, by size
    for s in (*SIZES, "all"):
        f, t = (sum(recall[lb][s][k] for lb in labels) for k in ("found", "total"))
        recall["all"][s] = {"found": f, "total": t, "recall": f / t if t else None}
    n_gt = sum(len(b) for b, _ in gts)
    n_pred = sum(len(p.labels) for p in preds)
    n_matched = sum(sum(row[lb] for lb in labels) for row in confusion.values())
    correct = sum(confusion[lb][lb] for lb in labels)
    top1 = average_precision(gts, preds, labels, iou_threshold)
    return {
        **average_precision(gts, [p.every_class(labels) for p in preds], labels, iou_threshold),
        "map_top1": top1["map"],
        "ap_top1": top1["ap"],
        "iou_threshold": iou_threshold,
        "faces": n_gt,
        "detections": n_pred,
        "detector_recall": n_matched / n_gt if n_gt else None,
        "detector_precision": n_matched / n_pred if n_pred else None,
        "matched_accuracy": correct / n_matched if n_matched else None,
        "recall_at_precision": recall_at_precision(hits, n_gt, operating_precision),
        "ap_by_size": ap_by_size(gts, preds, scene_pairs, labels, iou_threshold, size_bins),
        "recall_by_size": recall,
        "confusion": confusion,
        "false_positives": false_positives,
    }


def format_scene_table(result: dict, labels: list[str]) -> str:
    """The per-class table printed at the end of an evaluation."""
    rows = [
        f"{'class':<11}{'AP@' + str(result['iou_threshold']):>8}{'top-1':>7}{'faces':>7}{'found':>7}"
        f"{'small':>8}{'medium':>8}{'large':>8}{'FP':>5}"
    ]
    for lb in labels:
        rec = result["recall_by_size"][lb]
        ap, top1 = result["ap"].get(lb), result["ap_top1"].get(lb)
        cells = [f"{rec[s]['recall']:.2f}" if rec[s]["recall"] is not None else "-" for s in SIZES]
        rows.append(
            f"{lb:<11}{_fmt(ap):>8}{_fmt(top1):>7}{rec['all']['total']:>7}"
            f"{rec['all']['found']:>7}{cells[0]:>8}{cells[1]:>8}{cells[2]:>8}{result['false_positives'][lb]:>5}"
        )
    rows.append(
        f"mAP {result['map']:.3f} (top-1 {result['map_top1']:.3f}) | "
        f"detector recall {_fmt(result['detector_recall'])}, precision "
        f"{_fmt(result['detector_precision'])} (recall {_fmt(result['recall_at_precision']['recall'])} at precision "
        f"{result['recall_at_precision']['precision']:.2f}) | class accuracy on found faces "
        f"{_fmt(result['matched_accuracy'])}"
    )
    by_size = ", ".join(f"{size} {_fmt(v['map'])} ({v['faces']} faces)" for size, v in result["ap_by_size"].items())
    rows.append(f"mAP by face size: {by_size}")
    return "\n".join(rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
