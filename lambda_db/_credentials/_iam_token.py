"""What an RDS IAM auth token is: :func:`sign_token`, the SigV4 presigned ``connect`` URL
for service ``rds-db``, computed with botocore's query signer and no RDS client.

``iam.py`` decides when to mint one and with which AWS credentials; this module only
signs. botocore is imported inside :func:`sign_token` only, and its DEBUG lines about the
signature are muted while it signs (``_quiet.py``).
"""

from __future__ import annotations

from typing import Any

from lambda_db._credentials._quiet import SENSITIVE_LOGGERS, muted_loggers

__all__ = ["SERVICE", "sign_token"]

#: The service name RDS IAM tokens are signed for.
SERVICE = "rds-db"


def sign_token(
    credentials: Any, *, host: str, port: int, user: str, region: str, expires: int = 900
) -> str:
    """An RDS IAM auth token: the SigV4 presigned ``connect`` URL without its scheme.

    ``credentials`` is anything with ``access_key``, ``secret_key`` and ``token``
    (botocore's ``ReadOnlyCredentials``). The same request as botocore's
    ``generate_db_auth_token`` (``botocore/signers.py``): ``GET https://HOST:PORT/`` with
    ``Action=connect&DBUser=USER``, signed for ``rds-db`` with ``X-Amz-Expires``.

    Example::

        >>> from collections import namedtuple
        >>> c = namedtuple("C", "access_key secret_key token")("AKIDEXAMPLE", "s", None)
        >>> sign_token(c, host="h", port=5432, user="u", region="us-east-1")[:47]
        'h:5432/?Action=connect&DBUser=u&X-Amz-Algorithm'
    """
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest

    scheme = "https://"
    request = AWSRequest(
        method="GET",
        url=f"{scheme}{host}:{port}/",
        params={"Action": "connect", "DBUser": user},
    )
    with muted_loggers(*SENSITIVE_LOGGERS):
        SigV4QueryAuth(credentials, SERVICE, region, expires=expires).add_auth(request)
    url: str = request.prepare().url
    return url[len(scheme) :]
