"""Test settings: production settings on PostgreSQL, with plain HTTP and fast hashing."""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")
os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/rewards")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("SESSION_COOKIE_SECURE", "0")
os.environ.setdefault("CSRF_COOKIE_SECURE", "0")
os.environ.setdefault("API_THROTTLE_RATE", "100000/min")

from .settings import *  # noqa: E402,F403

# Tests render pages without running collectstatic first: static URLs name the source files.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CELERY_BROKER_URL = os.environ.get("TEST_CELERY_BROKER_URL", "")
CELERY_TASK_ALWAYS_EAGER = True
# Tests hit the admin login on purpose; lockouts are tested explicitly where they matter.
AXES_ENABLED = os.environ.get("TEST_AXES_ENABLED", "0") == "1"
# Tests edit rules and post events in the same test; they must see their edits at once.
RULES_CACHE_SECONDS = 0
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
