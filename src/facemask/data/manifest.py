"""The image manifest: scan sources, map labels, hash, de-duplicate and split.

A manifest row is one sample: ``id, source, kind, relpath, label, source_label, width, height, bytes,
sha256, phash, group, split`` and, for a face of an annotated scene (``kind == "scene"``), its box
``x1, y1, x2, y2`` in the image's pixels. Paths are relative to ``<paths.raw>/<source>``. All faces
of a scene share its image's ``group``, so they land in one split.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from facemask.data.voc import Scene, load_scenes
from facemask.imageio import ImageError, image_size

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class IngestReport:
    """Counts of what ingestion kept and dropped, and why."""

    scanned: int = 0
    unreadable: int = 0
    too_large: int = 0
    unmapped_folders: dict[str, int] = field(default_factory=dict)
    unmapped_objects: dict[str, int] = field(default_factory=dict)
    scene_images: int = 0
    scene_faces: int = 0
    evaluation_copies: int = 0
    evaluation_copy_examples: list[str] = field(default_factory=list)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    label_conflicts: int = 0
    capped: int = 0
    kept: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)
    per_source: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)


def map_label(folder: str, label_map: Mapping[str, str]) -> str | None:
    """Our label for a source folder name (case-insensitive), or None when it is not mapped."""
    lowered = {k.lower(): v for k, v in label_map.items()}
    return lowered.get(folder.lower())


def scan_source(
    source: str, root: Path, label_map: Mapping[str, str], extensions: Iterable[str], report: IngestReport
) -> list[dict]:
    """List the images of one source: one row per file under a mapped label folder."""
    exts = {e.lower() for e in extensions}
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = map_label(folder.name, label_map)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if label is None:
            report.unmapped_folders[f"{source}/{folder.name}"] = len(files)
            continue
        rows += [
            {
                "source": source,
                "relpath": str(p.relative_to(root)),
                "label": label,
                "source_label": folder.name,
            }
            for p in files
        ]
    return rows


def scan_scenes(source: str, root: Path, label_map: Mapping[str, str], report: IngestReport) -> list[dict]:
    """List the annotated scenes of one VOC source: one row per image, its faces in ``faces``
    (boxes scaled to the image's pixels); a malformed annotation raises SceneError naming the file."""
    rows = []
    for scene in load_scenes(root, dict(label_map)):
        for name in scene.ignored:
            key = f"{source}/{name}"
            report.unmapped_objects[key] = report.unmapped_objects.get(key, 0) + 1
        if not scene.labels:
            continue
        majority = Counter(scene.labels).most_common(1)[0][0]
        rows.append(
            {
                "source": source,
                "relpath": str(scene.image.relative_to(root)),
                "label": majority,
                "source_label": "scene",
                "faces": list(zip(scene.labels, scene.boxes.round(1).tolist(), strict=True)),
            }
        )
    return rows


def expand_scenes(df: pd.DataFrame, report: IngestReport) -> pd.DataFrame:
    """One row per annotated face of every scene image (``kind`` scene, box columns); photo rows
    pass through with ``kind`` photo. Faces keep their image's hashes and group."""
    out = []
    for row in df.to_dict("records"):
        faces = row.pop("faces", None)
        if not isinstance(faces, list):
            out.append({**row, "kind": "photo"})
            continue
        report.scene_images += 1
        for k, (label, (x1, y1, x2, y2)) in enumerate(faces):
            out.append({**row, "kind": "scene", "label": label, "source_label": label, "face": k,
                        "x1": x1, "y1": y1, "x2": x2, "y2": y2})  # fmt: skip
            report.scene_faces += 1
    return pd.DataFrame(out)


def crop_hashes(image: Image.Image, fractions: Iterable[float] = (1.0, 0.8, 0.6)) -> list[imagehash.ImageHash]:
    """Perceptual hashes of the whole image and of its central crops (a copy may be cropped)."""
    hashes = []
    w, h = image.size
    for f in fractions:
        dx, dy = round(w * (1 - f) / 2), round(h * (1 - f) / 2)
        hashes.append(imagehash.phash(image.crop((dx, dy, w - dx, h - dy))))
    return hashes


def evaluation_copies(df: pd.DataFrame, roots: Mapping[str, Path], eval_images: list[Path], distance: int) -> pd.Series:
    """Which rows copy an evaluation image: the perceptual hash of the training image, or of one of
    its central crops, lies within `distance` bits of the evaluation image's or one of its crops'."""
    eval_hashes = []
    for path in tqdm(eval_images, desc="hash evaluation scenes"):
        with Image.open(path) as im:
            eval_hashes += [str(h) for h in crop_hashes(im.convert("RGB"))]
    bits = _hash_bits(eval_hashes)
    copies = np.zeros(len(df), dtype=bool)
    for i, row in enumerate(tqdm(df.itertuples(), total=len(df), desc="check against evaluation scenes")):
        with Image.open(roots[row.source] / row.relpath) as im:
            mine = _hash_bits([str(h) for h in crop_hashes(im.convert("RGB"))])
        dist = mine @ (1.0 - bits).T + (1.0 - mine) @ bits.T
        copies[i] = bool((dist <= distance + 0.5).any())
    return pd.Series(copies, index=df.index)


def describe_image(path: Path, max_pixels: int) -> dict | None:
    """Size, byte count, SHA-256 and perceptual hash of one image; None if it cannot be read."""
    data = path.read_bytes()
    try:
        width, height = image_size(data)
    except ImageError:
        return None
    info = {"width": width, "height": height, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if width * height > max_pixels:
        return {**info, "phash": None}
    try:
        with Image.open(path) as im:
            im.load()
            info["phash"] = str(imagehash.phash(im.convert("RGB")))
    except (OSError, SyntaxError, ValueError):
        return None
    return info


def _hash_bits(hex_hashes: list[str]) -> np.ndarray:
    ints = np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)
    return np.unpackbits(ints.view(np.uint8).reshape(-1, 8), axis=1).astype(np.float32)


def near_pairs(hex_hashes: list[str], max_distance: int, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """All pairs (i, j, distance) with i < j and Hamming distance <= max_distance."""
    bits = _hash_bits(hex_hashes)
    inv = 1.0 - bits
    pairs = []
    for start in range(0, len(bits), chunk):
        block = bits[start : start + chunk]
        dist = block @ inv.T + (1.0 - block) @ bits.T
        ii, jj = np.nonzero(dist <= max_distance + 0.5)
        for i, j in zip(ii + start, jj, strict=True):
            if i < j:
                pairs.append((int(i), int(j), round(dist[i - start, j])))
    return pairs


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def deduplicate(
    df: pd.DataFrame, drop_distance: int, group_distance: int, report: IngestReport, label_col: str = "label"
) -> pd.DataFrame:
    """Drop exact and perceptual duplicates, and assign near-duplicate groups.

    Within a duplicate cluster (same bytes, or phash distance <= drop_distance) the first image is
    kept; a cluster whose images disagree on the label is dropped whole (the label is doubtful).
    Images within group_distance of each other share a ``group`` so that they land in one split.
    """
    df = df.reset_index(drop=True)
    n = len(df)
    dup = _UnionFind(n)
    for _, idx in df.groupby("sha256").indices.items():
        for j in idx[1:]:
            dup.union(int(idx[0]), int(j))
    exact_roots = {dup.find(i) for i in range(n)}
    report.exact_duplicates = n - len(exact_roots)
    pairs = near_pairs(df["phash"].tolist(), group_distance)
    for i, j, d in pairs:
        if d <= drop_distance:
            dup.union(i, j)
    roots = np.array([dup.find(i) for i in range(n)])
    report.near_duplicates = len(exact_roots) - len(set(roots))

    labels_per_root = df.groupby(roots)[label_col].nunique()
    conflicted = set(labels_per_root[labels_per_root > 1].index)
    keep = np.array([roots[i] == i and roots[i] not in conflicted for i in range(n)])
    report.label_conflicts = int(sum(1 for r in roots if r in conflicted))
    group = _UnionFind(n)
    for i, j, _ in pairs:
        group.union(int(roots[i]), int(roots[j]))
    df["group"] = [group.find(int(r)) for r in roots]
    kept = df[keep].copy()
    # groups get dense, stable ids
    kept["group"] = pd.factorize(kept["group"])[0]
    return kept.reset_index(drop=True)


def cap_per_label(df: pd.DataFrame, max_per_class: int | None, seed: int, report: IngestReport) -> pd.DataFrame:
    """Keep at most `max_per_class` images of each label (a reproducible sample)."""
    if max_per_class is None:
        return df
    capped = df.sample(frac=1.0, random_state=seed).groupby("label").head(max_per_class)
    report.capped = len(df) - len(capped)
    return capped.sort_index().reset_index(drop=True)


def split_groups(df: pd.DataFrame, val: float, test: float, seed: int) -> pd.Series:
    """Stratified split of whole near-duplicate groups into train/val/test.

    Groups are labelled by their majority label; within each label, groups are shuffled and each
    goes to the split furthest below its target share of that label's images.
    """
    rng = np.random.default_rng(seed)
    fractions = {"train": 1.0 - val - test, "val": val, "test": test}
    sizes = df.groupby("group").size()
    group_label = df.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    assignment: dict[int, str] = {}
    for label in sorted(group_label.unique()):
        groups = group_label.index[group_label == label].to_numpy()
        groups = groups[rng.permutation(len(groups))]
        total = sizes[groups].sum()
        filled = dict.fromkeys(SPLITS, 0)
        # smallest splits first on ties, so tiny slices still get val and test images
        for g in groups:
            deficit = {s: fractions[s] * total - filled[s] for s in SPLITS}
            target = max(reversed(SPLITS), key=lambda s: deficit[s])
            assignment[int(g)] = target
            filled[target] += int(sizes[g])
    return df["group"].map(assignment)


def summarise(df: pd.DataFrame, report: IngestReport) -> IngestReport:
    report.kept = len(df)
    report.per_label = dict(sorted(Counter(df["label"]).items()))
    report.per_split = {s: dict(sorted(Counter(df.loc[df["split"] == s, "label"]).items())) for s in SPLITS}
    report.per_source = {
        src: {s: dict(sorted(Counter(part.loc[part["split"] == s, "label"]).items())) for s in SPLITS}
        for src, part in df.groupby("source")
    }
    return report


def describe_all(rows: list[dict], roots: Mapping[str, Path], max_pixels: int, workers: int = 2) -> list[dict]:
    """Describe every row's image in parallel; unreadable ones get ``None``."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [roots[r["source"]] / r["relpath"] for r in rows]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        infos = list(
            tqdm(pool.map(lambda p: describe_image(p, max_pixels), paths), total=len(paths), desc="hash images")
        )
    return infos


def split_scenes(manifest: Path, raw: Path, split: str) -> list[Scene]:
    """The annotated scenes of one split (`kind == "scene"` rows grouped by image), sorted by path:
    boxes in the image's pixels, our labels."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    frame = pd.read_csv(manifest, keep_default_na=False)
    frame = frame[(frame["kind"] == "scene") & (frame["split"] == split)]
    scenes = []
    for (source, relpath), part in frame.groupby(["source", "relpath"], sort=True):
        boxes = part[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float32)
        scenes.append(Scene(Path(raw) / source / relpath, boxes, part["label"].tolist()))
    return scenes
