"""Production settings pass Django's deployment checks; secrets have no production default; the image
serves with the settings the benchmark reads and installs only what the deployed code imports."""

import ast
import importlib.metadata
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


# The test run's own environment carries test-only values (plain HTTP, a test secret): a process
# started as the project runs for real drops them.
TEST_ONLY_ENV = frozenset({
    "DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "ALLOWED_HOSTS", "DATABASE_URL", "API_THROTTLE_RATE",
    "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
})  # fmt: skip


def _manage(*args, python=None, **env):
    clean = {k: v for k, v in os.environ.items() if k not in TEST_ONLY_ENV}
    clean.update(DJANGO_SETTINGS_MODULE="config.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", python] if python else [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy_without_warnings():
    result = _manage(
        "check", "--deploy", "--fail-level", "WARNING",
        SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="rewards.example.com",
        DATABASE_URL="postgres://root@127.0.0.1:5432/postgres",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_secret_key_is_required_when_debug_is_off():
    result = _manage(
        "check", ALLOWED_HOSTS="rewards.example.com", DATABASE_URL="postgres://root@127.0.0.1:5432/postgres"
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_the_embedded_default_keeps_a_key_of_its_own_so_commands_run_with_no_environment():
    # No DATABASE_URL: the SQLite file of this checkout, where `make run` serves. `check` reads
    # settings only; the key file is the one `make run`'s neighbours would use (gitignored).
    key_file = ROOT / ".secret-key"
    existed = key_file.exists()
    code = "import django; django.setup(); from django.conf import settings as s; print(s.SECRET_KEY, s.DEBUG)"
    try:
        first, second = _manage(python=code), _manage(python=code)
        assert first.returncode == 0, first.stderr
        key, debug = first.stdout.split()
        assert (debug, second.stdout) == ("False", first.stdout)  # DEBUG stays off; the same key each time
        assert key == key_file.read_text().strip() and len(key) >= 50
        assert key_file.stat().st_mode & 0o077 == 0  # readable by its owner only
        assert _manage("check").returncode == 0
    finally:
        if not existed:
            key_file.unlink(missing_ok=True)


def test_dispatch_knobs_have_their_documented_defaults_and_read_the_environment(monkeypatch):
    """SPEC §8's batch size and channel concurrency, and the doorbell window (README): a process that
    rang a doorbell rings no other at once for a second, so load coalesces into far fewer messages."""
    names = ("DISPATCH_BATCH_SIZE", "CHANNEL_CONCURRENCY", "DISPATCH_DOORBELL_SECONDS", "DISPATCH_DRAIN_SECONDS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        f"print(*(repr(getattr(s, name)) for name in {names!r}))"
    )
    defaults = _manage(python=code)
    assert defaults.returncode == 0, defaults.stderr
    assert [float(value) for value in defaults.stdout.split()] == [200, 8, 1.0, 20]
    chosen = _manage(
        python=code, DISPATCH_BATCH_SIZE="50", CHANNEL_CONCURRENCY="2", DISPATCH_DOORBELL_SECONDS="0.25",
        DISPATCH_DRAIN_SECONDS="5",
    )  # fmt: skip
    assert chosen.returncode == 0, chosen.stderr
    assert [float(value) for value in chosen.stdout.split()] == [50, 2, 0.25, 5]


def test_https_settings_are_on_by_default_and_switchable():
    code = (
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.DEBUG, s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS)"
    )
    on = _manage(python=code, SECRET_KEY="x" * 60)
    assert on.stdout.split() == ["False", "True", "True", "True", "31536000"], on.stderr
    off = _manage(python=code, SECRET_KEY="x" * 60, SECURE_SSL_REDIRECT="0")
    assert off.stdout.split()[1] == "False"


def _gunicorn_print_config(*args: str, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gunicorn"), "--print-config", *args, "config.wsgi:application"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {
        name.strip(): value.strip() for name, _, value in (line.partition("=") for line in result.stdout.splitlines())
    }


def test_the_image_serves_with_the_gunicorn_settings_the_benchmark_reads():
    dockerfile = (ROOT / "Dockerfile").read_text()
    [cmd] = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    command = json.loads(cmd.removeprefix("CMD "))
    assert command[:3] == ["gunicorn", "--config", "config/gunicorn_conf.py"]
    assert command[-1] == "config.wsgi:application"

    settings = _gunicorn_print_config(*command[1:3])
    assert settings["workers"] == "3" and settings["bind"] == "['0.0.0.0:8000']" and settings["timeout"] == "30"
    assert _gunicorn_print_config(*command[1:3], WEB_CONCURRENCY="5")["workers"] == "5"

    from bench.http import gunicorn_options, gunicorn_settings

    assert gunicorn_settings()["workers"] == 3
    # make bench starts gunicorn from the same file: only its port, worker count and backlog differ.
    bench = _gunicorn_print_config(*gunicorn_options(port=8123, workers=2))
    assert bench["bind"] == "['127.0.0.1:8123']" and bench["workers"] == "2" and bench["backlog"] == "2048"
    assert bench["config"] == str(ROOT / "config" / "gunicorn_conf.py") and bench["timeout"] == settings["timeout"]


# --- what the image installs --------------------------------------------------------------------

RUNTIME_PACKAGES = ("config", "connect", "points", "rules")


def test_the_image_installs_the_production_requirements_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs == ["RUN pip install -r requirements-production.txt"]
    assert "COPY requirements-production.txt ." in dockerfile
    # Development installs the same pins, and the tools on top of them.
    assert "-r requirements-production.txt" in (ROOT / "requirements.txt").read_text().splitlines()
    assert not _requirements(ROOT / "requirements-production.txt").keys() & {"pytest", "py-spy", "playwright", "ruff"}


def test_every_third_party_module_the_deployed_code_imports_is_a_production_requirement():
    """The image has only requirements-production.txt: an import of a package that only
    requirements.txt brings (a test or benchmark tool) would work in development and CI, and fail
    in production. Imports anywhere in the apps and config, at module level or inside a function,
    and the apps, middleware and classes the settings name as dotted paths."""
    from django.conf import settings

    provided = _distributions_closure(_requirements(ROOT / "requirements-production.txt"))
    by_module = importlib.metadata.packages_distributions()
    local = set(RUNTIME_PACKAGES)
    missing = {}
    for module, where in _third_party_imports(settings).items():
        if module in local or module in sys.stdlib_module_names:
            continue
        distributions = {_canonical(name) for name in by_module.get(module, [])}
        if not distributions & provided:
            missing[module] = sorted(where)[:3]
    assert missing == {}, f"imported by the deployed code but not in requirements-production.txt: {missing}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path: Path) -> dict[str, frozenset[str]]:
    """Each pinned distribution of a requirements file with the extras it asks for (includes skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            pins[_canonical(requirement.name)] = frozenset(requirement.extras)
    return pins


def _distributions_closure(pins: dict[str, frozenset[str]]) -> set[str]:
    """The pinned distributions (with their extras) and everything they require, recursively."""
    seen, todo = set(), list(pins.items())
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in (*extras, "")
            )
            if wanted:
                todo.append((_canonical(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in seen}


def _third_party_imports(settings) -> dict[str, set[str]]:
    """Top-level module -> where it is imported, for every absolute import in the runtime packages
    and every dotted path the settings name."""
    found: dict[str, set[str]] = {}
    files = [ROOT / "manage.py"] + [path for package in RUNTIME_PACKAGES for path in (ROOT / package).rglob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                found.setdefault(module.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    named = [*settings.INSTALLED_APPS, *settings.MIDDLEWARE, *settings.AUTHENTICATION_BACKENDS]
    named += [value for value in _strings(settings.REST_FRAMEWORK) if "." in value and " " not in value]
    named += [settings.CACHES["default"]["BACKEND"]]
    for path in filter(None, named):
        found.setdefault(path.split(".")[0].split(":")[0], set()).add("config/settings.py")
    return found


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


# --- static files as deployed ------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_gunicorn_with_debug_off_serves_the_collected_static_files(tmp_path):
    """As the image runs: collectstatic, then gunicorn with DEBUG off. The admin's CSS, the project's
    own files and Swagger UI answer 200, under their names and their content-hashed names, and the
    pages link the hashed names; /api/docs loads nothing from another host."""
    import time
    import urllib.request

    static_root = tmp_path / "static"
    env = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "STATIC_ROOT": str(static_root),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
    }
    collected = _manage("collectstatic", "--noinput", **env)
    assert collected.returncode == 0, collected.stderr
    hashed = json.loads((static_root / "staticfiles.json").read_text())["paths"]

    port = _free_port()
    dropped = {"DEBUG", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SECURE_SSL_REDIRECT", "ALLOWED_HOSTS"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "gunicorn"), "--config", "config/gunicorn_conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "config.wsgi:application"],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k not in dropped}, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip

    def get(path: str, **headers):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get("/health")
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(0.2)

        for name in (
            "admin/css/base.css",
            "rewards/landing.css",
            "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui.css",
        ):
            status, headers, body = get(f"/static/{name}")
            assert (status, headers["Content-Type"].split(";")[0]) == (200, "text/css"), name
            assert body == (static_root / name).read_bytes()
            status, headers, _ = get(f"/static/{hashed[name]}", **{"Accept-Encoding": "gzip"})
            assert status == 200 and headers["Content-Encoding"] == "gzip", name
            assert "immutable" in headers["Cache-Control"]

        status, _, landing = get("/")
        assert status == 200 and f"/static/{hashed['rewards/landing.css']}".encode() in landing
        status, _, admin_login = get("/admin/login/")
        assert status == 200 and f"/static/{hashed['admin/css/base.css']}".encode() in admin_login
        status, _, docs = get("/api/docs")
        swagger_js = hashed["drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"]
        assert status == 200 and f"/static/{swagger_js}".encode() in docs
        assert not re.search(rb"https?://(?!127\.0\.0\.1)", re.sub(rb"<a [^>]*>", b"", docs).split(b"<body")[-1])
        assert get(f"/static/{swagger_js}")[0] == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
