"""deploy/prometheus: scrape config and alert rules accepted and exercised by promtool."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

PROM = pathlib.Path(__file__).resolve().parent.parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = [
    pytest.mark.skipif(PROMTOOL is None, reason="promtool absent (.ci/run installs prometheus)"),
    pytest.mark.timeout(60),
]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True,
                          timeout=30, cwd=PROM)


def test_scrape_config_is_valid() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_alert_rules_are_valid() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_on_the_failures_they_are_for() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("metric", [
    "relay_vault_link_connected", "vault_link_connected", "relay_outbox_oldest_age_seconds",
    "relay_outbox_backlog", "vault_anomalies_total", "vault_envelopes_rejected_total",
])
def test_every_service_health_metric_has_an_alert(metric: str) -> None:
    assert f"expr: {metric}" in (PROM / "alerts.yml").read_text() or \
        f"({metric}[" in (PROM / "alerts.yml").read_text()
