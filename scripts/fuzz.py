#!/usr/bin/env python
"""Mutation fuzzing of tfshard's checkpoint reader.

Each case takes a seed checkpoint, mutates one of its files, then opens the
result, lists it and reads (whole and a row range) and verifies every tensor.
The only acceptable outcomes are success and a ``tfshard.TFShardError``;
anything else is a finding: another exception, a hang (past
``--case-timeout``), or a crash.

Seeds (``--seeds``, default ``all``):

- ``v2``: the V2 goldens under tests/data/golden.  The ``.index`` or a data
  shard gets raw byte mutations (flipped bits, interesting byte values,
  truncations, duplicated or deleted runs, overwritten varints), or the index
  entries and keys are mutated and the index rebuilt with valid block
  checksums, so the mutations reach the entry, shape, slice and key parsers.
- ``v1``: the legacy V1 ("TensorSlice") goldens under tests/data/v1, single
  SSTable files and a two-file sharded save (``ckpt``, ``ckpt-SSSSS-of-NNNNN``).
  One file gets raw byte mutations, or its records (the metadata record under
  the empty key and the data records) are decoded as protobuf and mutated
  field by field -- varint values, lengths, field numbers and wire types,
  packed values, repeated fields (shape dims, slice extents, tensors)
  duplicated, dropped, reordered or grafted elsewhere -- and re-encoded behind
  valid block checksums, so the mutations reach the V1 protobuf parsers.
- ``graph``: the graph fixtures under tests/data/graph, ``.meta`` files
  (MetaGraphDef) and ``saved_model.pb`` files (SavedModel), each with the
  checkpoint beside it.  The graph file gets raw byte mutations, or is decoded
  as protobuf and mutated field by field as V1 records are (nested messages
  too: nodes, attributes, tensors, signatures, collections), then opened with
  :func:`tfshard.graph.open` and walked through the whole API: summary and its
  JSON, every node and Const value, functions, signatures, variables, the
  object graph, risky ops and the restore check against the checkpoint.
- ``all``: every seed.

Cases run in a worker process, so a crash (SIGSEGV, SIGBUS, abort) is caught;
the worker writes each case's number before running it, so the parent knows
which case killed it, saves the input under ``--findings`` (with a copy shrunk
towards the seed checkpoint, in ``minimized/``, when the failure reproduces in
a fresh process: record-level cases are shrunk record by record and rebuilt
with valid checksums) and starts a new worker.  Everything is reproducible
from ``--seed`` and ``--seeds``.

Examples::

    scripts/fuzz.py --time 600                 # ten minutes, on demand
    scripts/fuzz.py --count 300 --seed 1       # a bounded run, as CI does
    scripts/fuzz.py --time 600 --seeds v1      # only the V1 (TensorSlice) seeds
    scripts/fuzz.py --time 600 --seeds graph   # only the graph (.meta, SavedModel) seeds
    scripts/fuzz.py --replay tests/data/fuzz   # re-run saved findings

Run it under the sanitizer build (scripts/sanitize.sh builds one) to catch
memory errors that do not crash.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
V1_GOLDEN = ROOT / "tests" / "data" / "v1"
# Small seeds, so each case is fast: every dtype, strings, partitioned, sharded, variant,
# an object-based checkpoint.
SEEDS = ["dtypes/ckpt", "strings/ckpt", "partitioned/model.ckpt", "sharded/model.ckpt",
         "variant/ckpt", "keras_adam/ckpt-2"]
# V1 seeds, named "v1/<path under tests/data/v1>": every dtype, quantized types and
# non-ASCII names, partitioned tensors (slices in one file), a two-file save whose
# tensor is split across both files, and a table of several blocks.
V1_SEEDS = ["v1/dtypes/model.ckpt", "v1/misc/model.ckpt", "v1/partitioned/model.ckpt",
            "v1/sharded/model.ckpt", "v1/large/model.ckpt"]
GRAPH_GOLDEN = ROOT / "tests" / "data" / "graph"
# Graph seeds, named "graph/<path under tests/data/graph>": a TF1 Saver .meta (every
# collection kind, v1 control flow, partitioned variables), a TF 0.12-style .meta (Variable
# ops, RestoreSlice saver, SessionBundle signatures), a TF2 SavedModel (object graph,
# functions, composite signature outputs) and a TF1 SavedModel builder export (two meta
# graphs, sparse inputs, assets in an any_list).
GRAPH_SEEDS = ["graph/tf1/model.ckpt-3.meta", "graph/legacy/export.meta",
               "graph/tf2_module/saved_model.pb", "graph/builder/saved_model.pb"]
SEED_SETS = {"all": SEEDS + V1_SEEDS + GRAPH_SEEDS, "v2": SEEDS, "v1": V1_SEEDS,
             "graph": GRAPH_SEEDS}
# A graph file is written as ckpt.meta or ckpt.pb (a SavedModel), beside checkpoint ckpt.
GRAPH_SUFFIXES = {".meta": "meta_graph", ".pb": "saved_model"}
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x3A, 0x12, 0x08]
# Integers for varint fields (dimensions, slice starts and lengths, dtype codes, lengths,
# versions): boundaries of int32/int64/uint64, 2**62 and negatives (ten-byte varints).
INTERESTING_INTS = [0, 1, 2, 3, 4, 7, 8, 127, 128, 253, 254, 255, 256, 2**15, 2**16,
                    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**62, 2**63 - 1, 2**63,
                    2**64 - 1, -1, -2, -2**31, -2**63]
U64 = (1 << 64) - 1
# Most bytes one structure-aware edit may add (repeated or grafted fields, grown
# payloads), so that cases stay small and fast however the edits compound.
GROWTH = 1 << 16


def is_v1(name: str) -> bool:
    """Whether seed ``name`` is a V1 checkpoint (named "v1/...")."""
    return name.startswith("v1/")


def is_graph(name: str) -> bool:
    """Whether seed ``name`` is a graph file (named "graph/...")."""
    return name.startswith("graph/")


def _graph_seed_files(name: str) -> dict:
    """A graph seed: the graph (".meta" or ".pb") and its checkpoint's files."""
    path = GRAPH_GOLDEN / name[len("graph/"):]
    if path.suffix == ".meta":
        out = {".meta": path.read_bytes()}
        prefix = path.with_suffix("")
    else:
        out = {".pb": path.read_bytes()}
        prefix = path.parent / "variables" / "variables"
    for file in sorted(prefix.parent.glob(prefix.name + "*")):
        suffix = file.name[len(prefix.name):]
        if suffix in ("", ".index") or suffix.startswith(".data-"):
            out[suffix] = file.read_bytes()
    return out


def seed_files(name: str) -> dict:
    """``{suffix: bytes}`` of one golden checkpoint: ".index" and ".data-..." for V2;
    for V1 "" (the prefix is the file) or "-SSSSS-of-NNNNN" for each shard; for a graph
    seed, its ".meta" or ".pb" too."""
    if is_graph(name):
        return _graph_seed_files(name)
    if is_v1(name):
        prefix = V1_GOLDEN / name[len("v1/"):]
        paths = [prefix] if prefix.is_file() else sorted(
            prefix.parent.glob(prefix.name + "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*"))
        return {path.name[len(prefix.name):]: path.read_bytes() for path in paths}
    prefix = GOLDEN / name
    out = {}
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        suffix = path.name[len(prefix.name):]
        if suffix == ".index" or suffix.startswith(".data-"):
            out[suffix] = path.read_bytes()
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            buf += bytes([rng.choice(INTERESTING)])
            continue
        op = rng.randrange(7)
        i = rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice(INTERESTING)
        elif op == 2:
            del buf[rng.randrange(len(buf)):]                   # truncate
        elif op == 3:
            n = rng.randint(1, 16)
            del buf[i:i + n]                                     # delete a run
        elif op == 4:
            n = rng.randint(1, 16)
            buf[i:i] = buf[i:i + n]                              # duplicate a run
        elif op == 5:
            # An over-long or huge varint where a length or count might be.
            buf[i:i + 1] = bytes([0xFF] * rng.randint(1, 10) + [rng.choice([0x01, 0x7F])])
        else:
            j = rng.randrange(len(buf))
            buf[i], buf[j] = buf[j], buf[i]
    return bytes(buf)


# ---- SSTable records: mutated, then rebuilt with valid block checksums ----------------

def table_pairs(data: bytes) -> list:
    """``[(key, value)]`` of every record of an SSTable, the header (key b"") first."""
    from tfshard import _index

    table = _index.IndexTable(data)
    return [(b"", table.header_value)] + [(table.key(h), bytes(table.value(h)))
                                          for h in table.handles()]


def build_table(pairs) -> bytes:
    """An SSTable of ``pairs`` (later duplicates of a key win), with valid checksums."""
    from tfshard import _build

    pairs = sorted(dict(pairs).items())  # the builder needs strictly increasing keys
    return _build.build_table([k for k, _ in pairs], [v for _, v in pairs])


def mutate_pairs(pairs: list, rng: random.Random, mutate_value=mutate,
                 header_share: float | None = None) -> list:
    """Mutate the values (mostly) or keys of one to three records; returns the records
    as the table will hold them (sorted, one per key).  ``header_share``: the chance
    that a mutation goes to the header record rather than a random one."""
    pairs = list(pairs)
    for _ in range(rng.randint(1, 3)):
        if header_share is not None and rng.random() < header_share:
            i = 0
        else:
            i = rng.randrange(len(pairs))
        key, value = pairs[i]
        if rng.random() < 0.8:
            value = mutate_value(value, rng)
        elif key:
            key = mutate(key, rng)
        pairs[i] = (key, value)
    return sorted(dict(pairs).items())


def mutate_entries(index: bytes, rng: random.Random) -> list:
    """Mutate entries or keys of a V2 index; returns the records to rebuild it from
    (``build_table``).  Raw mutations mostly stop at a block CRC, these reach the
    entry, shape, slice and key parsers."""
    from tfshard import _build, _index

    table = _index.IndexTable(index)
    pairs = [(b"", table.header_value)]
    for h in table.handles():
        code, shape, shard, offset, size, crc, nslices, _ = table.entry(h)
        value = (_build.encode_partitioned_entry(code, shape, table.slices(h)) if nslices
                 else _build.encode_entry(code, shape, shard, offset, size, crc))
        pairs.append((table.key(h), value))
    return mutate_pairs(pairs, rng)


# ---- protobuf records (V1): decoded into fields, mutated, re-encoded ------------------

def varint(n: int) -> bytes:
    """Protobuf varint of ``n`` (negatives as ten-byte two's complement)."""
    n &= U64
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int):
    """``(value, next position)``; ValueError unless canonically encoded and in bounds."""
    value = shift = 0
    start = pos
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if value > U64 or pos - start != len(varint(value)):
        raise ValueError
    return value, pos


class Field:
    """One protobuf field.  ``form`` is the wire type its body is encoded as (0 varint,
    1 fixed64, 2 length-delimited, 5 fixed32); ``wire`` the one its tag claims.
    ``children`` holds a length-delimited payload's fields when it parses as a message.
    ``raw_tag``, ``raw_len``, ``raw_value`` replace the canonical encodings."""

    __slots__ = ("num", "wire", "form", "value", "children", "raw_tag", "raw_len",
                 "raw_value")

    def __init__(self, num, form, value, children=None):
        self.num, self.wire, self.form, self.value, self.children = num, form, form, value, \
            children
        self.raw_tag = self.raw_len = self.raw_value = None

    def copy(self) -> "Field":
        f = Field(self.num, self.form, self.value,
                  None if self.children is None else [c.copy() for c in self.children])
        f.wire, f.raw_tag, f.raw_len, f.raw_value = (self.wire, self.raw_tag, self.raw_len,
                                                     self.raw_value)
        return f

    def payload(self) -> bytes:
        return encode_message(self.children) if self.children is not None else self.value


def parse_message(data: bytes, depth: int = 0):
    """The fields of ``data`` if it is a well-formed, canonically encoded protobuf
    message (so that re-encoding it gives back the same bytes), else None."""
    if not data or depth > 10:
        return None
    fields, pos = [], 0
    try:
        while pos < len(data):
            tag, pos = _read_varint(data, pos)
            num, wire = tag >> 3, tag & 7
            if num == 0 or num >= 1 << 29:
                return None
            if wire == 0:
                value, pos = _read_varint(data, pos)
                fields.append(Field(num, 0, value))
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                if pos + size > len(data):
                    return None
                fields.append(Field(num, wire, data[pos:pos + size]))
                pos += size
            elif wire == 2:
                size, pos = _read_varint(data, pos)
                if pos + size > len(data):
                    return None
                payload = data[pos:pos + size]
                pos += size
                fields.append(Field(num, 2, payload, parse_message(payload, depth + 1)))
            else:
                return None
    except ValueError:
        return None
    return fields


def encode_message(fields) -> bytes:
    out = bytearray()
    for f in fields:
        out += f.raw_tag if f.raw_tag is not None else varint(f.num << 3 | f.wire)
        if f.form == 0:
            out += f.raw_value if f.raw_value is not None else varint(f.value)
        elif f.form == 2:
            payload = f.payload()
            out += f.raw_len if f.raw_len is not None else varint(len(payload))
            out += payload
        else:
            out += f.value
    return bytes(out)


def _walk(fields, out=None) -> list:
    """``[(siblings, index)]`` of every field, nested ones included."""
    out = [] if out is None else out
    for i, f in enumerate(fields):
        out.append((fields, i))
        if f.children is not None:
            _walk(f.children, out)
    return out


def _interesting_int(rng: random.Random, old: int) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.choice(INTERESTING_INTS) & U64
    if r < 0.55:
        return (old + rng.choice([-1, 1, -2, 2])) & U64
    if r < 0.7:
        return old ^ (1 << rng.randrange(64))
    if r < 0.85:
        return rng.randrange(32) if rng.random() < 0.7 else rng.randrange(100, 131)  # dtypes
    return rng.getrandbits(rng.choice([8, 16, 32, 64]))


def _overlong(value: int, rng: random.Random) -> bytes:
    """A varint of ``value`` padded with redundant continuation bytes (or past ten bytes)."""
    raw = bytearray(varint(value))
    raw[-1] |= 0x80
    raw += b"\x80" * rng.randint(0, 10) + b"\x00"
    return bytes(raw)


def _mutate_payload(data: bytes, rng: random.Random) -> bytes:
    """A length-delimited payload (a name, packed values, tensor_content...) changed: its
    bytes edited, cut or grown by a few bytes (a stray partial element), doubled (twice
    the values), emptied, or replaced by packed varints."""
    op = rng.randrange(6)
    if op == 0 or not data:
        return mutate(data, rng)
    if op == 1:
        return data[:-rng.randint(1, min(8, len(data)))]
    if op == 2:
        return data + bytes(rng.choice(INTERESTING) for _ in range(rng.randint(1, 8)))
    if op == 3 and len(data) <= GROWTH:
        return data * rng.choice([2, 3])
    if op == 3:
        return data + data[:GROWTH]
    if op == 4:
        return b""
    return b"".join(varint(_interesting_int(rng, 0)) for _ in range(rng.randint(1, 8)))


def mutate_proto(data: bytes, rng: random.Random) -> bytes:
    """One to three structure-aware edits of a protobuf message: a field's value (an
    interesting integer, an over-long varint, edited fixed-width or length-delimited
    bytes), its length prefix, field number or wire type; a field dropped, duplicated
    (up to past the 254-dimension rank limit), reordered, grafted from elsewhere in
    the message, or a new field inserted; or the encoded message cut short.  Bytes
    that are not a message get raw edits."""
    fields = parse_message(data)
    if fields is None:
        return mutate(data, rng)
    cut = None
    for _ in range(rng.randint(1, 3)):
        nodes = _walk(fields)
        if not nodes:                                           # every field dropped
            break
        siblings, i = rng.choice(nodes)
        f = siblings[i]
        # Mostly edits that keep the message well-formed, so that the parsers get past
        # the wire format to the meaning of the fields.
        op = rng.choices(range(10), weights=[30, 9, 6, 10, 10, 12, 6, 9, 8, 2])[0]
        if op == 1 and f.form != 2:
            op = 0
        if op == 0 and f.children and rng.random() < 0.8:      # a value inside it, mostly
            siblings, i = rng.choice(_walk(f.children))
            f = siblings[i]
        if op == 0 and f.form == 0:                             # the value
            f.value, f.raw_value = _interesting_int(rng, f.value), None
        elif op == 0 and f.form == 2:
            f.value, f.children = _mutate_payload(f.payload(), rng), None
        elif op == 0:                                           # fixed32 / fixed64
            if rng.random() < 0.5:
                f.value = (mutate(f.value, rng) + bytes(8))[:len(f.value)]
            else:
                f.value = rng.choice([b"\xff", b"\x00", b"\x7f"]) * len(f.value)
        elif op == 1:                                           # the length prefix
            size = len(f.payload())
            f.raw_len = varint(rng.choice([size + 1, size - 1, size + rng.randint(2, 64),
                                           max(0, size - rng.randint(2, 64)), 0,
                                           rng.choice(INTERESTING_INTS)]))
        elif op == 2:                                           # over-long varints
            if f.form == 0 and rng.random() < 0.7:
                f.raw_value = _overlong(f.value, rng)
            else:
                f.raw_tag = _overlong(f.num << 3 | f.wire, rng)
        elif op == 3:                                           # field number or wire type
            if rng.random() < 0.7:
                f.num = rng.choice([rng.randint(1, 16), rng.randint(1, 16), f.num + 1,
                                    max(1, f.num - 1), rng.randrange(1 << 29)]) or 1
            else:
                f.wire = rng.choice([w for w in range(8) if w != f.wire])
        elif op == 4:                                           # drop a field
            if len(nodes) > 1:
                del siblings[i]
        elif op == 5:                                           # repeat a field
            n = rng.choice([1, 1, 1, 2, 3, 7, 253, 254, 255, 300])
            size = len(encode_message([f]))
            n = n if n * size <= GROWTH else min(n, max(1, GROWTH // size))
            siblings[i + 1:i + 1] = [f.copy() for _ in range(n)]
        elif op == 6:                                           # reorder
            j = rng.randrange(len(siblings))
            siblings[i], siblings[j] = siblings[j], siblings[i]
        elif op == 7:                                           # graft a field from elsewhere
            donor_siblings, k = rng.choice(nodes)
            donor = donor_siblings[k]
            if len(encode_message([donor])) <= GROWTH:
                siblings.insert(rng.randrange(len(siblings) + 1), donor.copy())
        elif op == 8:                                           # a new field
            num, form = rng.randint(1, 16), rng.choice([0, 0, 1, 2, 5])
            value = (_interesting_int(rng, 0) if form == 0 else
                     bytes(rng.getrandbits(8) for _ in range(8 if form == 1 else 4))
                     if form != 2 else _mutate_payload(b"", rng))
            siblings.insert(rng.randrange(len(siblings) + 1), Field(num, form, value))
        else:
            cut = rng.randrange(len(data) + 1)
    out = encode_message(fields)
    return out[:cut] if cut is not None and cut < len(out) else out


def mutate_v1_value(value: bytes, rng: random.Random) -> bytes:
    """A V1 record value: mostly structure-aware protobuf edits, sometimes raw ones."""
    return mutate_proto(value, rng) if rng.random() < 0.85 else mutate(value, rng)


def mutate_records(data: bytes, rng: random.Random) -> list:
    """Mutate records of a V1 file (the meta under key b"" a third of the time, else a
    random record); returns the records to rebuild it from (``build_table``).  An edit
    that changes nothing (a field swapped with itself) is tried again."""
    original = table_pairs(data)
    for _ in range(10):
        pairs = mutate_pairs(original, rng, mutate_v1_value, header_share=0.35)
        if pairs != original:
            break
    return pairs


def make_case(number: int, seed: int, seeds: str = "all") -> dict:
    """The files of case ``number``: a seed checkpoint (from ``SEED_SETS[seeds]``) with
    one file mutated.  ``file`` is that file's suffix; ``pairs`` the records it was
    rebuilt from when they were mutated behind valid checksums (else None)."""
    rng = random.Random(f"{seed}:{number}")
    name = rng.choice(SEED_SETS[seeds])
    files = seed_files(name)
    how = rng.random()
    pairs = None
    if is_graph(name):
        target = next(suffix for suffix in files if suffix in GRAPH_SUFFIXES)
        edit = mutate_proto if how < 0.7 else mutate
        mutated = f"ckpt{target}" + (" (fields)" if how < 0.7 else "")
        for _ in range(10):   # an edit may change nothing (a field swapped with itself)
            data = edit(files[target], rng)
            if data != files[target]:
                break
        files[target] = data
    elif is_v1(name):
        target = rng.choice(sorted(files))
        if how < 0.65:
            mutated = f"ckpt{target} (records)"
            pairs = mutate_records(files[target], rng)
            files[target] = build_table(pairs)
        else:
            mutated = f"ckpt{target}"
            files[target] = mutate(files[target], rng)
    elif how < 0.5:
        target, mutated = ".index", ".index (entries)"
        pairs = mutate_entries(files[".index"], rng)
        files[".index"] = build_table(pairs)
    else:
        target = rng.choice(sorted(files)) if how < 0.75 else ".index"
        mutated = target
        files[target] = mutate(files[target], rng)
    return {"seed_checkpoint": name, "mutated": mutated, "file": target, "pairs": pairs,
            "files": files}


def _values(graph, node) -> None:
    """Decode the Const values a node holds (a failure to decode one is an outcome, not
    the end of the case)."""
    import tfshard

    for value in node.attrs.values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, graph.TensorValue):
                try:
                    item.value(max_bytes=1 << 20)
                except tfshard.TFShardError:
                    pass


def exercise_graph(path: str, kind: str, prefix: str) -> str:
    """Open a graph file and walk its whole API; 'ok' or the TFShardError's class name."""
    import tfshard
    from tfshard import graph

    try:
        with graph.open(path, kind=kind) as f:
            json.dumps(graph.summary(f), allow_nan=False)
            graph.summary_lines(f)
            for g in f.meta_graphs:
                (g.stripped_op_list, g.any_info, g.function_aliases, g.asset_files,
                 g.serving_signatures(), g.saved_objects(), g.saved_functions(),
                 g.concrete_functions(), graph.risky_ops(g))
                for signature in g.signatures.values():
                    for default in signature.defaults.values():
                        try:
                            default.value(max_bytes=1 << 20)
                        except tfshard.TFShardError:
                            pass
                for head in g.nodes()[:500]:
                    _values(graph, g.node(head.name))
                    g.tensor(head.name)
                for function in g.functions()[:50]:
                    for node in g.function_nodes(function.name):
                        _values(graph, node)
                if tfshard.paths.checkpoint_version(prefix):
                    graph.check_restore(g, prefix)
        return "ok"
    except tfshard.TFShardError as exc:
        return type(exc).__name__


def exercise(prefix: str) -> str:
    """Open, list, read and verify everything; 'ok' or the TFShardError's class name.
    Any other exception propagates: that is a finding.  A case with a graph file
    (``prefix.meta``, ``prefix.pb``) exercises the graph instead (exercise_graph)."""
    import tfshard

    for suffix, kind in GRAPH_SUFFIXES.items():
        if os.path.isfile(prefix + suffix):
            return exercise_graph(prefix + suffix, kind, prefix)

    try:
        with tfshard.open(prefix) as ckpt:
            ckpt.infos()
            for name in ckpt:
                ckpt.read(name)
                info = ckpt.info(name)
                if info.shape and info.shape[0] > 1:
                    ckpt.read(name, index=slice(0, 1))
            ckpt.verify_all()
        tfshard.list_variables(prefix)
        return "ok"
    except tfshard.TFShardError as exc:
        return type(exc).__name__


def write_case(case: dict, directory: str) -> str:
    prefix = os.path.join(directory, "ckpt")
    for suffix, data in case["files"].items():
        with open(prefix + suffix, "wb") as f:
            f.write(data)
    return prefix


# ---- worker: runs cases in-process, reporting progress through a file --------------

def worker(first: int, count: int, seed: int, progress_path: str, seeds: str = "all") -> int:
    outcomes: dict = {}
    with tempfile.TemporaryDirectory(prefix="tfshard-fuzz-") as tmp:
        for number in range(first, first + count):
            with open(progress_path, "w") as f:
                f.write(str(number))
            case_dir = os.path.join(tmp, str(number))
            os.mkdir(case_dir)
            prefix = write_case(make_case(number, seed, seeds), case_dir)
            # Self-test hooks, so tests can check that a crash or a stray exception in a
            # case is caught and saved: TFSHARD_FUZZ_SELFTEST="crash:N" or "raise:N".
            selftest = os.environ.get("TFSHARD_FUZZ_SELFTEST", "")
            if selftest == f"crash:{number}":
                os.kill(os.getpid(), signal.SIGSEGV)
            try:
                if selftest == f"raise:{number}":
                    raise RuntimeError("self-test")
                outcome = exercise(prefix)
            except Exception as exc:  # a finding: report it and stop this worker
                with open(progress_path, "w") as f:
                    json.dump({"number": number, "error": f"{type(exc).__name__}: {exc}"}, f)
                return 3
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            shutil.rmtree(case_dir)
    with open(progress_path, "w") as f:
        json.dump({"done": first + count, "outcomes": outcomes}, f)
    return 0


# ---- parent ----------------------------------------------------------------------

def fails(files: dict, case_timeout: float) -> bool:
    """Whether these checkpoint files make a fresh process fail in another way than
    success or a TFShardError (a stray exception, a crash or a hang)."""
    with tempfile.TemporaryDirectory(prefix="tfshard-fuzz-min-") as tmp:
        prefix = write_case({"files": files}, tmp)
        code = ("import sys; sys.path.insert(0, %r); import fuzz; fuzz.exercise(%r)"
                % (str(Path(__file__).parent), prefix))
        try:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  timeout=case_timeout)
        except subprocess.TimeoutExpired:
            return True
        return proc.returncode != 0


def shrink_bytes(current: bytes, original: bytes, still_fails, budget: int) -> bytes:
    """Shrink ``current`` towards ``original``: cut the end off while it still fails, then
    put back runs of ``original``'s bytes (halving the run length, as delta debugging
    does) at the same offsets.  ``still_fails(candidate)`` runs one try and says whether
    it still fails; at most ``budget`` tries."""
    tries = 0

    def attempt(candidate: bytes) -> bool:
        nonlocal tries, current
        tries += 1
        if still_fails(candidate):
            current = candidate
            return True
        return False

    lo, hi = 0, len(current)
    while lo < hi and tries < budget:
        mid = (lo + hi) // 2
        if attempt(current[:mid]):
            hi = len(current)
        else:
            lo = mid + 1
    run = max(1, len(current) // 2)
    while run >= 1 and tries < budget:
        pos = 0
        while pos < len(current) and tries < budget:
            patched = current[:pos] + original[pos:pos + run] + current[pos + run:]
            patched = patched[:len(current)]
            if patched != current:
                attempt(patched)
            pos += run
        run //= 2
    return current


def minimize(case: dict, case_timeout: float, budget: int = 200) -> dict:
    """Shrink a failing case towards its seed checkpoint, keeping each change that still
    fails; returns the smaller files.  A raw byte mutation is shrunk byte by byte
    (``shrink_bytes``).  Records mutated behind valid checksums are shrunk record by
    record, the table rebuilt each time: each mutated record put back as the seed
    holds it, other records dropped, then the bytes of what is left shrunk towards
    the seed's record."""
    files = dict(case["files"])
    target = case["file"] if "file" in case else (
        ".index" if case["mutated"].startswith(".index") else case["mutated"])
    original = seed_files(case["seed_checkpoint"])[target]
    if case.get("pairs") is None:
        def still_fails(candidate: bytes) -> bool:
            return fails(dict(files, **{target: candidate}), case_timeout)

        files[target] = shrink_bytes(files[target], original, still_fails, budget)
        return files

    seed = dict(table_pairs(original))
    pairs = dict(case["pairs"])
    tries = 0

    def attempt(candidate: dict) -> bool:
        nonlocal tries, pairs
        tries += 1
        data = build_table(candidate.items())
        if fails(dict(files, **{target: data}), case_timeout):
            pairs = candidate
            files[target] = data
            return True
        return False

    # Put back each mutated record (or drop a record under a mutated key; restore
    # records whose key was mutated away).
    for key in sorted(set(pairs) | set(seed)):
        if tries >= budget:
            break
        if pairs.get(key) != seed.get(key):
            candidate = dict(pairs)
            if key in seed:
                candidate[key] = seed[key]
            else:
                del candidate[key]
            attempt(candidate)
    # Drop untouched records: all at once, then halving the number dropped at once.
    untouched = [k for k in sorted(pairs) if k and pairs[k] == seed.get(k)]
    chunk = len(untouched)
    while chunk >= 1 and tries < budget:
        for i in range(0, len(untouched), chunk):
            if tries >= budget:
                break
            drop = set(untouched[i:i + chunk]) & set(pairs)
            if drop:
                attempt({k: v for k, v in pairs.items() if k not in drop})
        chunk //= 2
    # Shrink the bytes of each record still mutated.
    for key in sorted(pairs):
        if tries >= budget:
            break
        if pairs[key] != seed.get(key):
            def still_fails(value: bytes, key=key) -> bool:
                candidate = dict(pairs)
                candidate[key] = value
                return attempt(candidate)

            shrink_bytes(pairs[key], seed.get(key, b""), still_fails, budget - tries)
    return files


def save_finding(findings: Path, number: int, seed: int, why: str,
                 case_timeout: float = 5.0, seeds: str = "all") -> Path:
    case = make_case(number, seed, seeds)
    out = findings / (f"seed{seed}-case{number}" if seeds == "all" else
                      f"seed{seed}-{seeds}-case{number}")
    out.mkdir(parents=True, exist_ok=True)
    write_case(case, str(out))
    minimized = out / "minimized"
    if fails(case["files"], case_timeout):  # reproducible in a fresh process: shrink it
        minimized.mkdir(exist_ok=True)
        write_case({"files": minimize(case, case_timeout)}, str(minimized))
    (out / "finding.json").write_text(json.dumps({
        "seed": seed, "seeds": seeds, "case": number,
        "seed_checkpoint": case["seed_checkpoint"], "mutated": case["mutated"], "why": why,
        "minimized": minimized.is_dir()}, indent=1) + "\n")
    return out


def run(seed: int, count: int | None, seconds: float | None, batch: int, case_timeout: float,
        findings: Path, log=print, seeds: str = "all") -> dict:
    """Run cases in worker processes until ``count`` cases or ``seconds`` have passed;
    ``seeds`` picks the seed checkpoints (a key of ``SEED_SETS``)."""
    start, number = time.monotonic(), 0
    totals: dict = {}
    found = []
    while (count is None or number < count) and (seconds is None
                                                 or time.monotonic() - start < seconds):
        n = batch if count is None else min(batch, count - number)
        with tempfile.NamedTemporaryFile("r", suffix=".progress", delete=False) as p:
            progress = p.name
        cmd = [sys.executable, __file__, "--worker", str(number), str(n), str(seed), progress,
               seeds]
        try:
            proc = subprocess.run(cmd, timeout=case_timeout * n, capture_output=True, text=True)
            status = proc.returncode
            detail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        except subprocess.TimeoutExpired:
            status, detail = "timeout", []
        text = Path(progress).read_text()
        os.unlink(progress)
        if status == 0:
            report = json.loads(text)
            for k, v in report["outcomes"].items():
                totals[k] = totals.get(k, 0) + v
            number = report["done"]
            continue
        try:
            info = json.loads(text)
            failed, why = info["number"], info["error"]
        except (ValueError, KeyError, TypeError):
            failed = int(text) if text.strip().isdigit() else number
            why = (f"worker ended by signal {signal.Signals(-status).name}"
                   if isinstance(status, int) and status < 0 else
                   f"worker: {status} {' '.join(detail)}")
        where = save_finding(findings, failed, seed, why, case_timeout, seeds)
        found.append({"case": failed, "why": why, "saved": str(where)})
        log(f"FINDING case {failed}: {why} -> {where}")
        number = failed + 1
    return {"seeds": seeds, "cases": number, "outcomes": totals, "findings": found,
            "seconds": round(time.monotonic() - start, 1)}


def replay(directory: Path) -> list:
    """Re-run saved findings: directories holding finding.json and the checkpoint
    ``ckpt`` (ckpt.index and ckpt.data-* for V2; the file ckpt, or ckpt-SSSSS-of-NNNNN
    shards, for V1).  Returns ``[(path, outcome)]``; each must now end in 'ok' or a
    TFShardError."""
    results = []
    for finding in sorted(directory.glob("*/finding.json")):
        prefix = str(finding.parent / "ckpt")
        results.append((str(finding.parent), exercise(prefix)))
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        first, count, seed, progress, seeds = argv[1:6]
        return worker(int(first), int(count), int(seed), progress, seeds)
    parser = argparse.ArgumentParser(description=__doc__[:__doc__.index("Examples")].strip(),
                                     epilog=__doc__[__doc__.index("Examples"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--seeds", choices=sorted(SEED_SETS), default="all",
                        help="seed checkpoints: v2 (tests/data/golden), v1 (legacy TensorSlice "
                             "files, tests/data/v1), graph (.meta and saved_model.pb files, "
                             "tests/data/graph) or all (default)")
    parser.add_argument("--count", type=int, help="number of cases")
    parser.add_argument("--time", type=float, metavar="SECONDS", help="run for this long")
    parser.add_argument("--batch", type=int, default=200, help="cases per worker process")
    parser.add_argument("--case-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="a case slower than this (on average over its batch) is a hang")
    parser.add_argument("--findings", type=Path, default=Path("fuzz-findings"),
                        help="where inputs that fail are saved (default ./fuzz-findings); "
                             "move real ones to tests/data/fuzz/ as regression files")
    parser.add_argument("--replay", type=Path, metavar="DIR", help="re-run saved findings")
    args = parser.parse_args(argv)
    if args.replay:
        results = replay(args.replay)
        for path, outcome in results:
            print(f"{outcome:28s} {path}")
        return 0
    if args.count is None and args.time is None:
        parser.error("give --count or --time")
    summary = run(args.seed, args.count, args.time, args.batch, args.case_timeout, args.findings,
                  seeds=args.seeds)
    print(json.dumps(summary, indent=1))
    return 1 if summary["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
