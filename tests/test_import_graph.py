"""The package's layers: imports only go down (`python -m facemask.import_graph`)."""

from __future__ import annotations

import subprocess
import sys

from facemask.import_graph import imports, violations


def test_the_package_imports_only_downward():
    result = subprocess.run(
        [sys.executable, "-m", "facemask.import_graph"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "0 violations" in result.stdout
    assert " stages " in result.stdout and " config " in result.stdout  # it did read the real package


def test_an_upward_import_a_stage_importing_a_stage_and_an_unknown_unit_are_reported(tmp_path):
    files = {
        "config.py": "",
        "imageio.py": "from facemask import serving\n",  # a low layer importing a high one
        "serving/__init__.py": "",
        "serving/live.py": "import facemask.config\n",
        "stages/__init__.py": "",
        "stages/crop.py": "def f():\n    from facemask.stages.train import x\n",  # inside a function still counts
        "stages/train.py": "from facemask.newthing import y\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = violations(imports(tmp_path))
    assert any(v.startswith("imageio -> serving goes up") for v in found)
    assert any(v.startswith("facemask.stages.crop imports facemask.stages.train") for v in found)
    assert any("no layer names newthing" in v for v in found)
    assert not any(v.startswith("serving -> config") for v in found)  # a downward import is fine
    assert len(found) == 3
