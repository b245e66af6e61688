"""numpy's formats as format adapters: ``.npy`` header parsing (validated so a
hostile header never causes a large allocation or an unpickling), ``.npz``
archives (stored members are zero-copy views of a map of the archive, written
aligned and uncompressed) and directories of ``.npy`` files with a
``names.json`` table, each with its source and sink."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import mmap
import os
import shutil
import struct
import unicodedata
import zipfile
import zlib

from .._util import close_map, create_exclusive, exchange_paths, remove_file, temp_name, write_all
from ..errors import (
    CheckpointNotFoundError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    OutputExistsError,
    UnsupportedError,
)
from ..slices import prod
from ._base import (
    _NAMES_FILE,
    Sink,
    Source,
    _check_file_output,
    _empty,
    _install_file,
    _is_plain_filename,
    _make_dirs,
    _open_binary,
    _read_json,
    _tf_name_of_numpy,
)


# ---- npy headers (npz members and npy directories) ---------------------------------

class _NpyHeader:
    __slots__ = ("dtype", "tf_name", "shape", "fortran", "data_offset", "nbytes", "where",
                 "name")

    def __init__(self, dtype, tf_name, shape, fortran, data_offset, nbytes, where, name):
        self.dtype, self.tf_name, self.shape = dtype, tf_name, shape
        self.fortran, self.data_offset, self.nbytes = fortran, data_offset, nbytes
        self.where, self.name = where, name


def _parse_npy_header(read, total: int, where: str, name: str) -> _NpyHeader:
    """Parse an .npy header through ``read(n)`` (the array's ``total`` bytes start
    there); ``data_offset`` is relative to the header's start.  The array must
    fit in ``total``, so a hostile shape never causes a large allocation."""
    import numpy as np

    def corrupt(message):
        return CorruptCheckpointError(f"{where}: {message}", path=where, key=name)

    prefix = read(10)
    if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY":
        raise corrupt("not an .npy array (bad magic)")
    major = prefix[6]
    if major == 1:
        length_field, start = prefix[8:10], 10
    elif major in (2, 3):
        length_field, start = prefix[8:10] + read(2), 12
    else:
        raise UnsupportedError(f"{where}: .npy format version {major}.{prefix[7]} is not "
                               f"supported", path=where, key=name)
    length = int.from_bytes(length_field, "little")
    if start + length > total:
        raise corrupt(f"the header claims {length} bytes, more than the {total} stored")
    text = read(length)
    if len(text) != length:
        raise corrupt("the header is truncated")
    parse = (np.lib.format.read_array_header_1_0 if major == 1
             else np.lib.format.read_array_header_2_0)
    try:
        shape, fortran, dtype = parse(io.BytesIO(length_field + text))
    except Exception as exc:  # numpy's parser (ast, tokenize) raises many types on bad text
        raise corrupt(f"bad .npy header: {type(exc).__name__}: {exc}") from None
    tf_name = _tf_name_of_numpy(dtype)
    if tf_name is None:
        why = ("pickled Python objects (tfshard never unpickles)" if dtype.hasobject
               else f"dtype {dtype}, which has no TensorFlow equivalent")
        raise UnsupportedError(f"{where}: array {name!r} holds {why}", path=where, key=name)
    if dtype.itemsize == 0:
        raise UnsupportedError(f"{where}: array {name!r} has zero-width dtype {dtype}",
                               path=where, key=name)
    if len(shape) > 64:
        raise UnsupportedError(f"{where}: array {name!r} has rank {len(shape)}; numpy "
                               f"allows 64", path=where, key=name)
    if any(d < 0 for d in shape):  # numpy's parser lets them through
        raise corrupt(f"array {name!r} has negative dimensions {list(shape)}")
    nbytes = prod(shape) * dtype.itemsize
    if start + length + nbytes > total:
        raise corrupt(f"array {name!r} is {dtype} {list(shape)} ({nbytes} bytes), but only "
                      f"{total - start - length} bytes follow its header")
    return _NpyHeader(dtype, tf_name, tuple(shape), fortran, start + length, nbytes, where,
                      name)


def _buffer_reader(buffer, position: int):
    """``read(n)`` over a buffer, for :func:`_parse_npy_header`."""
    def read(n):
        nonlocal position
        chunk = bytes(buffer[position:position + n])
        position += len(chunk)
        return chunk
    return read


def _npy_array(buffer, data_start: int, h: _NpyHeader):
    """The array described by ``h`` whose data starts at ``data_start`` in
    ``buffer``: a read-only view when the bytes allow, else a converted copy."""
    import numpy as np

    count = prod(h.shape)
    if count == 0:
        arr = _empty(h.shape, h.dtype, h.where, h.name)
    else:
        arr = np.frombuffer(buffer, dtype=h.dtype, count=count, offset=data_start)
        arr = arr.reshape(h.shape[::-1]).T if h.fortran else arr.reshape(h.shape)
    return _normalized(arr)


def _normalized(arr):
    """Arrays as TF's dtypes are returned: native byte order, strings as object
    arrays of bytes."""
    import numpy as np

    if arr.dtype.kind in "SU":
        flat = [v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape")
                for v in arr.ravel().tolist()]
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(arr.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
        arr.flags.writeable = False
    return arr


@contextlib.contextmanager
def _zip_errors(path: str, doing: str, name=None, where=None):
    """Turn what :mod:`zipfile` raises into tfshard errors.  It parses the archive
    in Python and, on hostile bytes, raises nearly anything (struct.error,
    zlib.error, OSError for a negative seek, ...)."""
    try:
        yield
    except (CorruptCheckpointError, UnsupportedError):
        raise
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown method/version
        raise UnsupportedError(f"{where or path}: {doing}: {exc}", path=path,
                               key=name) from None
    except Exception as exc:
        # zipfile checks a compressed member's CRC-32 as it reads it to the end.
        cls = ChecksumMismatchError if "CRC" in str(exc) else CorruptCheckpointError
        raise cls(f"{where or path}: {doing}: {type(exc).__name__}: {exc}",
                  path=path, key=name) from None


class _NpyFilesSource(Source):
    """Sources whose tensors are ``.npy`` records: dtype, shape and size come from
    each record's parsed header (``self._header(name)``)."""

    def _info(self, name):
        h = self._header(name)
        return h.tf_name, h.shape

    def _nbytes(self, name):
        return self._header(name).nbytes


class _NpzSource(_NpyFilesSource):
    """An ``.npz`` archive.  Stored members (``numpy.savez``, tfshard) are zero-copy
    views of a map of the archive; compressed ones are decompressed on read."""

    format = "npz"

    def __init__(self, path):
        super().__init__(path)
        self._file = _open_binary(path, "npz archive")
        self._zip = self._map = None
        try:
            self._size = os.fstat(self._file.fileno()).st_size
            with _zip_errors(path, "not a valid zip archive"):
                self._zip = zipfile.ZipFile(self._file)
            self._members = {}
            for zi in self._zip.infolist():
                if zi.filename.endswith(".npy") and not zi.is_dir():
                    self._members[zi.filename[:-4]] = zi
                else:
                    self.skipped.append((zi.filename, "not an .npy member"))
            self._sorted = sorted(self._members)
            self._headers: dict = {}
            self._crc_checked: set = set()
            if self._size:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self.close()
            raise

    def _names(self):
        return self._sorted

    def _member(self, name) -> zipfile.ZipInfo:
        zi = self._members.get(name) if isinstance(name, str) else None
        if zi is None:
            raise self._not_found(name)
        return zi

    def _stored_start(self, zi) -> int | None:
        """Offset in the archive of a stored member's bytes (None if compressed)."""
        if zi.compress_type != zipfile.ZIP_STORED or zi.flag_bits & 0x1:
            return None
        where = f"{self.path}:{zi.filename}"
        local = zi.header_offset
        if local + 30 > self._size or self._map[local:local + 4] != b"PK\x03\x04":
            raise CorruptCheckpointError(f"{where}: bad local file header at {local}",
                                         path=self.path, key=zi.filename, offset=local)
        name_len, extra_len = struct.unpack("<HH", self._map[local + 26:local + 30])
        start = local + 30 + name_len + extra_len
        if zi.compress_size != zi.file_size or start + zi.file_size > self._size:
            raise CorruptCheckpointError(
                f"{where}: member data [{start}, {start + zi.file_size}) lies past the end of "
                f"the {self._size}-byte archive", path=self.path, key=zi.filename, offset=start)
        return start

    def _header(self, name):
        h = self._headers.get(name)
        if h is None:
            zi = self._member(name)
            where = f"{self.path}:{zi.filename}"
            start = self._stored_start(zi)
            with _zip_errors(self.path, "cannot read member", name, where):
                if start is not None:
                    h = _parse_npy_header(_buffer_reader(self._map, start), zi.file_size,
                                          where, name)
                else:
                    with self._zip.open(zi) as fp:
                        h = _parse_npy_header(fp.read, zi.file_size, where, name)
            self._headers[name] = h
        return h

    def _read(self, name):
        h = self._header(name)
        zi = self._members[name]
        start = self._stored_start(zi)
        if start is not None:
            if name not in self._crc_checked:
                self._check_crc(zi, start)
                self._crc_checked.add(name)
            return _npy_array(self._map, start + h.data_offset, h)
        where = f"{self.path}:{zi.filename}"
        with _zip_errors(self.path, "cannot read member", name, where):
            with self._zip.open(zi) as fp:
                fp.read(h.data_offset)
                data = fp.read(h.nbytes)
                fp.read(1)  # reach the end, so zipfile checks the member's CRC
        if len(data) != h.nbytes:
            raise CorruptCheckpointError(f"{where}: member data is truncated", path=self.path,
                                         key=name)
        return _npy_array(data, 0, h)

    def _check_crc(self, zi, start: int):
        """A stored member's CRC-32, as zipfile checks it for compressed ones (which
        are read through it): once per member, on its first read."""
        computed = zlib.crc32(memoryview(self._map)[start:start + zi.file_size]) \
            if zi.file_size else 0
        if computed != zi.CRC:
            raise ChecksumMismatchError(
                f"{self.path}:{zi.filename}: the member's CRC-32 does not match its bytes "
                f"(stored {zi.CRC:#010x}, computed {computed:#010x}); the archive is corrupt",
                path=self.path, key=zi.filename, offset=start)

    def _close(self):
        if self._zip is not None:
            self._zip.close()
        close_map(self._map)
        self._file.close()


class _NpySource(_NpyFilesSource):
    """A directory of ``.npy`` files with ``names.json`` (``{file: tensor name}``),
    as the npy sink writes it.  Files are mapped on read."""

    format = "npy"

    def __init__(self, path):
        super().__init__(path)
        table_path = os.path.join(path, _NAMES_FILE)
        if not os.path.isdir(path):
            raise CheckpointNotFoundError(f"{path} is not a directory (an npy model is a "
                                          f"directory of .npy files with {_NAMES_FILE})",
                                          path=path)
        table = _read_json(table_path, "npy name table", 1 << 30)
        if not isinstance(table, dict):
            raise CorruptCheckpointError(f"{table_path}: expected an object mapping file "
                                         f"names to tensor names", path=table_path)
        self._files = {}
        for file, name in table.items():
            # The table must not send reads outside the directory.
            if not (_is_plain_filename(file) and file.endswith(".npy") and isinstance(name, str)):
                raise CorruptCheckpointError(f"{table_path}: entry {file!r}: {name!r} is not "
                                             f"'<file>.npy': '<tensor name>'", path=table_path)
            if name in self._files:
                raise CorruptCheckpointError(f"{table_path}: tensor {name!r} is listed twice",
                                             path=table_path, key=name)
            self._files[name] = os.path.join(path, file)
        self._sorted = sorted(self._files)
        self._headers: dict = {}

    def _names(self):
        return self._sorted

    def _open(self, name):
        """(map or b"", header) of tensor ``name``'s file."""
        file = self._files.get(name) if isinstance(name, str) else None
        if file is None:
            raise self._not_found(name)
        with _open_binary(file, f"array file of tensor {name!r}") as f:
            size = os.fstat(f.fileno()).st_size
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        h = _parse_npy_header(_buffer_reader(buffer, 0), size, file, name)
        self._headers[name] = h
        return buffer, h

    def _header(self, name):
        h = self._headers.get(name)
        return h if h is not None else self._open(name)[1]

    def _read(self, name):
        buffer, h = self._open(name)
        return _npy_array(buffer, h.data_offset, h)


# ---- writing ------------------------------------------------------------------------

class _NpzSink(Sink):
    """An ``.npz`` archive (uncompressed, zip64), each tensor streamed into its
    member as it is added."""

    format = "npz"
    # Member data starts on this boundary (an alignment record in each local
    # header's extra field), so the reader's views of the mapped archive are
    # aligned for every dtype.
    _ALIGN = 64
    _file = _zip = _temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        _check_file_output(self, path, overwrite)
        self._created_dirs = _make_dirs(os.path.dirname(path))
        self._temp = temp_name(path)
        try:
            self._file = os.fdopen(create_exclusive(self._temp), "w+b")
            self._zip = zipfile.ZipFile(self._file, "w", zipfile.ZIP_STORED, allowZip64=True)
        except BaseException:
            self.abort()
            raise

    def _write(self, name, dt, shape, array):
        import numpy as np

        arr = self._array(name, dt, shape, array)
        member = name + ".npy"
        info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        # Local header: 30 bytes, the name, our extra record (id, size, 2-byte
        # alignment, padding) and the 20-byte zip64 record force_zip64 adds.
        # numpy pads its header to 64 bytes, so the array data is aligned too.
        encoded = member.encode("ascii" if member.isascii() else "utf-8")
        pad = -(self._file.tell() + 30 + len(encoded) + 6 + 20) % self._ALIGN
        info.extra = struct.pack("<HHH", 0xD935, 2 + pad, self._ALIGN) + b"\0" * pad
        with self._zip.open(info, "w", force_zip64=True) as fp:
            np.lib.format.write_array(fp, arr, allow_pickle=False)

    def _commit(self):
        self._zip.close()
        self._file.close()
        return [_install_file(self, self._temp, self.path)]

    def _abort(self):
        for closeable in (self._zip, self._file):
            if closeable is not None:
                try:
                    closeable.close()
                except Exception:
                    pass  # a half-written archive: it is removed below
        if self._temp is not None:
            remove_file(self._temp)


# ---- npy directories ---------------------------------------------------------------

def _write_npy(fd: int, arr) -> None:
    """An .npy file of ``arr`` (numpy's own header, then the bytes) with every write
    checked, which ``numpy.save`` does not report with an errno."""
    import numpy as np

    header = io.BytesIO()
    meta = np.lib.format.header_data_from_array_1_0(arr)
    try:
        np.lib.format.write_array_header_1_0(header, meta)
    except ValueError:  # a header too long for version 1.0
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, meta)
    write_all(fd, header.getvalue())
    # A Fortran-ordered array is stored in its memory order, as numpy does.
    data = arr.T if meta["fortran_order"] else np.ascontiguousarray(arr)
    if data.size:
        write_all(fd, data.reshape(-1).view(np.uint8))


# Names Windows reserves whatever the extension; a file may not be called so.
_WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(10)}
                              | {f"LPT{i}" for i in range(10)})
_MAX_STEM_BYTES = 200  # file names are limited to 255 bytes on common filesystems
_UNSAFE_CHARS = frozenset('<>:"|?*')
# Control and format characters (NUL, newlines, bidi overrides that make a name
# display as another), lone surrogates, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _npy_stem(name: str) -> str:
    """A readable file stem for tensor ``name`` that has no directory part:
    separators become ``__`` (``dense/kernel`` -> ``dense__kernel``); NUL,
    control characters, characters Windows refuses and lone surrogates become
    ``_``; no leading dot (so neither ``.`` nor ``..``, nor a hidden file)."""
    out = []
    for ch in name:
        if ch in "/\\":
            out.append("__")
        elif ch in _UNSAFE_CHARS or unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            out.append("_")
        else:
            out.append(ch)
    stem = "".join(out)
    if stem.startswith("."):
        stem = "_" + stem[1:]
    stem = stem.rstrip(" .") or "_"  # Windows drops trailing dots and spaces
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    if len(stem.encode("utf-8")) > _MAX_STEM_BYTES:
        cut = stem.encode("utf-8")[:_MAX_STEM_BYTES - 9].decode("utf-8", "ignore")
        stem = f"{cut}~{_name_hash(name)}"
    return stem


def _name_hash(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _npy_filenames(names) -> dict:
    """``{tensor name: file name}``, distinct even on case- or normalization-
    insensitive filesystems (Windows, macOS)."""
    def folded(file):
        return unicodedata.normalize("NFC", file).casefold()

    taken: set = set()
    out = {}
    for name in names:
        stem = _npy_stem(name)
        candidate, n = stem, 1
        while folded(candidate + ".npy") in taken:
            # Deterministic: the hash of the name, then a counter if even that collides.
            candidate = f"{stem}~{_name_hash(name)}" + (f"~{n}" if n > 1 else "")
            n += 1
        out[name] = candidate + ".npy"
        taken.add(folded(out[name]))
    return out


def _is_npy_output(directory: str) -> bool:
    """Whether ``directory`` looks like what the npy sink writes (and so may be
    replaced by it): ``names.json`` and ``.npy`` files only."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return False
    return _NAMES_FILE in entries and all(
        e == _NAMES_FILE or (e.endswith(".npy") and os.path.isfile(os.path.join(directory, e)))
        for e in entries)


class _NpySink(Sink):
    """A directory of one ``.npy`` per tensor plus ``names.json``, written as a
    temporary directory renamed into place."""

    format = "npy"
    _temp = None

    def __init__(self, path, plan, *, max_shard_size, overwrite):
        # "out/" and "out" are the same directory; a temporary name is made beside it.
        path = path.rstrip(os.sep + (os.altsep or "")) or path
        super().__init__(path, plan, max_shard_size=max_shard_size, overwrite=overwrite)
        self._check_target()
        self._files = _npy_filenames(plan)
        self._created_dirs = _make_dirs(os.path.dirname(path))
        self._temp = temp_name(path)
        try:
            os.mkdir(self._temp)
        except BaseException:
            self.abort()
            raise

    def _check_target(self):
        path = self.path
        if not os.path.lexists(path):
            return
        if not self.overwrite:
            raise self._exists_error(path)
        if not os.path.isdir(path) or os.path.islink(path) or not _is_npy_output(path):
            raise OutputExistsError(
                f"{path} exists and is not an npy output (a directory of .npy files and "
                f"{_NAMES_FILE}); it is not replaced, even with overwrite=True", path=path)

    def _write(self, name, dt, shape, array):
        arr = self._array(name, dt, shape, array)
        fd = create_exclusive(os.path.join(self._temp, self._files[name]))
        try:
            _write_npy(fd, arr)
        finally:
            os.close(fd)

    def _commit(self):
        table = {file: name for name, file in self._files.items()}
        # ASCII JSON: names from non-UTF-8 TF keys (lone surrogates) round-trip as escapes.
        with builtins.open(os.path.join(self._temp, _NAMES_FILE), "x", encoding="ascii") as f:
            json.dump(table, f, indent=1)
        self._check_target()
        old = None
        if os.path.lexists(self.path):
            if exchange_paths(self._temp, self.path):
                # Swapped in one step: the path never lacked a complete output.
                old, self._temp = self._temp, None
            else:
                old = temp_name(self.path)
                os.rename(self.path, old)
                try:
                    os.rename(self._temp, self.path)
                except BaseException:
                    os.rename(old, self.path)
                    raise
        else:
            os.rename(self._temp, self.path)
        self._temp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return [os.path.join(self.path, _NAMES_FILE)] + [
            os.path.join(self.path, self._files[n]) for n in self._plan]

    def _abort(self):
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
