"""The lab: throwaway servers and fault tools for lambda-db's tests, benchmarks and demo.

Nothing here runs in Lambda, and the Lambda layer does not carry it: it starts
PostgreSQL and pgbouncer processes, creates system users, and breaks network paths on
purpose. ``import lambda_db`` never imports it.

* :mod:`lambda_db_lab.localpg`: a private PostgreSQL server (TCP, scram, optional TLS);
* :mod:`lambda_db_lab.pgbouncer`: a private pgbouncer in front of it;
* :mod:`lambda_db_lab.relay`: a TCP relay that can go silent (a hung peer).
"""
