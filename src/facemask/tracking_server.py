"""MLflow as a team service: a tracking server whose backend store is PostgreSQL and whose
artifacts it proxies (clients upload and download over HTTP, never to a shared disk).

`python -m facemask.tracking_server --root mlflow-server` (`make mlflow-server`) keeps everything
in one folder: `pgdata/` (a PostgreSQL cluster listening on loopback only, password auth, the
password in `postgres.password`, mode 0600), `artifacts/` and the two logs. A second start reuses
the cluster. Debian's `postgresql` package provides the server binaries; PostgreSQL refuses to run
as root, so as root its commands run as the `postgres` system user, which then owns `pgdata/`.
For a managed database instead, run `mlflow server --backend-store-uri postgresql://...` yourself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from facemask.errors import FacemaskError
from facemask.subprocesses import free_port, stop, wait_ready

DB_USER = "mlflow"
DB_NAME = "mlflow"
SYSTEM_USER = "postgres"  # who runs the server when we are root (Debian's package creates it)


class TrackingServerError(FacemaskError):
    """PostgreSQL or the MLflow server could not be set up or started."""


def postgres_bindir() -> Path:
    """The folder of `initdb` and `pg_ctl`: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise TrackingServerError(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
            "`apt-get install postgresql` (or `make postgres`)"
        )
    return found[-1].parent


def _as_db_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SYSTEM_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_db_user(path: Path) -> None:
    """As root, hand `path` to the postgres user and make sure it can reach it."""
    if os.geteuid() != 0:
        return
    shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
    for parent in path.resolve().parents:  # the server must traverse every folder above its data
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


def _check(cmd: list[str], what: str, log: Path | None = None) -> None:
    proc = subprocess.run(_as_db_user(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:] if log and log.is_file() else ""
        raise TrackingServerError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")


@dataclass
class Postgres:
    """A PostgreSQL cluster in `root/pgdata`, listening on 127.0.0.1:`port` only."""

    root: Path
    port: int

    @property
    def datadir(self) -> Path:
        return self.root / "pgdata"

    @property
    def password(self) -> str:
        return (self.root / "postgres.password").read_text().strip()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the MLflow database (holds the password: never log it)."""
        return f"postgresql+psycopg2://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def init(self) -> None:
        """A new cluster with one password-protected superuser, unless `pgdata/` holds one already."""
        if (self.datadir / "PG_VERSION").is_file():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "postgres.password"
        pwfile.write_text(secrets.token_urlsafe(24) + "\n")
        pwfile.chmod(0o600)
        self.datadir.mkdir(mode=0o700)
        _give_to_db_user(self.datadir)
        _give_to_db_user(pwfile)  # initdb reads it as the database user
        bindir = postgres_bindir()
        _check(
            [str(bindir / "initdb"), "-D", str(self.datadir), "-U", DB_USER, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--no-instructions"],
            "initdb",
        )  # fmt: skip

    def start(self) -> None:
        log = self.root / "postgres.log"
        if not log.exists():
            log.touch()
            _give_to_db_user(log)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.datadir}"  # TCP on loopback, socket in pgdata
        _check(
            [str(postgres_bindir() / "pg_ctl"), "-D", str(self.datadir), "-l", str(log), "-w", "-t", "60",
             "-o", options, "start"],
            "pg_ctl start",
            log,
        )  # fmt: skip
        self._create_database()

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=DB_USER, password=self.password, dbname="postgres"
        )
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DB_NAME}")
        finally:
            conn.close()

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return  # not running
        _check([str(postgres_bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"], "pg_ctl stop")


@dataclass
class TrackingServer:
    url: str  # what clients set MLFLOW_TRACKING_URI to
    db: Postgres


# MLflow 3's server also starts a job runner (three or more huey consumer processes, each importing
# MLflow) for GenAI jobs this project never submits: off unless the environment asks for it.
JOB_EXECUTION = "false"


@contextlib.contextmanager
def tracking_server(
    root: Path, host: str = "127.0.0.1", port: int | None = None, workers: int = 1
) -> Iterator[TrackingServer]:
    """PostgreSQL, then `mlflow server` on it with proxied artifacts in `root/artifacts`, yielded
    once it answers /health; both stop on exit."""
    root = root.resolve()
    db = Postgres(root, free_port())
    db.init()
    port = port or free_port()
    log = root / "mlflow-server.log"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", host, "--port", str(port),
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", "--workers", str(workers),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": db.url}  # the password stays out of `ps`
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", JOB_EXECUTION)
    try:
        db.start()
        with log.open("a") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        try:
            wait_ready(proc, lambda: requests.get(f"{url}/health", timeout=2).ok, 120, lambda: log.read_text()[-3000:])
        except RuntimeError as err:
            raise TrackingServerError(f"mlflow server: {err}") from err
        try:
            yield TrackingServer(url, db)
        finally:
            stop(proc)
    finally:
        db.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("mlflow-server"), help="data folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="server processes (default: %(default)s)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop both servers on a plain kill too
    try:
        with tracking_server(args.root, args.host, args.port, args.workers) as server:
            url = server.url
            print(f"MLflow tracking server on {url} (PostgreSQL in {args.root / 'pgdata'}, artifacts proxied "
                  f"into {args.root / 'artifacts'})\nexport MLFLOW_TRACKING_URI={url}   # then `make pipeline`\n"
                  "Ctrl-C stops it.", flush=True)  # fmt: skip
            signal.pause()
    except TrackingServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
