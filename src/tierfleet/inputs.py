"""Total checks of untrusted job data, before any recursive or encoding code sees it.

pydantic, ``json`` and jsonschema all recurse per nesting level and all assume
encodable strings and finite numbers; fed a 10,000-deep dict, a lone surrogate
or a NaN they raise ``RecursionError``, ``ValueError``, ``UnicodeEncodeError`` (or
worse, accept). :func:`scan` walks a value once, iteratively, and turns each of
those into a :class:`JobRejected` naming the field, so nothing after it can.

RFC 8259 JSON has no NaN or Infinity and no unpaired surrogates; the fleet
follows it everywhere a job's data is read (:func:`loads_strict`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from pydantic import BaseModel

from .errors import JobRejected

# JSON numbers are doubles in practice (RFC 8259 section 6); a 64-bit integer is the
# most any consumer here handles, and huge ints are slow to print (Python caps it).
MAX_INT_BITS = 64
_FIELD_CHARS = 160


def safe_text(text: str) -> str:
    """``text`` with any unpaired surrogate shown as ``\\udXXX``: always printable and encodable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _segment(key: str) -> str:
    """``.key``, or ``["key"]`` for a key a dotted path would garble or lose (empty,
    or holding ``.``, ``[``, ``]`` or a quote): every field named in an error is a path."""
    shown = safe_text(key)[:60]
    if shown and not any(c in shown for c in ".[]\""):
        return f".{shown}"
    return "[" + json.dumps(shown, ensure_ascii=False) + "]"


class _Path:
    """A field path built only when an error needs it (a parent chain, not a copied list)."""

    __slots__ = ("key", "parent")

    def __init__(self, parent: _Path | None, key: str | int) -> None:
        self.parent = parent
        self.key = key

    def render(self, prefix: str, keep: int | None = None) -> str:
        parts: list[str | int] = []
        node: _Path | None = self
        while node is not None:
            parts.append(node.key)
            node = node.parent
        parts.reverse()
        out = prefix
        for part in parts[:keep]:
            seg = f"[{part}]" if isinstance(part, int) else _segment(part)
            if len(out) + len(seg) > _FIELD_CHARS:
                return out + "…"
            out += seg
        return out.lstrip(".")


def _where(prefix: str, path: _Path | None, keep: int | None = None) -> str:
    return path.render(prefix, keep) if path is not None else prefix or "job"


# A too-deep value is named by the field that holds it (``input.document``), not by
# the thousand ``[0]`` steps down to where the limit was crossed.
_DEPTH_FIELD_PARTS = 2


def scan(
    value: Any, prefix: str, *, max_depth: int, max_bytes: int | None = None, start_depth: int = 0
) -> int:
    """Reject ``value`` unless it is plain JSON: dicts with string keys, lists, strings
    without unpaired surrogates, finite numbers, booleans and null, nested at most
    ``max_depth`` containers deep. Returns a lower bound of its JSON size in bytes
    (characters, not UTF-8 bytes), stopping early once that passes ``max_bytes``.

    Tuples count as lists and pydantic models as objects (the Python API may pass
    ``Message`` objects); anything else is not JSON and is rejected.
    """
    size = 0
    # start_depth -1: ``value`` is the job itself, whose fields are the top level.
    stack: list[tuple[Any, int, _Path | None]] = [(value, start_depth, None)]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise JobRejected(
                        _where(prefix, path),
                        f"contains an unpaired surrogate (U+{ord(node[exc.start]):04X}) at "
                        f"character {exc.start}: not valid Unicode text",
                    ) from None
            size += len(node) + 2
        elif node is None or isinstance(node, bool):
            size += 4
        elif isinstance(node, int):
            if node.bit_length() > MAX_INT_BITS:
                raise JobRejected(_where(prefix, path), f"integer wider than {MAX_INT_BITS} bits")
            size += 8
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise JobRejected(
                    _where(prefix, path), f"{node!r} is not a JSON number (RFC 8259 has no NaN/Infinity)"
                )
            size += 8
        elif isinstance(node, Mapping | BaseModel | list | tuple):
            if depth >= max_depth:
                raise JobRejected(
                    _where(prefix, path, _DEPTH_FIELD_PARTS - bool(prefix)),
                    f"nested deeper than limits.max_json_depth ({max_depth}) levels",
                )
            # Brackets and separators (commas, and colons in an object), counted before any
            # member is looked at: a million-item list over the limit is refused at once,
            # not walked first.
            n = len(node.__dict__) if isinstance(node, BaseModel) else len(node)
            size += 2 + max(0, (n if isinstance(node, list | tuple) else 2 * n) - 1)
            if max_bytes is not None and size > max_bytes:
                _too_big(prefix, path, max_bytes)
            if isinstance(node, list | tuple):
                stack.extend((v, depth + 1, _Path(path, i)) for i, v in enumerate(node))
            else:
                items = node.__dict__.items() if isinstance(node, BaseModel) else node.items()
                for k, v in items:
                    if not isinstance(k, str):
                        raise JobRejected(
                            _where(prefix, path),
                            f"object key {safe_text(repr(k))[:60]} is not a string",
                        )
                    stack.append((k, depth + 1, _Path(path, k)))
                    stack.append((v, depth + 1, _Path(path, k)))
        else:
            raise JobRejected(
                _where(prefix, path), f"a {type(node).__name__} is not a JSON value"
            )
        if max_bytes is not None and size > max_bytes:
            _too_big(prefix, path, max_bytes)
    return size


def _too_big(prefix: str, path: _Path | None, max_bytes: int) -> NoReturn:
    raise JobRejected(
        _where(prefix, path).split(".")[0].split("[")[0] or "job",
        f"job is over {max_bytes:,} bytes (limits.max_payload_bytes)",
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259 has no NaN/Infinity)")


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that follows RFC 8259: NaN, Infinity and -Infinity are errors.

    Raises ``ValueError`` (``json.JSONDecodeError`` for syntax) or ``RecursionError``
    for text nested past Python's stack; callers turn both into their own error.
    """
    return json.loads(text, parse_constant=_no_constant)


# -- images -----------------------------------------------------------------------------

_MAGIC: tuple[tuple[str, bytes, int], ...] = (
    ("png", b"\x89PNG\r\n\x1a\n", 0),
    ("jpeg", b"\xff\xd8\xff", 0),
    ("gif", b"GIF87a", 0),
    ("gif", b"GIF89a", 0),
    ("webp", b"WEBP", 8),  # after "RIFF" and a 4-byte length
)
_B64_WHITESPACE = bytes.maketrans(b"", b"")


def image_format(data: bytes) -> str | None:
    for name, magic, at in _MAGIC:
        if data[at : at + len(magic)] == magic and (name != "webp" or data[:4] == b"RIFF"):
            return name
    return None


def check_image(value: Any, field: str, max_bytes: int) -> None:
    """A job image is bare base64 (no ``data:`` prefix) of a PNG, JPEG, GIF or WebP."""
    if not isinstance(value, str):
        raise JobRejected(field, f"an image is a base64 string, not {type(value).__name__}")
    if value.startswith("data:"):
        raise JobRejected(field, "give the bare base64 of the image, not a data: URL")
    if not value.isascii():
        raise JobRejected(field, "not base64: contains non-ASCII characters")
    # MIME base64 wraps lines; the alphabet is checked strictly after removing them.
    raw = value.encode("ascii").translate(_B64_WHITESPACE, b" \t\r\n")
    if len(raw) * 3 // 4 > max_bytes + 3:
        raise JobRejected(
            field, f"image is over {max_bytes:,} bytes decoded (limits.max_image_bytes)"
        )
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise JobRejected(field, "not valid base64") from None
    if len(data) > max_bytes:
        raise JobRejected(
            field, f"image is {len(data):,} bytes, over limits.max_image_bytes ({max_bytes:,})"
        )
    if image_format(data) is None:
        raise JobRejected(field, "not a PNG, JPEG, GIF or WebP image (unrecognised header)")
