"""MkDocs hooks: the parts of the site generated from the code, so they are never written twice.

- `<!-- config-reference -->` (configuration.md): every Hydra group of `conf/`, its options, the
  default option's YAML with its comments, and what the pydantic model in `facemask.config` accepts;
- `<!-- tests-table -->` (tests.md): each test file, its number of tests and its docstring;
- `<!-- metrics-table -->` (operations.md): the Prometheus series of `facemask.serving.prometheus`.
"""

from __future__ import annotations

import ast
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent


REPORT_IMAGES = {"img/front.png": "reports/bench/front.png"}  # the site's copy of a report's plot


def on_files(files, config):
    """The plots the benchmarks write into reports/ join the site under img/ (one file, no copy in docs/)."""
    from mkdocs.structure.files import File

    for uri, source in REPORT_IMAGES.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, build in (
        ("<!-- config-reference -->", config_reference),
        ("<!-- tests-table -->", tests_table),
        ("<!-- metrics-table -->", metrics_table),
    ):
        if marker in markdown:
            markdown = markdown.replace(marker, build())
    return markdown


# --- configuration ----------------------------------------------------------------------------


def config_reference() -> str:
    from facemask.config import Params

    root = yaml.safe_load((ROOT / "conf/config.yaml").read_text())
    defaults = {}
    for entry in root["defaults"]:
        if isinstance(entry, dict):
            ((key, value),) = entry.items()
            if "@" not in key:
                defaults[key] = value
    out = []
    top = [name for name, f in Params.model_fields.items() if not _model(f.annotation)]
    out += ["### Root keys (`conf/config.yaml`)", "", _table(Params, only=top + ["paths"]), ""]
    for group_dir in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir()):
        group = group_dir.name
        field = Params.model_fields.get(group)
        options = sorted(p.stem for p in group_dir.glob("*.yaml"))
        default = defaults.get(group, options[0])
        out += [f"### `{group}`", ""]
        shown = ", ".join(f"**{o}** (default)" if o == default else o for o in options)
        out += [f"Options (`{group}=<option>`): {shown}.", ""]
        if group == "detector":
            out += ["Every detector is also composed under `detectors.<name>` (the comparison and the profiles).", ""]
        if field is not None and (model := _model(field.annotation)):
            out += [_table(model), ""]
        text = (group_dir / f"{default}.yaml").read_text().rstrip()
        out += [f'??? note "conf/{group}/{default}.yaml"', "", "    ```yaml"]
        out += [f"    {line}" if line else "" for line in text.splitlines()]
        out += ["    ```", ""]
    return "\n".join(out)


def _model(annotation) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _table(model: type[BaseModel], only: list[str] | None = None) -> str:
    rows = ["| key | type | accepts | default |", "|---|---|---|---|"]
    rows += _rows(model, "", only)
    return "\n".join(rows)


def _rows(model: type[BaseModel], prefix: str, only: list[str] | None = None) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        if only is not None and name not in only:
            continue
        key = f"{prefix}{field.alias or name}"
        nested = _model(field.annotation)
        if nested is not None and nested.__name__ not in ("Instantiable",):
            rows += _rows(nested, f"{key}.")
            continue
        default = "" if field.is_required() else f"`{field.get_default(call_default_factory=True)!r}`"
        rows.append(f"| `{key}` | {_type_name(field.annotation)} | {_constraints(field)} | {default} |")
        origin, args = typing.get_origin(field.annotation), typing.get_args(field.annotation)
        item = _model(args[-1]) if origin in (list, dict) and args else None
        if item is not None and model.__name__ != "Params":  # a list or map of models: their keys too
            rows += _rows(item, f"{key}[]." if origin is list else f"{key}.<name>.")
    return rows


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation)).replace("|", "\\|")


def _constraints(field) -> str:
    parts = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
                           ("max_length", "length ≤"), ("pattern", "matches")):  # fmt: skip
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} `{value}`" if attr != "pattern" else f"{sign} `{value.replace('|', '¦')}`")
    return ", ".join(parts)


# --- tests ------------------------------------------------------------------------------------


def tests_table() -> str:
    rows = ["| file | tests | what it proves |", "|---|---|---|"]
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        doc = (ast.get_docstring(tree) or "").split("\n\n")[0].replace("\n", " ").replace("|", "\\|")
        count = sum(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in tree.body)
        rows.append(f"| `tests/{path.name}` | {count} | {doc} |")
    return "\n".join(rows)


# --- metrics ----------------------------------------------------------------------------------


def metrics_table() -> str:
    tree = ast.parse((ROOT / "src/facemask/serving/prometheus.py").read_text())
    rows = ["| series | kind | labels | what |", "|---|---|---|---|"]
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if "name" in kw and "documentation" in kw:
            labels = ", ".join(ast.literal_eval(kw["labelnames"])) if "labelnames" in kw else ""
            rows.append(f"| `{ast.literal_eval(kw['name'])}` | {node.func.attr.lower()} | {labels} | "
                        f"{ast.literal_eval(kw['documentation'])} |")  # fmt: skip
    return "\n".join(rows)
