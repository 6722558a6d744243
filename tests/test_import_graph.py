"""The package's layers: imports only go down, never in a circle (`python -m facemask.import_graph`)."""

from __future__ import annotations

import subprocess
import sys

from facemask.import_graph import cycles, imports, module_imports, violations


def test_the_package_imports_only_downward():
    result = subprocess.run(
        [sys.executable, "-m", "facemask.import_graph"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "0 violations" in result.stdout and "0 import cycles" in result.stdout
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


def test_modules_that_import_each_other_are_a_cycle_and_fail_the_check(tmp_path):
    """Two modules of one unit that need each other (one of them only inside a function), and a
    longer circle through three; a module importing a sibling one way is no cycle."""
    files = {
        "config.py": "",
        "stream/__init__.py": "",
        "stream/sinks.py": "def f():\n    from facemask.stream.mqtt import MqttSink\n",
        "stream/mqtt.py": "from facemask.stream.sinks import Delivery\n",
        "stream/a.py": "from facemask.stream import b\n",
        "stream/b.py": "import facemask.stream.c\n",
        "stream/c.py": "from facemask.stream.a import x\nimport facemask.config\n",
        "stream/d.py": "from facemask.stream.a import y\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cycles(module_imports(tmp_path)) == [
        ["facemask.stream.a", "facemask.stream.b", "facemask.stream.c"],
        ["facemask.stream.mqtt", "facemask.stream.sinks"],
    ]
    result = subprocess.run([sys.executable, "-m", "facemask.import_graph", "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert "import cycle: facemask.stream.mqtt -> facemask.stream.sinks -> facemask.stream.mqtt" in result.stderr
