"""Configuration: Hydra composition, the committed params.yaml, and clear errors naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from facemask.config import ConfigError, compose, load_params, validate

from .conftest import REPO


def test_committed_params_match_conf():
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed == compose(), "params.yaml is stale: run `make params`"


def test_groups_mirror_the_code():
    groups = {p.name for p in (REPO / "conf").iterdir() if p.is_dir()}
    assert {"data", "detector", "augment", "model", "trainer", "mlflow"} <= groups


def test_override_selects_group_option():
    raw = compose(["model=resnet10t", "detector=retinaface", "trainer.lr=0.01"])
    assert raw["model"]["backbone"] == "resnet10t"
    assert raw["detector"]["name"] == "retinaface"
    assert raw["trainer"]["lr"] == 0.01


@pytest.mark.parametrize(
    ("override", "key", "fragment"),
    [
        ("model.backbone=resnet_doesnotexist", "model.backbone", "not a timm model"),
        ("trainer.lr=-0.1", "trainer.lr", "greater than 0"),
        ("data.split.val=0.8", "data.split", "leave at least 10%"),
        ("crop.multi_face=random", "crop.multi_face", "'largest' or 'drop'"),
        ("+augment.transforms=[{name: NoSuchTransform}]", "augment.transforms", "not an albumentations transform"),
    ],
)
def test_bad_value_names_the_key(override, key, fragment):
    if override.startswith("+augment"):
        raw = compose()
        raw["augment"]["transforms"] = [{"name": "NoSuchTransform"}]
        with pytest.raises(ConfigError) as err:
            validate(raw)
    else:
        with pytest.raises(ConfigError) as err:
            compose([override])
    assert f"{key}:" in str(err.value)
    assert fragment in str(err.value)


def test_unknown_key_is_refused():
    raw = compose()
    raw["trainer"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"trainer.learning_rate: Extra inputs are not permitted"):
        validate(raw)


def test_malformed_params_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="make params"):
        load_params(tmp_path / "missing.yaml")


def test_cli_bad_override_exits_2_without_touching_output(tmp_path):
    out = tmp_path / "params.yaml"
    out.write_text("keep: me\n")
    proc = subprocess.run(
        [sys.executable, "-m", "facemask.config", "trainer.lr=-1", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "trainer.lr" in proc.stderr
    assert out.read_text() == "keep: me\n"


def test_missing_mirror_folder_names_the_key(tmp_path, monkeypatch):
    from facemask.data.fetch import resolve_source

    (tmp_path / "datasets").mkdir()
    monkeypatch.setenv("FACEMASK_MIRROR", str(tmp_path))
    params = validate(compose())
    with pytest.raises(ConfigError, match=r"data.sources.face-mask-2class.mirror_dir"):
        resolve_source("face-mask-2class", params.data.sources["face-mask-2class"])


def test_params_and_reports_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """`write_params` and `write_json` (every stage report) go through one `<name>.part` and a
    rename: a write that fails before the rename (a full disk, a kill) leaves the previous file as
    it was; a new folder is made."""
    from facemask import atomic_files
    from facemask.cli import write_json
    from facemask.config import write_params

    params = tmp_path / "params.yaml"
    write_params(compose([]), params)
    before = params.read_bytes()
    report = tmp_path / "reports" / "deep" / "train.json"
    write_json(report, {"best_val_macro_f1": 0.9})
    assert load_params(params).model.input_size == 96 and '"best_val_macro_f1": 0.9' in report.read_text()

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_params(compose(["model.input_size=128"]), params)
    with pytest.raises(OSError, match="No space"):
        write_json(report, {"best_val_macro_f1": 0.1})
    assert params.read_bytes() == before and '"best_val_macro_f1": 0.9' in report.read_text()
    monkeypatch.undo()
    write_params(compose(["model.input_size=128"]), params)
    assert load_params(params).model.input_size == 128 and not params.with_name("params.yaml.part").exists()
