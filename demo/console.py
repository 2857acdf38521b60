"""The demo's operator's console: the recognizer's web pages, served while the demo runs and
afterwards until Ctrl-C, so a person can watch people recognized and the key rotate."""

from __future__ import annotations

import secrets
import socket
import threading

from pydantic import SecretStr
from rich.console import Console

from recognizer_service.api import BackgroundServer, create_app
from recognizer_service.service import RecognizerService
from rllfpr.config import Settings

PREFERRED_PORT = 8080


def with_token(settings: Settings) -> Settings:
    """The demo's settings with a fresh API token (the console's login)."""
    options = settings.recognizer.model_copy(
        update={"api_token": SecretStr(secrets.token_urlsafe(18))}
    )
    return settings.model_copy(update={"recognizer": options})


def _port(preferred: int) -> int:
    """``preferred`` when it is free on the loopback, else 0 (any)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            return 0
    return preferred


class DemoConsole:
    def __init__(
        self, service: RecognizerService, console: Console, port: int = PREFERRED_PORT
    ) -> None:
        token = service.settings.recognizer.api_token
        if token is None:
            raise ValueError("the demo's console needs recognizer.api_token (with_token)")
        self.token = token.get_secret_value()
        self.server = BackgroundServer(create_app(service), "127.0.0.1", _port(port))
        self.console = console
        console.print(
            f"[bold]console[/bold]: open {self.url}/ and log in with the token "
            f"[bold]{self.token}[/bold]"
        )

    @property
    def url(self) -> str:
        return self.server.url

    def hold(self, stop: threading.Event | None = None) -> None:
        """Keep serving until Ctrl-C (or ``stop``), then close."""
        self.console.print(
            f"the demo is over; its console stays up at {self.url}/ (token {self.token}). "
            "Press Ctrl-C to stop."
        )
        try:
            (stop or threading.Event()).wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.server.close()
