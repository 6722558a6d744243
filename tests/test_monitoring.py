"""The monitoring kit of deploy/: Prometheus' alerting rules checked and unit-tested with promtool
(each alert fires on the series that should raise it and stays quiet on the others), the scrape
configuration, compose wiring and the Grafana dashboard's shape. test_service runs them all against
a real Prometheus scraping a served Bento."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from .conftest import REPO, prometheus_binary

DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus/rules.yml"
DASHBOARD = DEPLOY / "grafana/facemask.json"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([prometheus_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the Grafana dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_rules_are_valid_and_their_unit_tests_pass():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0 and "SUCCESS: 9 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(DEPLOY / "prometheus/tests/rules_test.yml"))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_a_wrong_expectation_fails_the_rule_tests(tmp_path):
    """The unit tests can fail: the same file expecting another p95 is refused with both values."""
    source = (DEPLOY / "prometheus/tests/rules_test.yml").read_text()
    assert "p95 2.389s" in source
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    (tmp_path / "tests/wrong_test.yml").write_text(source.replace("p95 2.389s", "p95 2s"))
    tested = promtool("test", "rules", str(tmp_path / "tests/wrong_test.yml"))
    assert tested.returncode == 1 and "p95 2.389s" in tested.stdout + tested.stderr


def test_the_scrape_config_and_compose_wire_the_rules_and_the_key():
    checked = promtool("check", "config", "--syntax-only", str(DEPLOY / "prometheus/prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "facemask" and job["authorization"]["type"] == "Bearer"  # /metrics needs the key
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    prometheus = compose["services"]["prometheus"]
    mounted = {v.split(":")[1] for v in prometheus["volumes"] if v.startswith("./")}
    assert mounted == {"/etc/prometheus/prometheus.yml", "/etc/prometheus/rules.yml"}
    assert prometheus["configs"][0]["target"] == job["authorization"]["credentials_file"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert (
        targets
        == {f"{name}:3000" for name in ("facemask-a", "facemask-b")}
        <= {f"{name}:3000" for name in compose["services"]}
    )


def test_the_dashboard_queries_the_projects_series():
    """Every panel has a query; together they cover every series the service exports."""
    queries = dashboard_queries()
    assert len(queries) >= 10 and all(expr.strip() for _, expr in queries)
    source = (REPO / "src/facemask/serving/prometheus.py").read_text()
    exported = set(re.findall(r'name="(facemask_\w+)"', source))
    used = {name for _, expr in queries for name in re.findall(r"facemask_\w+", expr)}
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}  # a histogram's series
    assert exported <= used, exported - used
