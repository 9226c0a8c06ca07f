"""Benchmarks: ``python -m bench`` (``make bench``) measures and rewrites BENCHMARKS.md.

Every ratio compares figures measured in the same run, on the same server, on the same
machine. Modules: :mod:`bench.timing` (how things are timed), :mod:`bench.core`
(lambda-db's warm path, invocation scope, watchdog, import), :mod:`bench.peers`
(SQLAlchemy, psycopg_pool, a bare ping, the AWS Advanced Python Wrapper),
:mod:`bench.recovery`, :mod:`bench.burst` (bursts and load, beside the naive pattern),
:mod:`bench.report` (the Markdown), and the credentials engineer's
:mod:`bench.bench_credentials` (IAM cold start, Secrets Manager calls).
"""
