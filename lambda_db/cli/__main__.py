"""``python -m lambda_db.cli``: the same as the ``lambda-db`` console script."""

from lambda_db.cli.main import main

if __name__ == "__main__":  # the demo's spawned processes import this module too
    raise SystemExit(main())
