"""A secret made once per checkout, for the embedded default only (see config.settings)."""

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def local_secret_key(path: Path) -> str:
    """The key kept in ``path``, made there (random, readable by its owner only) if it is not yet.

    Written under a temporary name and linked into place, so two processes starting at once both
    end up with the one key that got there first, and no process ever reads a half-written file.
    """
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ImproperlyConfigured(f"SECRET_KEY is not set and {path} cannot be read: {exc}. Set SECRET_KEY.") from exc
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50) + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: use that one
        return _read(path)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set and the embedded default could not keep one in {path}: {exc}. Set SECRET_KEY."
        ) from exc
    finally:
        temporary.unlink(missing_ok=True)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it to have a new key made, or set SECRET_KEY.")
    return key
