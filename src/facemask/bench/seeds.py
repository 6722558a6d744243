"""`python -m facemask.bench.seeds`: the pipeline's spread over training seeds, as mean ± sd.

The pipeline is deterministic on one machine, not across machines, and two training seeds on one
machine differ as much as two machines do. A figure is therefore given with its spread, and a change
to a model is adopted on the mean over seeds on validation data, not on one run.

`run --seeds 43 44`: for each seed, a scratch clone of the committed HEAD (`--work`, default
`experiments/seeds/`) with `train_seed` set in `conf/config.yaml`, its data and ingest outputs taken
from this checkout (the data split is `seed`'s and stays), then the real `dvc repro`: the detector's
fine-tuning, the crops, the classifier and every evaluation, as `make test` runs them.
`run --override KEY=VALUE ...` trains a candidate change instead (Hydra overrides, as `make params
OVERRIDES=...` takes them, applied in every clone; `--work` keeps it apart from the plain seeds):
`--seeds 42 43 44 --override +detector_train.callbacks.ema._target_=... --work experiments/ema`.
`collect DIR ...`: the table from pipeline checkouts already run (this one included: `.`).
Both print one row per seed and the mean ± sd, write `--out` (CSV, plus `.json` with the summary and
the machine) and log one MLflow comparison: a parent run with the means and sds, a child run per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from facemask import mlflow_tracking
from facemask.config import compose, load_params, write_params
from facemask.machine import describe, label

CLOSE_UPS = ("face-mask-2class", "maskedface-net-sample")
# the headline figures, in the order the table shows them; dev_* only measure, val_* choose
FIGURES = [
    "detector_val_ap", "val_scene_map", "dev_map", "dev_ap_mask", "dev_ap_no_mask", "dev_ap_incorrect",
    "dev_recall_at_p80", "dev_recall_small", "test_face_macro_f1", "closeup_f1_2class", "closeup_f1_maskedface",
    "scene_crops_f1", "detector_s_per_epoch", "classifier_s_per_epoch",
]  # fmt: skip


def figures(root: Path) -> dict[str, float]:
    """One pipeline checkout's headline figures, read from the reports its `dvc repro` wrote."""
    params = load_params(root / "params.yaml")
    reports = root / params.paths.reports

    def read(rel: str) -> dict:
        return json.loads((reports / rel).read_text())

    detector, classifier = read("detector/train.json"), read("train.json")
    test, dev = (json.loads((root / path).read_text()) for path in (params.paths.metrics, params.paths.scene_metrics))
    sweep = pd.read_csv(reports / "rejection.csv")
    chosen = sweep.loc[(sweep["reject_min_probability"] - classifier["reject_min_probability"]).abs().idxmin()]
    sources = test["per_source"]
    return {
        "train_seed": params.train_seed,
        "detector_val_ap": detector["val_ap"],
        "val_scene_map": float(chosen["map"]),
        "dev_map": dev["map"],
        **{f"dev_ap_{lb}": v for lb, v in dev["ap"].items()},
        "dev_recall_at_p80": dev["recall_at_precision"]["recall"],
        "dev_recall_small": dev["recall"]["all"]["small"],
        "test_face_macro_f1": test["face_macro_f1"],
        "closeup_f1_2class": sources[CLOSE_UPS[0]]["macro_f1"],
        "closeup_f1_maskedface": sources[CLOSE_UPS[1]]["macro_f1"],
        "scene_crops_f1": test["per_kind"]["scene"]["macro_f1"],
        "detector_s_per_epoch": detector["seconds_per_epoch"],
        "classifier_s_per_epoch": classifier["seconds_per_epoch"],
    }


def spread(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample sd, min and max of each figure over the seeds."""
    cols = [c for c in FIGURES if c in table]
    return table[cols].agg(["mean", "std", "min", "max"]).T.rename(columns={"std": "sd"})


def clone_for_seed(repo: Path, work: Path, seed: int) -> Path:
    """A scratch clone of `repo`'s HEAD training with `seed`; the data and the ingest output reused."""
    dest = work / f"seed-{seed}"
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["git", "clone", "-q", str(repo), str(dest)], check=True)
    config = dest / "conf/config.yaml"
    text, n = re.subn(r"^train_seed: \d+", f"train_seed: {seed}", config.read_text(), count=1, flags=re.M)
    if n != 1:
        raise SystemExit(f"no `train_seed:` line in {config}")
    config.write_text(text)
    for rel in ("data", ".dvc/cache"):  # the raw links, the manifest and DVC's cache: ingest is not rerun
        if (repo / rel).exists():
            shutil.copytree(repo / rel, dest / rel, symlinks=True, dirs_exist_ok=True)
    shutil.copy(repo / "dvc.lock", dest / "dvc.lock")  # the stages whose inputs did not change are skipped
    return dest


def run_seed(repo: Path, work: Path, seed: int, overrides: list[str] = ()) -> Path:
    dest = clone_for_seed(repo, work, seed)
    bin_dir = Path(sys.executable).parent
    # the clone's own conf/ (a shared environment's `python -m facemask.config` reads the conf/ of the
    # checkout it was installed from: every clone would train that checkout's train_seed)
    raw = compose(list(overrides), config_dir=dest / "conf")
    if raw["train_seed"] != seed:
        raise SystemExit(f"{dest}: params compose train_seed {raw['train_seed']}, not {seed} (an override sets it?)")
    write_params(raw, dest / "params.yaml")
    print(f"== train_seed {seed}{' with ' + ' '.join(overrides) if overrides else ''}: dvc repro in {dest}", flush=True)
    # the stages' `python` is this environment's, however this was started (make's `uv run` or not)
    # and its code the clone's own (the environment's editable install points at this checkout's src/)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(dest / "src")}
    subprocess.run([str(bin_dir / "dvc"), "repro"], cwd=dest, check=True, env=env)
    return dest


def log_comparison(table: pd.DataFrame, summary: pd.DataFrame, repo: Path, overrides: list[str] = ()) -> str:
    """One MLflow comparison in this checkout's tracking store, experiment `<experiment>-seeds` (the
    training experiment keeps its training runs): a parent run (means and sds) and a child run per
    seed; returns the parent's run id."""
    cfg = load_params(repo / "params.yaml").mlflow
    experiment_id = mlflow_tracking.setup(cfg.model_copy(update={"experiment": f"{cfg.experiment}-seeds"}))
    tag = f"seeds-{len(table)}"
    name = f"seed spread ({len(table)} seeds{', ' + ' '.join(overrides) if overrides else ''})"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name[:250]) as parent:
        mlflow.set_tags({"comparison": tag, "facemask.kind": "seed-spread", "machine": label()})
        mlflow.log_param("train_seeds", ",".join(str(int(s)) for s in table["train_seed"]))
        mlflow.log_param("overrides", " ".join(overrides) or "none")
        for name, row in summary.iterrows():
            mlflow.log_metrics({f"{name}.mean": float(row["mean"]), f"{name}.sd": float(row["sd"])})
        for _, row in table.iterrows():
            name = f"train_seed {int(row['train_seed'])}"
            with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True):
                mlflow.set_tags({"comparison": tag, "facemask.kind": "seed-spread"})
                mlflow.log_param("train_seed", int(row["train_seed"]))
                mlflow.log_metrics({k: float(row[k]) for k in FIGURES if k in row})
    return parent.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the whole pipeline once per seed in scratch clones, then tabulate")
    run.add_argument("--seeds", type=int, nargs="+", required=True)
    run.add_argument("--work", type=Path, default=Path("experiments/seeds"))
    run.add_argument("--with-this", action="store_true", help="add this checkout's own run as one more seed")
    run.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE", help="Hydra overrides: a candidate")
    collect = sub.add_parser("collect", help="tabulate pipeline checkouts already run")
    collect.add_argument("dirs", type=Path, nargs="+")
    for p in (run, collect):
        p.add_argument("--out", type=Path, default=Path("reports/bench/seeds.csv"))
        p.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    repo = Path.cwd()
    if args.command == "run":
        if args.override and args.with_this:
            raise SystemExit("--with-this adds this checkout's run, which has no --override: compare in two tables")
        work = args.work.resolve()
        dirs = [run_seed(repo, work, s, args.override) for s in args.seeds] + ([repo] if args.with_this else [])
    else:
        dirs = args.dirs
    missing = [str(d) for d in dirs if not (d / "params.yaml").is_file()]
    if missing:
        raise SystemExit(f"not a pipeline checkout (no params.yaml): {', '.join(missing)}")
    table = pd.DataFrame([figures(d) for d in dirs]).sort_values("train_seed")
    summary = spread(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    overrides = args.override if args.command == "run" else []
    record = {"machine": describe(), "seeds": table["train_seed"].tolist(), "overrides": overrides,
              "spread": summary.round(4).T.to_dict()}  # fmt: skip
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(4).to_string(index=False))
        print(f"\nover {len(table)} training seeds on {label()}:")
        print(summary.round(4).to_string())
    if not args.no_mlflow:
        print(f"MLflow: seed-spread run {log_comparison(table, summary, repo, overrides)}")
    print(f"-> {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
