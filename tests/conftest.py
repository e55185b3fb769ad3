import pytest

from tests.helpers import make_keyring


@pytest.fixture
def keyring(tmp_path):
    return make_keyring(tmp_path)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real Ceph radosgw on loopback for the whole session (infra/s3/radosgw.sh)."""
    import shutil
    import subprocess
    from pathlib import Path

    from tests.helpers import free_port

    if shutil.which("radosgw") is None:
        pytest.fail("Ceph radosgw is not installed: run `infra/s3/radosgw.sh install` "
                    "(the README's test command does)")
    script = Path(__file__).resolve().parents[1] / "infra" / "s3" / "radosgw.sh"
    work = tmp_path_factory.mktemp("ceph")
    port = free_port()
    while port + 1 > 65535:
        port = free_port()
    r = subprocess.run([str(script), "start", str(work), str(port)], capture_output=True,
                       text=True, timeout=240)
    if r.returncode != 0:
        pytest.fail(f"radosgw did not start: {r.stderr[-2000:]}")
    yield {"endpoint": f"http://127.0.0.1:{port}", "access_key": "vlactest",
           "secret_key": "vlactestsecret"}
    subprocess.run([str(script), "stop", str(work)], timeout=60)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL on loopback for the whole session (tests/postgres.py)."""
    from tests.postgres import INSTALL_HINT, PostgresServer, pg_bindir

    bindir = pg_bindir()
    if bindir is None:
        pytest.fail(f"{INSTALL_HINT}: run `infra/postgres/install.sh` (the README's test "
                    "command does)")
    server = PostgresServer(bindir)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server):
    """The URL of a fresh, empty database on the session's PostgreSQL."""
    return postgres_server.new_database()
