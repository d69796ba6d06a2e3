"""One JSON POST to an external reward service, with the failure classes dispatch relies on.

- 2xx with a JSON object body → that object (kept as the action's result, with any character the
  database cannot store replaced; an object nested deeper than ``MAX_JSON_DEPTH`` is kept as a notice
  with an excerpt of the answer);
- 2xx with anything else, 5xx, 408, 429, a timeout or a connection error → TransientChannelError;
- 3xx (redirects are never followed: the key and the payload stay with the configured host) and any
  other 4xx → PermanentChannelError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests
from django.conf import settings

from config.api.jsonbody import MAX_JSON_DEPTH, json_depth_problem, storable_json, storable_text

from .base import ChannelError, ChannelNotConfigured, PermanentChannelError, TransientChannelError

USER_AGENT = "rewards-connect/1.0"
TRANSIENT_CLIENT_ERRORS = frozenset({408, 425, 429})
EXCERPT_CHARS = 300


def deliver_concurrently(deliver: Callable, actions: list) -> dict:
    """``deliver(action)`` for each action, at most ``CHANNEL_CONCURRENCY`` at a time; for each action
    id, what it returned or the ChannelError it raised. Nothing here touches the database."""

    def one(action):
        try:
            return deliver(action)
        except ChannelError as exc:
            return exc

    workers = max(1, min(int(settings.CHANNEL_CONCURRENCY), len(actions)))
    if workers == 1:
        return {action.pk: one(action) for action in actions}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="channel") as pool:
        return {action.pk: outcome for action, outcome in zip(actions, pool.map(one, actions), strict=True)}


def json_post(*, service: str, base_url: str, path: str, token: str, idempotency_key: str, payload: dict) -> dict:
    """POST ``payload`` to ``base_url + path``; the receiver's JSON object, or a ChannelError."""
    url = base_url.rstrip("/") + path
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": idempotency_key,
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = requests.post(
            url,
            data=json.dumps(payload, separators=(",", ":")),
            headers=headers,
            timeout=(settings.CHANNEL_CONNECT_TIMEOUT_SECONDS, settings.CHANNEL_READ_TIMEOUT_SECONDS),
            allow_redirects=False,
        )
    except requests.Timeout as exc:
        raise TransientChannelError(f"{service} timed out: {exc.__class__.__name__}") from exc
    except requests.ConnectionError as exc:
        raise TransientChannelError(f"{service} is unreachable: {_short(str(exc))}") from exc
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ) as exc:
        raise ChannelNotConfigured(f"{service} URL is invalid: {_short(str(exc))}") from exc
    except requests.RequestException as exc:
        raise TransientChannelError(f"{service} request failed: {_short(str(exc))}") from exc
    return _checked(service, response)


def _checked(service: str, response: requests.Response) -> dict:
    status = response.status_code
    if 200 <= status < 300:
        body = _answer_object(response)
        if body is None:
            raise TransientChannelError(
                f"{service} answered {status} without a JSON object body: {_short(response.text) or '(empty)'}"
            )
        return body
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        raise PermanentChannelError(f"{service} answered a redirect ({status} to {location or '?'}); not followed.")
    if status in TRANSIENT_CLIENT_ERRORS or status >= 500:
        raise TransientChannelError(
            f"{service} answered {status}: {_short(response.text)}",
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    raise PermanentChannelError(f"{service} refused the request with {status}: {_short(response.text)}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _answer_object(response: requests.Response) -> dict | None:
    """The JSON object a 2xx answer holds, as it can be kept on the action; None when it holds none."""
    try:
        body = response.json()
    except RecursionError:  # nested deeper than the decoder goes
        return _too_deep(response) if response.text.lstrip().startswith("{") else None
    except ValueError:  # not JSON, or a number too long to convert
        return None
    if not isinstance(body, dict):
        return None
    if json_depth_problem(body):
        return _too_deep(response)
    return storable_json(body)


def _too_deep(response: requests.Response) -> dict:
    """What is kept of an answer object too deep to keep: a notice and an excerpt."""
    return {"not_kept": f"The answer was nested deeper than {MAX_JSON_DEPTH} levels.", "excerpt": _short(response.text)}


def _short(text: str) -> str:
    """An excerpt of another service's text for a message: one line, storable, at most EXCERPT_CHARS."""
    text = storable_text(" ".join((text or "").split()))
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


class HttpChannel:
    """A reward service reached by JSON POSTs: ``deliver_path`` pays an action, ``reverse_path`` takes
    a delivered one back (SPEC §8, §12). Both send ``Idempotency-Key: <the action's id>`` and run at
    most ``CHANNEL_CONCURRENCY`` at a time. A channel names its settings and builds its two payloads."""

    reward_type: str
    service: str
    url_setting: str
    token_setting: str
    deliver_path: str
    reverse_path: str

    def configuration_error(self) -> str | None:
        return None if getattr(settings, self.url_setting) else f"{self.url_setting} is not configured"

    def payload(self, action) -> dict:
        raise NotImplementedError

    def reverse_payload(self, action) -> dict:
        raise NotImplementedError

    def deliver_many(self, actions: list) -> dict:
        return deliver_concurrently(self.deliver, actions)

    def reverse_many(self, actions: list) -> dict:
        return deliver_concurrently(self.reverse, actions)

    def deliver(self, action) -> dict:
        return self._post(self.deliver_path, action, self.payload(action))

    def reverse(self, action) -> dict:
        return self._post(self.reverse_path, action, self.reverse_payload(action))

    def _post(self, path: str, action, payload: dict) -> dict:
        return json_post(
            service=self.service,
            base_url=getattr(settings, self.url_setting),
            path=path,
            token=getattr(settings, self.token_setting),
            idempotency_key=str(action.pk),
            payload=payload,
        )
