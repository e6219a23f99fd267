"""``simulate(options)``: plan, assemble, inject faults, write the contact(s) and the truth.

Order of work, each step deterministic from the seed and options alone:

1. load the engineering dictionary; draw the observing plan to fit the size;
2. build the recorder dump (``contact.build_dump``), cut it for ``split``;
3. interleave real-time engineering by byte position (``interleave_realtime``);
4. force a sequence wrap if asked; draw the faults over the planned packets;
5. make engineering values (with limit excursions) for every sample time;
6. render and write contact 1 (threads write, hash and L0-hash in parallel);
7. for ``split`` / ``redump``: assemble contact 2 (re-sent packets first, then
   the rest of the dump) and write it fault-free;
8. write the truth file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from core.errors import SimulationError
from streams.dictionary import EngDictionary, load_dictionary
from streams.packets import SEQ_MODULO, Source
from streams.simulator.contact import (
    CONTACT_SPACING_S,
    RECORDED_PERIOD_FACTOR,
    Bases,
    ContactSchedule,
    EngSeries,
    Item,
    RawItem,
    SciItem,
    build_dump,
    cut_dump,
    interleave_realtime,
)
from streams.simulator.emit import ContactEmitter, Redumped, Renderer
from streams.simulator.engineering import EngModel
from streams.simulator.faults import plan_faults
from streams.simulator.options import SimOptions, check_paths, tai_from_iso
from streams.simulator.plan import Plan, make_plan
from streams.simulator.truth import TruthBuilder
from streams.simulator.writer import Hasher, StreamSink

log = logging.getLogger(__name__)

#: default first contact: 2026-01-01T00:00:00 UTC plus 12 h per seed (mod 1000)
_DEFAULT_EPOCH = "2026-01-01T00:00:00"

Output = str | Path | BinaryIO
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ContactResult:
    """One written contact; ``packets`` counts the packets a decoder gets (duplicates included)."""

    contact: str
    file: str
    bytes: int
    sha256: str
    start_tai: float
    duration_s: float
    packets: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class SimulationResult:
    truth: dict[str, Any]
    contacts: list[ContactResult]
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.contacts)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def simulate(options: SimOptions, out: Output, truth: str | Path | None = None,
             next_out: Output | None = None, progress: Progress | None = None) -> SimulationResult:
    """Write the contact stream(s) and return (and optionally write) the truth."""
    t_begin = time.perf_counter()
    spec = options.faults
    check_outputs(options, out, next_out)
    check_paths(out, truth, next_out, (options.dictionary,))  # never overwrite an input or an output
    dictionary = load_dictionary(options.dictionary)
    seed = options.seed
    t0 = options.start_tai if options.start_tai is not None else \
        tai_from_iso(_DEFAULT_EPOCH) + (seed % 1000) * CONTACT_SPACING_S
    contact1, contact2 = options.contact_id, options.next_contact_id

    plan = _plan(options, dictionary, t0)
    dump, rec_series = build_dump(plan, dictionary)
    dump1, dump2 = cut_dump(dump, plan) if spec.split else (dump, [])
    sched1 = interleave_realtime(dump1, contact1, t0, t0, dictionary, options.rate_bytes_per_s)

    bases: Bases = {}
    protected = np.empty(0, dtype=np.int64)
    wrap_at = None
    if spec.wrap:
        wrap_at, protected = _force_wrap(sched1.items, bases)
    faults = plan_faults(spec, sched1.items, seed, protected)

    model = EngModel(dictionary, seed)
    model.add_excursions(int(Source.RECORDED), plan.start_tai - 60.0, plan.end_tai, None, key=0)
    model.add_excursions(int(Source.REALTIME), t0, t0 + sched1.seconds, contact1, key=1)
    _fill_series(model, rec_series, key=0)
    _fill_series(model, sched1.series, key=1)

    truth_b = TruthBuilder()
    hasher = Hasher()
    renderer = Renderer(plan, seed, bases, hasher)
    dump2_bytes = sum(it.nbytes for it in dump2)
    total = [sched1.nbytes + dump2_bytes]
    done_before = [0]

    def tick(offset: int) -> None:
        if progress is not None:
            progress(done_before[0] + offset, total[0])

    results: list[ContactResult] = []
    redump = Redumped() if spec.redump else None
    try:
        with _open(out) as (fh, name):
            sink = StreamSink(fh)
            emitter = ContactEmitter(contact1, sink, renderer, truth_b, bases, faults, redump,
                                     wrap_at=wrap_at[:3] if wrap_at else None,
                                     wrap_start=wrap_at[3] if wrap_at else 0, progress=tick)
            _emit_all(emitter, sched1, rec_series)
            results.append(ContactResult(contact1, name, sink.bytes, sink.close(), t0,
                                         sink.bytes / options.rate_bytes_per_s, truth_b.packets[contact1]))
        done_before[0] = results[0].bytes
        if spec.needs_next_contact:
            assert next_out is not None
            t0b = t0 + CONTACT_SPACING_S
            items2: list[Item] = []
            if redump is not None and redump.packets:
                items2.append(RawItem(redump.packets, redump.descs, redump.origins))
            items2 += dump2
            sched2 = interleave_realtime(items2, contact2, t0b, t0, dictionary, options.rate_bytes_per_s)
            model.add_excursions(int(Source.REALTIME), t0b, t0b + sched2.seconds, contact2, key=2)
            _fill_series(model, sched2.series, key=2)
            total[0] = results[0].bytes + sched2.nbytes
            split = _split_counts(dump1, dump2)
            with _open(next_out) as (fh, name):
                sink = StreamSink(fh)
                emitter = ContactEmitter(contact2, sink, renderer, truth_b, bases,
                                         split={k: v[0] for k, v in split.items()},
                                         split_totals={k: v[0] + v[1] for k, v in split.items()},
                                         progress=tick)
                _emit_all(emitter, sched2, rec_series)
                results.append(ContactResult(contact2, name, sink.bytes, sink.close(), t0b,
                                             sink.bytes / options.rate_bytes_per_s, truth_b.packets[contact2]))
    finally:
        hasher.finish()

    digests = renderer.l0_digests()
    document = truth_b.build(
        seed=seed, options=options.to_dict(),
        contacts=[{"contact": c.contact, "file": c.file, "bytes": c.bytes, "sha256": c.sha256,
                   "start_tai": c.start_tai, "duration_s": c.duration_s, "packets": c.packets}
                  for c in results],
        exposures=[{**_exposure_truth(e, digests[e.index]), "ramps": renderer.patterns.exposure_truth(e)}
                   for e in plan.exposures],
        excursions=[x.to_dict() for x in model.excursions])
    if truth is not None:
        tmp = Path(f"{truth}.tmp")
        tmp.write_text(json.dumps(document, indent=1))
        os.replace(tmp, truth)
    seconds = time.perf_counter() - t_begin
    result = SimulationResult(document, results, seconds)
    log.info("simulated %d contact(s), %d bytes in %.1f s (%.1f MB/s)", len(results), result.bytes,
             seconds, result.mb_per_s, extra={"contact": contact1, "seed": seed})
    return result


@dataclass(frozen=True)
class EngTruth:
    """The real-time engineering samples of one APID in contact 1, as the simulator made them."""

    apid: int
    times: np.ndarray  # TAI seconds (before quantization to the packet time code)
    raw: np.ndarray  # structured, one field per parameter (what the packets carry)
    values: dict[str, np.ndarray]  # engineering values before raw quantization


def realtime_truth(options: SimOptions) -> list[EngTruth]:
    """Regenerate contact 1's real-time engineering from the seed and options alone.

    The truth file lists only limit excursions; this replays steps 1-5 of
    :func:`simulate` (no rendering, no faults) so a test can compare every
    published parameter with what was sent. Packets dropped by faults are
    still listed here.
    """
    spec = options.faults
    dictionary = load_dictionary(options.dictionary)
    seed = options.seed
    t0 = options.start_tai if options.start_tai is not None else \
        tai_from_iso(_DEFAULT_EPOCH) + (seed % 1000) * CONTACT_SPACING_S
    plan = _plan(options, dictionary, t0)
    dump, _ = build_dump(plan, dictionary)
    dump1 = cut_dump(dump, plan)[0] if spec.split else dump
    sched1 = interleave_realtime(dump1, options.contact_id, t0, t0, dictionary, options.rate_bytes_per_s)
    model = EngModel(dictionary, seed)
    model.add_excursions(int(Source.RECORDED), plan.start_tai - 60.0, plan.end_tai, None, key=0)
    model.add_excursions(int(Source.REALTIME), t0, t0 + sched1.seconds, options.contact_id, key=1)
    out = []
    for s in sched1.series:
        times = np.asarray(s.times, dtype=np.float64)
        values: dict[str, np.ndarray] = {}
        blocks = model.blocks(s.apid, times, s.source, 1, values_out=values)
        raw = dictionary.decode_many(s.apid, blocks, header=False)
        out.append(EngTruth(s.apid, times, raw, values))
    return out


def check_outputs(options: SimOptions, out: Output, next_out: Output | None) -> None:
    """Refuse output combinations that cannot work, before any work is done."""
    if options.faults.needs_next_contact and next_out is None:
        raise SimulationError("--faults split/redump put packets in a second contact: give --next-out FILE")
    if next_out is not None and not options.faults.needs_next_contact:
        raise SimulationError("--next-out is only written with --faults split or redump")
    if _is_stdout(out) and next_out is not None and _is_stdout(next_out):
        raise SimulationError("only one of --out and --next-out can be '-' (stdout)")


# -- planning -------------------------------------------------------------------------------------
def _plan(options: SimOptions, dictionary: EngDictionary, t0: float) -> Plan:
    """Plan exposures; a byte budget leaves room for real-time and recorded engineering."""
    kw = dict(detectors=options.detectors, max_side=options.subarray_limit, end_tai=t0)
    target = options.target_bytes
    if target is None:
        return make_plan(options.seed, exposures=options.exposures, **kw)  # type: ignore[arg-type]
    lengths = dictionary.packet_lengths()
    rt = sum(lengths[p.apid] / max(1, round(p.period_s)) for p in dictionary.packets)
    rec = sum(lengths[p.apid] / (p.period_s * RECORDED_PERIOD_FACTOR) for p in dictionary.packets)
    budget = int(target * (1 - rt / options.rate_bytes_per_s))
    plan = make_plan(options.seed, budget_bytes=budget, **kw)  # type: ignore[arg-type]
    recorded = int(1.1 * rec * (plan.end_tai - plan.start_tai + 60.0)) + 4096  # margin: the refit plan's span differs
    if budget - recorded <= 0:
        raise SimulationError(f"a contact of {target} bytes is too small for any science; "
                              "ask for a larger --size or --duration")
    return make_plan(options.seed, budget_bytes=budget - recorded, **kw)  # type: ignore[arg-type]


def _force_wrap(items: list[Item], bases: Bases) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Start the busiest science APID's counter just below 16383 so it wraps in this contact.

    Returns ((apid, source, counter index of seq 0, start seq), packets not to fault: the
    ones carrying 16383 and 0).
    """
    counts: dict[int, int] = {}
    for it in items:
        if isinstance(it, SciItem):
            counts[it.apid] = counts.get(it.apid, 0) + it.n
    apid = max(sorted(counts), key=lambda a: counts[a])
    w = max(1, min(50, counts[apid] // 2))
    source = int(Source.RECORDED)
    bases[(apid, source)] = SEQ_MODULO - w
    protected = []
    start = 0
    for it in items:
        if isinstance(it, SciItem) and it.apid == apid:
            first = it.chunk_cidx0 + it.p0
            for c in (w - 1, w):
                if first <= c < first + it.n:
                    protected.append(start + c - first)
        start += it.n
    return (apid, source, w, SEQ_MODULO - w), np.array(protected, dtype=np.int64)


def _fill_series(model: EngModel, series: list[EngSeries], key: int) -> None:
    for s in series:
        s.blocks = model.blocks(s.apid, np.asarray(s.times, dtype=np.float64), s.source, key)


def _split_counts(dump1: list[Item], dump2: list[Item]) -> dict[int, tuple[int, int]]:
    """Exposure index -> (packets in contact 1, packets in contact 2) for exposures on both sides."""
    def count(items: list[Item]) -> dict[int, int]:
        c: dict[int, int] = {}
        for it in items:
            if isinstance(it, SciItem):
                c[it.exp.index] = c.get(it.exp.index, 0) + it.n
        return c
    a, b = count(dump1), count(dump2)
    return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys())}


def _emit_all(emitter: ContactEmitter, sched: ContactSchedule, rec_series: list[EngSeries]) -> None:
    for k, item in enumerate(sched.items):
        series = rec_series if getattr(item, "source", None) == int(Source.RECORDED) else sched.series
        emitter.emit(k, item, series)


# -- outputs --------------------------------------------------------------------------------------
def _is_stdout(out: Output) -> bool:
    return isinstance(out, (str, Path)) and str(out) == "-"


@contextlib.contextmanager
def _open(out: Output) -> Iterator[tuple[BinaryIO, str]]:
    """Binary output: a path (partial file removed on error), '-' for stdout, or an open file."""
    if _is_stdout(out):
        try:
            yield sys.stdout.buffer, "-"
        except BrokenPipeError:
            # the reader went away: silence the interpreter's final flush of stdout (Python docs recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SimulationError("stdout closed before the contact was complete (broken pipe)") from None
        return
    if not isinstance(out, (str, Path)):
        yield out, getattr(out, "name", "<stream>")
        return
    path = Path(out)
    # only a regular file we create or overwrite is ever removed (never /dev/null, a FIFO...)
    regular = not path.exists() or path.is_file()
    try:
        fh = open(path, "wb", buffering=1 << 20)
    except OSError as exc:
        raise SimulationError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with fh:
            yield fh, str(path)
    except BaseException as exc:
        if regular:
            with contextlib.suppress(OSError):
                path.unlink()
        if isinstance(exc, OSError):
            raise SimulationError(f"cannot write {path}: {exc.strerror or exc}"
                                  + ("; partial file removed" if regular else "")) from exc
        raise


def _exposure_truth(e, l0_sha256: str) -> dict[str, Any]:
    h = e.header
    t = e.tag
    return {
        "exposure_id": e.exposure_id, "apid": t.apid,
        "tag": {"program": t.program, "observation": t.observation, "visit": t.visit,
                "visit_group": t.visit_group, "parallel_seq": t.parallel_seq, "activity": t.activity,
                "exposure": t.exposure, "detector": t.detector},
        "meta": {"nints": h.nints, "ngroups": h.ngroups, "nframes": h.nframes, "groupgap": h.groupgap,
                 "substrt1": h.substrt1, "substrt2": h.substrt2, "subsize1": h.subsize1,
                 "subsize2": h.subsize2, "tframe_us": h.tframe_us, "readpatt": h.readpatt,
                 "exp_type": h.exp_type, "target": h.target},
        "data_packets": e.data_packets, "packets": e.packets, "l0_bytes": e.l0_bytes,
        "l0_sha256": l0_sha256, "start_tai": e.start_tai, "activity": e.activity,
    }
