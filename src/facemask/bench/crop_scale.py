"""Crop-stage scaling: images/s and peak memory of the whole stage (manifest streaming, detection,
crops written, report) at 1x and 10x a slice of the data, process pool vs Dask local cluster, and
the crop stage of an older revision (`--baseline`, e.g. the last one before facemask.compute).

    python -m facemask.bench.crop_scale [--images 400] [--factors 1 10] [--repeat 3] [--baseline REV]

The slice is the first `--images` images of the pipeline's manifest (`--images 0`: all of it);
10x repeats it ten times under other ids and source folders (symlinks to the same files), so the
work per image is the same and only the length grows. Each run is a fresh child process; its peak
memory is the largest resident set of its whole process tree (workers included), sampled every
0.2 s, and `cpu_s` the CPU seconds its processes used (as last sampled: a lower bound). Needs
the ingest stage's manifest and the detector weights (mirror or download).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

from facemask.config import compose, validate, write_params
from facemask.machine import describe

ENGINES = ("pool", "dask")


def scaled_project(tmp: Path, images: int, factor: int) -> tuple[Path, int]:
    """A manifest of `images` images repeated `factor` times, raw folders linked per repetition; the
    project folder and how many images its manifest lists."""
    params = validate(compose())
    manifest = pd.read_csv(params.paths.manifest, keep_default_na=False)
    keys = manifest[["source", "relpath"]].drop_duplicates()
    if images:
        keys = keys.head(images)
    part = manifest.merge(keys, on=["source", "relpath"])
    (tmp / "raw").mkdir(parents=True)
    copies = []
    for k in range(factor):
        for source in part["source"].unique():
            (tmp / "raw" / f"r{k}~{source}").symlink_to((params.paths.raw / source).resolve())
        copies.append(part.assign(id=f"r{k}-" + part["id"], source=f"r{k}~" + part["source"]))
    (tmp / "interim").mkdir()
    pd.concat(copies).sort_values("id").to_csv(tmp / "interim" / params.paths.manifest.name, index=False)
    return tmp, len(keys) * factor


def run_child(root: Path, images: int, engine: str, workers: int, baseline: Path | None = None) -> dict:
    """One crop stage over the `images` images of project `root`, in a child process: its images/s,
    CPU seconds and peak tree RSS. Engine `baseline`: the crop stage of the source tree `baseline`
    (its own config), on `workers`."""
    paths = [f"paths.raw={root / 'raw'}", f"paths.interim={root / 'interim'}", f"paths.crops={root / 'crops'}",
             f"paths.reports={root / 'reports'}", f"crop.workers={workers}"]  # fmt: skip
    params_file = root / "params.yaml"
    env = dict(os.environ)
    if baseline is None:
        write_params(compose([*paths, f"engine.kind={engine}"]), params_file)
    else:  # that tree composes its own params (its config may predate `engine`)
        env["PYTHONPATH"] = str(baseline / "src")
        subprocess.run([sys.executable, "-m", "facemask.config", "--out", str(params_file), *paths],
                       cwd=baseline, env=env, check=True, capture_output=True)  # fmt: skip
    cmd = [sys.executable, "-m", "facemask.stages.crop", "--params", str(params_file)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=baseline)  # fmt: skip
    peak, done = 0, threading.Event()
    cpu: dict[int, float] = {}  # CPU seconds last seen per process of the tree

    def sample() -> None:
        nonlocal peak
        top = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [top, *top.children(recursive=True)]
                rss = 0
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss
                        times = p.cpu_times()
                        cpu[p.pid] = times.user + times.system
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"crop stage failed ({engine}):\n{err[-3000:]}")
    return {"images": images, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 2),
            "cpu_s": round(sum(cpu.values()), 1), "peak_rss_mib": round(peak / 2**20)}  # fmt: skip


def worktree(stack: contextlib.ExitStack, rev: str) -> Path:
    """A temporary checkout of `rev` (this repository's git history), removed on exit."""
    path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crop-scale-rev-"))) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], check=True, capture_output=True)
    stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(path)], capture_output=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="images in the 1x slice; 0: the whole manifest")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--repeat", type=int, default=1, help="runs of each row (engines alternate); medians reported")
    parser.add_argument("--baseline", metavar="REV", help="also time the crop stage of this git revision")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)
    runs: dict[tuple[int, str], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        engines: list[tuple[str, Path | None]] = [(e, None) for e in args.engines]
        if args.baseline:
            engines.insert(0, (f"baseline {args.baseline}", worktree(stack, args.baseline)))
        for factor in args.factors:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="crop-scale-")))
            for k in range(args.repeat):
                for n, (engine, baseline) in enumerate(engines):
                    root, images = scaled_project(tmp / f"{n}-{k}", args.images, factor)
                    result = run_child(root, images, engine, args.workers, baseline)
                    runs.setdefault((factor, engine), []).append(result)
                    print(json.dumps({"data": f"{factor}x", "engine": engine, **runs[factor, engine][-1]}),
                          file=sys.stderr, flush=True)  # fmt: skip
    rows = []
    for (factor, engine), done in runs.items():
        median = pd.DataFrame(done).median().to_dict()
        rows.append({"data": f"{factor}x", "engine": engine, "workers": args.workers, "runs": len(done),
                     **{k: round(v, 2) for k, v in median.items()}})  # fmt: skip
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": {**describe(), "memory_gib": round(psutil.virtual_memory().total / 2**30)},
              "slice_images": args.images, "rows": rows}  # fmt: skip
    (args.out / "crop_scale.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
