"""The ``checkpoint`` state file: which checkpoints a directory holds.

The file is the protobuf text format of ``tensorflow.CheckpointState``.  The
reader accepts any valid text-format spelling of the four fields (comments,
field order, ``'`` or ``"`` quotes, list syntax); unknown fields are skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ._util import atomic_write, read_regular
from .errors import CheckpointNotFoundError, CorruptCheckpointError

__all__ = ["CheckpointState", "STATE_FILENAME", "read_state", "parse_state", "format_state",
           "write_state"]

STATE_FILENAME = "checkpoint"

# A state file is a handful of lines; anything this large is not one.
_MAX_STATE_BYTES = 64 << 20

_STRING_FIELDS = ("model_checkpoint_path", "all_model_checkpoint_paths")
_FLOAT_FIELDS = ("all_model_checkpoint_timestamps", "last_preserved_timestamp")
_REPEATED = ("all_model_checkpoint_paths", "all_model_checkpoint_timestamps")


@dataclass
class CheckpointState:
    """Contents of a ``checkpoint`` state file, paths made absolute.

    Attributes
    ----------
    model_checkpoint_path : str
        Prefix of the latest checkpoint.
    all_model_checkpoint_paths : list of str
        Prefixes still kept, oldest first; ends with the latest.
    all_model_checkpoint_timestamps : list of float
        Unix times parallel to ``all_model_checkpoint_paths`` (may be empty).
    last_preserved_timestamp : float or None
    """

    model_checkpoint_path: str
    all_model_checkpoint_paths: list = field(default_factory=list)
    all_model_checkpoint_timestamps: list = field(default_factory=list)
    last_preserved_timestamp: float | None = None


_TOKEN = re.compile(
    rb"""\s+|\#[^\n]*
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<number>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)[fF]?)
    |(?P<punct>[:\[\],;{}<>])""",
    re.VERBOSE,
)

_SIMPLE_ESCAPES = {
    ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("a"): 7, ord("b"): 8, ord("f"): 12,
    ord("v"): 11, ord("\\"): 92, ord("'"): 39, ord('"'): 34, ord("?"): 63,
}


def _unescape(body: bytes, where: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != 0x5C:  # backslash
            out.append(c)
            i += 1
            continue
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif 0x30 <= e <= 0x37:  # octal, up to three digits
            m = re.match(rb"[0-7]{1,3}", body[i + 1:])
            out.append(int(m.group(), 8) & 0xFF)
            i += 1 + len(m.group())
        elif e in (ord("x"), ord("X")):
            m = re.match(rb"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise CorruptCheckpointError(f"bad \\x escape in {where}", path=where)
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        else:
            raise CorruptCheckpointError(f"unknown escape \\{chr(e)} in {where}", path=where)
    return bytes(out)


def _tokens(text: bytes, where: str):
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise CorruptCheckpointError(
                f"cannot parse the checkpoint state file {where} at byte {pos}: "
                f"{text[pos:pos + 20]!r}", path=where, offset=pos)
        pos = m.end()
        if m.lastgroup:
            yield m.lastgroup, m.group(m.lastgroup), m.start()


def parse_state(text: bytes, directory: str, where: str = STATE_FILENAME) -> CheckpointState:
    """Parse the text of a state file; relative paths are joined to ``directory``.

    Raises
    ------
    CorruptCheckpointError
        If the text is not a valid ``CheckpointState`` or names no checkpoint.
    """
    values: dict[str, list] = {name: [] for name in _STRING_FIELDS + _FLOAT_FIELDS}
    toks = list(_tokens(text, where))
    i = 0

    def bad(msg, at):
        return CorruptCheckpointError(f"checkpoint state file {where}: {msg}", path=where, offset=at)

    def scalar(kind, tok, at, name):
        if name in _STRING_FIELDS:
            if kind != "string":
                raise bad(f"field {name} needs a quoted string", at)
            return _unescape(tok[1:-1], where)
        if name in _FLOAT_FIELDS:
            if kind == "ident" and tok.lower() in (b"inf", b"infinity", b"nan"):
                return float(tok)
            if kind != "number":
                raise bad(f"field {name} needs a number", at)
            return float(tok.rstrip(b"fF"))
        return None

    while i < len(toks):
        kind, tok, at = toks[i]
        if kind != "ident":
            raise bad(f"expected a field name, found {tok!r}", at)
        name = tok.decode("ascii")
        i += 1
        if i < len(toks) and toks[i][1] == b":":
            i += 1
        if i >= len(toks):
            raise bad(f"field {name} has no value", at)
        kind, tok, at = toks[i]
        if tok in (b"{", b"<"):  # a message value: only unknown fields can be messages
            if name in values:
                raise bad(f"field {name} is not a message", at)
            depth = 0
            while i < len(toks):
                if toks[i][1] in (b"{", b"<"):
                    depth += 1
                elif toks[i][1] in (b"}", b">"):
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        elif tok == b"[":
            i += 1
            while i < len(toks) and toks[i][1] != b"]":
                if toks[i][1] != b",":
                    v = scalar(toks[i][0], toks[i][1], toks[i][2], name)
                    if name in values:
                        values[name].append(v)
                i += 1
            i += 1
        else:
            # Adjacent string literals concatenate, as in C.
            v = scalar(kind, tok, at, name)
            i += 1
            while kind == "string" and i < len(toks) and toks[i][0] == "string":
                v += scalar("string", toks[i][1], toks[i][2], name)
                i += 1
            if name in values:
                values[name].append(v)
        if i < len(toks) and toks[i][1] in (b",", b";"):
            i += 1

    for name in values:
        if name not in _REPEATED and len(values[name]) > 1:
            values[name] = values[name][-1:]  # text format: the last value wins

    def path(raw: bytes) -> str:
        p = os.fsdecode(raw)
        return p if os.path.isabs(p) else os.path.join(directory, p)

    if not values["model_checkpoint_path"] or not values["model_checkpoint_path"][0]:
        raise bad("model_checkpoint_path is missing or empty", None)
    latest = path(values["model_checkpoint_path"][0])
    all_paths = [path(p) for p in values["all_model_checkpoint_paths"]]
    if not all_paths or all_paths[-1] != latest:
        all_paths.append(latest)
    preserved = values["last_preserved_timestamp"]
    return CheckpointState(
        model_checkpoint_path=latest,
        all_model_checkpoint_paths=all_paths,
        all_model_checkpoint_timestamps=list(values["all_model_checkpoint_timestamps"]),
        last_preserved_timestamp=preserved[0] if preserved else None,
    )


def read_state(directory) -> CheckpointState | None:
    """Read ``directory/checkpoint``; None if the file does not exist.

    Raises
    ------
    CorruptCheckpointError
        If the file exists but is not a valid state file.
    CheckpointNotFoundError
        If it is a FIFO, device or other non-regular file (never opened for
        reading, so never blocked on).
    ReadFailedError
        If it cannot be read (a symlink loop, permissions...); errno kept.
    """
    directory = os.fspath(directory)
    where = os.path.join(directory, STATE_FILENAME)
    if os.path.isdir(where):
        return None  # as TensorFlow: a directory there is no state file
    try:
        text = read_regular(where, "checkpoint state file", _MAX_STATE_BYTES)
    except CheckpointNotFoundError as exc:
        if exc.errno is not None:
            return None  # it does not exist (or a parent is no directory)
        raise
    if len(text) > _MAX_STATE_BYTES:
        raise CorruptCheckpointError(
            f"{where} is larger than {_MAX_STATE_BYTES} bytes; not a checkpoint state file",
            path=where)
    return parse_state(text, directory, where)


def _escape(text: str) -> str:
    """A text-format string body as TensorFlow writes it: C escapes for quotes,
    backslashes and control characters, other characters as UTF-8; bytes that
    are not UTF-8 (surrogate-escaped in ``text``) as octal escapes."""
    out = []
    for ch in text:
        c = ord(ch)
        if c in _WRITE_ESCAPES:
            out.append(_WRITE_ESCAPES[c])
        elif c < 0x20 or c == 0x7F:
            out.append(f"\\{c:03o}")
        elif 0xDC80 <= c <= 0xDCFF:  # a raw byte os.fsdecode could not decode
            out.append(f"\\{c - 0xDC00:03o}")
        else:
            out.append(ch)
    return "".join(out)


_WRITE_ESCAPES = {10: "\\n", 13: "\\r", 9: "\\t", 34: '\\"', 39: "\\'", 92: "\\\\"}


def format_state(st: CheckpointState, directory) -> str:
    """The text of a state file, line for line as TensorFlow writes it.

    Paths inside ``directory`` are written relative to it (as
    ``tf.train.CheckpointManager`` does), others as they are.
    """
    directory = os.path.abspath(os.fspath(directory))

    def path(p: str) -> str:
        full = os.path.abspath(p)
        if os.path.dirname(full) == directory:
            p = os.path.basename(full)
        return '"' + _escape(p) + '"'

    lines = [f"model_checkpoint_path: {path(st.model_checkpoint_path)}"]
    lines += [f"all_model_checkpoint_paths: {path(p)}" for p in st.all_model_checkpoint_paths]
    lines += [f"all_model_checkpoint_timestamps: {t!r}"
              for t in st.all_model_checkpoint_timestamps]
    if st.last_preserved_timestamp is not None:
        lines.append(f"last_preserved_timestamp: {st.last_preserved_timestamp!r}")
    return "".join(line + "\n" for line in lines)


def write_state(directory, st: CheckpointState, *, fsync: bool = False) -> str:
    """Replace ``directory/checkpoint`` atomically (temporary file, then rename).

    Returns the state file's path.
    """
    directory = os.fspath(directory)
    target = os.path.join(directory, STATE_FILENAME)
    atomic_write(target, format_state(st, directory).encode("utf-8"), fsync=fsync,
                 what="the checkpoint state file")
    return target
