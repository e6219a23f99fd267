"""``downlink demo`` (``make demo``): the whole path on this machine, one progress display per stage.

Stages are data: :data:`STAGES` lists them in order, and a stage that runs
services is one line naming them (a service not registered yet is skipped
and said so). Every log record goes to a file whose path is printed first;
the terminal shows only the stage displays and, at the end, the summary
tables, with warnings counted by message instead of printed one by one.
The last stage gives an astronomer access: a user who is a member of the
contact's programs, with a token; the summary ends with that token and the
queries (curl and ``downlink archive``) that fetch the products with it, after
checking through the API that the token sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TransferSpeedColumn)
from rich.table import Table

from core.settings import Settings
from downlink.cli import settings_of
from downlink.logs import KeyValueFormatter

FAULTS = "drop=0.0005,dup=0.0005,reorder=4,corrupt=0.0002,garbage=0.0002,wrap"
#: the archive user the demo creates (a member of the contact's programs, not staff)
DEMO_USER = "astronomer"
#: levels an astronomer fetches, most processed first (L0 is staff only)
USER_LEVELS = ("L2b", "L2a", "L1b", "L3")


class DemoFailed(Exception):
    """A stage failed: the message says which and where its log is."""


class WarningTally(logging.Handler):
    """Counts warnings and errors by (level, logger, message): the terminal gets totals, the file each one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[(record.levelname.lower(), record.name, record.getMessage())] += 1


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` (appending) while the stages run: what child processes
    write there (calibration workers start as fresh interpreters, without our log handlers; native
    libraries) lands in the log file, never between the stage displays. Restored after."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def log_to_file(path: Path, level: str) -> WarningTally:
    """Send every log record (and Python warnings) to ``path`` only; return the warning tally."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(KeyValueFormatter())
    tally = WarningTally()
    root = logging.getLogger()
    root.handlers[:] = [handler, tally]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return tally


@dataclass
class Demo:
    """What the stages share: settings, paths, the contact and per-stage results for the summary."""

    settings: Settings
    console: Console
    work: Path
    log_file: Path
    contact: str
    size: str
    seed: int
    faults: str
    results: list[tuple[str, float, str]] = field(default_factory=list)
    status: int = 0
    verification: Any = None
    #: the access stage's result: user, token, programs, products the token sees, an example product
    access: Optional["Access"] = None

    @property
    def raw(self) -> Path:
        return self.work / f"{self.contact}.bin"

    @property
    def truth(self) -> Path:
        return self.work / f"{self.contact}.truth.json"

    def progress(self, *columns: Any) -> Progress:
        # stderr stays fd 2 (the log file while the stages run), not a proxy onto the display
        return Progress(SpinnerColumn(), TextColumn("[bold]{task.description:<10}"), *columns,
                        TimeElapsedColumn(), console=self.console, transient=False, redirect_stderr=False)


@dataclass(frozen=True)
class Access:
    user: str
    token: str
    programs: list[int]
    #: products the token sees through the API, by level
    visible: dict[str, int]
    #: one of them (the most processed level), for the example queries; None if none is visible
    example: Optional[dict[str, Any]]


@dataclass(frozen=True)
class Stage:
    name: str
    what: str
    #: registered services run together until idle (a service stage), or
    services: tuple[str, ...] = ()
    #: a function doing the stage (returns the summary line)
    step: Optional[Callable[[Demo], Awaitable[str]]] = None
    #: registered services without which a step stage is skipped
    needs: tuple[str, ...] = ()


# stage steps --------------------------------------------------------------------------------------
async def _cli(demo: Demo, *args: str) -> None:
    """Run a ``downlink`` subcommand with its output appended to the log file."""
    with open(demo.log_file, "ab") as log:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "downlink", *args,
                                                    stdout=log, stderr=subprocess.STDOUT)
        if await proc.wait() != 0:
            raise DemoFailed(f"`downlink {' '.join(args)}` failed (exit {proc.returncode}); see {demo.log_file}")


async def stack_step(demo: Demo) -> str:
    with demo.progress(TextColumn("{task.fields[note]}")) as bar:
        task = bar.add_task("stack", total=None, note="Kafka, Mosquitto, Prometheus")
        await _cli(demo, "stack", "up")
        bar.update(task, note="topics from topics.yaml")
        await _cli(demo, "topics", "create")
        bar.update(task, total=1, completed=1, note="up; topics created")
    return "Kafka, Mosquitto, Prometheus up; topics created"


async def simulate_step(demo: Demo) -> str:
    from streams.simulator import FaultSpec, SimOptions, parse_size, simulate

    options = SimOptions(seed=demo.seed, size_bytes=parse_size(demo.size), faults=FaultSpec.parse(demo.faults),
                         contact=demo.contact, dictionary=str(demo.settings.dictionary_file))
    demo.raw.unlink(missing_ok=True)
    demo.truth.unlink(missing_ok=True)
    with demo.progress(BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:
        task = bar.add_task("simulate", total=options.target_bytes)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, done))

        result = await asyncio.to_thread(simulate, options, demo.raw, demo.truth, None, tick)
        bar.update(task, completed=result.bytes, total=result.bytes)  # the target is approximate
    doc = result.truth
    kinds = Counter(f["type"] for f in doc["faults"])
    return (f"{result.bytes / 1e6:,.0f} MB, {len(doc['exposures'])} exposures, faults "
            + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())))


async def ingest_step(demo: Demo) -> str:
    from consumers.ingest.publish import ingest_file

    with demo.progress(BarColumn(), DownloadColumn(), TransferSpeedColumn()) as bar:
        task = bar.add_task("ingest", total=demo.raw.stat().st_size)
        result = await ingest_file(demo.settings, demo.raw, demo.contact,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    return f"{result.published_bytes / 1e6:,.0f} MB in {result.published_chunks} chunks to downlink.raw"


def _by_service(metric: Any, service: str) -> float:
    """Sum of a metric's samples for one service (any other labels)."""
    total = 0.0
    for family in metric.collect():
        for s in family.samples:
            if s.labels.get("service") == service and not s.name.endswith("_created"):
                total += s.value
    return total


def _total(metric: Any) -> float:
    return sum(s.value for f in metric.collect() for s in f.samples
               if not s.name.endswith(("_created", "_bucket", "_sum")))


#: extra counters shown next to a service's in/out/lag figures
EXTRAS: dict[str, Callable[[], str]] = {}


def _extras() -> None:
    from monitoring import metrics as m

    EXTRAS.update({
        "demux": lambda: f"packets {_total(m.PACKETS_IN):,.0f}  missing {_total(m.SEQ_MISSING):,.0f}",
        "l0": lambda: f"L0 written {_total(m.L0_WRITTEN):,.0f}  open {_total(m.OPEN_EXPOSURES):,.0f}",
        "l1b": lambda: f"uncal written {_total(m.L1B_WRITTEN):,.0f}",
        "calibrate": lambda: f"products {_total(m.CAL_PRODUCTS_WRITTEN):,.0f}",
        "archive": lambda: f"rows {_total(m.ARCHIVE_RECORDS):,.0f}",
    })


async def run_stage_services(demo: Demo, stage: Stage, names: list[str]) -> str:
    """Run ``names`` until idle with one progress row per service (records in, messages out, lag)."""
    from consumers.framework.runner import run_services
    from monitoring import metrics as m

    _extras()
    columns = (BarColumn(bar_width=16), TextColumn("{task.fields[figures]}"))
    with demo.progress(*columns) as bar:
        tasks = {n: bar.add_task(n, total=None, figures="starting") for n in names}

        def refresh() -> dict[str, tuple[float, float, float]]:
            out = {}
            for n, task in tasks.items():
                got, sent, lag = (_by_service(m.RECORDS_IN, n), _by_service(m.MESSAGES_OUT, n),
                                  _by_service(m.CONSUMER_LAG, n))
                extra = EXTRAS.get(n, lambda: "")()
                bar.update(task, completed=got, total=max(got + lag, 1),
                           figures=f"in {got:,.0f} out {sent:,.0f} lag {lag:,.0f} {extra}")
                out[n] = (got, sent, lag)
            return out

        async def watch() -> None:
            while True:
                refresh()
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        try:
            status = await run_services(demo.settings, names, until_idle=True)
        finally:
            watcher.cancel()
        figures = refresh()
        for n, task in tasks.items():
            if figures[n][0] == 0:  # nothing to read: show the row done, not empty
                bar.update(task, completed=1, total=1)
    if status != 0:
        demo.status = status
        raise DemoFailed(f"{stage.name}: services stopped with an error; see {demo.log_file}")
    return "; ".join(f"{n}: in {g:,.0f} out {s:,.0f}" for n, (g, s, _) in figures.items())


async def verify_step(demo: Demo) -> str:
    from products.verify import load_truth, verify

    with demo.progress(TextColumn("{task.fields[note]}")) as bar:
        task = bar.add_task("verify", total=None, note="L0 files against the truth")
        result = await asyncio.to_thread(verify, load_truth(demo.truth), demo.settings.data_dir)
        text = f"{len(result.rows) - len(result.mismatches)}/{len(result.rows)} exposures match the truth"
        bar.update(task, total=1, completed=1, note=text)
    demo.verification = result
    if not result.ok:
        demo.status = 1
    return text


async def refs_step(demo: Demo) -> str:
    """Reference files for the contact's detectors (kept in the demo folder: made once, then reused)."""
    detectors = sorted({e["exposure_id"].rsplit("_", 1)[-1].upper()
                        for e in json.loads(demo.truth.read_text())["exposures"]})
    with demo.progress(TextColumn("{task.fields[note]}")) as bar:
        task = bar.add_task("refs", total=None, note=f"{len(detectors)} detectors (first run only)")
        await _cli(demo, "refs", "make", "--root", str(demo.settings.calibrate.refs_dir),
                   "--detectors", ",".join(detectors))
        bar.update(task, total=1, completed=1, note=f"{len(detectors)} detectors ready")
    return f"context for {', '.join(detectors)} in {demo.settings.calibrate.refs_dir}"


async def access_step(demo: Demo) -> str:
    """A user in the contact's programs with a new token, and what that token sees through the API."""
    import httpx

    from consumers.archive import db
    from consumers.archive.admin import Admin
    from consumers.archive.api.app import create_app

    programs = sorted({int(e["exposure_id"][2:7]) for e in json.loads(demo.truth.read_text())["exposures"]})
    with demo.progress(TextColumn("{task.fields[note]}")) as bar:
        task = bar.add_task("access", total=None, note=f"user {DEMO_USER} in programs "
                            + ", ".join(str(p) for p in programs))

        def add_user() -> str:
            db.migrate(demo.settings)
            with Admin(demo.settings) as admin:
                return admin.add_user(DEMO_USER, programs)

        token = await asyncio.to_thread(add_user)
        bar.update(task, note="asking the archive API what the token sees")
        app = create_app(demo.settings)
        products: list[dict[str, Any]] = []
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://archive",
                                         headers={"Authorization": f"Bearer {token}"}) as client:
                offset = 0
                while True:
                    r = await client.get("/api/v1/products", params={"limit": 1000, "offset": offset})
                    if r.status_code != 200:
                        raise DemoFailed(f"access: the archive API answered {r.status_code}: {r.text[:200]}")
                    page = r.json()
                    products += page["products"]
                    offset += len(page["products"])
                    if not page["products"] or offset >= page["total"]:
                        break
        finally:
            await app.state.archive.close()
        visible = dict(sorted(Counter(p["level"] for p in products).items()))
        ranked = sorted(products, key=lambda p: (USER_LEVELS.index(p["level"]) if p["level"] in USER_LEVELS
                                                 else len(USER_LEVELS), p["id"]))
        demo.access = Access(DEMO_USER, token, programs, visible, ranked[0] if ranked else None)
        text = (f"user {DEMO_USER} (programs {', '.join(str(p) for p in programs)}) sees "
                + (", ".join(f"{n} {level}" for level, n in visible.items()) or "no product yet"))
        bar.update(task, total=1, completed=1, note=text)
    return text


#: the demo, in order; a service stage is one line (services not registered yet are skipped)
STAGES: tuple[Stage, ...] = (
    Stage("stack", "start the local stack and create the topics", step=stack_step),
    Stage("simulate", "simulate a faulted contact with known truth", step=simulate_step),
    Stage("ingest", "publish the contact to downlink.raw", step=ingest_step),
    Stage("process", "demux and assemble L0 until idle", services=("demux", "l0")),
    Stage("verify", "L0 files against the simulator's truth", step=verify_step),
    Stage("refs", "reference files for calibration", step=refs_step, needs=("calibrate",)),
    Stage("calibrate", "L1b and calibration until idle", services=("l1b", "calibrate")),
    Stage("archive", "catalogue the products", services=("archive",)),
    Stage("access", "an astronomer's user and token; what it sees through the API", step=access_step,
          needs=("archive", "api")),
)


# summary ------------------------------------------------------------------------------------------
def _wide(console: Console) -> Console:
    return Console(width=max(console.width, 140), file=console.file)


def stages_table(demo: Demo) -> Table:
    t = Table(title="stages")
    for col in ("stage", "seconds", "result"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for name, seconds, text in demo.results:
        t.add_row(name, f"{seconds:.1f}", text)
    return t


async def accounting_table(demo: Demo) -> Table:
    from downlink.cli.report import contact_report

    rep = await contact_report(demo.settings, demo.contact)
    t = Table(title="packet accounting", caption=f"contact {demo.contact}: {rep['packets']:,} packets, "
              f"{rep['skipped_bytes']:,} bytes dead-lettered, {'ended' if rep['ended'] else 'in progress'}")
    for col in ("APID", "source", "packets", "missing", "gaps", "dup", "ooo"):
        t.add_column(col, justify="right")
    for s in rep["streams"].values():
        t.add_row(f"0x{s['apid']:03x}", "rt" if s["source"] == 0 else "rec", f"{s['packets']:,}",
                  str(s["missing"]), str(len(s["gaps"])), str(s["duplicates"]), str(s["out_of_order"]))
    return t


def l0_table(demo: Demo, limit: int = 25) -> Table:
    manifests = sorted(Path(demo.settings.data_dir).glob("jw*/*_l0.json"))
    t = Table(title=f"L0 files ({len(manifests)})", caption=str(demo.settings.data_dir))
    for c in ("exposure", "v", "status", "packets", "MB", "missing packets"):
        t.add_column(c)
    partial_first = sorted(manifests, key=lambda p: (json.loads(p.read_text())["complete"], p.name))
    for p in partial_first[:limit]:
        mf = json.loads(p.read_text())
        t.add_row(mf["exposure_id"], str(mf["version"]), "complete" if mf["complete"] else "[yellow]partial[/]",
                  f"{mf['packets']:,}", f"{mf['bytes'] / 1e6:.1f}", str(len(mf["missing_packets"])))
    if len(manifests) > limit:
        t.caption = f"{demo.settings.data_dir}: {len(manifests) - limit} more not shown (partial ones first)"
    return t


def access_lines(demo: Demo) -> list[str]:
    """The token and the queries that fetch the demo's products with it (copy and paste)."""
    a = demo.access
    if a is None:
        return []
    s = demo.settings
    base = f"http://{s.archive.api_host}:{s.archive.api_port}"
    dl = f"downlink --data-dir {Path(s.data_dir).absolute()}"
    program = int(a.example["id"][2:7]) if a.example else (a.programs[0] if a.programs else 1)
    lines = [f"Your products: user {a.user} (programs {', '.join(map(str, a.programs))}), "
             f"archive token (shown once; `downlink users token {a.user}` makes another):",
             f"  {a.token}",
             "Start the archive API (it reads the demo's catalogue), then ask it:",
             f"  {dl} serve &",
             f"  export DOWNLINK_TOKEN={a.token}",
             f"  curl -s -H \"Authorization: Bearer $DOWNLINK_TOKEN\" '{base}/api/v1/products?program={program}"
             + (f"&level={a.example['level']}'" if a.example else "'")]
    if a.example is not None:
        pid = a.example["id"]
        lines += [f"  curl -s -H \"Authorization: Bearer $DOWNLINK_TOKEN\" {base}/api/v1/products/{pid}",
                  f"  curl -OJ -H \"Authorization: Bearer $DOWNLINK_TOKEN\" {base}/api/v1/products/{pid}/file"]
    lines += ["The same with the archive client (it reads DOWNLINK_TOKEN):",
              f"  {dl} archive search --program {program}"
              + (f" --level {a.example['level']}" if a.example else "")]
    if a.example is not None:
        lines.append(f"  {dl} archive get {a.example['id']}")
    return lines


def warnings_table(demo: Demo, tally: WarningTally, limit: int = 10) -> Table:
    t = Table(title=f"log warnings and errors: {sum(tally.counts.values()):,}",
              caption="counted by message; each one is in the log file")
    for c in ("count", "level", "logger", "message"):
        t.add_column(c, justify="right" if c == "count" else "left")
    for (level, logger, msg), n in tally.counts.most_common(limit):
        t.add_row(f"{n:,}", level, logger, msg[:80])
    if len(tally.counts) > limit:
        t.caption = f"... {len(tally.counts) - limit} more kinds"
    return t


async def run_demo(demo: Demo, tally: WarningTally, skip: frozenset[str] = frozenset()) -> int:
    from consumers.framework import registry

    for stage in STAGES:
        started = time.monotonic()
        if stage.name in skip:
            demo.results.append((stage.name, 0.0, "skipped (--skip)"))
            continue
        if stage.step is not None:
            if any(n not in registry.SERVICES for n in stage.needs):
                demo.results.append((stage.name, 0.0, "skipped: no " + ", ".join(stage.needs)))
                continue
            text = await stage.step(demo)
        else:
            names = [n for n in stage.services if n in registry.SERVICES]
            missing = [n for n in stage.services if n not in registry.SERVICES]
            if not names:
                demo.console.print(f"[dim]{stage.name}: skipped ({', '.join(missing)} not available)[/]")
                demo.results.append((stage.name, 0.0, "skipped: not available"))
                continue
            text = await run_stage_services(demo, stage, names)
            if missing:
                text += f" (not available: {', '.join(missing)})"
        demo.results.append((stage.name, time.monotonic() - started, text))
    console = _wide(demo.console)
    console.print()
    console.print(stages_table(demo))
    result = demo.verification
    if result is not None and result.mismatches:
        t = Table(title="L0 mismatches against the truth")
        for c in ("exposure", "expected", "found", "detail"):
            t.add_column(c)
        for r in result.mismatches[:20]:
            t.add_row(r.exposure_id, r.expected, r.found, r.detail)
        console.print(t)
    console.print(await accounting_table(demo))
    console.print(l0_table(demo))
    console.print(warnings_table(demo, tally))
    lines = access_lines(demo)
    if lines:
        console.print()
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    return demo.status


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        ctx: typer.Context,
        size: str = typer.Option(os.environ.get("DEMO_SIZE", "1GB"), help="contact size [DEMO_SIZE]"),
        seed: int = typer.Option(int(os.environ.get("DEMO_SEED", "7")), help="simulator seed [DEMO_SEED]"),
        work: Path = typer.Option(Path(os.environ.get("DEMO_DIR", ".downlink/demo")),
                                  help="folder for the contact, truth and log [DEMO_DIR]"),
        contact: Optional[str] = typer.Option(os.environ.get("DEMO_CONTACT"),
                                              help="contact id (default DEMO<UTC time>) [DEMO_CONTACT]"),
        faults: str = typer.Option(os.environ.get("DEMO_FAULTS", FAULTS), help="simulator faults [DEMO_FAULTS]"),
        skip: str = typer.Option(os.environ.get("DEMO_SKIP", ""),
                                 help=f"comma-separated stages to leave out, of {','.join(s.name for s in STAGES)} [DEMO_SKIP]"),
    ) -> None:
        """The whole path from a cold start: stack, simulate, ingest, process, verify, calibrate, archive."""
        import shutil

        base = settings_of(ctx)
        skipped = frozenset(n.strip() for n in skip.split(",") if n.strip())
        unknown = skipped - {s.name for s in STAGES}
        if unknown:
            raise typer.BadParameter(f"no stage {', '.join(sorted(unknown))}", param_hint="--skip")
        # --until-idle could end while a sink's last batch was still being handled (a catalogue
        # batch of a few hundred products takes ~10 s for 1 GB); SinkService.caught_up now waits for
        # the batch lock. calibrate (its own consuming loop) still has a short window between popping
        # a finished job and awaiting its cal.done send, so the demo keeps a margin: idle 5 s, and a
        # graceful stop long enough for any batch in flight. The same grace bounds each service's
        # stop in the runner: a stop stuck on a lost broker takes that long here.
        changes: dict[str, Any] = {"metrics_sample_seconds": 0.5,
                                   "run_idle_seconds": max(base.run.idle_seconds, 5.0),
                                   "kafka_revoke_timeout_seconds": max(base.kafka.revoke_timeout_seconds,
                                                                       300.0)}
        if "DOWNLINK_DATA_DIR" not in os.environ:
            changes["data_dir"] = work / "data"
        if "DOWNLINK_CALIBRATE_REFS_DIR" not in os.environ:
            changes["calibrate_refs_dir"] = str((work / "refs").absolute())
        if "DOWNLINK_L0_EOC_MARGIN_SECONDS" not in os.environ:
            changes["l0_eoc_margin_seconds"] = 1.0
        settings = base.replace(**changes)
        contact = contact or time.strftime("DEMO%Y%m%d%H%M%S", time.gmtime())
        work.mkdir(parents=True, exist_ok=True)
        if "data_dir" in changes:  # the demo's own product folder: a fresh one each time
            shutil.rmtree(settings.data_dir, ignore_errors=True)
        log_file = (work / f"{contact}.log").absolute()
        console = Console()
        console.print(f"[bold]downlink demo[/]: contact {contact}, {size}, seed {seed}; "
                      f"logs -> [cyan]{log_file}[/]")
        tally = log_to_file(log_file, base.log_level)
        demo = Demo(settings, console, work, log_file, contact, size, seed, faults)
        try:
            with stderr_to(log_file):
                status = asyncio.run(run_demo(demo, tally, skipped))
        except DemoFailed as exc:
            _wide(console).print(f"[red]demo failed[/]: {exc}")
            _wide(console).print(warnings_table(demo, tally))
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug: the traceback is in the log, the terminal gets one line
            logging.getLogger(__name__).exception("demo failed")
            _wide(console).print(f"[red]demo failed[/]: {exc!r}; the traceback is in {log_file}")
            raise typer.Exit(1) from None
        wide = _wide(console)
        wide.print(f"\nThe stack is still up: `downlink status` shows it, `downlink stack down` stops it.")
        wide.print(f"Files: {work} (contact, truth), {settings.data_dir} (products); log {log_file}")
        raise typer.Exit(status)
