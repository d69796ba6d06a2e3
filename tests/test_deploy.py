"""Production settings pass Django's deployment checks; secrets have no production default."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args, python=None, **env):
    # The test run's own environment carries test-only values (plain HTTP, a test secret): drop them.
    dropped = {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "ALLOWED_HOSTS", "DATABASE_URL", "API_THROTTLE_RATE",
               "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS"}  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
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

    from bench.http import gunicorn_settings

    assert gunicorn_settings()["workers"] == 3
