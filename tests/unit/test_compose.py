"""docker/compose.yaml: valid for docker-compose, every command in the CLI, ports, volumes and scrapes consistent.

No Docker engine is needed: Debian's ``docker-compose`` (1.29) parses,
interpolates and validates the file (``config``), and the checks below read
its resolved output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import pytest
import typer
import yaml

from consumers.framework import registry

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGE = "downlink:latest"
ONE_SHOT = {"topics"}
METRICS_PORT = "9100"


@pytest.fixture(scope="module")
def config() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose missing: run `make setup` (Debian package docker-compose)")
    out = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.fixture(scope="module")
def ours(config) -> dict[str, dict]:
    """Containers running the downlink image."""
    return {n: s for n, s in config["services"].items() if s.get("image") == IMAGE}


@pytest.fixture(scope="module")
def cli() -> click.Group:
    from downlink.cli.main import app

    return typer.main.get_command(app)


def service_names(svc: dict) -> list[str]:
    """The registered services a container runs (consumer NAME, or run --only a,b)."""
    cmd = svc["command"]
    if cmd[0] == "consumer":
        return [cmd[1]]
    if cmd[0] == "run":
        if "--only" in cmd:
            return cmd[cmd.index("--only") + 1].split(",")
        from consumers.framework import registry
        return registry.names(default_only=True)
    return []


def test_infrastructure_is_all_there(config):
    images = {n: s.get("image", "") for n, s in config["services"].items()}
    assert images["kafka"].startswith("apache/kafka:")
    kafka = config["services"]["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "zookeeper" not in str(kafka).lower()  # KRaft
    for name, prefix in (("mosquitto", "eclipse-mosquitto"), ("postgres", "postgres"),
                         ("prometheus", "prom/prometheus"), ("grafana", "grafana/grafana")):
        assert images[name].startswith(prefix), name


def test_every_command_exists_in_the_cli(ours, cli):
    assert ours
    for name, svc in ours.items():
        cmd = svc["command"]
        command = cli.commands.get(cmd[0])
        assert command is not None, f"{name}: `downlink {cmd[0]}` does not exist"
        flags = {opt for p in command.params for opt in getattr(p, "opts", ())}
        for arg in cmd[1:]:
            if arg.startswith("--"):
                assert arg.split("=")[0] in flags, f"{name}: `downlink {cmd[0]}` has no option {arg}"
        for service in service_names(svc):
            assert service in registry.SERVICES, f"{name}: service {service!r} is not in the registry"


def test_every_registered_service_is_deployed(ours):
    deployed = {n for svc in ours.values() for n in service_names(svc)}
    assert set(registry.SERVICES) - deployed == set(), "add a container for each new service"


def test_restart_policy_health_check_and_metrics_on_all_interfaces(ours):
    for name, svc in ours.items():
        env = svc["environment"]
        assert env["DOWNLINK_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
        if name in ONE_SHOT:
            assert svc["restart"] == "no"
            continue
        assert svc["restart"] in ("always", "unless-stopped", "on-failure"), name
        health = svc.get("healthcheck", {})
        assert health.get("test") and not health.get("disable"), f"{name}: no health check"
        if service_names(svc):
            assert env["DOWNLINK_METRICS_HOST"] == "0.0.0.0", f"{name}: Prometheus could not scrape it"
            assert env["DOWNLINK_METRICS_PORT"] == METRICS_PORT
            assert METRICS_PORT in " ".join(health["test"]), f"{name}: health check does not probe /metrics"


def test_replicas_have_distinct_instance_ids(ours):
    seen: dict[tuple[str, str], str] = {}
    for name, svc in ours.items():
        for service in service_names(svc):
            instance = svc["environment"].get("DOWNLINK_INSTANCE")
            assert instance, f"{name}: set DOWNLINK_INSTANCE (the default '0' would be shared)"
            assert (service, instance) not in seen, f"{name} and {seen.get((service, instance))} share an id"
            seen[(service, instance)] = name
    assert len([k for k in seen if k[0] == "l0"]) >= 2, "the file shows how to run replicas"


def test_published_ports_are_unique_and_match_what_listens(config, ours):
    published: dict[int, str] = {}
    for name, svc in config["services"].items():
        for port in svc.get("ports", []):
            assert port["published"] not in published, f"{name} and {published.get(port['published'])}"
            published[int(port["published"])] = name
    assert ours["api"]["environment"]["DOWNLINK_ARCHIVE_API_PORT"] in {str(p["target"]) for p in ours["api"]["ports"]}
    assert ours["ingest"]["command"][-1].endswith(":5000") and {p["target"] for p in ours["ingest"]["ports"]} == {5000}
    dash = ours["dashboard"]
    assert dash["environment"]["DOWNLINK_REALTIME_DASHBOARD_PORT"] in {str(p["target"]) for p in dash["ports"]}
    assert dash["environment"]["DOWNLINK_REALTIME_DASHBOARD_HOST"] == "0.0.0.0"
    assert dash["environment"]["DOWNLINK_REALTIME_WS_URL"].endswith(":9001") and 9001 in published
    assert dash["environment"]["DOWNLINK_REALTIME_ARCHIVE_URL"].endswith(":8000") and 8000 in published


def test_volumes_are_declared_used_and_bind_sources_exist(config):
    declared = set(config.get("volumes", {}))
    used = set()
    for name, svc in config["services"].items():
        for spec in svc.get("volumes", []):
            source = spec.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: bind source {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
    assert declared - used == set(), "declared volumes nobody mounts"
    writers = [n for n, s in config["services"].items() if "data:/data:rw" in s.get("volumes", [])]
    assert {"l0-0", "l0-1", "l1b", "calibrate", "archive", "api"} <= set(writers), "products live on the data volume"


def test_prometheus_scrapes_every_service_container(config, ours, tmp_path):
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] if job["job_name"] == "downlink"
               for sc in job["static_configs"] for t in sc["targets"]}
    expected = {f"{n}:{METRICS_PORT}" for n, s in ours.items()
                if service_names(s) or s["command"][:2] == ["ingest", "--listen"]}  # the listener serves /metrics
    assert targets == expected
    mounts = config["services"]["prometheus"]["volumes"]
    assert any(m.startswith(str(ROOT / "monitoring" / "alerts.yml")) for m in mounts)
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run `make setup`"
    shutil.copy(DOCKER / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "monitoring" / "alerts.yml", tmp_path / "alerts.yml")
    out = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_is_provisioned_with_the_dashboards(config):
    mounts = config["services"]["grafana"]["volumes"]
    assert any(m.startswith(str(ROOT / "monitoring" / "grafana" / "dashboards") + ":/var/lib/grafana/dashboards")
               for m in mounts)
    ds = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((ROOT / "monitoring/grafana/provisioning/dashboards/downlink.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_image_copies_every_package():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for pattern in include:
        package = pattern.rstrip("*")
        assert f"COPY {package} ./{package}" in dockerfile, f"Dockerfile does not copy {package}/"


def test_bulk_services_yield_the_cpu_to_real_time_ones(ours):
    """Containers of bulk services only get fewer CPU shares; the real-time path keeps the default."""
    for name, svc in ours.items():
        names = service_names(svc)
        if not names:
            continue
        shares = svc.get("cpu_shares", 1024)
        env = svc.get("environment") or {}
        tapped = str(env.get("DOWNLINK_INGEST_REALTIME_TAP", "true")).lower() not in ("false", "0", "no")
        if registry.is_bulk(names, tapped=tapped):
            assert shares < 1024, f"{name}: bulk work should yield the CPU (cpu_shares)"
        else:
            assert shares >= 1024, f"{name}: carries real-time work, keep the default CPU shares"
