"""`python -m facemask.stream.compliance EVENTS.jsonl [--out DIR]`: compliance per camera and hour.

Reads the `stats` and `alert` events of the append-only event file (its rotated files included) and writes
``compliance.csv`` (camera, hour, faces per class, masked share, alerts) and ``compliance.png``
(masked share over time, one line per camera).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from facemask.stream.sinks import event_files, read_events


def hourly(events: list[dict], compliant: str | None = None) -> pd.DataFrame:
    """Face counts per class, masked share and alerts per camera and hour (UTC). The masked faces are
    those of each stats event's `compliant` class (`compliant` stands in for events that lack it)."""
    stats = pd.DataFrame([{"compliant": compliant, **e} for e in events if e.get("type") == "stats"])
    alerts = pd.DataFrame([e for e in events if e.get("type") == "alert"])
    if stats.empty:
        raise ValueError("the event file holds no `stats` events")
    if stats["compliant"].isna().any():
        raise ValueError("stats events without `compliant` (the class counted as masked): give it with --compliant")
    stats["hour"] = pd.to_datetime(stats["time"], unit="s", utc=True).dt.floor("h")
    faces = [c for c in stats.columns if c.startswith("faces_")]
    stats[faces] = stats[faces].fillna(0).astype(int)
    stats["masked"] = [stats.at[i, f"faces_{c}"] if f"faces_{c}" in stats else 0 for i, c in stats["compliant"].items()]
    table = stats.groupby(["camera", "hour"])[[*faces, "masked", "frames"]].sum().reset_index()
    table["faces"] = table[faces].sum(axis=1)
    table["masked_share"] = (table.pop("masked") / table["faces"]).where(table["faces"] > 0)
    if alerts.empty:
        table["alerts"] = 0
    else:
        alerts["hour"] = pd.to_datetime(alerts["time"], unit="s", utc=True).dt.floor("h")
        counts = alerts.groupby(["camera", "hour"]).size().rename("alerts")
        table = table.merge(counts, on=["camera", "hour"], how="left").fillna({"alerts": 0})
        table["alerts"] = table["alerts"].astype(int)
    return table


def plot(table: pd.DataFrame):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for camera, rows in table.groupby("camera"):
        ax.plot(rows["hour"], rows["masked_share"], marker="o", label=str(camera))
    ax.set(ylabel="masked share of faces", ylim=(0, 1.02), title="Mask compliance per camera and hour")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facemask.stream.compliance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("events", type=Path, help="the JSONL event file (stream.sinks.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("reports/compliance"))
    parser.add_argument("--compliant", help="the masked class of stats events that do not name it (older files)")
    args = parser.parse_args(argv)
    if not event_files(args.events):
        print(f"compliance: {args.events} not found", file=sys.stderr)
        return 2
    try:
        table = hourly([e for e in read_events(args.events) if e.get("type") in ("stats", "alert")], args.compliant)
    except ValueError as err:
        print(f"compliance: {args.events}: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "compliance.csv", index=False)
    plot(table).savefig(args.out / "compliance.png", dpi=110)
    print(table.to_string(index=False))
    print(f"\nwritten {args.out / 'compliance.csv'} and {args.out / 'compliance.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
