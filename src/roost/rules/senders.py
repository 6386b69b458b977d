"""One try at each kind of action: a webhook, a mail, an MQTT message, a device command,
a new event. The outbox (``roost.rules.delivery``) calls ``Senders.send`` and decides
from its outcome what happens next.

``send`` returns when the action was delivered (with a note when only part of it could
be), and raises ``DeliveryError`` when it was not: ``permanent`` when another try cannot
help. Everything a rule names is looked up in the action's own tenant: its secrets, its
devices. A rule never reaches another tenant's device.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import re
import secrets
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Mapping
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select

from roost import __version__
from roost.db import Database, utcnow
from roost.errors import BrokerError, ConflictError, DeliveryError, NotFoundError, ValidationError
from roost.events.cloudevents import MAX_SUBJECT, MAX_TYPE, TYPE_RE
from roost.events.store import insert_events
from roost.fleet.models import CommandRow, Device
from roost.fleet.selectors import Selector
from roost.functions import triggers
from roost.rules.actions import KINDS
from roost.rules.engine import RULE_SOURCE
from roost.rules.secrets import SecretStore
from roost.settings import HubSettings
from roost.webhooks import sign
from roost.wire import Reply, topics
from roost.wire.topics import Down

if TYPE_CHECKING:
    from roost.rules.delivery import Claimed

SendCommand = Callable[[CommandRow, float], Awaitable[Reply | None]]
# (tenant, function, data, trigger, idempotency key) -> the recorded invocation
# (``roost.functions``).
InvokeFunction = Callable[[str, str, Any, str, str], Awaitable[Any]]
Publish = Callable[[str, bytes], None]

# Answers that say "try again later"; other 4xx say the request itself is wrong.
_RETRIED_4XX = frozenset({408, 425, 429})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ERROR_TEXT = 200  # characters of a receiver's answer kept in last_error


def _permanent(message: str) -> DeliveryError:
    return DeliveryError(message, permanent=True)


def _field(action: Claimed, name: str) -> Any:
    """A field of the action, or its declared default."""
    if name in action.fields:
        return action.fields[name]
    return KINDS[action.kind][name].default


class Senders:
    def __init__(
        self,
        db: Database,
        settings: HubSettings,
        secrets: SecretStore,
        http: httpx.AsyncClient,
        send_command: SendCommand,
        publish: Publish,
        invoke_function: InvokeFunction | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.secrets = secrets
        self.http = http
        self.send_command = send_command
        self.publish = publish
        self.invoke_function = invoke_function
        self._kinds: Mapping[str, Callable[[Claimed], Awaitable[str | None]]] = {
            "webhook": self.webhook,
            "email": self.email,
            "emit": self.emit,
            "command": self.command,
            "publish": self.publish_message,
            "invoke": self.invoke,
        }

    async def send(self, action: Claimed) -> str | None:
        """Deliver the action once; a note when it was delivered only in part."""
        kind = self._kinds.get(action.kind)
        if kind is None:
            raise _permanent(f"unknown action kind {action.kind!r}")
        return await kind(action)

    # -- webhook ---------------------------------------------------------------------------

    async def webhook(self, action: Claimed) -> str | None:
        url = str(_field(action, "url"))
        try:
            if httpx.URL(url).scheme not in ("http", "https"):
                raise _permanent(f"{url[:200]!r} is not an http(s) URL")
        except httpx.InvalidURL as err:
            raise _permanent(f"{url[:200]!r} is not a URL: {err}") from None
        body = json.dumps(_field(action, "body"), separators=(",", ":"), default=str).encode()
        headers = _user_headers(_field(action, "headers"))
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = f"roost/{__version__}"
        secret = b""
        if name := _field(action, "secret"):
            secret = await asyncio.to_thread(self._secret, action.tenant_id, name)
        headers.update(sign(secret, action.key, body))
        timeout = float(_field(action, "timeout"))
        try:
            request = self.http.stream("POST", url, content=body, headers=headers, timeout=timeout)
            async with request as response:
                if 200 <= response.status_code < 300:
                    return None
                text = await _start_of(response)
        except httpx.TimeoutException:
            raise DeliveryError(f"{url} did not answer within {timeout:g}s") from None
        except httpx.UnsupportedProtocol as err:
            raise _permanent(f"{url}: {err}") from None
        except httpx.TransportError as err:
            raise DeliveryError(f"{url}: {err or type(err).__name__}") from None
        status = response.status_code
        message = f"{url} answered {status}" + (f": {text}" if text else "")
        if status >= 500 or status in _RETRIED_4XX:
            raise DeliveryError(message, retry_after=_retry_after(response))
        raise _permanent(message)

    def _secret(self, tenant_id: str, name: str) -> bytes:
        with self.db.session() as session:
            value = self.secrets.get(session, tenant_id, name)
        if value is None:
            raise _permanent(f"no secret {name!r} (roost secrets set {name})")
        return value

    # -- email -----------------------------------------------------------------------------

    async def email(self, action: Claimed) -> str | None:
        settings = self.settings
        if not settings.smtp_host:
            raise _permanent("the hub has no SMTP server (set smtp_host)")
        if settings.smtp_security not in ("starttls", "ssl", "none"):
            raise _permanent(f"smtp_security {settings.smtp_security!r} is not starttls/ssl/none")
        to = _addresses(_field(action, "to"))
        cc = _addresses(_field(action, "cc"))
        if not to:
            raise _permanent("the mail has no recipient")
        sender = settings.smtp_from or f"roost@{settings.public_host or 'localhost'}"
        message = EmailMessage()
        message["From"] = sender
        message["To"] = ", ".join(to)
        if cc:
            message["Cc"] = ", ".join(cc)
        message["Subject"] = " ".join(str(_field(action, "subject")).splitlines())
        message["Date"] = email.utils.formatdate(usegmt=True)
        # The same action gives the same Message-ID on every try: a retry is recognisable.
        domain = sender.rpartition("@")[2] or "roost.invalid"
        message["Message-ID"] = f"<{action.key}.{action.tenant_id}@{domain}>"
        message["Roost-Idempotency-Key"] = action.key
        message.set_content(str(_field(action, "body") or ""))
        # smtplib blocks: a thread, so a slow server never holds up the hub's loop.
        refused = await asyncio.to_thread(self._send_mail, message, [*to, *cc])
        return f"refused by the server: {', '.join(sorted(refused))}" if refused else None

    def _send_mail(self, message: EmailMessage, recipients: list[str]) -> dict[str, Any]:
        settings = self.settings
        host, port, timeout = settings.smtp_host, settings.smtp_port, settings.smtp_timeout_s
        try:
            context = ssl.create_default_context(cafile=settings.smtp_ca_file or None)
        except OSError as err:
            raise _permanent(f"smtp_ca_file {settings.smtp_ca_file!r}: {err}") from None
        try:
            if settings.smtp_security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
            else:
                smtp = smtplib.SMTP(host, port, timeout=timeout)
            with smtp:
                if settings.smtp_security == "starttls":
                    smtp.starttls(context=context)
                if settings.smtp_user:
                    smtp.login(settings.smtp_user, settings.smtp_password)
                return smtp.send_message(message, to_addrs=recipients)
        except smtplib.SMTPRecipientsRefused as err:
            codes = [code for code, _ in err.recipients.values()]
            text = f"every recipient was refused: {err.recipients}"[:300]
            raise DeliveryError(text, permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPResponseException as err:
            text = f"the SMTP server answered {err.smtp_code}: {err.smtp_error!r}"[:300]
            raise DeliveryError(text, permanent=err.smtp_code >= 500) from None
        except smtplib.SMTPNotSupportedError as err:
            raise _permanent(f"the SMTP server at {host}:{port}: {err}") from None
        except (smtplib.SMTPException, OSError) as err:
            reason = str(err) or type(err).__name__
            raise DeliveryError(f"the SMTP server at {host}:{port}: {reason}") from None

    # -- emit ------------------------------------------------------------------------------

    async def emit(self, action: Claimed) -> str | None:
        event_type = str(_field(action, "type"))
        subject = str(_field(action, "subject") or "")
        if not TYPE_RE.fullmatch(event_type) or len(event_type) > MAX_TYPE:
            raise _permanent(f"event type {event_type[:80]!r} must be letters, digits and ._:/-")
        if event_type.startswith("roost."):
            raise _permanent(f"event type {event_type!r}: roost.* is the hub's own")
        if len(subject) > MAX_SUBJECT:
            raise _permanent(f"the subject is longer than {MAX_SUBJECT} characters")
        data = _field(action, "data")
        if len(json.dumps(data, default=str)) > self.settings.max_payload_bytes:
            raise _permanent(f"the data is over {self.settings.max_payload_bytes} bytes")
        now = utcnow()
        row = {
            "tenant_id": action.tenant_id,
            # The action's key: a second try stores nothing new (same source and id).
            "event_id": action.key,
            "source": str(action.fields.get("source") or RULE_SOURCE + action.rule_id),
            "type": event_type,
            "subject": subject,
            "device_id": None,
            "time": now,
            "data": data,
            "received_at": now,
        }

        def store() -> None:
            with self.db.session() as session:
                insert_events(session, [row])

        await asyncio.to_thread(store)
        return None

    # -- command ---------------------------------------------------------------------------

    async def command(self, action: Claimed) -> str | None:
        device_id = str(_field(action, "device"))
        name = str(_field(action, "name"))
        timeout = float(_field(action, "timeout"))
        if not device_id:
            raise _permanent(f"command {name!r}: the event names no device (set device:)")
        row = await asyncio.to_thread(self._command_row, action, device_id, name, timeout)
        reply = await self.send_command(row, timeout)
        if reply is None:
            raise DeliveryError(f"device {device_id} did not answer {name!r} within {timeout:g}s")
        if not reply.ok:
            raise _permanent(f"device {device_id} answered {name!r} with: {reply.error}")
        return None

    def _command_row(
        self, action: Claimed, device_id: str, name: str, timeout: float
    ) -> CommandRow:
        args = _field(action, "args")
        with self.db.session() as session:
            device = session.get(Device, device_id)
            # Within the action's tenant only: another tenant's device is as if absent.
            if device is None or device.tenant_id != action.tenant_id:
                raise _permanent(f"no device {device_id!r} in this tenant")
            if device.state != "active":
                raise _permanent(f"device {device_id} is revoked")
            now = utcnow()
            row = CommandRow(
                id=secrets.token_hex(8),
                tenant_id=action.tenant_id,
                device_id=device_id,
                name=name,
                args=args if isinstance(args, dict) else {"value": args},
                created_at=now,
                deadline=now + dt.timedelta(seconds=timeout),
            )
            session.add(row)
            return row

    # -- publish ---------------------------------------------------------------------------

    async def publish_message(self, action: Claimed) -> str | None:
        topic = str(_field(action, "topic"))
        selector = str(_field(action, "devices"))
        payload = _field(action, "payload")
        if topic:
            if topic.startswith("roost/") or any(c in topic for c in "+#\0"):
                raise _permanent(f"topic {topic[:120]!r}: outside roost/, without wildcards")
            self._publish(topic, json.dumps(payload, default=str).encode())
            return None
        if not selector:
            raise _permanent("publish needs a topic or a device selector")
        devices = await asyncio.to_thread(self._devices, action.tenant_id, selector)
        message = json.dumps(
            {"key": action.key, "rule": action.rule_id, "payload": payload}, default=str
        ).encode()
        for device_id in devices:
            self._publish(topics.down(device_id, Down.MESSAGE), message)
        return None if devices else f"no device matches {selector!r}"

    def _publish(self, topic: str, payload: bytes) -> None:
        if len(payload) > self.settings.max_payload_bytes:
            raise _permanent(f"the payload is over {self.settings.max_payload_bytes} bytes")
        try:
            self.publish(topic, payload)
        except BrokerError as err:
            raise DeliveryError(str(err)) from None

    def _devices(self, tenant_id: str, text: str) -> list[str]:
        try:
            selector = Selector.parse(text)
        except ValidationError as err:
            raise _permanent(str(err)) from None
        with self.db.session() as session:
            rows = session.execute(
                select(Device.id, Device.labels).where(
                    Device.tenant_id == tenant_id, Device.state == "active"
                )
            )
            return [device_id for device_id, labels in rows if selector.matches(labels)]

    # -- invoke ----------------------------------------------------------------------------

    async def invoke(self, action: Claimed) -> str | None:
        """Run the function with the input (``ctx["key"]`` the idempotency key: a retried
        action has the same); a failed run is tried again, a missing function is a dead
        letter at once."""
        if self.invoke_function is None:
            raise _permanent("this hub runs no functions")
        name = str(_field(action, "function"))
        try:
            invocation = await self.invoke_function(
                action.tenant_id,
                name,
                _field(action, "input"),
                triggers.started_by(action.rule_id),
                action.key,
            )
        except (NotFoundError, ConflictError) as err:  # gone, or it runs on devices
            raise _permanent(str(err)) from None
        if not invocation.ok:
            raise DeliveryError(f"function {name} failed: {invocation.error}")
        return None


def _user_headers(value: Any) -> dict[str, str]:
    headers = {}
    for name, raw in dict(value or {}).items():
        text = str(raw)
        if not _HEADER_NAME.match(str(name)) or any(c in text for c in "\r\n\0"):
            raise _permanent(f"header {str(name)[:60]!r} is not a valid HTTP header")
        headers[str(name)] = text
    return headers


async def _start_of(response: httpx.Response) -> str:
    """The first few hundred characters of an answer, for the error: never all of it."""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= _ERROR_TEXT:
            break
    return " ".join(data[:_ERROR_TEXT].decode(errors="replace").split())


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def _addresses(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value or [])
    found = []
    for item in items:
        for raw in str(item).split(","):
            part = raw.strip()
            if not part:
                continue
            if "@" not in email.utils.parseaddr(part)[1] or any(c in part for c in "\r\n"):
                raise _permanent(f"{part[:80]!r} is not an e-mail address")
            found.append(part)
    return found
