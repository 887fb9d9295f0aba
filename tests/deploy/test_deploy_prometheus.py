"""deploy/prometheus: scrape config and alert rules accepted and exercised by promtool."""

from __future__ import annotations

import pathlib
import re
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


def _exposed_names() -> set[str]:
    """Every metric family name the two services can expose (fresh registries)."""
    from prometheus_client import CollectorRegistry

    from controller_vault.metrics import VaultMetrics
    from relay.metrics import RelayMetrics

    registries: list[CollectorRegistry] = [RelayMetrics.create().registry,
                                           VaultMetrics().registry]
    names = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    return names


def test_every_metric_an_alert_uses_is_exposed_by_a_service() -> None:
    # An alert on a metric nobody exposes never fires: catch the drift here.
    exprs = re.findall(r"expr:\s*(.+)", (PROM / "alerts.yml").read_text())
    used = {m for e in exprs for m in re.findall(r"\b((?:relay|vault)_[a-z_]+)", e)}
    assert used, exprs
    assert used - _exposed_names() == set()


@pytest.mark.parametrize("metric", [
    'relay_vault_links{state="ready"}', 'vault_link_state{state="ready"}',
    "relay_outbox_oldest_age_seconds", "relay_outbox_backlog", "vault_anomalies_total",
    "vault_rejected_envelopes_total", "vault_transcript_mail_total",
])
def test_every_service_health_metric_has_an_alert(metric: str) -> None:
    assert metric in (PROM / "alerts.yml").read_text()
