"""Real receivers for actions, on free local ports: an HTTP server that answers as it is
told and keeps every request, and an SMTP server (aiosmtpd) that keeps every mail."""

from __future__ import annotations

import email
import email.message
import email.policy
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from system.procs import free_port


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up waiting (a timeout under test) is no news


class WebhookReceiver:
    """Answers each POST with the next of ``statuses`` (then ``status``), after ``delay``."""

    def __init__(self, statuses: list[int] | None = None, status: int = 200) -> None:
        self.statuses = list(statuses or [])
        self.status = status
        self.delay = 0.0
        self.requests: list[Request] = []
        self.in_flight = 0
        self.most_in_flight = 0  # requests being answered at once, at the most
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.requests.append(Request(self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.status
                    delay = receiver.delay
                    receiver.in_flight += 1
                    receiver.most_in_flight = max(receiver.most_in_flight, receiver.in_flight)
                if delay:
                    time.sleep(delay)
                with receiver._lock:
                    receiver.in_flight -= 1
                text = f"status {status}".encode()
                self.send_response(status)
                self.send_header("content-length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def keys(self) -> list[str]:
        with self._lock:
            return [r.headers["Roost-Idempotency-Key"] for r in self.requests]


class _Login:
    def __init__(self, user: str, password: str) -> None:
        self.expected = (user.encode(), password.encode())

    def __call__(
        self, _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
    ) -> Any:
        given = (data.login, data.password) if isinstance(data, LoginPassword) else None
        return AuthResult(success=given == self.expected, handled=False)


class _Mailbox:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), message))
        return "250 OK"


Mails = list[tuple[list[str], email.message.EmailMessage]]


@contextmanager
def smtp_server(
    tls: ssl.SSLContext | None = None, implicit: bool = False, login: tuple[str, str] | None = None
) -> Iterator[tuple[int, Mails]]:
    """A real SMTP server on a free port: (port, the mails it took: recipients, message).

    With ``tls``: STARTTLS required, or with ``implicit`` TLS from the first byte; with
    ``login``, that user and password are required.
    """
    mailbox = _Mailbox()
    options: dict[str, Any] = {}
    if tls is not None and implicit:
        # aiosmtpd does not see implicit TLS as TLS: let it offer AUTH all the same.
        options.update(ssl_context=tls, auth_require_tls=False)
    elif tls is not None:
        options.update(tls_context=tls, require_starttls=True)
    if login is not None:
        options.update(authenticator=_Login(*login), auth_required=True)
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller.port, mailbox.mails
    finally:
        controller.stop()
