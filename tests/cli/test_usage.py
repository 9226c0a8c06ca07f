"""Usage errors exit 2 (argparse's convention, which main.py promises) for every command,
whether argparse or the command itself finds them; nothing runs, stderr says why."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli

#: (argv, words stderr must hold): each a mistake a user makes.
MISTAKES = [
    ((), "required: COMMAND"),
    (("no-such-command",), "invalid choice"),
    (("demo", "--environments", "0"), "--environments must be at least 1"),
    (("demo", "--limit", "many"), "invalid int value"),
    (("dev", "--schema", "no/such/schema_setup.py"), "no such file"),
    (("dev", "--unknown"), "unrecognized arguments"),
    (("doctor", "--threshold", "high"), "invalid float value"),
    (("terminate-idle", "--older-than", "10m"), "--user"),
    (("terminate-idle", "--user", "app", "--older-than", "ten minutes"), "not a duration"),
    (("capacity", "--instance-class", "db.nope.large"), "unknown instance class"),
    (("capacity", "--instance-class", "db.t3.micro", "--dsn", "host=x"), "drop --instance-class"),
    (("capacity", "--instance-class", "db.t3.micro", "--max-connections", "5"), "not allowed"),
    (("invoke", "ItemsFunction"), "--event"),
    (("invoke", "Fn", "-e", "e.json", "--parameter-overrides", "novalue"), "KEY=VALUE"),
]


@pytest.mark.parametrize(
    ("argv", "words"), [pytest.param(*m, id=" ".join(m[0]) or "no-command") for m in MISTAKES]
)
def test_a_usage_error_exits_2(cli: Cli, argv: tuple[str, ...], words: str) -> None:
    result = cli(*argv)
    assert result.status == 2, (result.stdout, result.stderr)
    assert words in result.stderr
    assert result.stdout == ""


def test_help_exits_0(cli: Cli) -> None:
    result = cli("--help")
    assert result.status == 0
    for command in ("demo", "dev", "doctor", "terminate-idle", "capacity", "invoke"):
        assert command in result.stdout
