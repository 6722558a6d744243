"""dvc.yaml declares what each stage reads: its paths come from params.yaml, its code deps cover the
stage's import closure (and name nothing it does not import), its params cover the sections the stage
script reads. So `dvc repro` re-runs exactly what a change affects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from facemask.config import Params
from facemask.import_graph import closure

from .conftest import REPO

PACKAGE = REPO / "src" / "facemask"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
STAGES = list(DVC["stages"])


def rendered(entry) -> str:
    """A dvc.yaml dep or out with its ${paths.x} resolved from params.yaml."""
    name = next(iter(entry)) if isinstance(entry, dict) else entry
    return re.sub(r"\$\{paths\.(\w+)\}", lambda m: str(PARAMS["paths"][m.group(1)]), name)


def targets(node) -> list[str]:
    """Every facemask `_target_` under a params node (objects Hydra builds: their modules are code deps)."""
    if isinstance(node, dict):
        found = [node["_target_"]] if str(node.get("_target_", "")).startswith("facemask.") else []
        return found + [t for v in node.values() for t in targets(v)]
    return [t for v in node for t in targets(v)] if isinstance(node, list) else []


def section(path: str):
    node = PARAMS
    for part in path.split("."):
        node = node[part]
    return node


def stage_closure(stage: str) -> set[str]:
    spec = DVC["stages"][stage]
    modules = [spec["cmd"].split()[-1]]
    for target in (t for p in spec.get("params", []) for t in targets(section(p))):
        parts = target.split(".")
        modules += [".".join(parts[:i]) for i in range(2, len(parts))]  # the module is a prefix of the path
    return {str(p.relative_to(REPO)) for p in closure(PACKAGE, modules)}


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_the_import_closure(stage):
    declared = [rendered(d) for d in DVC["stages"][stage]["deps"] if rendered(d).startswith("src/")]
    needed = stage_closure(stage)
    missing = sorted(f for f in needed if not any(f == d or f.startswith(d + "/") for d in declared))
    assert not missing, f"{stage} imports these but does not declare them: {missing}"
    stale = sorted(d for d in declared if d.endswith(".py") and d not in needed)
    assert not stale, f"{stage} declares files it never imports: {stale}"


def test_plots_py_is_a_dependency_of_exactly_the_stages_that_import_it():
    users = {s for s in STAGES if "src/facemask/plots.py" in stage_closure(s)}
    declaring = {
        s
        for s in STAGES
        if any(rendered(d) in {"src/facemask/plots.py", "src/facemask"} for d in DVC["stages"][s]["deps"])
    }
    assert users == declaring == {"train_detector", "train", "evaluate", "scenes", "detectors"}


@pytest.mark.parametrize("stage", STAGES)
def test_params_cover_what_the_stage_script_reads(stage):
    spec = DVC["stages"][stage]
    script = REPO / "src" / (spec["cmd"].split()[-1].replace(".", "/") + ".py")
    read = set(re.findall(r"\bparams\.([a-z_]+)", script.read_text())) & set(Params.model_fields)
    declared = {p.split(".")[0] for p in spec.get("params", [])}
    assert read <= declared, f"{stage} reads params sections {sorted(read - declared)} it does not declare"


def test_no_path_is_repeated_outside_params():
    """Every data, model and report path in dvc.yaml is a ${paths.x} of params.yaml."""
    literal = {str(v) for v in PARAMS["paths"].values()}
    text = (REPO / "dvc.yaml").read_text()
    for path in literal:
        assert not re.search(rf"(?<![\w/$]){re.escape(path)}/", text), (
            f"dvc.yaml spells out {path}/ instead of ${{paths}}"
        )
    outs = [rendered(o) for s in DVC["stages"].values() for o in s.get("outs", []) + s.get("metrics", [])]
    assert outs and all(Path(o).parts[0] in {Path(p).parts[0] for p in literal} for o in outs)


def test_the_code_names_no_artefact_file_itself():
    """The artefacts stages hand each other are `paths` keys (conf/config.yaml): no module spells their
    file names, so moving one is a conf/ change. Only the model stores' own file names remain: the
    BentoML model folder (serving/packaging.py) and the MLflow run's artifacts (mlflow_tracking.py)."""
    names = {Path(v).name for v in PARAMS["paths"].values() if Path(v).suffix}
    handed = {"manifest.csv", "crops.csv", "classifier.pt", "detector.onnx", "metrics.json", "augment_preview.png"}
    assert handed <= names
    stores = {"serving/packaging.py", "mlflow_tracking.py"}
    spelled = {
        (str(f.relative_to(PACKAGE)), name)
        for f in PACKAGE.rglob("*.py")
        if str(f.relative_to(PACKAGE)) not in stores
        for name in names
        if re.search(rf"[\"'/]{re.escape(name)}[\"']", f.read_text())
    }
    assert not spelled, f"artefact file names spelled in code (use params.paths.<key>): {sorted(spelled)}"
