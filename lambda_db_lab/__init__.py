"""The lab: throwaway servers and fault tools for lambda-db's tests, benchmarks and demo.

Nothing here runs in Lambda, and the Lambda layer does not carry it: it starts
PostgreSQL and pgbouncer processes, creates system users, and breaks network paths on
purpose. ``import lambda_db`` never imports it, and it never imports the tests.

* :mod:`lambda_db_lab.localpg`: a private PostgreSQL server (TCP, scram, optional TLS);
* :mod:`lambda_db_lab.pgbouncer`: a private pgbouncer in front of it;
* :mod:`lambda_db_lab.relay`: a TCP relay that can go silent (a hung peer);
* :mod:`lambda_db_lab.appdb`: a role and database on it, as the function sees them and an
  operator acts on them;
* :mod:`lambda_db_lab.ledger`: one row per invocation, checked against the outcomes;
* :mod:`lambda_db_lab.environments`: Lambda execution environments as processes;
* :mod:`lambda_db_lab.sampler`: a role's server connections, sampled;
* :mod:`lambda_db_lab.wait`: wait for a condition instead of sleeping.
"""
