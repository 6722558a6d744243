"""Scoring a classifier on the crop stage's splits: shared by the evaluate and promote stages. The
test split holds the sources' crops and, once reviewers corrected served alerts, theirs
(`facemask.data.feedback`): one promotion figure over both, and each part reported beside it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from facemask.classification_metrics import face_macro_f1, split_digest
from facemask.classifier import MaskClassifier
from facemask.config import Params
from facemask.data.feedback import SOURCE
from facemask.imageio import read_image


def split_crops(params: Params, split: str) -> pd.DataFrame:
    table = pd.read_csv(params.paths.crop_table, keep_default_na=False)
    table = table[(table["split"] == split) & (table["crop"] != "")].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"no {split} crops in {params.paths.crop_table}")
    return table


def predict_crops(classifier: MaskClassifier, params: Params, table: pd.DataFrame, batch: int = 128) -> np.ndarray:
    """Class probabilities of the listed crops, in the classifier's label order."""
    proba = []
    for start in tqdm(range(0, len(table), batch), desc="classify test crops"):
        names = table["crop"].iloc[start : start + batch]
        crops = [read_image(params.paths.crops / n, params.data.max_image_pixels) for n in names]
        proba.append(classifier.predict_proba(crops, bgr=True, batch_size=batch))
    return np.concatenate(proba)


def scored_parts(table: pd.DataFrame, predicted: list[str], face_labels: list[str]) -> dict[str, dict]:
    """The test split's two parts side by side: the sources' crops and the reviewed alerts' (each:
    crops, accuracy over every crop, face macro-F1 over the face crops; None where there are none)."""
    reviewed = table["source"].eq(SOURCE).to_numpy()
    parts = {}
    for part, chosen in (("sources", ~reviewed), ("feedback", reviewed)):
        actual = table["label"][chosen].tolist()
        guess = [p for p, keep in zip(predicted, chosen, strict=True) if keep]
        right = [a == g for a, g in zip(actual, guess, strict=True)]
        faces = any(a in face_labels for a in actual)
        parts[part] = {
            "crops": len(actual),
            "accuracy": round(float(np.mean(right)), 4) if right else None,
            "face_macro_f1": face_macro_f1(actual, guess, face_labels) if faces else None,
        }
    return parts


def score_test_split(classifier: MaskClassifier, params: Params) -> tuple[float, str, dict[str, dict]]:
    """(face macro-F1 on the test split, the split's digest, its `scored_parts`) of any model."""
    table = split_crops(params, "test")
    proba = predict_crops(classifier, params, table)
    predicted = [classifier.labels[k] for k in proba.argmax(axis=1)]
    digest = split_digest(table["id"].tolist(), table["label"].tolist())
    figure = face_macro_f1(table["label"].tolist(), predicted, params.data.labels)
    return figure, digest, scored_parts(table, predicted, params.data.labels)


def face_score(classifier: MaskClassifier, params: Params) -> tuple[float, str]:
    """(face macro-F1 on the test split, the split's digest): the promotion figure, for any model."""
    figure, digest, _ = score_test_split(classifier, params)
    return figure, digest
