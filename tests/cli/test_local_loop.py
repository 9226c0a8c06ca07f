"""docs/local.md, run as written: the commands of its two marked blocks, each line in bash,
``lambda-db dev`` in the background as a first terminal.

The commands run literally, but not in the repository's root: in a directory of the
test's own that links in what they read (``.venv``, ``events``, ``functions``,
``template.yaml``), so that their ``.tmp/env.local.json`` is the test's, never the one a
developer's running ``lambda-db dev`` wrote (the test neither reads nor deletes it). The
server ``lambda-db dev`` starts keeps its data under a ``TMPDIR`` of the test's own too,
and teardown stops whatever is left there: Ctrl-C first, as the docs say, then SIGKILL,
then the server itself."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambda_db_lab.wait import wait_for
from tests.support.interpreter import sigint_restored

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "local.md"
MARKED_BLOCK = re.compile(r"<!-- local-loop: (terminal \d) -->\n```sh\n(.*?)```", re.DOTALL)
#: What the documented commands read from the repository's root.
LINKED = (".venv", "events", "functions", "template.yaml")
#: How long Ctrl-C may take to stop the server and remove its data.
STOP_TIMEOUT = 60.0


def documented() -> dict[str, list[str]]:
    """The command lines of each marked block, as the reader would type them."""
    blocks = {
        name: body.strip().splitlines() for name, body in MARKED_BLOCK.findall(DOC.read_text())
    }
    assert set(blocks) == {"terminal 1", "terminal 2"}, blocks.keys()
    return blocks


def env_file(commands: list[str]) -> Path:
    """The ``--env-vars`` file the second terminal's commands read (relative to the root)."""
    found = {m for line in commands for m in re.findall(r"--env-vars (\S+)", line)}
    assert len(found) == 1, found
    path = Path(found.pop())
    assert not path.is_absolute(), path
    return path


def bash(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The repository's root as the commands see it, with a ``.tmp/`` of its own."""
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.fail("the docs activate .venv: create it with make .venv/.installed-stamp")
    root = tmp_path / "root"
    root.mkdir()
    for name in LINKED:
        (root / name).symlink_to(ROOT / name)
    return root


@pytest.fixture
def server_tmpdir() -> Iterator[Path]:
    """Where ``lambda-db dev``'s server keeps its data (``TMPDIR``), searched afterwards
    for a server left running. Under the system's temporary directory, traversable: as
    root, the server runs as an unprivileged user."""
    path = Path(tempfile.mkdtemp(prefix="lambda-db-local-loop-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        stop_servers_under(path)
        shutil.rmtree(path, ignore_errors=True)


def servers_under(path: Path) -> list[int]:
    """The postmaster pids of the servers whose data directories are under ``path``."""
    pids = []
    for pidfile in path.glob("lambda-db-pg-*/data/postmaster.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
            pids.append(pid)
    return pids


def stop_servers_under(path: Path) -> None:
    """Stop every server left under ``path``: SIGQUIT (an immediate shutdown, which ends
    the server's own processes), then SIGKILL."""
    for pid in servers_under(path):
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if not _alive(pid):
                break


def threads_of(session: int) -> str:
    """Every thread of the processes in ``session``: state, where it sleeps, signals
    pending, blocked and ignored, and the command (what a hang leaves to look at)."""
    columns = "pid,tid,stat,wchan:24,pending,blocked,ignored,args"
    try:
        ps = subprocess.run(
            ["ps", "-L", "-s", str(session), "-o", columns],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError as exc:
        return f"(no ps: {exc})"
    return ps.stdout + ps.stderr


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, or a stopped pid, is not running)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def terminal_1(workdir: Path, server_tmpdir: Path) -> Iterator[subprocess.Popen[str]]:
    """The first block, running in the background in its own process group (its terminal)."""
    script = "\n".join(documented()["terminal 1"])
    proc = subprocess.Popen(
        sigint_restored(["bash", "-c", script]),  # Ctrl-C must reach it, as in a terminal
        cwd=workdir,
        env={**os.environ, "TMPDIR": str(server_tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:  # Ctrl-C, as the docs say, and then less politely
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.communicate(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=30)
        # The server outlives a killed lambda-db dev: server_tmpdir stops it.


@pytest.mark.slow
def test_the_local_loop_as_documented(
    workdir: Path, server_tmpdir: Path, terminal_1: subprocess.Popen[str]
) -> None:
    commands = documented()["terminal 2"]
    env_json = workdir / env_file(commands)
    wait_for(
        lambda: env_json.exists() or terminal_1.poll() is not None,
        "lambda-db dev to write its env.json",
        timeout=120,
    )
    assert env_json.exists(), terminal_1.communicate(timeout=10)[0]
    assert env_json.stat().st_mode & 0o077 == 0  # it holds a password: the owner's only
    assert len(servers_under(server_tmpdir)) == 1
    password = json.loads(env_json.read_text())["Parameters"]["DB_PASSWORD"]
    activate, *invocations = commands
    assert activate == "source .venv/bin/activate"

    responses = []
    for line in invocations:
        result = bash(f"{activate}\n{line}", workdir, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        responses += [json.loads(out) for out in result.stdout.splitlines()]
    assert [r["statusCode"] for r in responses] == [201, 400, 200, 200]
    assert json.loads(responses[0]["body"])["name"] == "Widget"
    assert "not valid JSON" in json.loads(responses[1]["body"])["message"]
    assert [item["id"] for item in json.loads(responses[2]["body"])["items"]] == [1]

    os.killpg(terminal_1.pid, signal.SIGINT)  # Ctrl-C in the first terminal
    try:
        output = terminal_1.communicate(timeout=STOP_TIMEOUT)[0]
    except subprocess.TimeoutExpired as exc:
        printed = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(
            f"still running {STOP_TIMEOUT:g} s after Ctrl-C (pg_ctl stop waits up to 60 s "
            f"too):\n{threads_of(terminal_1.pid)}\nIt printed:\n{printed}"
        )
    assert terminal_1.returncode == 0, output
    assert not env_json.exists()
    assert "Server stopped and removed." in output
    assert not servers_under(server_tmpdir)
    assert not list(server_tmpdir.glob("lambda-db-pg-*"))  # its data is gone too
    assert password not in output  # never printed
    assert "WARNING" not in output and "service_undefined" not in output


def test_a_killed_lambda_db_dev_leaves_no_server(
    workdir: Path, server_tmpdir: Path, tmp_path: Path
) -> None:
    """What teardown is for: SIGKILL gives ``lambda-db dev`` no chance to stop its server."""
    env_json = tmp_path / "env.json"
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lambda-db"), "dev", "--env-vars", str(env_json)],
        cwd=workdir,
        env={**os.environ, "TMPDIR": str(server_tmpdir)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: env_json.exists() or proc.poll() is not None, "the env.json", timeout=120)
        (pid,) = servers_under(server_tmpdir)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert _alive(pid)  # the server outlived it
    stop_servers_under(server_tmpdir)
    assert not _alive(pid)
