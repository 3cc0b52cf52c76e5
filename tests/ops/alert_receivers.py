"""Real receivers for alert tests: an SMTP server (aiosmtpd) and an HTTP webhook receiver.

Both listen on 127.0.0.1 on a free port chosen by the kernel and keep what they received.
A receiver answers before the sender's call returns (SMTP's 250 after the message is
stored, HTTP's response after the body is read), so a test reads what arrived right after
the call that sent it: no waiting, no timing.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    subject: str
    body: str  # the decoded text/html part


class SmtpReceiver:
    """An aiosmtpd server on its own event loop thread."""

    def __init__(self) -> None:
        self.messages: list[Mail] = []
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="smtp-receiver")
        self.port = 0

    def start(self) -> SmtpReceiver:
        from aiosmtpd.smtp import SMTP

        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(lambda: SMTP(self, hostname="lockstep-test"), "127.0.0.1", 0), self._loop
        )
        self._server = future.result(timeout=30)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = message.get_body(preferencelist=("html", "plain"))
        self.messages.append(
            Mail(envelope.mail_from, list(envelope.rcpt_tos), str(message["Subject"]), part.get_content())
        )
        return "250 Message accepted for delivery"

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            asyncio.run_coroutine_threadsafe(self._server.wait_closed(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """http.server on 127.0.0.1: records every POST; paths starting /fail answer 500."""

    requests: list[Request] = field(default_factory=list)
    port: int = 0

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's hook name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append(Request(self.path, dict(self.headers), body))
                status = 500 if self.path.startswith("/fail") else 200
                reply = b"ok" if status == 200 else b"receiver refuses"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook-receiver")
        self._thread.start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=30)


def smtp_connection(port: int, **extra: Any) -> str:
    """An Airflow SMTP connection (JSON form of AIRFLOW_CONN_...) to a plain local server."""
    fields = {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1, **extra}
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": fields})
