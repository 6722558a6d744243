"""Shared entry-point plumbing for the DVC stage scripts."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facemask.atomic_files import write_atomic
from facemask.config import Params, load_params
from facemask.errors import FacemaskError


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a stage killed mid-way leaves the previous file intact)."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def run_stage(name: str, body: Callable[[Params], None], argv: list[str] | None = None) -> int:
    """Parse `--params`, load and validate them, run the stage; clear message and exit 2 on bad input."""
    parser = argparse.ArgumentParser(prog=f"facemask.stages.{name}", description=f"DVC stage: {name}")
    parser.add_argument("--params", default="params.yaml", help="composed parameters (default params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        body(load_params(args.params))
    except (FacemaskError, FileNotFoundError) as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # only stages that use MLflow load it
        if mlflow_errors is None or not isinstance(err, mlflow_errors.MlflowException):
            raise
        import mlflow

        first = str(err).strip().splitlines()[0][:300]
        print(
            f"{name}: MLflow at {mlflow.get_tracking_uri()} failed: {first}\n"
            f"{name}: the stage stopped there and nothing after it was recorded (no alias moved); "
            "run it again once the tracking server answers",
            file=sys.stderr,
        )
        return 3
    return 0
