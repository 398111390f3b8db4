"""A provider plugin's options: what it declares, and the checked values it receives.

A plugin declares its options on its factory (``options = (Option("api_key", secret=True), ...)``)
and gets them, typed and checked, as ``context.options``. An option is set by the variable
``TENTACULO_PLUGIN_<NAME>__<OPTION>`` (the plugin's name and the option's, upper-cased, a dash
in the name written as ``_``). A value the declaration refuses is a load error naming that
variable; the value of a secret option never appears in a repr, a log line, a status or an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tentaculo.settings import SECRET_OPTION_WORDS, Settings, plugin_key

OptionType = type[str] | type[int] | type[float] | type[bool]
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false"}
_CHECK_SAID = 120  # how much of what a failing check raised is shown (never for a secret option)


@dataclass(frozen=True, slots=True)
class Option:
    """One option a plugin declares.

    ``type`` is ``str``, ``int``, ``float`` or ``bool``; ``default`` is the value when the variable
    is unset or empty. ``secret`` keeps the value out of every repr, log, status and error.
    ``choices`` and ``minimum`` restrict the value; ``check`` may refuse it by raising
    ``ValueError`` with what is wrong (``"must be an http:// or https:// URL"``). A number must be
    finite. What a check says is shown only for an option that is not secret; a secret one's
    refusal says only that the value is not valid.
    """

    name: str
    type: OptionType = str
    default: Any = None
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    check: Callable[[Any], None] | None = None


class OptionError(ValueError):
    """A plugin option has a value its declaration refuses; ``variable`` names where it was set."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


class PluginOptions(Mapping[str, Any]):
    """A plugin's option values, by option name; its repr hides the secret ones."""

    __slots__ = ("_secret", "_values")

    def __init__(self, values: Mapping[str, Any] | None = None, secret: Iterable[str] = ()) -> None:
        self._values = dict(values or {})
        self._secret = frozenset(secret)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={'[redacted]' if name in self._secret else repr(value)}"
                          for name, value in self._values.items())
        return f"PluginOptions({shown})"

    def secret_values(self) -> list[str]:
        """The values of the secret options that are set, for scrubbing them out of text."""
        return [str(self._values[name]) for name in self._secret
                if self._values.get(name) is not None and str(self._values[name])]


def http_url(value: str) -> None:
    """An ``Option.check``: the value must be an http:// or https:// URL."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")


def option_variable(plugin: str, option: str) -> str:
    """``TENTACULO_PLUGIN_<NAME>__<OPTION>`` of one plugin's option."""
    return f"TENTACULO_PLUGIN_{plugin_key(plugin).upper()}__{option.upper()}"


def _parse(option: Option, variable: str, raw: Any) -> Any:
    if not isinstance(raw, str):  # a typed value (tests, make_context): checked like a parsed one
        value = raw
        if option.type is float and isinstance(raw, int) and not isinstance(raw, bool):
            value = float(raw)
        if not isinstance(value, option.type) or (option.type is not bool and isinstance(value, bool)):
            raise OptionError(variable, f"expected {_TYPE_WORDS.get(option.type, 'text')}")
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(variable, "expected a finite number")
        return value
    shown = "" if option.secret else f", got {raw!r}"
    if option.type is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise OptionError(variable, f"expected true or false{shown}")
    if option.type in (int, float):
        try:
            number = option.type(raw)
        except ValueError:
            raise OptionError(variable, f"expected {_TYPE_WORDS[option.type]}{shown}") from None
        if not math.isfinite(number):  # nan slips past a minimum, inf is a wait without end
            raise OptionError(variable, f"expected a finite number{shown}")
        return number
    return raw


def _check(option: Option, variable: str, value: Any) -> None:
    """Run the plugin's own check: an isolation boundary, whatever it raises is a refusal.

    What it says is shown for an option that is not secret; for a secret one it may quote the
    value (``int()``'s message does), so it is left out, and so is the exception it came from.
    """
    assert option.check is not None
    try:
        option.check(value)
    except ValueError as exc:
        if option.secret:
            raise OptionError(variable, "the value is not valid") from None
        raise OptionError(variable, str(exc)) from None
    except Exception as exc:  # isolation boundary: a broken check refuses the value, it stops nothing
        if option.secret:
            raise OptionError(variable, "rejected by the plugin's check") from None
        said = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(said) > _CHECK_SAID:
            said = said[: _CHECK_SAID - 3] + "..."
        raise OptionError(variable, f"rejected by the plugin's check: {said}") from None


def _checked(option: Option, variable: str, raw: Any) -> Any:
    try:
        value = _parse(option, variable, raw)
        if option.choices and value not in option.choices:
            raise OptionError(variable, f"must be one of {', '.join(option.choices)}")
        if option.minimum is not None and value < option.minimum:
            raise OptionError(variable, f"must be at least {option.minimum:g}")
        if option.check is not None:
            _check(option, variable, value)
    except OptionError as exc:
        text = str(raw)
        if option.secret and text and text in exc.message:  # whatever said it, a secret is not repeated
            raise OptionError(variable, exc.message.replace(text, "[redacted]")) from None
        raise
    except Exception as exc:  # a declaration that cannot apply (a minimum for text): still this variable's error
        raise OptionError(variable, f"its declaration cannot check the value ({type(exc).__name__})") from None
    return value


def declared_options(factory: object) -> Sequence[Option] | None:
    """What a plugin's factory declares as ``options``; None when it declares nothing."""
    declared = getattr(factory, "options", None)
    if declared is None:
        return None
    if not isinstance(declared, list | tuple) or not all(isinstance(o, Option) for o in declared):
        raise TypeError("its options must be a sequence of tentaculo.chat.options.Option")
    return declared


def secret_option_values(plugin: str, declared: Sequence[Option] | None, settings: Settings) -> list[str]:
    """The raw values given for the options ``declared`` secret, as set: to scrub them out of text
    before anything (a check, an error) may repeat them."""
    given = settings.provider_options.get(plugin_key(plugin), {})
    return [str(given[o.name]) for o in declared or () if o.secret and given.get(o.name) is not None
            and str(given[o.name])]


def resolve_options(plugin: str, declared: Sequence[Option] | None, given: Mapping[str, Any],
                    variables: Mapping[str, str] | None = None) -> PluginOptions:
    """The checked options of ``plugin`` from ``given`` raw values (option name -> value).

    ``variables`` says which variable set an option when it was not the canonical one (an alias).
    Without declarations the raw values pass through, and secret-sounding names are kept secret.
    Raises :class:`OptionError` for a value the declarations refuse or an option they lack.
    """
    variables = variables or {}
    given = {name: value for name, value in given.items() if not (isinstance(value, str) and not value.strip())}
    if declared is None:
        return PluginOptions(given, [n for n in given if any(word in n for word in SECRET_OPTION_WORDS)])
    by_name = {option.name: option for option in declared}
    for name in given:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise OptionError(variables.get(name, option_variable(plugin, name)),
                              f"{plugin} has no such option (its options: {known})")
    values = {}
    for option in declared:
        variable = variables.get(option.name, option_variable(plugin, option.name))
        raw = given.get(option.name)
        values[option.name] = option.default if raw is None else _checked(option, variable, raw)
    return PluginOptions(values, [o.name for o in declared if o.secret])


def settings_options(plugin: str, declared: Sequence[Option] | None, settings: Settings) -> PluginOptions:
    """:func:`resolve_options` from the gateway's settings (its ``TENTACULO_PLUGIN_*`` variables and aliases)."""
    key = plugin_key(plugin)
    return resolve_options(plugin, declared, settings.provider_options.get(key, {}),
                           settings.provider_option_sources.get(key, {}))
