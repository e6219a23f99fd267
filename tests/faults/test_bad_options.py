"""Bad options and settings, tried as a new user would, on the real CLI in a subprocess (no servers).

Each must end quickly with exit status 2 and a message naming what to fix:
no traceback, no hang on an absurd size, and nothing written or overwritten
(an output equal to another output or to an input is refused before any work).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _run(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "DOWNLINK_DICTIONARY_FILE": str(tmp / "dictionary.yaml"),
                "COLUMNS": "300", **(env or {})}
    # the timeout only guards against a hang (an absurd size must be refused, not attempted)
    return subprocess.run([sys.executable, "-m", "downlink", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    shutil.copy(Settings().dictionary_file, tmp_path / "dictionary.yaml")
    (tmp_path / "keep.json").write_text('{"keep": true}')
    (tmp_path / "folder").mkdir()
    return tmp_path


SIMULATE = [
    (["--size", "0"], "must be positive"),
    (["--size", "10TB"], "outside 1 byte"),
    (["--size", "nanMB"], "--size"),
    (["--duration", "100h"], "outside 0"),
    (["--exposures", "0"], "--exposures"),
    (["--exposures", "2", "--detectors", "FOO"], "unknown detector"),
    (["--exposures", "2", "--contact", "a b"], "--contact"),
    (["--exposures", "2", "--start", "1900-01-01T00:00:00"], "--start must lie"),
    (["--exposures", "2", "--faults", "unknown=1"], "unknown fault"),
    (["--exposures", "2", "--faults", "drop=2"], "probability"),
    (["--exposures", "2", "--faults", "split"], "--next-out"),
    (["--exposures", "2", "--next-out", "{tmp}/next.bin"], "only written with"),
]


@pytest.mark.parametrize("args,message", SIMULATE, ids=[" ".join(a) for a, _ in SIMULATE])
def test_simulate_refuses_bad_options_without_traceback(tmp: Path, args: list[str], message: str):
    out = tmp / "out.bin"
    argv = [a.format(tmp=tmp) for a in args]
    result = _run(tmp, "simulate", *argv, "--out", str(out), "--truth", str(tmp / "truth.json"), "-q")
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text, text
    assert message in text, text
    assert not out.exists() and not (tmp / "truth.json").exists() and not (tmp / "next.bin").exists()


PATHS = [
    ("out_is_truth", ["--out", "{tmp}/keep.json", "--truth", "{tmp}/keep.json"], "same file"),
    ("next_out_is_out", ["--out", "{tmp}/keep.json", "--truth", "{tmp}/t.json", "--faults", "split",
                         "--next-out", "{tmp}/keep.json"], "same file"),
    ("truth_is_the_dictionary", ["--out", "{tmp}/o.bin", "--truth", "{tmp}/dictionary.yaml"], "input"),
    ("out_is_the_dictionary", ["--out", "{tmp}/dictionary.yaml", "--truth", "{tmp}/t.json"], "input"),
    ("out_via_another_spelling", ["--out", "{tmp}/folder/../keep.json", "--truth", "{tmp}/keep.json"],
     "same file"),
    ("truth_folder_missing", ["--out", "{tmp}/o.bin", "--truth", "{tmp}/nowhere/t.json"], "does not exist"),
    ("out_is_a_folder", ["--out", "{tmp}/folder", "--truth", "{tmp}/t.json"], "folder"),
    ("truth_to_stdout", ["--out", "{tmp}/o.bin", "--truth", "-"], "--truth must be a file"),
]


@pytest.mark.parametrize("args,message", [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_simulate_never_overwrites_its_inputs_or_outputs(tmp: Path, args: list[str], message: str):
    before = {p: p.read_bytes() for p in tmp.iterdir() if p.is_file()}
    result = _run(tmp, "simulate", "--exposures", "2", *[a.format(tmp=tmp) for a in args], "-q")
    text = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in text, text
    assert message in text, text
    assert {p: p.read_bytes() for p in tmp.iterdir() if p.is_file()} == before, "a file was written"


SETTINGS = [
    ({"DOWNLINK_L0_QUIET_SECONDS": "-1"}, "DOWNLINK_L0_QUIET_SECONDS"),
    ({"DOWNLINK_L0_QUIET_SECONDS": "nan"}, "finite"),
    ({"DOWNLINK_KAFKA_TRANSACTION_TIMEOUT_MS": "1000"}, "must exceed DOWNLINK_KAFKA_PRODUCER_REQUEST_TIMEOUT_MS"),
    ({"DOWNLINK_KAFKA_TRANSACTION_TIMEOUT_MS": "60000"}, "below DOWNLINK_KAFKA_SESSION_TIMEOUT_MS"),
]


@pytest.mark.parametrize("env,message", SETTINGS, ids=[next(iter(e.items()))[0] + "=" + next(iter(e.values()))
                                                        for e, _ in SETTINGS])
def test_bad_settings_stop_run_with_the_variable_named(tmp: Path, env: dict[str, str], message: str):
    result = _run(tmp, "run", "--until-idle", env=env)
    text = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in text, text
    assert message in text, text


def test_unknown_service_is_named(tmp: Path):
    for argv in (["run", "--only", "demux,nope"],):
        result = _run(tmp, *argv)
        text = result.stdout + result.stderr
        assert result.returncode == 2 and "Traceback" not in text, text
        assert "unknown service 'nope'" in text, text
