"""Write Patchbay plugins in Python.

A plugin is a class: a :class:`Transform`, a :class:`Sink` or a :class:`Source`. Its class
attributes describe it (``name``, ``version``, ``description``, ``config_keys``), ``init``
reads its configuration, and one method per message does the work::

    import patchbay_sdk as pb

    class Upper(pb.Transform):
        name = "upper"
        version = "0.1.0"
        description = "Upper-cases UTF-8 payloads."
        config_keys = [pb.ConfigKey("prefix", "Text put before every payload.", default="")]

        def init(self, config: pb.Config) -> None:
            self.prefix = config.get("prefix", "")

        def process(self, message: pb.Message):
            return self.prefix + message.payload.decode().upper()

    Plugin, TransformApi = pb.export_transform(Upper)

Build it with componentize-py against the contract in ``wit/``::

    componentize-py -d wit -w transform componentize -p sdk-python -p . app -o upper.wasm

What ``process`` may return, per message: ``None`` or :data:`KEEP` (pass the message on
unchanged), :data:`DROP`, a new payload (``bytes``, ``str``, or a ``dict`` serialized as JSON;
key, headers and timestamp are kept), a :class:`Message`, or a list of those (a split). Raising :class:`PluginError` fails the message with that error's kind; any
other exception fails it as ``invalid-data`` with the exception's text, so one bad message
never takes the plugin down (``wit/README.md`` rules 6, 10 and 18 hold by construction).
"""

from __future__ import annotations

import json as _json
import traceback as _traceback
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence

from componentize_py_types import Err, Ok
from wit_world.imports import logging as _logging
from wit_world.imports import metrics as _metrics
from wit_world.imports import state as _state
from wit_world.imports import types as _t

__all__ = [
    "Config",
    "ConfigKey",
    "DROP",
    "Header",
    "KEEP",
    "Message",
    "PluginError",
    "Sink",
    "Source",
    "Transform",
    "export_sink",
    "export_source",
    "export_transform",
    "fatal",
    "invalid_data",
    "parse_json",
    "log",
    "message",
    "metrics",
    "retryable",
    "state",
]

#: The contract's message: ``payload`` (bytes), ``key`` (bytes or None), ``headers``
#: (list of :class:`Header`), ``timestamp`` (milliseconds or None).
Message = _t.Message
#: One message header: ``name``, ``value``.
Header = _t.Header


def message(
    payload: bytes | str,
    key: bytes | str | None = None,
    headers: Optional[dict[str, str] | Sequence[tuple[str, str]]] = None,
    timestamp: Optional[int] = None,
) -> Message:
    """A new message; ``str`` payloads and keys are encoded as UTF-8."""
    if isinstance(headers, dict):
        headers = list(headers.items())
    return Message(
        payload=_bytes(payload),
        key=None if key is None else _bytes(key),
        headers=[Header(name=n, value=v) for n, v in (headers or [])],
        timestamp=timestamp,
    )


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


# --- errors ---------------------------------------------------------------------------------

_KINDS = {
    "retryable": _t.ErrorKind.RETRYABLE,
    "invalid-data": _t.ErrorKind.INVALID_DATA,
    "fatal": _t.ErrorKind.FATAL,
}


class PluginError(Exception):
    """An error the plugin returns on purpose. ``kind`` tells the host what to do:
    ``retryable`` (try again later), ``invalid-data`` (this record can never succeed) or
    ``fatal`` (the plugin cannot go on). Say what failed and what would fix it."""

    def __init__(self, message: str, kind: str = "invalid-data"):
        if kind not in _KINDS:
            raise ValueError(f"error kind {kind!r}: use one of {', '.join(_KINDS)}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    def to_wit(self) -> _t.Error:
        return _t.Error(kind=_KINDS[self.kind], message=self.message)


def retryable(message: str) -> PluginError:
    """A transient failure (a timeout, a restarting broker): the host retries with back-off."""
    return PluginError(message, "retryable")


def invalid_data(message: str) -> PluginError:
    """This record can never succeed (malformed, wrong schema): not retried."""
    return PluginError(message, "invalid-data")


def fatal(message: str) -> PluginError:
    """The plugin cannot go on (bad configuration, lost credentials)."""
    return PluginError(message, "fatal")


def parse_json(payload: bytes) -> Any:
    """The payload parsed as JSON by the rules every SDK follows (``wit/README.md`` rule 10):
    it must be UTF-8, strict JSON (no ``NaN`` or ``Infinity``), and no string may hold a lone
    surrogate escape such as ``"\\ud800"``, which names no Unicode character. Anything else
    raises ``invalid-data`` saying which, as the Rust SDK's ``serde_json`` does; Python's own
    ``json.loads`` would accept all three."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid_data(f"payload is not UTF-8 text: {e}") from None
    try:
        doc = _json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise invalid_data(f"payload is not JSON: {e}") from None
    if "\\u" in text and _has_lone_surrogate(doc):
        raise invalid_data(_LONE_SURROGATE)
    return doc


_LONE_SURROGATE = (
    "payload is not JSON text: a string holds a lone surrogate escape (\\ud800 to \\udfff "
    "without its pair), which names no Unicode character"
)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_lone_surrogate(value: Any) -> bool:
    # json.loads joins an escaped pair into one character, so a surrogate left is a lone one.
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _from_exception(e: BaseException, default_kind: str) -> _t.Error:
    if isinstance(e, PluginError):
        return e.to_wit()
    text = "".join(_traceback.format_exception_only(type(e), e)).strip()
    return _t.Error(kind=_KINDS[default_kind], message=text)


# --- configuration --------------------------------------------------------------------------


@dataclass
class ConfigKey:
    """One configuration key, as ``patchbay inspect`` documents it to users."""

    name: str
    description: str
    required: bool = False
    default: Optional[str] = None

    def to_wit(self) -> _t.ConfigKey:
        return _t.ConfigKey(
            name=self.name,
            description=self.description,
            required=self.required,
            default_value=self.default,
        )


class Config:
    """The configuration ``init`` receives. Values arrive as text: a TOML string as itself,
    anything else as its JSON text. Every accessor raises a fatal :class:`PluginError` that
    names the key, the format expected and the value found."""

    def __init__(self, entries: Iterable[tuple[str, str]]):
        self._values = dict(entries)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def keys(self) -> List[str]:
        return list(self._values)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        """The raw text of ``key``, or ``default``."""
        return self._values.get(key, default)

    def required(self, key: str) -> str:
        if key not in self._values:
            raise fatal(f"config key `{key}` is required")
        return self._values[key]

    def invalid(self, key: str, expected: str) -> PluginError:
        """The error for a bad value of ``key``: ``expected`` says what a good one looks like."""
        return fatal(f"config key `{key}`: expected {expected}, found {self._values.get(key)!r}")

    def int(self, key: str, default: Optional[int] = None) -> Optional[int]:
        if key not in self._values:
            return default
        try:
            return int(self._values[key])
        except ValueError:
            raise self.invalid(key, "an integer, e.g. 10") from None

    def float(self, key: str, default: Optional[float] = None) -> Optional[float]:
        if key not in self._values:
            return default
        try:
            return float(self._values[key])
        except ValueError:
            raise self.invalid(key, "a number, e.g. 2.5") from None

    def bool(self, key: str, default: Optional[bool] = None) -> Optional[bool]:
        if key not in self._values:
            return default
        value = self._values[key].strip().lower()
        if value in ("true", "false"):
            return value == "true"
        raise self.invalid(key, "true or false")

    def choice(self, key: str, options: Sequence[str], default: str) -> str:
        value = self._values.get(key, default)
        if value not in options:
            raise self.invalid(key, "one of " + ", ".join(options))
        return value

    def json(self, key: str, default: Any = None, expect: Optional[type] = None) -> Any:
        """The value parsed as JSON (a TOML array or table arrives as JSON text). With
        ``expect`` (e.g. ``list``), a value of another type is an error too."""
        if key not in self._values:
            return default
        try:
            value = _json.loads(self._values[key])
        except ValueError as e:
            raise self.invalid(key, f"JSON ({e})") from None
        if expect is not None and not isinstance(value, expect):
            raise self.invalid(key, f"a JSON {expect.__name__}")
        return value


# --- host services --------------------------------------------------------------------------


class log:
    """Log lines through the host; they carry the plugin's name."""

    @staticmethod
    def trace(text: str) -> None:
        _logging.log(_logging.Level.TRACE, text)

    @staticmethod
    def debug(text: str) -> None:
        _logging.log(_logging.Level.DEBUG, text)

    @staticmethod
    def info(text: str) -> None:
        _logging.log(_logging.Level.INFO, text)

    @staticmethod
    def warn(text: str) -> None:
        _logging.log(_logging.Level.WARN, text)

    @staticmethod
    def error(text: str) -> None:
        _logging.log(_logging.Level.ERROR, text)


def _labels(labels: Optional[dict[str, str]]) -> List[_metrics.Label]:
    return [_metrics.Label(name=k, value=v) for k, v in (labels or {}).items()]


class metrics:
    """Metrics on the host's /metrics endpoint, with a ``plugin`` label added by the host."""

    @staticmethod
    def counter_add(name: str, value: int = 1, labels: Optional[dict[str, str]] = None) -> None:
        _metrics.counter_add(name, value, _labels(labels))

    @staticmethod
    def gauge_set(name: str, value: float, labels: Optional[dict[str, str]] = None) -> None:
        _metrics.gauge_set(name, float(value), _labels(labels))

    @staticmethod
    def histogram_observe(
        name: str, value: float, labels: Optional[dict[str, str]] = None
    ) -> None:
        _metrics.histogram_observe(name, float(value), _labels(labels))


class state:
    """The host's key-value store, private to this plugin in its pipeline. It survives
    restarts after a trap and hot swaps. Keys up to 1 KiB, values up to 1 MiB."""

    @staticmethod
    def get(key: str) -> Optional[bytes]:
        return _state.get(key)

    @staticmethod
    def set(key: str, value: bytes | str) -> None:
        try:
            _state.set(key, _bytes(value))
        except Err as e:
            raise PluginError(f"state.set({key!r}): {e.value}", "fatal") from None

    @staticmethod
    def delete(key: str) -> None:
        _state.delete(key)


# --- roles ----------------------------------------------------------------------------------


class _Plugin:
    """What every role declares."""

    name: str = ""
    version: str = "0.1.0"
    description: str = ""
    config_keys: List[ConfigKey] = []

    def init(self, config: Config) -> None:
        """Read the configuration. Raise a fatal :class:`PluginError` (``config.invalid``) for
        a bad value; never let anything else escape."""

    @classmethod
    def _metadata(cls) -> _t.Metadata:
        return _t.Metadata(
            name=cls.name,
            version=cls.version,
            description=cls.description,
            config_keys=[k.to_wit() for k in cls.config_keys],
        )


#: Pass the message on unchanged.
KEEP = object()
#: Remove the message from the stream.
DROP = object()


class Transform(_Plugin):
    """Change, filter, split or enrich messages."""

    def process(self, message: Message) -> Any:
        """Return, for this message: ``None`` or :data:`KEEP` (unchanged), :data:`DROP`,
        ``bytes`` or ``str`` (a new payload, same key, headers and timestamp), a ``dict``
        (serialized as JSON, the same), a :class:`Message`, or a list of those (a split).
        Raise :class:`PluginError` to fail the message with its kind."""
        return KEEP

    def process_batch(self, batch: List[Message]) -> List[_t.Outcome]:
        """Override to see the whole batch; return one outcome per message, in order."""
        outcomes = []
        for m in batch:
            try:
                outcomes.append(_outcome(m, self.process(m)))
            except Exception as e:  # noqa: BLE001 - one bad message never traps the plugin
                outcomes.append(_t.Outcome_Fail(_from_exception(e, "invalid-data")))
        return outcomes


def _replacement(original: Message, value: Any) -> Message:
    if isinstance(value, Message):
        return value
    if isinstance(value, (bytes, bytearray, str)):
        payload = _bytes(value)
    elif isinstance(value, dict):
        payload = _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        raise TypeError(f"process returned {type(value).__name__}, not a message or payload")
    return Message(
        payload=payload,
        key=original.key,
        headers=original.headers,
        timestamp=original.timestamp,
    )


def _outcome(original: Message, value: Any) -> _t.Outcome:
    if value is None or value is KEEP:
        return _t.Outcome_Keep()
    if value is DROP:
        return _t.Outcome_Drop()
    if isinstance(value, list):
        return _t.Outcome_Replace([_replacement(original, v) for v in value])
    return _t.Outcome_Replace([_replacement(original, value)])


class Sink(_Plugin):
    """Deliver messages out of the pipeline."""

    def write(self, message: Message) -> None:
        """Store one message durably, or raise :class:`PluginError`. An ``OSError`` counts as
        ``retryable``; any other exception as ``invalid-data``."""

    def flush(self) -> None:
        """Called after each batch, before the results go back: make the batch durable."""

    def write_batch(self, batch: List[Message]) -> List[Any]:
        results: List[Any] = []
        for m in batch:
            try:
                self.write(m)
                results.append(Ok(None))
            except OSError as e:
                results.append(Err(_from_exception(e, "retryable")))
            except Exception as e:  # noqa: BLE001
                results.append(Err(_from_exception(e, "invalid-data")))
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - a failed flush fails every record it held
            error = _from_exception(e, "retryable")
            results = [Err(error) if isinstance(r, Ok) else r for r in results]
        return results


class Source(_Plugin):
    """Bring messages into a pipeline."""

    def poll(self, max: int) -> Optional[tuple[List[Any], int]]:
        """Return ``(messages, checkpoint)`` with at most ``max`` messages (each a
        :class:`Message`, ``bytes`` or ``str``), possibly none when idle; or ``None`` once the
        source is exhausted (and every time after). Checkpoints never decrease."""
        return None

    def ack(self, checkpoint: int) -> None:
        """Everything up to the batch that carried ``checkpoint`` was delivered: commit it."""


# --- export ---------------------------------------------------------------------------------


class _Holder:
    """The plugin instance ``init`` created, shared by the exported interfaces."""

    instance: Any = None


def _plugin_export(cls: type) -> type:
    holder = _Holder()

    class Plugin:
        def describe(self) -> _t.Metadata:
            return cls._metadata()

        def init(self, config: List[_t.ConfigEntry]) -> None:
            try:
                instance = cls()
                instance.init(Config((e.key, e.value) for e in config))
            except Exception as e:  # noqa: BLE001 - bad config is an error, never a trap
                raise Err(_from_exception(e, "fatal")) from None
            holder.instance = instance

    Plugin._holder = holder  # type: ignore[attr-defined]
    return Plugin


def _ready(plugin: type) -> Any:
    instance = plugin._holder.instance
    if instance is None:
        raise Err(_t.Error(kind=_t.ErrorKind.FATAL, message="plugin used before init"))
    return instance


def export_transform(cls: type) -> tuple[type, type]:
    """The ``Plugin`` and ``TransformApi`` classes componentize-py exports; assign them at
    module level: ``Plugin, TransformApi = export_transform(MyTransform)``."""
    plugin = _plugin_export(cls)

    class TransformApi:
        def process(self, batch: List[Message]) -> List[_t.Outcome]:
            instance = plugin._holder.instance
            if instance is None:
                error = _t.Error(kind=_t.ErrorKind.FATAL, message="plugin used before init")
                return [_t.Outcome_Fail(error) for _ in batch]
            return instance.process_batch(batch)

    return plugin, TransformApi


def export_sink(cls: type) -> tuple[type, type]:
    """``Plugin, SinkApi = export_sink(MySink)``."""
    plugin = _plugin_export(cls)

    class SinkApi:
        def write(self, batch: List[Message]) -> List[Any]:
            instance = plugin._holder.instance
            if instance is None:
                error = _t.Error(kind=_t.ErrorKind.FATAL, message="plugin used before init")
                return [Err(error) for _ in batch]
            return instance.write_batch(batch)

    return plugin, SinkApi


def export_source(cls: type) -> tuple[type, type]:
    """``Plugin, SourceApi = export_source(MySource)``."""
    plugin = _plugin_export(cls)

    class SourceApi:
        def poll(self, max: int) -> _t.PollResult:
            instance = _ready(plugin)
            try:
                got = instance.poll(max)
            except Exception as e:  # noqa: BLE001
                raise Err(_from_exception(e, "retryable")) from None
            if got is None:
                return _t.PollResult_EndOfStream()
            messages, checkpoint = got
            batch = [m if isinstance(m, Message) else message(m) for m in messages]
            return _t.PollResult_Batch(_t.SourceBatch(messages=batch, checkpoint=checkpoint))

        def ack(self, checkpoint: int) -> None:
            instance = _ready(plugin)
            try:
                instance.ack(checkpoint)
            except Exception as e:  # noqa: BLE001
                raise Err(_from_exception(e, "retryable")) from None

    return plugin, SourceApi
