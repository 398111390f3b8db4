"""Provider plugins that misbehave in the ways a third-party plugin can, for registry tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from importlib.metadata import EntryPoint

import structlog

from tentaculo.chat.options import Option
from tentaculo.chat.plugin import (
    ENTRY_POINT_GROUP,
    INTERFACE_VERSION,
    BaseProvider,
    ChatRequest,
    Chunk,
    ProviderContext,
    ProviderUnavailable,
    Usage,
)


def ep(name: str, value: str) -> EntryPoint:
    """An entry point of the providers' group, as an installed plugin would declare it."""
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


class Working:
    """A minimal correct provider."""

    interface_version = INTERFACE_VERSION
    version = "1.0"
    models = ("w-1",)
    default_model = "w-1"

    def __init__(self, context: ProviderContext) -> None:
        self.status, self.reason = "on", None
        self.options = dict(context.options)

    async def start(self) -> None:
        pass

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        yield Chunk(content=self.options.get("greeting", "hi"))
        yield Chunk(finish_reason="stop", usage=Usage(1, 1))

    async def close(self) -> None:
        pass


class FailsToStart(Working):
    async def start(self) -> None:
        raise ConnectionError("license server unreachable")


class StartsForever(Working):
    async def start(self) -> None:
        await asyncio.Event().wait()


class FailsToConstruct(Working):
    def __init__(self, context: ProviderContext) -> None:
        raise KeyError("MY_PLUGIN_TOKEN")


class FutureInterface(Working):
    interface_version = INTERFACE_VERSION + 1


class NotAProvider:
    interface_version = INTERFACE_VERSION

    def __init__(self, context: ProviderContext) -> None:
        pass


class YieldsStrings(Working):
    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        yield "not a chunk"  # type: ignore[misc]


class RaisesOnCall(Working):
    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        raise ValueError("not even a generator")


class Declares(BaseProvider):
    """A provider that declares its options; its licence is secret though its name does not say so."""

    version = "2.0"
    models = ("d-1",)
    default_model = "d-1"
    options = (
        Option("greeting", default="hello"),
        Option("retries", int, default=2, minimum=0),
        Option("licence", secret=True),
    )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        options = self.context.options
        yield Chunk(content=f"{options['greeting']} x{options['retries']}")
        yield Chunk(finish_reason="stop", usage=Usage(1, 1))


class SpillsItsSecret(Declares):
    """Puts its secret option everywhere a careless plugin could: its log, its reason, its errors."""

    async def start(self) -> None:
        licence = self.context.options["licence"]
        self.log.warning("licence_in_use", detail=f"licence {licence}")
        self.status, self.reason = "degraded", f"licence {licence} expires soon"

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise ProviderUnavailable(f"licence {self.context.options['licence']} refused")
        yield Chunk()  # pragma: no cover - makes this a generator


def _as_integer(value: str) -> None:
    int(value)  # its ValueError quotes the value: "invalid literal for int() with base 10: '...'"


def _looked_up(value: str) -> None:
    raise KeyError(value)  # a check that fails otherwise than by ValueError, quoting the value


def _typed_wrong(value: str) -> None:
    raise TypeError(f"cannot use {value}")


class SecretCheckQuotes(Working):
    """Its secret option's check refuses a value with a message quoting it."""

    options = (Option("credential", secret=True, check=_as_integer),)


class SecretCheckBreaks(Working):
    """Its secret option's check raises a KeyError holding the value."""

    options = (Option("credential", secret=True, check=_looked_up),)


class SecretNumber(Working):
    """A secret option of type int: text given for it must not be quoted back."""

    options = (Option("pin", int, secret=True),)


class CheckBreaks(Working):
    """A plain option whose check raises a TypeError."""

    options = (Option("region", check=_typed_wrong),)


class TakesANumber(Working):
    """A float option with no minimum."""

    options = (Option("ratio", float, default=1.0),)


def _logs_it(value: str) -> None:
    structlog.get_logger("tests.plugin_samples").info("option_checked", detail=f"checking {value}")


class SecretCheckLogs(Working):
    """Its secret option's check writes the value to the log (and accepts it)."""

    options = (Option("credential", secret=True, check=_logs_it),)
