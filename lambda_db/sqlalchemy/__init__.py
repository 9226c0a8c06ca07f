"""SQLAlchemy on lambda-db's one connection (``pip install "lambda-db[sqlalchemy]"``).

``create_engine()`` gives an ``Engine`` whose pool is the :class:`~lambda_db.Database`'s
health-checked connection: no ``pool_pre_ping`` round trip, no reset-on-return
``ROLLBACK``, credentials from the three auth modes (a fresh IAM token for each new
connection), connects bounded by the invocation's deadline, and nothing sent that pins RDS
Proxy. ``with_session`` scopes one ``Session`` per invocation the way ``with_connection``
scopes a connection. ``import lambda_db`` never imports SQLAlchemy; this module does.

Inside an invocation (``with_session``, ``with_connection``, ``db.invocation()``) there is
one transaction and the invocation commits it once, when the handler returns: every
``Connection`` and ``Session`` on the engine joins it. ``commit()`` sends no ``COMMIT``;
each transaction other than ``with_session``'s first runs in a savepoint, so its rollback,
or a close without commit, undoes its own work and nobody else's. Outside an invocation,
SQLAlchemy's rules hold on one connection: a second concurrent checkout raises
:class:`~lambda_db.LambdaDbError`.

Example::

    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
    from lambda_db.sqlalchemy import with_session

    class Base(DeclarativeBase): ...

    class Order(Base):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        sku: Mapped[str]

    @with_session
    def handler(event, context, session):
        session.add(Order(sku=event["sku"]))   # committed when the handler returns
"""

from lambda_db.sqlalchemy._engine import create_engine
from lambda_db.sqlalchemy._session import with_session

__all__ = ["create_engine", "with_session"]
