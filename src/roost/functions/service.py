"""Functions of a tenant: deployed (checked first), listed, removed, and their
invocations recorded. Every query is scoped to the caller's tenant.

``check_code`` refuses what cannot run before it is stored: a file that is not Python
(its syntax error with the line), an entry module without a top-level ``handle``, more
than ``MAX_CODE_BYTES`` of code. ``Start`` is where a function runs (the hub, or the
devices a label selector picks: edge functions) and what starts it besides an invoke: an
event trigger (patterns over type, source and subject) and a cron expression.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from roost.access.service import Principal
from roost.errors import ConflictError, NotFoundError, ValidationError
from roost.events.patterns import Trigger
from roost.events.schedules import check_cron
from roost.fleet.selectors import Selector
from roost.functions import triggers
from roost.functions.models import FunctionRow, FunctionVersion, Invocation
from roost.functions.pool import Code, Outcome
from roost.settings import HubSettings
from roost.wire.functions import HUB

MAX_CODE_BYTES = 1024 * 1024
MAX_FILES = 200
MIN_MEMORY_BYTES = 48 << 20  # an interpreter and the worker need about this much
KEEP_INVOCATIONS = 1000
RESULT_CHARS = 16_000
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$")
DEFAULTS: Mapping[str, Any] = {"timeout_s": 5.0, "memory_bytes": 128 << 20, "concurrency": 4}


@dataclass(frozen=True)
class Limits:
    timeout_s: float = DEFAULTS["timeout_s"]
    memory_bytes: int = DEFAULTS["memory_bytes"]
    concurrency: int = DEFAULTS["concurrency"]
    network: bool = False

    def check(self, settings: HubSettings) -> None:
        if not 0 < self.timeout_s <= settings.function_max_timeout_s:
            raise ValidationError(
                f"timeout must be above 0 and at most {settings.function_max_timeout_s:g}s"
            )
        top = settings.function_max_memory_bytes
        if not MIN_MEMORY_BYTES <= self.memory_bytes <= top:
            raise ValidationError(
                f"memory must be between {MIN_MEMORY_BYTES >> 20} MiB and {top >> 20} MiB"
            )
        if not 1 <= self.concurrency <= settings.function_max_concurrency:
            raise ValidationError(
                f"concurrency must be between 1 and {settings.function_max_concurrency}"
            )
        if self.network and not settings.functions_allow_network:
            raise ValidationError(
                "this hub gives functions no network (functions_allow_network is off)"
            )


ALL_DEVICES = "all"
MAX_PATTERNS = 16
MAX_PATTERN_CHARS = 200


@dataclass(frozen=True)
class Start:
    """Where a function runs and what starts it.

    ``placement``: ``"hub"``, or the label selector of the devices that run it (``""``:
    all of them). ``trigger``: the events that start it (None: none). ``cron``: a cron
    expression (UTC; a sixth field is seconds) that starts it, or ``""``.
    """

    placement: str = HUB
    trigger: Trigger | None = None
    cron: str = ""

    @property
    def on_hub(self) -> bool:
        return self.placement == HUB

    @classmethod
    def parse(cls, on: str, trigger: Mapping[str, Any] | None, cron: str) -> Start:
        """From what a person wrote: ``on`` is ``hub``, ``all`` or a selector; ``trigger``
        ``{"type": [...], "source": [...], "subject": [...]}``. ``ValidationError`` names
        what is wrong."""
        placement = HUB if on.strip() == HUB else _placement(on)
        if cron:
            check_cron(cron)
        return cls(placement, _trigger(trigger) if trigger else None, cron)


def _placement(on: str) -> str:
    text = on.strip()
    if text == ALL_DEVICES:
        return ""
    if not text:
        raise ValidationError('--on must be "hub", "all" or a label selector like role=sensor')
    return str(Selector.parse(text))


def _trigger(data: Mapping[str, Any]) -> Trigger:
    unknown = set(data) - {"type", "source", "subject"}
    if unknown:
        raise ValidationError(f"a trigger has type, source and subject, not {sorted(unknown)}")
    found: dict[str, list[str]] = {}
    for key in ("type", "source", "subject"):
        value = data.get(key) or []
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(
            isinstance(t, str) and 0 < len(t) <= MAX_PATTERN_CHARS for t in texts
        ):
            raise ValidationError(f"trigger {key}: patterns of 1 to {MAX_PATTERN_CHARS} characters")
        if len(texts) > MAX_PATTERNS:
            raise ValidationError(f"trigger {key}: at most {MAX_PATTERNS} patterns")
        found[key] = texts
    if not found["type"]:
        raise ValidationError("a trigger needs at least one event type pattern")
    return Trigger.from_dict(found)


def check_code(files: Mapping[str, str], entry: str) -> None:
    """Refuse code that cannot run, naming the file and line at fault."""
    if not files:
        raise ValidationError("a function needs at least one .py file")
    if len(files) > MAX_FILES:
        raise ValidationError(f"a function has at most {MAX_FILES} files")
    size = sum(len(text.encode()) for text in files.values())
    if size > MAX_CODE_BYTES:
        raise ValidationError(
            f"the function's code is {size} bytes; at most {MAX_CODE_BYTES} are taken"
        )
    for path in files:
        if not _PATH_RE.match(path) or ".." in path.split("/"):
            raise ValidationError(f"{path!r} is not a relative path of a .py file")
    entry_file = entry.replace(".", "/") + ".py"
    if entry_file not in files:
        raise ValidationError(f"the function has no {entry_file} (the module with handle)")
    trees = {}
    for path, text in files.items():
        try:
            trees[path] = ast.parse(text, path)
        except SyntaxError as err:
            raise ValidationError(
                f"{path}:{err.lineno}:{err.offset}: syntax error: {err.msg}"
            ) from None
    if not _defines_handle(trees[entry_file]):
        raise ValidationError(f"{entry_file} defines no handle(event, ctx) function")


def _defines_handle(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "handle":
            if isinstance(node, ast.AsyncFunctionDef):
                raise ValidationError("handle must be a plain function, not async")
            args = node.args
            if len(args.posonlyargs) + len(args.args) < 2 and args.vararg is None:
                raise ValidationError("handle must take two arguments: handle(event, ctx)")
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "handle" for t in node.targets
        ):
            return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name) == "handle" for alias in node.names
        ):
            return True
    return False


def deploy(
    session: Session,
    principal: Principal,
    name: str,
    files: Mapping[str, str],
    entry: str,
    limits: Limits,
    settings: HubSettings,
    now: dt.datetime,
    start: Start | None = None,
) -> FunctionRow:
    """Store a new version of the function (the first makes it); its limits and where
    it runs and what starts it (``start``) follow."""
    start = start or Start()
    if not NAME_RE.match(name):
        raise ValidationError(
            f"function name {name!r} must be lowercase letters, digits, - and _ (at most 63)"
        )
    if limits.network and not start.on_hub:
        raise ValidationError("functions on devices get no network; deploy it --on hub")
    limits.check(settings)
    check_code(files, entry)
    text = json.dumps(dict(files), sort_keys=True)
    row = _find(session, principal.tenant_id, name)
    was_started = row is not None and triggers.started(row)
    if row is None:
        row = FunctionRow(
            id=uuid.uuid4().hex,
            tenant_id=principal.tenant_id,
            name=name,
            version=1,
            created_by=principal.token_id,
            created_at=now,
        )
        session.add(row)
    else:
        row.version += 1
    row.timeout_s = limits.timeout_s
    row.memory_bytes = limits.memory_bytes
    row.concurrency = limits.concurrency
    row.network = limits.network
    row.placement = start.placement
    row.trigger = start.trigger.to_dict() if start.trigger is not None else None
    row.cron = start.cron
    row.updated_at = now
    session.flush()
    session.add(
        FunctionVersion(
            function_id=row.id,
            version=row.version,
            files=text,
            entry=entry,
            size=sum(len(t.encode()) for t in files.values()),
            sha256=hashlib.sha256(text.encode()).hexdigest(),
            created_by=principal.token_id,
            created_at=now,
        )
    )
    session.flush()
    triggers.deployed(session, row, was_started, principal.token_id, now)
    return row


def _find(session: Session, tenant_id: str, name: str) -> FunctionRow | None:
    return session.scalars(
        select(FunctionRow).where(FunctionRow.tenant_id == tenant_id, FunctionRow.name == name)
    ).first()


def get(session: Session, tenant_id: str, name: str) -> FunctionRow:
    row = _find(session, tenant_id, name)
    if row is None:
        raise NotFoundError(f"no function {name!r}")
    return row


def exists(session: Session, tenant_id: str, name: str) -> bool:
    return _find(session, tenant_id, name) is not None


def functions(session: Session, principal: Principal) -> list[FunctionRow]:
    return list(
        session.scalars(
            select(FunctionRow)
            .where(FunctionRow.tenant_id == principal.tenant_id)
            .order_by(FunctionRow.name)
        )
    )


def versions(session: Session, row: FunctionRow) -> list[FunctionVersion]:
    return list(
        session.scalars(
            select(FunctionVersion)
            .where(FunctionVersion.function_id == row.id)
            .order_by(FunctionVersion.version.desc())
        )
    )


def remove(session: Session, principal: Principal, name: str) -> str:
    """Delete the function, its versions, its invocations and its cron's schedule; its id
    (for the pool)."""
    row = get(session, principal.tenant_id, name)
    for table in (Invocation, FunctionVersion):
        session.execute(delete(table).where(table.function_id == row.id))
    triggers.removed(session, principal.tenant_id, name)
    session.delete(row)
    return row.id


def code(session: Session, tenant_id: str, name: str) -> tuple[FunctionRow, Code]:
    """The current version of a function, as the pool runs it."""
    row = get(session, tenant_id, name)
    if row.placement != HUB:
        raise ConflictError(
            f"function {name!r} runs on devices ({row.placement or ALL_DEVICES}): their "
            "events start it there, not the hub"
        )
    stored = session.scalars(
        select(FunctionVersion).where(
            FunctionVersion.function_id == row.id, FunctionVersion.version == row.version
        )
    ).first()
    if stored is None:
        raise ConflictError(f"function {name!r} has lost version {row.version}")
    limits = Code(
        function=row.id,
        version=row.version,
        files=json.loads(stored.files),
        entry=stored.entry,
        timeout_s=row.timeout_s,
        memory_bytes=row.memory_bytes,
        concurrency=row.concurrency,
        network=row.network,
    )
    session.expunge(row)
    return row, limits


def record(
    session: Session,
    row: FunctionRow,
    trigger: str,
    outcome: Outcome,
    started_at: dt.datetime,
) -> Invocation:
    """Keep one invocation, and only the newest KEEP_INVOCATIONS of the function."""
    result = "" if not outcome.ok else json.dumps(outcome.result)[:RESULT_CHARS]
    invocation = Invocation(
        function_id=row.id,
        version=row.version,
        trigger=trigger,
        started_at=started_at,
        duration_ms=round(outcome.duration_ms, 3),
        ok=outcome.ok,
        cold=outcome.cold,
        result=result,
        error=outcome.error,
        output=outcome.output,
    )
    session.add(invocation)
    session.flush()
    prune_now_and_then(session, [(invocation.id, row.id)])
    return invocation


# Invocations are pruned at one invocation id in this many (ids count every function's).
PRUNE_EVERY = 50


def prune_now_and_then(session: Session, added: Iterable[tuple[int, str]]) -> None:
    """``prune`` each function one of whose new invocations (id, function id) has an id
    that is a multiple of ``PRUNE_EVERY``: a sweep now and then, not one per invocation."""
    for function_id in {function_id for id_, function_id in added if id_ % PRUNE_EVERY == 0}:
        prune(session, function_id)


def prune(session: Session, function_id: str) -> None:
    """Keep only the newest KEEP_INVOCATIONS invocations of a function."""
    oldest_kept = session.scalars(
        select(Invocation.id)
        .where(Invocation.function_id == function_id)
        .order_by(Invocation.id.desc())
        .offset(KEEP_INVOCATIONS - 1)
        .limit(1)
    ).first()
    if oldest_kept is not None:
        session.execute(
            delete(Invocation).where(
                Invocation.function_id == function_id, Invocation.id < oldest_kept
            )
        )


def invocations(
    session: Session, principal: Principal, name: str, limit: int = 20
) -> list[Invocation]:
    row = get(session, principal.tenant_id, name)
    return list(
        session.scalars(
            select(Invocation)
            .where(Invocation.function_id == row.id)
            .order_by(Invocation.id.desc())
            .limit(max(1, min(limit, KEEP_INVOCATIONS)))
        )
    )
