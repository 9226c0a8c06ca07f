"""What RDS Proxy and RDS say at login, and what lambda-db does about it.

Wordings from the "Troubleshooting for RDS Proxy" table (awsdocs/amazon-rds-user-guide,
``doc_source/rds-proxy.troubleshooting.md``) and, for a direct instance, from reports of
``PAM authentication failed`` and ``pg_hba.conf rejects connection ... SSL off``. libpq
prefixes them with ``connection to server at ... failed: FATAL:``.
"""

from __future__ import annotations

import psycopg2
import pytest

from lambda_db._classify import Failure, classify_connect_error

PREFIX = 'connection to server at "proxy.example.com" (10.0.0.7), port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    ("message", "failure"),
    [
        # expired or bad token: mint a new one, retry once
        (
            "IAM authentication failed for user app. Check the IAM token for this user and try "
            "again.",
            Failure.AUTHENTICATION,
        ),
        (
            "The IAM authentication failed for the role app. Check the IAM token for this role "
            "and try again.",
            Failure.AUTHENTICATION,
        ),
        ('PAM authentication failed for user "app"', Failure.AUTHENTICATION),
        # wrong password (a rotated secret): refetch once
        ("The password that was provided for the role app is wrong.", Failure.AUTHENTICATION),
        ('password authentication failed for user "app"', Failure.AUTHENTICATION),
        # throttled: back off inside the deadline
        (
            "The IAM authentication failed because of too many competing requests.",
            Failure.UNAVAILABLE,
        ),
        ("Rate of connection to proxy exceeded 1000.", Failure.UNAVAILABLE),
        (
            "The maximum number of client connections to the proxy exceeded 5000.",
            Failure.UNAVAILABLE,
        ),
        # configuration: no retry, a clear error
        ("IAM authentication is allowed only with SSL connections.", Failure.CONFIGURATION),
        ("IAM is allowed only with SSL connections.", Failure.CONFIGURATION),
        ("This RDS Proxy requires TLS connections.", Failure.CONFIGURATION),
        (
            "This RDS proxy has no credentials for the role app. Check the credentials for this "
            "role and try again.",
            Failure.CONFIGURATION,
        ),
        ("RDS supports only IAM or MD5 authentication.", Failure.CONFIGURATION),
        ("RDS Proxy supports only IAM, MD5, or SCRAM authentication.", Failure.CONFIGURATION),
        (
            "A user name is missing from the connection startup packet. Provide a user name for "
            "this connection.",
            Failure.CONFIGURATION,
        ),
        (
            "Feature not supported: RDS Proxy currently doesn't support the option options.",
            Failure.CONFIGURATION,
        ),
        ('Request returned an error: database "app" does not exist', Failure.CONFIGURATION),
        (
            'pg_hba.conf rejects connection for host "10.0.0.9", user "app", database "app", '
            "SSL off",
            Failure.CONFIGURATION,
        ),
    ],
)
def test_rds_wordings(message: str, failure: Failure) -> None:
    assert classify_connect_error(psycopg2.OperationalError(PREFIX + message)) is failure
