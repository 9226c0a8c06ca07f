"""docs/local.md, run as written: the commands of its two marked blocks, each line in bash
from the repository's root, ``lambda-db dev`` in the background as a first terminal."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lambda_db_lab.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "local.md"
MARKED_BLOCK = re.compile(r"<!-- local-loop: (terminal \d) -->\n```sh\n(.*?)```", re.DOTALL)


def documented() -> dict[str, list[str]]:
    """The command lines of each marked block, as the reader would type them."""
    blocks = {
        name: body.strip().splitlines() for name, body in MARKED_BLOCK.findall(DOC.read_text())
    }
    assert set(blocks) == {"terminal 1", "terminal 2"}, blocks.keys()
    return blocks


def env_file(commands: list[str]) -> Path:
    """The ``--env-vars`` file the second terminal's commands read."""
    found = {m for line in commands for m in re.findall(r"--env-vars (\S+)", line)}
    assert len(found) == 1, found
    return ROOT / str(found.pop())


def bash(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


@pytest.fixture
def terminal_1() -> Iterator[subprocess.Popen[str]]:
    """The first block, running in the background in its own process group (its terminal)."""
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        pytest.fail("the docs activate .venv: create it with make .venv/.installed-stamp")
    script = "\n".join(documented()["terminal 1"])
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_the_local_loop_as_documented(terminal_1: subprocess.Popen[str]) -> None:
    commands = documented()["terminal 2"]
    env_json = env_file(commands)
    wait_for(
        lambda: env_json.exists() or terminal_1.poll() is not None,
        "lambda-db dev to write its env.json",
        timeout=120,
    )
    assert env_json.exists(), terminal_1.communicate(timeout=10)[0]
    assert env_json.stat().st_mode & 0o077 == 0  # it holds a password: the owner's only
    password = json.loads(env_json.read_text())["Parameters"]["DB_PASSWORD"]
    activate, *invocations = commands
    assert activate == "source .venv/bin/activate"

    responses = []
    for line in invocations:
        result = bash(f"{activate}\n{line}", timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        responses += [json.loads(out) for out in result.stdout.splitlines()]
    assert [r["statusCode"] for r in responses] == [201, 400, 200, 200]
    assert json.loads(responses[0]["body"])["name"] == "Widget"
    assert "not valid JSON" in json.loads(responses[1]["body"])["message"]
    assert [item["id"] for item in json.loads(responses[2]["body"])["items"]] == [1]

    os.killpg(terminal_1.pid, signal.SIGINT)  # Ctrl-C in the first terminal
    output = terminal_1.communicate(timeout=60)[0]
    assert terminal_1.returncode == 0, output
    assert not env_json.exists()
    assert "Server stopped and removed." in output
    assert password not in output  # never printed
