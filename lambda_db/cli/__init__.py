"""The ``lambda-db`` command: operations tooling beside the library, never inside it.

``import lambda_db`` does not import this package, and nothing here ships in a Lambda
deployment package. Its extra dependencies come with ``pip install 'lambda-db[cli]'``
and are imported only by the commands that need them.

Commands (``lambda-db COMMAND --help`` for each)::

    lambda-db demo             reproduce "too many connections for role" and its fixes
    lambda-db doctor           connection use against every limit (the article's Step 1)
    lambda-db terminate-idle   end idle sessions of a named role (dry run by default)
    lambda-db capacity         max_connections, pool math and Lambda concurrency
    lambda-db dev              a throwaway PostgreSQL with the schema, and an env.json for it
    lambda-db invoke           run a template's function under Lambda's runtime client
"""
