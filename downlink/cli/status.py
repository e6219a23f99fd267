"""``downlink status [--watch]``: one screen for the operator.

Sections: the local stack; each registered service (replicas and up from
Prometheus, lag from its consumer group's committed offsets against the
topics' last stable offsets, consumption rate from how fast those commits
move); open exposures and firing alerts (Prometheus); the last ops.alerts
events; the accounting of the contact demux saw last. Everything it reads is
optional: a part that cannot be reached says so and the rest still shows.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import typer
from aiokafka import TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from core.settings import Settings
from downlink.cli import settings_of

#: every transaction leaves a commit marker (an offset no reader sees): a group caught up is
#: "1 behind" per partition, and a few records left behind look like more. Lags up to this
#: many offsets are counted by reading the records; larger ones are shown as offsets
MARKER_SLACK = 16


@dataclass
class ServiceRow:
    name: str
    partitions: int = 0
    lag: int | None = None
    committed: int = 0
    rate: float | None = None  # records committed per second
    up: float | None = None  # from Prometheus: services reporting up
    error: str = ""


@dataclass
class Snapshot:
    taken: float
    stack: list[Any] = field(default_factory=list)
    services: list[ServiceRow] = field(default_factory=list)
    kafka_error: str = ""
    prometheus_error: str = ""
    open_exposures: float | None = None
    oldest_open_s: float | None = None
    firing: list[dict] = field(default_factory=list)
    alerts: list[dict] = field(default_factory=list)
    contact: dict | None = None


# Prometheus ---------------------------------------------------------------------------------------
def _prom(settings: Settings, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{settings.stack.prometheus_port}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=2) as resp:
        body = json.loads(resp.read())
    return body["data"]


def _scalar(settings: Settings, expr: str) -> float | None:
    result = _prom(settings, "/api/v1/query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def _by_service(settings: Settings, expr: str) -> dict[str, float]:
    return {r["metric"].get("service", ""): float(r["value"][1])
            for r in _prom(settings, "/api/v1/query", query=expr)["result"]}


def prometheus_part(settings: Settings, snap: Snapshot) -> dict[str, float]:
    """Fill open exposures and firing alerts; return services up by name."""
    try:
        snap.open_exposures = _scalar(settings, "sum(downlink_l0_open_exposures)")
        snap.oldest_open_s = _scalar(settings, "max(downlink_l0_oldest_open_exposure_age_seconds)")
        snap.firing = [a for a in _prom(settings, "/api/v1/alerts")["alerts"] if a.get("state") == "firing"]
        return _by_service(settings, "sum by (service) (downlink_consumer_up)")
    except Exception as exc:  # Prometheus is optional
        snap.prometheus_error = f"Prometheus on :{settings.stack.prometheus_port} not reachable ({type(exc).__name__})"
        return {}


# Kafka --------------------------------------------------------------------------------------------
async def committed_offsets(settings: Settings, admin: Any, service: str) -> dict[TopicPartition, int]:
    offsets = await admin.list_consumer_group_offsets(settings.group(service))
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset is not None and meta.offset >= 0}


async def add_uncommitted_partitions(settings: Settings, consumer: Any,
                                     groups: list[dict[TopicPartition, int]]) -> None:
    """A group reads every partition of its topics: one it never committed counts from the log start."""
    from streams.kafka import topic_partitions

    topics = sorted({tp.topic for c in groups for tp in c})
    every = {t: [TopicPartition(t, p) for p in await topic_partitions(settings, t, wait=0.0)] for t in topics}
    missing = sorted({tp for c in groups for t in {x.topic for x in c} for tp in every[t] if tp not in c})
    if not missing:
        return
    starts = await consumer.beginning_offsets(missing)
    for committed in groups:
        for t in {x.topic for x in committed}:
            for tp in every[t]:
                if tp not in committed:
                    committed[tp] = starts[tp]


async def true_lags(consumer: Any, groups: list[dict[TopicPartition, int]],
                    ends: dict[TopicPartition, int]) -> list[dict[TopicPartition, int]]:
    """Lag per partition for each group's committed offsets.

    A small lag is read to tell a transaction's commit marker from real records:
    each such partition is read once, from the lowest committed offset that needs it.
    """
    lags = [{tp: max(0, ends.get(tp, off) - off) for tp, off in committed.items()} for committed in groups]
    start: dict[TopicPartition, int] = {}
    for committed, lag in zip(groups, lags):
        for tp, n in lag.items():
            if 0 < n <= MARKER_SLACK:
                start[tp] = min(start.get(tp, committed[tp]), committed[tp])
    if not start:
        return lags
    consumer.assign(sorted(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    offsets: dict[TopicPartition, list[int]] = {tp: [] for tp in start}
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        got = await consumer.getmany(*start, timeout_ms=1000 if not any(offsets.values()) else 200)
        if not any(got.values()):
            break
        for tp, recs in got.items():
            offsets[tp] += [r.offset for r in recs]
    for committed, lag in zip(groups, lags):
        for tp, n in lag.items():
            if tp in start and 0 < n <= MARKER_SLACK:
                lag[tp] = sum(1 for o in offsets[tp] if o >= committed[tp])
    return lags


async def kafka_part(settings: Settings, snap: Snapshot, previous: Snapshot | None) -> None:
    from consumers.framework import registry
    from streams.kafka import make_admin, make_consumer, start_client

    admin = make_admin(settings, request_timeout_ms=3000)
    consumer = make_consumer(settings, group=None, request_timeout_ms=3000)
    try:
        await start_client(settings, admin)
        await start_client(settings, consumer)
        names = list(registry.SERVICES)
        found = await asyncio.gather(*(committed_offsets(settings, admin, n) for n in names),
                                     return_exceptions=True)
        await add_uncommitted_partitions(settings, consumer, [c for c in found if isinstance(c, dict)])
        every = sorted({tp for c in found if isinstance(c, dict) for tp in c})
        ends = await consumer.end_offsets(every) if every else {}
        before = {r.name: r for r in previous.services} if previous else {}
        ok = [c for c in found if isinstance(c, dict)]
        by_group = dict(zip(map(id, ok), await true_lags(consumer, ok, ends)))
        for name, committed in zip(names, found):
            row = ServiceRow(name)
            if isinstance(committed, BaseException):
                row.error = f"{type(committed).__name__}: {committed}"[:60]
            else:
                lags = by_group[id(committed)]
                row.partitions, row.lag, row.committed = len(committed), sum(lags.values()), sum(committed.values())
                old = before.get(name)
                if old is not None and previous is not None and snap.taken > previous.taken:
                    row.rate = max(0.0, (row.committed - old.committed) / (snap.taken - previous.taken))
            snap.services.append(row)
        snap.alerts = await last_records(settings, consumer, "ops.alerts", 8)
        latest = await last_records(settings, consumer, "demux.state", 1)
        if latest:
            from consumers.demux.accounting import ContactAccount

            snap.contact = {"contact": latest[0]["contact"],
                            **ContactAccount.from_dict(latest[0]["account"]).report()}
    except Exception as exc:
        snap.kafka_error = f"Kafka at {settings.kafka.bootstrap}: {type(exc).__name__}: {exc}"[:160]
    finally:
        for client, close in ((consumer, "stop"), (admin, "close")):
            try:
                await getattr(client, close)()
            except Exception:
                pass


async def last_records(settings: Settings, consumer: Any, topic: str, n: int) -> list[dict]:
    """The newest ``n`` committed records of a logical topic (all partitions), newest first, decoded."""
    from streams import envelope
    from streams.kafka import topic_partitions

    physical = settings.topic(topic)
    tps = [TopicPartition(physical, p) for p in await topic_partitions(settings, physical, wait=0.0)]
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(starts[tp], ends[tp] - n - 1))
    records: list[Any] = []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        got = await consumer.getmany(timeout_ms=200 if records else 1000)
        if not any(got.values()):
            break  # nothing more (a transactional topic may end with a marker only)
        records += [r for recs in got.values() for r in recs]
        if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
            break
    records.sort(key=lambda r: r.timestamp, reverse=True)
    out = []
    for rec in records[:n]:
        try:
            out.append(envelope.decode(rec.value))
        except Exception:
            continue
    return out


async def snapshot(settings: Settings, previous: Snapshot | None = None) -> Snapshot:
    from downlink.stack.launcher import Stack

    snap = Snapshot(taken=time.monotonic())
    try:
        snap.stack = await Stack(settings).status()
    except Exception as exc:
        snap.kafka_error = f"stack status failed: {exc}"
    up = await asyncio.to_thread(prometheus_part, settings, snap)
    await kafka_part(settings, snap, previous)
    for row in snap.services:
        row.up = up.get(row.name)
    return snap


# rendering ----------------------------------------------------------------------------------------
def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def render(snap: Snapshot, settings: Settings) -> Group:
    parts: list[Any] = []
    stack = Table(title="stack", title_justify="left")
    for c in ("component", "state", "port", "healthy"):
        stack.add_column(c)
    for r in snap.stack:
        stack.add_row(r.name, r.state, str(r.port), "[green]yes[/]" if r.healthy else "[red]no[/]")
    parts.append(stack)

    svc = Table(title="services", title_justify="left", caption=snap.prometheus_error or None)
    for c in ("service", "up", "partitions", "lag", "records/s"):
        svc.add_column(c, justify="left" if c == "service" else "right")
    for r in snap.services:
        up = "-" if r.up is None else ("[green]%d[/]" % r.up if r.up > 0 else "[red]0[/]")
        if r.error:
            svc.add_row(r.name, up, "-", f"[red]{r.error}[/]", "-")
            continue
        lag = "-" if not r.partitions else (f"[yellow]{r.lag:,}[/]" if r.lag else "0")
        svc.add_row(r.name, up, str(r.partitions or "no commits"), lag,
                    "-" if r.rate is None else f"{r.rate:,.1f}")
    parts.append(svc)

    if snap.open_exposures is not None or snap.firing:
        lines = Text()
        if snap.open_exposures is not None:
            lines.append(f"open exposures {snap.open_exposures:.0f}, oldest {_age(snap.oldest_open_s)}\n")
        for a in snap.firing[:8]:
            labels = a["labels"]
            lines.append(f"FIRING {labels.get('alertname')} ({labels.get('severity')}): "
                         f"{a.get('annotations', {}).get('summary', '')}\n",
                         style="red" if labels.get("severity") == "critical" else "yellow")
        if not snap.firing:
            lines.append("no alert firing\n", style="green")
        parts.append(lines)

    if snap.alerts:
        alerts = Table(title="last ops.alerts", title_justify="left")
        for c in ("time (UTC)", "contact", "type", "severity", "APID", "count", "detail"):
            alerts.add_column(c)
        for a in snap.alerts:
            apid = a.get("apid")
            alerts.add_row(time.strftime("%H:%M:%S", time.gmtime(a.get("time", 0))), str(a.get("contact", "")),
                           str(a.get("type", "")), str(a.get("severity", "")),
                           "-" if apid is None else f"0x{apid:03x}", str(a.get("count", "")),
                           str(a.get("exposure_id") or a.get("reason") or "")[:40])
        parts.append(alerts)

    c = snap.contact
    if c:
        streams = c.get("streams", {}).values()
        parts.append(Text(
            f"contact {c['contact']}: {c.get('bytes', 0):,} bytes, {c.get('packets', 0):,} packets, "
            f"{sum(s['missing'] for s in streams):,} missing in "
            f"{sum(len(s['gaps']) for s in c.get('streams', {}).values()):,} gaps, "
            f"{c.get('skipped_bytes', 0):,} bytes dead-lettered, {'ended' if c.get('ended') else 'in progress'}"
            f" (downlink report {c['contact']})"))
    if snap.kafka_error:
        parts.append(Text(snap.kafka_error, style="red"))
    parts.append(Text(time.strftime("as of %Y-%m-%d %H:%M:%S UTC", time.gmtime()), style="dim"))
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(
        ctx: typer.Context,
        watch: bool = typer.Option(False, "--watch", "-w", help="refresh until interrupted"),
        interval: float = typer.Option(2.0, min=0.5, help="seconds between refreshes with --watch"),
    ) -> None:
        """The stack, each service (up, lag, rate), open exposures, alerts and the current contact."""
        settings = settings_of(ctx)
        console = Console()

        async def once() -> Snapshot:
            first = await snapshot(settings)
            await asyncio.sleep(1.0)  # a second look gives each service's rate
            return await snapshot(settings, first)

        if not watch:
            snap = asyncio.run(once())
            console.print(render(snap, settings))
            raise typer.Exit(1 if snap.kafka_error else 0)

        async def loop() -> None:
            previous = await snapshot(settings)
            with Live(render(previous, settings), console=console, refresh_per_second=4, screen=False) as live:
                while True:
                    await asyncio.sleep(interval)
                    snap = await snapshot(settings, previous)
                    live.update(render(snap, settings))
                    previous = snap

        try:
            asyncio.run(loop())
        except KeyboardInterrupt:
            pass
