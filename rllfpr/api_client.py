"""A client of the recognizer's HTTP API (urllib; no torch, no HTTP library): the enrollment
station's ``--via http`` and the ``gallery list`` / ``erase`` commands use it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from rllfpr.config import Settings


class ApiError(RuntimeError):
    """The recognizer's HTTP API refused a request or could not be reached."""


def api_base(settings: Settings, api: str | None) -> str:
    """The API's base URL: ``api`` when given, else ``recognizer.http_host:http_port``."""
    options = settings.recognizer
    return (api or f"http://{options.http_host}:{options.http_port}").rstrip("/")


def api_token(settings: Settings) -> str | None:
    token = settings.recognizer.api_token
    return token.get_secret_value() if token else None


def api_request(
    url: str, token: str | None, method: str = "GET", body: bytes | None = None
) -> object:
    """One JSON request to the recognizer's HTTP API with the bearer token."""
    request = urllib.request.Request(url, data=body, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise ApiError(f"{method} {url}: HTTP {error.code}: {detail}") from error
    except urllib.error.URLError as error:
        raise ApiError(f"{method} {url}: {error.reason}") from error
