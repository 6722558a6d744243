"""Stage 0, feedback: pull the reviewed alerts of a running service into the project.

`FACEMASK_FEEDBACK_FROM` names the running service (its URL: `GET /events/reviewed` with the key in
`FACEMASK_API_KEY`) or its feedback folder (`stream.feedback.dir`, or `feedback` beside its event
file; a copy of it, or the volume it lives on). Each reviewed scene is checked
before anything of it is written (`facemask.data.feedback.pull`); scenes pulled before are kept, a
later verdict on the same alert replaces its scene. Without the variable the stage only makes sure
the folder exists (a fresh clone: no corrections yet).

The folder (`paths.feedback`) is this stage's output, versioned by DVC like the pipeline's other
data (`persist`: a run adds to it). `make retrain FROM=<folder>` forces this stage, then runs the
pipeline: the ingest stage reads the folder as one more scene source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path

from facemask.cli import run_stage, write_json
from facemask.config import Params
from facemask.data.feedback import PullReport, download, label_map, pull

log = logging.getLogger("facemask.feedback")
FROM_ENV = "FACEMASK_FEEDBACK_FROM"
KEY_ENV = "FACEMASK_API_KEY"  # the service's key, as the camera client reads it


def feedback(params: Params) -> None:
    dest = params.paths.feedback
    for folder in ("images", "annotations"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    source = os.environ.get(FROM_ENV)
    if not source:
        report = PullReport(total=len(list((dest / "annotations").glob("*.xml"))))
        write_json(params.paths.reports / "feedback.json", dataclasses.asdict(report))
        log.info("%s is not set: nothing pulled; %d reviewed alerts in %s", FROM_ENV, report.total, dest)
        return
    names = label_map(params.data.labels, params.crop.background.label)
    if source.startswith(("http://", "https://")):  # the running service itself, behind its API key
        with tempfile.TemporaryDirectory(prefix="facemask-feedback-") as tmp:
            folder = download(source, Path(tmp), os.environ.get(KEY_ENV))
            report = pull(folder, dest, names, params.data.max_image_pixels)
        report.source = source
    else:
        report = pull(Path(source).expanduser(), dest, names, params.data.max_image_pixels)
    write_json(params.paths.reports / "feedback.json", dataclasses.asdict(report))
    log.info(
        "pulled from %s: %d found, %d added, %d replaced, %d unchanged, %d refused; %d reviewed alerts in %s",
        source, report.found, report.added, report.replaced, report.unchanged, len(report.refused), report.total, dest,
    )  # fmt: skip
    for refused in report.refused:
        log.warning("refused %s: %s", refused["scene"], refused["reason"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("feedback", feedback, argv)


if __name__ == "__main__":
    sys.exit(main())
