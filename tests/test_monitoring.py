"""Monitoring as deploy/compose provisions it: the Prometheus scrape config reaches the
recognizer and the agents where compose serves their metrics, and every query of the Grafana
dashboard names metrics (and labels) that the code exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from edge_agent.metrics import AgentMetrics
from recognizer_service.metrics import Metrics
from rllfpr.config import load_settings
from tests.support.deploy import COMPOSE_DIR, CONFIG_DIR, DEPLOY, compose, mounts

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rllfpr.json"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
SCRAPE_LABELS = {"instance", "job", "site", "camera", "le"}  # added by Prometheus or the config
PROMQL_WORDS = {"sum", "min", "max", "by", "rate", "increase", "histogram_quantile"}


def exported() -> dict[str, set[str]]:
    """Every series name the recognizer and an agent export, with its labels."""
    series: dict[str, set[str]] = {}
    for holder in (Metrics(), AgentMetrics()):
        for metric in vars(holder).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            labels = set(metric._labelnames)
            for suffix in SUFFIXES[str(metric._type)]:
                series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def test_every_dashboard_query_names_exported_metrics_and_labels() -> None:
    series = exported()
    queries = dashboard_queries()
    assert len(queries) >= 30
    used: set[str] = set()
    for title, expr in queries:
        names = set(re.findall(r"\b(rllfpr_[a-z0-9_]+)", expr))
        assert names, f"{title}: {expr} reads no RLLFPR metric"
        unknown = names - set(series)
        assert not unknown, f"{title}: {sorted(unknown)} are not exported"
        known_labels = set().union(*(series[name] for name in names)) | SCRAPE_LABELS
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            assert labels <= known_labels, f"{title}: no label {labels - known_labels}"
        words = set(re.findall(r"\b([a-z_]+)\s*\(", expr)) - names
        assert words <= PROMQL_WORDS, f"{title}: unexpected function {words - PROMQL_WORDS}"
        used |= {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in names}
    # The list: rates, latencies, rejections by reason, spool depth, key epoch.
    for wanted in (
        "rllfpr_faces_received",
        "rllfpr_decision_latency_seconds",
        "rllfpr_faces_rejected",
        "rllfpr_agent_faces_rejected",
        "rllfpr_agent_faces_dropped",
        "rllfpr_agent_spool_messages",
        "rllfpr_agent_key_epoch",
        "rllfpr_agent_stage_seconds",
    ):
        assert wanted in used, wanted
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in series}
    assert len(used) >= 0.8 * len(families), sorted(families - used)


def test_the_dashboard_reads_the_provisioned_data_source() -> None:
    board = json.loads(DASHBOARD.read_text())
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (source,) = datasources
    assert source["url"] == "http://prometheus:9090"
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == source["uid"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))


def mount_target(service: dict[str, Any], source: str) -> str:
    (target,) = [m.target for m in mounts(service) if m.source == source]
    return str(target)


def test_compose_provisions_prometheus_and_grafana_with_these_files() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    config = mount_target(prometheus, "../prometheus/prometheus.yml")
    assert f"--config.file={config}" in prometheus["command"]
    assert mount_target(grafana, "../grafana/provisioning") == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "rllfpr.yml").read_text()
    )["providers"][0]
    assert mount_target(grafana, "../grafana/dashboards") == provider["options"]["path"]
    assert (COMPOSE_DIR / "../grafana/dashboards/rllfpr.json").resolve() == DASHBOARD.resolve()
    for service in (prometheus, grafana):
        assert all(port.startswith("127.0.0.1:") for port in service["ports"])


@pytest.mark.parametrize("job", ["rllfpr-recognizer", "rllfpr-agent"])
def test_prometheus_scrapes_where_compose_serves_the_metrics(job: str) -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (config,) = [c for c in scrape["scrape_configs"] if c["job_name"] == job]
    assert config["metrics_path"] == "/metrics"
    services = compose()["services"]
    for group in config["static_configs"]:
        for target in group["targets"]:
            host, port = target.rsplit(":", 1)
            assert host in services, f"{target}: no compose service {host}"
            environment = services[host].get("environment", {})
            settings = load_settings(CONFIG_DIR / Path(environment["RLLFPR_CONFIG"]).name)
            if job == "rllfpr-recognizer":
                assert int(port) == settings.recognizer.http_port
                assert settings.recognizer.http_host == "0.0.0.0"
            else:
                assert int(port) == settings.agent.metrics_port
                assert environment["RLLFPR_AGENT__METRICS_HOST"] == "0.0.0.0"
