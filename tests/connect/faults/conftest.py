"""Real Celery worker processes against Redis and the transactional test database.

Tests here never run tasks inline: the test process publishes to Redis (database 5 unless
TEST_CELERY_BROKER_URL says otherwise), and ``celery worker`` subprocesses connected to the same test
database consume. Every worker is stopped (its whole process group) before the database is flushed.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from django.conf import settings
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from config.celery import app as celery_app
from connect import doorbell

BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL") or "redis://127.0.0.1:6379/5"
WORKER_SETTINGS = "tests.connect.faults.worker_settings"
# Short timings so a retry schedule or a sweep takes a second, not minutes.
WORKER_ENV = {
    "DISPATCH_RETRY_BASE_SECONDS": "0.3",
    "DISPATCH_RETRY_MAX_SECONDS": "2",
    "DISPATCH_MAX_ATTEMPTS": "4",
    "SWEEPER_INTERVAL_SECONDS": "1",
    "SWEEPER_STALE_SECONDS": "2",
    "CHANNEL_CONNECT_TIMEOUT_SECONDS": "1",
    "CHANNEL_READ_TIMEOUT_SECONDS": "2",
}


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.1, workers=()):
    """Poll ``predicate`` until it returns something truthy; fail with the workers' log tails."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(worker.log_tail() for worker in workers)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(interval)


@dataclass
class Broker:
    url: str
    client: redis.Redis

    def queued(self, queue: str = "celery") -> int:
        return self.client.llen(queue)

    def flush(self) -> None:
        self.client.flushdb()


def _forget_broker_connections(app) -> None:
    # Celery keeps its connection pools: drop them so the next publish uses the current broker_url.
    # (A test helper: Celery has no public call that drops them without deregistering the app.)
    app._pool = None
    if "amqp" in app.__dict__:
        app.amqp._producer_pool = None


@pytest.fixture
def broker():
    """The test process publishes tasks to Redis instead of running them inline."""
    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    saved = {
        "broker_url": celery_app.conf.broker_url,
        "task_always_eager": celery_app.conf.task_always_eager,
    }
    celery_app.conf.update(broker_url=BROKER_URL, task_always_eager=False)
    _forget_broker_connections(celery_app)
    doorbell._last_ring = float("-inf")  # no doorbell of an earlier test covers this one's commits
    yield Broker(url=BROKER_URL, client=client)
    celery_app.conf.update(saved)
    _forget_broker_connections(celery_app)
    client.flushdb()
    client.close()


def _database_url() -> str:
    db = settings.DATABASES["default"]
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log_path: Path
    log_file: object = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return f"--- {self.name} (pid {self.pid}) ---\n" + "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and every process it forked (pool children, embedded beat)."""
        self._signal_group(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(10)
        else:
            self._signal_group(signal.SIGKILL)  # children a killed parent may have left behind
        self.log_file.close()

    def _signal_group(self, signum) -> None:
        try:
            os.killpg(self.process.pid, signum)  # the worker leads its own session (start_new_session)
        except ProcessLookupError:
            pass


@pytest.fixture
def start_worker(transactional_db, broker, tmp_path):
    """Start ``celery worker`` processes on the test database; all are stopped at teardown.

    Requests ``transactional_db`` so workers see committed rows and are stopped before the flush.
    """
    started: list[Worker] = []

    def start(*, beat: bool = False, concurrency: int = 2, env: dict | None = None) -> Worker:
        name = f"fault-{uuid.uuid4().hex[:8]}"
        log_path = tmp_path / f"{name}.log"
        log_file = open(log_path, "w")  # closed by Worker.stop
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker",
            "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--hostname", f"{name}@127.0.0.1",
        ]  # fmt: skip
        if beat:
            command += ["--beat", "--schedule", str(tmp_path / f"{name}-beat")]
        process_env = {
            **os.environ,
            **WORKER_ENV,
            **(env or {}),
            "DJANGO_SETTINGS_MODULE": WORKER_SETTINGS,
            "DATABASE_URL": _database_url(),
            "TEST_CELERY_BROKER_URL": broker.url,
            "PYTHONPATH": str(settings.BASE_DIR),
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=process_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = Worker(name=name, process=process, log_path=log_path, log_file=log_file)
        started.append(worker)
        wait_for(
            lambda: f"{name}@127.0.0.1 ready." in worker.log() or not worker.alive(),
            timeout=60,
            what=f"worker {name} to start",
            workers=[worker],
        )
        assert worker.alive(), worker.log_tail()
        return worker

    yield start
    for worker in started:
        worker.stop()


class ScriptedService:
    """A local HTTP service (threaded) whose answer can be switched while workers call it."""

    def __init__(self, server: HTTPServer):
        self.server = server
        self.status = 200
        self.body = '{"ok": true}'
        self.calls: list[tuple[float, str, dict]] = []  # (monotonic time, path, headers)
        self.bodies: list[tuple[str, dict]] = []  # (path, JSON body)
        self.slow: dict[str, tuple[float, int]] = {}  # badge type -> (seconds, how many more answers)
        self._lock = threading.Lock()
        for path in ("/badges", "/payouts", "/badges/revoke", "/payouts/reverse"):
            server.expect_request(path).respond_with_handler(self._handle)

    @property
    def url(self) -> str:
        return self.server.url_for("")

    def answer(self, status: int, body: str) -> None:
        with self._lock:
            self.status, self.body = status, body

    def answer_slowly(self, badge_type: str, *, seconds: float, times: int) -> None:
        """The next ``times`` requests for this badge type wait ``seconds`` before answering."""
        with self._lock:
            self.slow[badge_type] = (seconds, times)

    def _handle(self, request: Request) -> Response:
        badge_type = (request.get_json(silent=True) or {}).get("badge_type")
        with self._lock:
            self.calls.append((time.monotonic(), request.path, dict(request.headers)))
            self.bodies.append((request.path, request.get_json(silent=True) or {}))
            status, body = self.status, self.body
            seconds, times = self.slow.get(badge_type, (0.0, 0))
            if times:
                self.slow[badge_type] = (seconds, times - 1)
        if times:
            time.sleep(seconds)  # outside the lock: the other requests are answered meanwhile
        return Response(body, status=status, content_type="application/json")


@pytest.fixture
def scripted_service():
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    try:
        yield ScriptedService(server)
    finally:
        server.clear()
        if server.is_running():
            server.stop()
