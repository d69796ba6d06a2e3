"""Application code reaches libraries through what they document: it imports no underscore name of a
third-party package and nothing from Django's database backends (``django.db.backends.*``)."""

import ast
import sys
from pathlib import Path

from django.conf import settings

APPLICATION_PACKAGES = ("config", "connect", "points", "rules")
OWN_TOP_LEVEL = set(APPLICATION_PACKAGES) | {"bench", "tests"}


def _modules() -> list[Path]:
    root = Path(settings.BASE_DIR)
    return sorted(path for package in APPLICATION_PACKAGES for path in (root / package).rglob("*.py"))


def _private_part(dotted: str) -> str | None:
    return next((part for part in dotted.split(".") if part.startswith("_") and not part.startswith("__")), None)


def forbidden_imports(source: str) -> list[str]:
    """Each import of ``source`` that reaches into a third-party package's private names or into
    ``django.db.backends``, as ``module`` or ``module.name``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in targets:
            top = module.split(".")[0]
            if top in OWN_TOP_LEVEL or top in sys.stdlib_module_names:
                continue
            dotted = module if name is None else f"{module}.{name}"
            if module == "django.db.backends" or module.startswith("django.db.backends."):
                found.append(dotted)
            elif _private_part(module) or (name is not None and name.startswith("_") and not name.startswith("__")):
                found.append(dotted)
    return found


def test_application_code_imports_no_private_name_of_a_library_nor_a_django_backend():
    offenders = {
        str(path.relative_to(settings.BASE_DIR)): found
        for path in _modules()
        if (found := forbidden_imports(path.read_text()))
    }
    assert offenders == {}


def test_the_check_catches_what_it_is_for():
    assert forbidden_imports("from django.db.backends.postgresql.base import ServerBindingCursor") == [
        "django.db.backends.postgresql.base.ServerBindingCursor"
    ]
    assert forbidden_imports("import django.db.backends.utils") == ["django.db.backends.utils"]
    assert forbidden_imports("from psycopg import _queries") == ["psycopg._queries"]
    assert forbidden_imports("from kombu.transport.redis import _after_fork") == ["kombu.transport.redis._after_fork"]
    assert forbidden_imports("import celery._state") == ["celery._state"]
    assert forbidden_imports("from django.db import connection, transaction") == []
    assert forbidden_imports("from .models import _private_helper") == []  # the app's own module
    assert forbidden_imports("from connect.services import _plan") == []
    assert forbidden_imports("from __future__ import annotations") == []
