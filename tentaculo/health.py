"""How a part of the gateway is doing: the four states of the contract and a short reason.

Every status the API reports (a service, a feature, a provider, a dependency) is a :class:`Health`:
one of ``on | off | degraded | error`` and, unless ``on``, a reason fit to show an operator.
:func:`shorten` makes any text from a plugin, an upstream or an exception into such a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

Status = Literal["on", "off", "degraded", "error"]
STATUSES: tuple[Status, ...] = ("on", "off", "degraded", "error")

REASON_MAX = 300
_CONTROL = {c: " " for c in range(32)} | {127: " "}


def shorten(text: str, limit: int = REASON_MAX, secrets: Iterable[str] = ()) -> str:
    """``text`` fit to show and store: no secret, no control character, runs of space folded, bounded."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.translate(_CONTROL).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class Health:
    """A status and why: ``Health("degraded", "redis: timed out")``; ``Health.ON`` when all is well."""

    status: Status
    reason: str | None = None

    ON: ClassVar[Health]

    @property
    def ok(self) -> bool:
        return self.status == "on"


Health.ON = Health("on")
