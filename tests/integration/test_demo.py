"""``downlink demo`` on a small faulted contact: stage displays and tables only, every log line in the file;
the token and queries it prints at the end fetch the products from a real ``downlink serve``; and a
second run after the product folder was deleted succeeds as well."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.helpers import env_for, fast

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(r"(^|\s)(ts=|level=)|Traceback|^(WARNING|ERROR|INFO)[: ]", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _demo(env: dict[str, str], work: Path, contact: str, skip: str, timeout: float = 900):
    proc = subprocess.run(
        [sys.executable, "-m", "downlink", "demo", "--size", "8MB", "--seed", "3", "--work", str(work),
         "--contact", contact, "--faults", "drop=0.002,dup=0.001,garbage=0.0005", "--skip", skip],
        env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not LOG_LINE.search(out), [m.group(0) for m in LOG_LINE.finditer(out)][:5]
    assert f"logs -> {work / (contact + '.log')}" in out.replace("\n", "")
    return out


def test_demo_prints_no_log_line_and_keeps_them_in_its_file(settings, topics, tmp_path):
    work = tmp_path / "demo"
    # the stack is the test session's; calibration stages are covered by the next test
    out = _demo(env_for(fast(settings)), work, "DEMOT1", "stack,refs,calibrate,archive,access", timeout=600)
    for heading in ("simulate", "ingest", "demux", "l0", "verify", "stages", "packet accounting", "L0 files",
                    "log warnings and errors"):
        assert heading in out, heading
    text = (work / "DEMOT1.log").read_text()
    assert "level=warning" in text and "sequence gap" in text  # the faults' warnings went to the file
    warned = len(re.findall(r"level=warning .*msg=\"sequence gap\"", text))
    assert warned > 0 and re.search(rf"│\s+{warned:,}\s+│ warning\s+│ consumers\.demux\.\w+\s+│ sequence gap", out), \
        "the warnings table counts each message once per occurrence"
    assert "token" not in out  # no access stage, no token


def _commands(out: str) -> dict[str, str]:
    """The example commands the demo printed, by kind (serve, search, get, curl-list, curl-one, curl-file)."""
    lines = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    found: dict[str, str] = {}
    for line in lines:
        if line.startswith("downlink ") and " serve" in line:
            found["serve"] = line.removesuffix("&").strip()
        elif line.startswith("downlink ") and " archive search" in line:
            found["search"] = line
        elif line.startswith("downlink ") and " archive get" in line:
            found["get"] = line
        elif line.startswith("curl -OJ"):
            found["curl-file"] = line
        elif line.startswith("curl ") and "/products?" in line:
            found["curl-list"] = line
        elif line.startswith("curl "):
            found["curl-one"] = line
    return found


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "downlink", command
    return [sys.executable, "-m", "downlink", *words[1:]]


def test_demo_ends_with_a_token_and_queries_that_fetch_the_products_and_reruns(settings, topics, tmp_path):
    work = tmp_path / "demo"
    api_port = _free_port()
    env = {**env_for(fast(settings)), "DOWNLINK_ARCHIVE_API_PORT": str(api_port)}
    del env["DOWNLINK_DATA_DIR"]  # the demo's own product folder, <work>/data, emptied at each run
    out = _demo(env, work, "DEMOT2", "stack")
    assert re.search(r"access\s+user astronomer \(programs [\d, ]+\) sees \d+ L1b", out), out[-3000:]
    token_line = out.splitlines()[next(i for i, line in enumerate(out.splitlines()) if "archive token" in line) + 1]
    token = token_line.strip()
    assert re.fullmatch(r"\S{20,}", token), token_line
    cmds = _commands(out)
    assert set(cmds) == {"serve", "search", "get", "curl-list", "curl-one", "curl-file"}, cmds
    assert all(f"127.0.0.1:{api_port}" in cmds[k] for k in ("curl-list", "curl-one", "curl-file"))

    # the printed commands, as printed: a real API server, the archive client and curl, with the token
    serve = subprocess.Popen(_argv(cmds["serve"]), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, "downlink serve exited"
            try:
                socket.create_connection(("127.0.0.1", api_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the archive API did not start"
                time.sleep(0.3)
        client_env = {**env, "DOWNLINK_TOKEN": token}
        product = cmds["get"].split()[-1]
        found = subprocess.run(_argv(cmds["search"]) + ["--json"], env=client_env, capture_output=True,
                               text=True, timeout=60)
        assert found.returncode == 0, found.stdout + found.stderr
        assert product in {p["id"] for p in json.loads(found.stdout)["products"]}
        got = subprocess.run(_argv(cmds["get"]), env=client_env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert got.returncode == 0 and "saved" in got.stdout, got.stdout + got.stderr
        if shutil.which("curl"):
            one = subprocess.run(["bash", "-c", cmds["curl-one"]], env=client_env, capture_output=True,
                                 text=True, timeout=60)
            assert json.loads(one.stdout)["id"] == product, one.stdout + one.stderr
            listed = subprocess.run(["bash", "-c", cmds["curl-list"]], env=client_env, capture_output=True,
                                    text=True, timeout=60)
            assert product in {p["id"] for p in json.loads(listed.stdout)["products"]}
            anonymous = subprocess.run(["bash", "-c", cmds["curl-one"]], env={**env, "DOWNLINK_TOKEN": "nope"},
                                       capture_output=True, text=True, timeout=60)
            assert product not in anonymous.stdout  # proprietary: only the program's members see it
    finally:
        serve.terminate()
        serve.wait(30)

    # make demo, delete the product folder, make demo again: a fresh catalogue, the same topics
    assert cmds["serve"].startswith(f"downlink --data-dir {work / 'data'} ")
    shutil.rmtree(work / "data")
    again = _demo(env, work, "DEMOT3", "stack")
    assert re.search(r"verify\s+\d+/\d+ exposures match the truth", again)
    assert "archive token" in again
    assert (work / "refs").is_dir()
