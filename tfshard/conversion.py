"""Model conversion and checkpoint surgery: convert, extract, merge, rename, strip, diff,
verify, and (from :mod:`tfshard.surgery`) average and reshard.

Every operation streams: tensors are read one at a time (zero-copy views of the
input's memory map where the format allows) and handed to the output before the
next is read, so memory stays near the largest tensor whatever the model size.
Outputs are written atomically and never replace an existing file unless
``overwrite=True``.  The command line (``tfshard convert ...``) is a thin layer
over these functions.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import dtypes
from .errors import CorruptCheckpointError, InvalidTensorError, NothingSelectedError, UnsupportedError
from .objectgraph import OBJECT_GRAPH_KEY, model_keys, serialized_graph, without_keys
from .formats import (
    CHECKSUM_KEY,
    create_sink,
    detect_format,
    fmt_of_url,
    open_source,
    unsupported,
)
from .storage import default_options, is_url

__all__ = ["convert", "extract", "merge", "rename", "strip", "diff", "verify",
           "average", "reshard", "find_ema",
           "ConvertReport", "DiffReport", "VerifyReport", "AverageReport", "ReshardReport",
           "PRESETS", "parse_rules"]

# Floating dtypes a --dtype cast applies to; every other tensor is copied as it is.
_FLOATING = {"float16", "bfloat16", "float32", "float64"}

# TF1 optimizer slot suffixes: a tensor `<var>/<suffix>` is a slot of `<var>`.
_TF1_SLOTS = {"Adam", "Adam_1", "Momentum", "RMSProp", "RMSProp_1", "Adagrad", "Adadelta",
              "Adadelta_1", "Ftrl", "Ftrl_1", "AdamW", "AdamW_1", "Nadam", "Nadam_1",
              "Adamax", "Adamax_1", "ProximalAdagrad", "AdagradDA", "AdagradDA_1"}
_TF1_OPTIMIZER_SCALARS = {"beta1_power", "beta2_power"}
_STEP_NAMES = {"global_step", "step"}

# ``framework`` of a safetensors output -> the "format" its metadata records (the
# values the safetensors library and transformers use).
_FRAMEWORK_FORMATS = {"torch": "pt", "tf": "tf", "jax": "flax", "numpy": "np"}


@dataclass
class ConvertReport:
    """What a conversion wrote.

    Attributes
    ----------
    tensors : int
    nbytes : int
        Bytes of tensor data read from the inputs.
    written_bytes : int
        Bytes of tensor data written (less than ``nbytes`` after a cast to a
        narrower dtype).
    outputs : list of str
        Files written.
    mapping : dict
        Output name of every input tensor written (``{old: new}``).
    dropped : list of str
        Input tensors not written (filtered out, stripped, or lost to a conflict).
    dropped_bytes : int
        Bytes of the dropped tensors (computed by :func:`strip`).
    skipped : list of (str, str)
        With ``skip_unsupported``: ``(name, reason)`` of each tensor the output
        format cannot hold, left out.
    replaced : dict
        With ``prefer_ema``: ``{name: key of the moving average written as it}``.
    ema_not_found : list of str
        With ``prefer_ema``: floating model tensors written that have no moving
        average (optimizer state is not listed).
    not_cast : list of str
        With ``dtype``: floating tensors a ``keep`` pattern kept in their dtype.
    transposed : list of str
        Tensors written with their axes reversed (``transpose``, presets).
    """

    tensors: int = 0
    nbytes: int = 0
    written_bytes: int = 0
    outputs: list = field(default_factory=list)
    mapping: dict = field(default_factory=dict)
    dropped: list = field(default_factory=list)
    dropped_bytes: int = 0
    skipped: list = field(default_factory=list)
    replaced: dict = field(default_factory=dict)
    ema_not_found: list = field(default_factory=list)
    not_cast: list = field(default_factory=list)
    transposed: list = field(default_factory=list)


# ---- rules -------------------------------------------------------------------

def parse_rules(rules) -> list:
    """``[(compiled_regex, replacement), ...]`` from ``"REGEX=REPL"`` strings or pairs.

    The first ``=`` that is not escaped (``\\=``) separates the two parts.
    """
    parsed = []
    for rule in rules or ():
        if isinstance(rule, str):
            m = re.match(r"^((?:[^=\\]|\\.)*)=(.*)$", rule, re.S)
            if not m:
                raise InvalidTensorError(f"rename rule {rule!r} needs the form 'REGEX=REPLACEMENT'")
            pattern, repl = m.group(1).replace("\\=", "="), m.group(2)
        else:
            pattern, repl = rule
        try:
            parsed.append((re.compile(pattern), repl))
        except re.error as exc:
            raise InvalidTensorError(f"rename rule {pattern!r}: {exc}") from None
    return parsed


def _rename_all(names: list, rules: list) -> dict:
    """``{old: new}`` after applying every rule in order; refuses two names made one."""
    mapping = {}
    for name in names:
        new = name
        for regex, repl in rules:
            try:
                new = regex.sub(repl, new)
            except (re.error, IndexError) as exc:
                raise InvalidTensorError(f"rename rule {regex.pattern!r} on {name!r}: {exc}")
        if not new:
            raise InvalidTensorError(f"the rename rules turn {name!r} into an empty name",
                                     key=name)
        mapping[name] = new
    _refuse_collisions(mapping)
    return mapping


def rename_map(names: list, rename) -> dict:
    """``{name: new name}`` for the ``rename`` option of the framework loaders: None
    (names kept), ``"REGEX=REPL"`` rules as for :func:`rename`, or a callable
    ``name -> str | None`` (None leaves the name out).  Two names made one are refused."""
    if rename is None:
        return {n: n for n in names}
    if callable(rename):
        mapping = {}
        for name in names:
            key = rename(name)
            if key is None:
                continue
            if not isinstance(key, str) or not key:
                raise InvalidTensorError(f"rename({name!r}) returned {key!r}; expected a "
                                         f"non-empty str or None", key=name)
            mapping[name] = key
        _refuse_collisions(mapping)
        return mapping
    if isinstance(rename, str):
        rename = [rename]
    return _rename_all(names, parse_rules(rename))


def _refuse_collisions(mapping: dict):
    targets: dict = {}
    for old, new in mapping.items():
        targets.setdefault(new, []).append(old)
    clashes = {new: olds for new, olds in targets.items() if len(olds) > 1}
    if clashes:
        raise InvalidTensorError(f"{len(clashes)} output name(s) would be produced by several "
                                 f"tensors: {_first_few(sorted(clashes.items()), _clash)}")


def _clash(item) -> str:
    new, olds = item
    return f"{new!r} <- {_first_few(olds, repr, 3)}"


def _first_few(items: list, show, n: int = 5) -> str:
    """The first ``n`` items, then how many more: messages stay readable whatever the
    model's size."""
    shown = ", ".join(show(item) for item in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _compile_patterns(patterns, what: str) -> list:
    """Compiled regexes from strings (searched in names, as ``re.search`` does)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns or ():
        try:
            compiled.append(re.compile(pattern))
        except (re.error, TypeError) as exc:
            raise InvalidTensorError(f"{what} pattern {pattern!r}: {exc}") from None
    return compiled


def _matching(names, regexes) -> set:
    return {n for n in names if any(r.search(n) for r in regexes)}


def _selected(name: str, include, exclude) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude or ())


# ---- progress ----------------------------------------------------------------

class _Progress:
    """A byte-counting progress bar on stderr (tqdm), or nothing."""

    def __init__(self, total: int, desc: str, enabled):
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # progress is a nicety, never a reason to fail
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                            unit_divisor=1024, file=sys.stderr, leave=False)

    def update(self, n: int):
        if self.bar is not None:
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ---- the one copy loop ---------------------------------------------------------

def _copy(jobs: list, dst, *, dst_format, dtype, max_shard_size, overwrite, progress,
          report: ConvertReport, skip_unsupported: bool = False, no_cast=frozenset(),
          transpose=frozenset(), metadata=None) -> ConvertReport:
    """Write ``jobs`` — ``(source, name, out_name)`` in output order — to ``dst``.

    Floating tensors are cast to ``dtype`` unless their name is in ``no_cast``;
    those named in ``transpose`` get their axes reversed; ``metadata`` goes to a
    safetensors output; with ``skip_unsupported``, tensors the output format cannot
    hold are left out (listed in ``report.skipped``)."""
    cast = None
    if dtype is not None:
        try:
            cast = dtypes.by_name(dtype)
        except KeyError:
            raise InvalidTensorError(f"unknown dtype {dtype!r}; expected a TensorFlow dtype "
                                     f"name such as 'bfloat16'") from None
        if cast.name not in _FLOATING:
            raise InvalidTensorError(f"--dtype casts floating tensors only, to one of "
                                     f"{sorted(_FLOATING)}; got {dtype!r}")
    fmt = dst_format or detect_format(dst, for_output=True)
    plan, kept, stored_dtypes, sizes = [], [], [], []
    for job in jobs:
        source, name, out_name = job
        stored, shape = source.info(name)
        out_dtype = stored
        if cast and stored in _FLOATING:
            if name in no_cast:
                report.not_cast.append(name)
            else:
                out_dtype = cast.name
        if skip_unsupported:
            problem = unsupported(fmt, out_name, out_dtype)
            if problem:
                report.skipped.append((name, problem))
                continue
        if name in transpose:
            shape = tuple(reversed(shape))
            report.transposed.append(name)
        plan.append((out_name, out_dtype, shape))
        kept.append(job)
        stored_dtypes.append(stored)
        sizes.append(source.nbytes(name))
    if not plan and report.skipped:
        raise NothingSelectedError(f"nothing to write: the {fmt} format can hold none of the "
                                   f"selected tensors; no output was created", path=dst)
    total = sum(sizes)
    with create_sink(dst, dst_format, plan=plan, max_shard_size=max_shard_size,
                     overwrite=overwrite, metadata=metadata) as sink:
        # A format written at commit (torch) shows reading and then its writing.
        bar = _Progress(2 * total if sink.writes_at_commit else total, "writing", progress)
        try:
            for (source, name, out_name), (_, out_dtype, _), stored, nbytes in zip(
                    kept, plan, stored_dtypes, sizes):
                array = source.read(name)
                if name in transpose:
                    import numpy as np

                    # One copy, in C order, cast on the way when there is a cast.
                    array = np.ascontiguousarray(
                        np.transpose(array), dtype=cast.numpy if out_dtype != stored else None)
                elif out_dtype != stored:
                    array = array.astype(cast.numpy)
                sink.add(out_name, array, out_dtype)
                report.tensors += 1
                report.nbytes += nbytes
                report.written_bytes += array.nbytes if out_dtype != stored else nbytes
                report.mapping[name] = out_name
                del array
                source.release(name)  # its pages may go now: memory stays near one tensor
                bar.update(nbytes)
            report.outputs = sink.commit(on_write=bar.update)
        finally:
            bar.close()
    return report


def _select(names, include, exclude, where: str) -> list:
    """The names ``include``/``exclude`` keep; refuses a selection of nothing, and an
    ``include`` pattern that matches no name (most likely a typo)."""
    include, exclude = list(include or ()), list(exclude or ())
    unmatched = [p for p in include if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise NothingSelectedError(f"no tensor of {where} matches {_first_few(unmatched, repr)} "
                                   f"('tfshard ls' lists them); nothing was written", path=where)
    kept = [n for n in names if _selected(n, include, exclude)]
    if not kept and names:
        raise NothingSelectedError(f"nothing to write: the patterns leave out every tensor of "
                                   f"{where}; nothing was written", path=where)
    return kept


# ---- operations ----------------------------------------------------------------

def convert(src, dst, *, src_format: str | None = None, dst_format: str | None = None,
            dtype: str | None = None, keep: Iterable[str] = (), include: Iterable[str] = (),
            exclude: Iterable[str] = (), rename: Iterable = (), rename_preset: str | None = None,
            transpose: Iterable[str] = (), prefer_ema: bool = False,
            framework: str | None = None, max_shard_size: int | None = None,
            overwrite: bool = False, progress: bool | None = False,
            skip_unsupported: bool = False, storage_options: dict | None = None,
            src_storage_options: dict | None = None,
            dst_storage_options: dict | None = None) -> ConvertReport:
    """Convert a model between formats: TF checkpoint, safetensors, ``.npz``, PyTorch.

    Parameters
    ----------
    src, dst : str or os.PathLike
        Input and output; formats are told by their names (see
        :func:`tfshard.formats.detect_format`) unless given.
    src_format, dst_format : str, optional
        ``"tf"``, ``"safetensors"``, ``"npz"``, ``"npy"`` or ``"torch"``.
    dtype : str, optional
        Cast floating tensors (float16/bfloat16/float32/float64) to this TF dtype;
        other tensors are copied unchanged.
    keep : iterable of str
        With ``dtype``: regular expressions (``re.search`` in the input names);
        floating tensors matching one keep their dtype (layer norms, biases...).
    include, exclude : iterable of str
        Glob patterns on tensor names (``fnmatch``, ``*`` matches ``/`` too); with
        ``include`` only matching tensors are kept; ``exclude`` then drops some.
        An ``include`` pattern that matches nothing, or patterns that leave
        nothing, are refused before anything is written.  Outside TF checkpoints,
        a TF2 checkpoint's ``_CHECKPOINTABLE_OBJECT_GRAPH`` (TF's restore
        metadata) is always dropped.
    rename : iterable of str or (regex, replacement)
        ``"REGEX=REPLACEMENT"`` rules applied in order with ``re.sub``; names are
        kept as they are unless a rule matches.
    rename_preset : str, optional
        A name map from :data:`PRESETS` (e.g. ``"bert"``: Google's original BERT
        layout to transformers' ``BertModel`` names): its rules run before
        ``rename``, its transposes join ``transpose``, and the tensors it leaves
        out (optimizer slots, ``global_step``) are dropped.
    transpose : iterable of str
        Regular expressions searched in the input names: matching tensors are
        written with their axes reversed (``numpy.transpose``), e.g. TF's
        ``[in, out]`` kernels as torch's ``[out, in]`` weights.
    prefer_ema : bool
        Where the input keeps an exponential moving average of a variable (see
        :func:`find_ema`), write the average under the variable's name; the
        averages themselves are not written.  The report lists what was
        replaced and the floating model tensors that had no average.
    framework : str, optional
        For a safetensors output: the framework it is meant for, recorded as
        the ``format`` metadata entry (``"torch"`` -> ``{"format": "pt"}``, which
        transformers expects; also ``"tf"``, ``"jax"``, ``"numpy"``).  Without it
        the output records no format unless the input (safetensors) did.
    max_shard_size : int, optional
        Bytes per output file (TF data shards, safetensors shards).
    overwrite : bool
        Replace an existing output (otherwise :class:`~tfshard.OutputExistsError`).
    progress : bool or None
        Show a progress bar on stderr; None: only when stderr is a terminal.
    skip_unsupported : bool
        Leave out the tensors the output format cannot hold (strings or
        complex128 in safetensors...) and list them in the report's
        ``skipped``, instead of refusing the conversion.
    storage_options : dict, optional
        For ``src`` and ``dst`` given as URLs (``s3://``, ``gs://``,
        ``https://``...): options for fsspec's filesystems, both sides.
    src_storage_options, dst_storage_options : dict, optional
        Options for one side only, when the two differ (they take precedence
        over ``storage_options``).

    Returns
    -------
    ConvertReport

    Raises
    ------
    NothingSelectedError
        ``include``/``exclude`` select no tensor (nothing is written).
    InvalidTensorError
        Bad rules or patterns, rules that map two tensors to one name, ``keep``
        without ``dtype``.
    UnsupportedError
        A tensor the output format cannot hold (before anything is written),
        unless ``skip_unsupported``; or ``framework`` for an output that is not
        safetensors.

    Notes
    -----
    A safetensors input's ``__metadata__`` is kept in a safetensors output
    (``framework`` replaces its ``format``); every safetensors output records
    each tensor's CRC-32C (see :data:`tfshard.formats.CHECKSUM_KEY`).
    """
    rules = parse_rules(rename)
    transposes = list(transpose) if not isinstance(transpose, str) else [transpose]
    drop = []
    if rename_preset is not None:
        from .surgery.presets import get_preset

        preset = get_preset(rename_preset)
        rules = parse_rules(preset.rename) + rules
        transposes = list(preset.transpose) + transposes
        drop = _compile_patterns(preset.drop, "preset")
    keep_re = _compile_patterns(keep, "keep")
    if keep_re and dtype is None:
        raise InvalidTensorError("keep patterns say which tensors a dtype cast leaves alone; "
                                 "give a dtype too")
    transpose_re = _compile_patterns(transposes, "transpose")
    report = ConvertReport()
    src_opts = storage_options if src_storage_options is None else src_storage_options
    dst_opts = storage_options if dst_storage_options is None else dst_storage_options
    out_format = dst_format or (fmt_of_url(str(dst)) if is_url(dst) else
                                detect_format(dst, for_output=True))
    to_tf = out_format == "tf"
    # The output is created deep inside; it takes its options from this context.
    with open_source(src, src_format, storage_options=src_opts) as source, \
            (default_options(dst_opts) if dst_opts is not None else contextlib.nullcontext()):
        every = source.names()
        if prefer_ema:
            from .surgery.ema import source_averages

            ema_of = source_averages(source)
        else:
            ema_of = {}
        averages = set(ema_of.values())
        selected = _select(every, include, exclude, source.path)
        names = [n for n in selected if (to_tf or n != OBJECT_GRAPH_KEY)
                 and n not in averages and not any(r.search(n) for r in drop)]
        if selected and not names:
            raise NothingSelectedError(
                f"nothing to write: what was selected is TF's restore metadata "
                f"({OBJECT_GRAPH_KEY}, kept by TF outputs only), moving averages or keys the "
                f"preset leaves out", path=source.path)
        kept = set(names)
        report.dropped = [n for n in every if n not in kept]
        mapping = _rename_all(names, rules)
        metadata = _output_metadata([source], out_format, framework, dst)
        reader = source
        if ema_of:
            from .surgery.ema import with_averages

            reader = with_averages(source, names, ema_of, to_tf, report)
        jobs = [(reader, name, mapping[name]) for name in names]
        return _copy(jobs, dst, dst_format=dst_format, dtype=dtype,
                     max_shard_size=max_shard_size, overwrite=overwrite, progress=progress,
                     report=report, skip_unsupported=skip_unsupported,
                     no_cast=_matching(names, keep_re), transpose=_matching(names, transpose_re),
                     metadata=metadata)


def _output_metadata(sources, out_format: str, framework, dst):
    """The ``__metadata__`` of a safetensors output: what the sources' metadata agree
    on (less their checksums, which the output records afresh), and ``framework``'s
    ``format``.  None for other outputs."""
    if framework is not None and framework not in _FRAMEWORK_FORMATS:
        raise InvalidTensorError(f"unknown framework {framework!r}; expected one of "
                                 f"{', '.join(_FRAMEWORK_FORMATS)}")
    if out_format != "safetensors":
        if framework is not None:
            raise UnsupportedError(f"framework={framework!r} records the framework in a "
                                   f"safetensors file's metadata; {dst} is a {out_format} "
                                   f"output", path=str(dst))
        return None
    agreed = None
    for source in sources:
        meta = {k: v for k, v in getattr(source, "metadata", {}).items() if k != CHECKSUM_KEY}
        agreed = meta if agreed is None else {k: v for k, v in agreed.items()
                                              if meta.get(k) == v}
    agreed = agreed or {}
    if framework is not None:
        agreed["format"] = _FRAMEWORK_FORMATS[framework]
    return agreed


def extract(src, out, patterns: Iterable[str] = (), *, fmt: str | None = None,
            prefer_ema: bool = False, overwrite: bool = False,
            progress: bool | None = False, skip_unsupported: bool = False) -> ConvertReport:
    """Write the tensors of ``src`` matching ``patterns`` (all when empty) to ``out``:
    an ``.npz``, a ``.safetensors`` file, or (``fmt="npy"``) a directory of ``.npy``
    files whose names are made safe (nothing is written outside ``out``).  A pattern
    that matches nothing is refused, as in :func:`convert`.  With ``prefer_ema``,
    variables are written with their moving averages' values (see :func:`convert`)."""
    return convert(src, out, dst_format=fmt, include=list(patterns), prefer_ema=prefer_ema,
                   overwrite=overwrite, progress=progress, skip_unsupported=skip_unsupported)


def _split_scope(spec) -> tuple:
    if isinstance(spec, (tuple, list)):
        path, scope = spec
        return str(path), scope or ""
    spec = str(spec)
    # "path:scope/" — the scope is what follows the last ':' when it ends in '/';
    # paths themselves may contain ':'.
    head, sep, tail = spec.rpartition(":")
    if sep and head and (tail.endswith("/") or tail == ""):
        return head, tail
    return spec, ""


def merge(out, sources: Iterable, *, on_conflict: str = "error", dst_format: str | None = None,
          max_shard_size: int | None = None, overwrite: bool = False,
          progress: bool | None = False) -> ConvertReport:
    """Mix several models into one, each optionally under a new name scope.

    Parameters
    ----------
    out : str or os.PathLike
        The merged model (any output format).
    sources : iterable
        ``"path"``, ``"path:scope/"`` or ``(path, scope)``: every tensor of ``path``
        is written as ``scope + name``.
    on_conflict : {"error", "first", "last"}
        Two sources giving the same output name: an error listing every conflict
        (default), or keep the first / last source's tensor.

    Examples
    --------
    >>> tfshard.merge("mixed/ckpt", ["vgg16/model.ckpt:vgg/", "head/ckpt-3:head/"])  # doctest: +SKIP
    """
    if on_conflict not in ("error", "first", "last"):
        raise InvalidTensorError(f"on_conflict must be 'error', 'first' or 'last', got "
                                 f"{on_conflict!r}")
    specs = [_split_scope(s) for s in sources]
    if not specs:
        raise InvalidTensorError("merge needs at least one source")
    report = ConvertReport()
    opened = []
    try:
        for path, _ in specs:
            opened.append(open_source(path))
        chosen: dict = {}       # out name -> (source, name)
        conflicts: dict = {}    # out name -> [source paths]
        for source, (path, scope) in zip(opened, specs):
            for name in source.names():
                out_name = scope + name
                if out_name in chosen:
                    conflicts.setdefault(out_name, [chosen[out_name][0].path]).append(path)
                    if on_conflict == "first":
                        report.dropped.append(f"{path}:{name}")
                        continue
                    report.dropped.append(f"{chosen[out_name][0].path}:{chosen[out_name][1]}")
                chosen[out_name] = (source, name)
        if conflicts and on_conflict == "error":
            listed = _first_few(sorted(conflicts.items()),
                                lambda item: f"{item[0]!r} in {', '.join(item[1])}")
            raise InvalidTensorError(
                f"{len(conflicts)} tensor name(s) come from several sources: {listed}; "
                f"give the sources different scopes (PATH:SCOPE/) or choose --on-conflict "
                f"first|last")
        jobs = [(source, name, out_name) for out_name, (source, name) in sorted(chosen.items())]
        out_format = dst_format or detect_format(out, for_output=True)
        return _copy(jobs, out, dst_format=dst_format, dtype=None,
                     max_shard_size=max_shard_size, overwrite=overwrite, progress=progress,
                     report=report,
                     metadata=_output_metadata(opened, out_format, None, out))
    finally:
        for source in opened:
            source.close()


def rename(src, out, rules, *, dry_run: bool = False, overwrite: bool = False,
           progress: bool | None = False) -> dict:
    """Write ``src`` to ``out`` with tensors renamed by ``"REGEX=REPL"`` rules.

    Returns ``{old: new}`` for every tensor (unchanged ones included).  With
    ``dry_run`` nothing is written.  A rule set that maps two tensors to one
    name is refused before anything is written.
    """
    parsed = parse_rules(rules)
    if not parsed:
        raise InvalidTensorError("rename needs at least one rule 'REGEX=REPLACEMENT'")
    with open_source(src) as source:
        mapping = _rename_all(source.names(), parsed)
    if not dry_run:
        convert(src, out, rename=parsed, overwrite=overwrite, progress=progress)
    return mapping


def optimizer_state(names: Iterable[str], *, drop_step: bool = False,
                    object_graph: bytes | None = None) -> list:
    """The names among ``names`` that hold optimizer state (sorted).

    TF1: slots ``<var>/Adam``, ``<var>/Adam_1``, ``<var>/Momentum``... of a
    variable ``<var>`` that is itself present, and ``beta1_power``/``beta2_power``.
    TF2: every key under an ``.OPTIMIZER_SLOT`` edge, and every key that only the
    optimizer reaches in ``object_graph`` (the serialized
    ``_CHECKPOINTABLE_OBJECT_GRAPH``): a key the model reaches is the model's
    even when it is named ``optimizer/...``, as Keras 3 names every weight.
    Without an object graph, every key of the ``optimizer/`` object.
    ``global_step`` is state too with ``drop_step``.
    """
    names = list(names)
    present = set(names)
    graph = model_keys(object_graph) if object_graph is not None else None
    found = []
    for name in names:
        head, _, last = name.rpartition("/")
        if graph is not None and name in graph:
            optimizer_only = not graph[name]
        else:
            optimizer_only = graph is None and name.startswith("optimizer/")
        if ("/.OPTIMIZER_SLOT/" in name or optimizer_only
                or (last in _TF1_SLOTS and head in present)
                or last in _TF1_OPTIMIZER_SCALARS
                or (drop_step and last in _STEP_NAMES and head in ("", "training"))):
            found.append(name)
    return sorted(found)


class _Replaced:
    """A source whose tensors named in ``values`` read as those arrays instead, and
    those named in ``aliases`` as another tensor of the source (of the same dtype
    and shape)."""

    def __init__(self, source, values: dict, aliases: dict | None = None):
        self._source, self._values, self._aliases = source, values, aliases or {}

    def __getattr__(self, attr):
        return getattr(self._source, attr)

    def read(self, name):
        if name in self._values:
            return self._values[name]
        return self._source.read(self._aliases.get(name, name))

    def nbytes(self, name):
        return self._source.nbytes(self._aliases.get(name, name))

    def release(self, name):
        self._source.release(self._aliases.get(name, name))


def _graph_without(graph: bytes, dropping: set) -> dict:
    """``{OBJECT_GRAPH_KEY: value}``: the object graph without the attributes of the
    keys in ``dropping``, as a scalar string tensor; ``{}`` when the graph cannot be
    parsed (it is then copied as it is)."""
    import numpy as np

    try:
        value = np.empty((), dtype=object)
        value[()] = without_keys(graph, dropping)
    except ValueError:
        return {}
    return {OBJECT_GRAPH_KEY: value}


def strip(src, out, *, drop_step: bool = False, overwrite: bool = False,
          progress: bool | None = False, dry_run: bool = False) -> ConvertReport:
    """Copy a checkpoint without its optimizer state (see :func:`optimizer_state`).

    The report's ``dropped`` lists what was removed; ``nbytes`` what was kept.
    A TF2 checkpoint keeps its object graph, so it restores into a model built
    without the optimizer (``tf.train.Checkpoint(model=...).restore(...)``).
    With ``dry_run`` nothing is written (``out`` may be None): the report says
    what would be dropped and kept.
    """
    with open_source(src) as source:
        names = source.names()
        graph = serialized_graph(source)
        drop = optimizer_state(names, drop_step=drop_step, object_graph=graph)
        dropping = set(drop)
        kept = [n for n in names if n not in dropping]
        report = ConvertReport(dropped=drop, dropped_bytes=sum(source.nbytes(n) for n in drop))
        if dry_run:
            report.tensors = len(kept)
            report.nbytes = sum(source.nbytes(n) for n in kept)
            report.mapping = {n: n for n in kept}
            return report
        metadata = _output_metadata([source], detect_format(out, for_output=True), None, out)
        if graph is not None and dropping:
            source = _Replaced(source, _graph_without(graph, dropping))
        return _copy([(source, n, n) for n in kept], out, dst_format=None, dtype=None,
                     max_shard_size=None, overwrite=overwrite, progress=progress,
                     report=report, metadata=metadata)


@dataclass
class DiffReport:
    """How two models differ.

    Attributes
    ----------
    missing : list of str
        In ``a`` only.
    unexpected : list of str
        In ``b`` only.
    mismatched : dict
        ``{name: (a's "dtype shape", b's)}`` for tensors of different dtype or shape.
    differing : dict
        ``{name: (max_abs_diff, max_rel_diff)}`` for same-typed tensors whose values
        are not within tolerance.
    compared : int
        Tensors whose values were compared.
    """

    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: dict = field(default_factory=dict)
    differing: dict = field(default_factory=dict)
    compared: int = 0

    @property
    def same(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.differing)


def diff(a, b, *, atol: float = 0.0, rtol: float = 0.0,
         progress: bool | None = False) -> DiffReport:
    """Compare two models tensor by tensor (any formats).

    Values differ where ``|a - b| > atol + rtol * |b|`` (NaNs in the same places
    count as equal); strings must be equal.  ``progress`` shows a bar of the bytes
    compared (None: when stderr is a terminal).
    """
    report = DiffReport()
    with open_source(a) as sa, open_source(b) as sb:
        na, nb = set(sa.names()), set(sb.names())
        report.missing = sorted(na - nb)
        report.unexpected = sorted(nb - na)
        common = sorted(na & nb)
        bar = _Progress(sum(sa.nbytes(n) for n in common), "comparing", progress)
        try:
            for name in common:
                ia, ib = sa.info(name), sb.info(name)
                if ia != ib:
                    report.mismatched[name] = (f"{ia[0]} {list(ia[1])}",
                                               f"{ib[0]} {list(ib[1])}")
                else:
                    report.compared += 1
                    worst = _compare(sa.read(name), sb.read(name), atol, rtol)
                    if worst is not None:
                        report.differing[name] = worst
                    sa.release(name)
                    sb.release(name)
                bar.update(sa.nbytes(name))
        finally:
            bar.close()
    return report


def _compare(x, y, atol, rtol):
    """None when ``x`` and ``y`` are the same within tolerance, else (max abs, max rel)
    difference (both NaN for strings, which have none)."""
    import numpy as np

    if x.dtype == object:
        same = x.ravel().tolist() == y.ravel().tolist()
        return None if same else (float("nan"), float("nan"))
    return _max_differences(np.asarray(x), np.asarray(y), atol, rtol)


def _verify_safetensors(path, progress) -> "VerifyReport":
    report = VerifyReport()
    with open_source(path, "safetensors") as source:
        report.path = source.path
        names = source.names()
        bar = _Progress(sum(source.nbytes(n) for n in names), "verifying", progress)
        try:
            for name in names:
                try:
                    source.read(name)
                except (CorruptCheckpointError, OSError, ValueError) as exc:
                    report.problems.append((name, str(exc)))
                report.checked += 1
                report.nbytes += source.nbytes(name)
                bar.update(source.nbytes(name))
        finally:
            bar.close()
        unchecked = len(names) - len(source.checksummed)
    if unchecked:
        report.notes.append(f"{unchecked} of {len(names)} tensors have no recorded checksum "
                            f"(files not written by tfshard have none): only their layout "
                            f"was checked")
    return report


def _max_differences(x, y, atol, rtol, chunk=1 << 20):
    """(max abs, max rel) difference if any element is out of tolerance, else None.
    Works through the tensors in chunks so memory stays bounded."""
    import numpy as np

    x, y = x.reshape(-1), y.reshape(-1)
    floating = x.dtype.kind in "fcV"  # V: the ml_dtypes types
    wide = np.complex128 if x.dtype.kind == "c" else np.float64
    exact = atol == 0 and rtol == 0
    worst_abs = worst_rel = 0.0
    bad = False
    for start in range(0, x.size, chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        if not floating and np.array_equal(xs, ys):
            continue  # integers and bools: compared exactly first
        xa, ya = xs.astype(wide), ys.astype(wide)
        with np.errstate(divide="ignore", invalid="ignore"):
            delta = np.abs(xa - ya)
            rel = np.where(delta == 0, 0.0, delta / np.abs(ya))
            out = delta > atol + rtol * np.abs(ya)
        if floating:
            # Equal values (equal infinities too: inf - inf is NaN) and NaN against NaN
            # are equal; NaN or an infinity against anything else differs, by an
            # unbounded amount (reported as inf rather than lost to nanmax).
            equal = (xa == ya) | (np.isnan(xa) & np.isnan(ya))
            unbounded = ~equal & ~(np.isfinite(xa) & np.isfinite(ya))
            delta[equal] = rel[equal] = 0.0
            delta[unbounded] = rel[unbounded] = np.inf
            out = (out & ~equal) | unbounded
        if not floating and exact:
            out |= xs != ys  # 64-bit integers beyond 2**53 differ even when float64 cannot tell
        bad = bad or bool(out.any())
        worst_abs = max(worst_abs, float(np.nanmax(delta, initial=0.0)))
        worst_rel = max(worst_rel, float(np.nanmax(rel, initial=0.0)))
    return (worst_abs, worst_rel) if bad else None


@dataclass
class VerifyReport:
    """Result of :func:`verify`.

    Attributes
    ----------
    path : str
        The checkpoint checked (its prefix, after resolving a directory's state
        file).
    checked : int
        Tensors checked.
    nbytes : int
        Bytes checked.
    problems : list
        ``[(name, message), ...]`` for every bad tensor; a missing data file is
        one problem, named by the file, rather than one per tensor in it.
    notes : list of str
        Findings about the checkpoint as a whole (e.g. a data file from another save).
    missing_files : list of str
        Data files the index names that do not exist (each also one problem).
    """

    path: str = ""
    checked: int = 0
    nbytes: int = 0
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    missing_files: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path, *, progress: bool | None = False, storage_options=None) -> VerifyReport:
    """Check every tensor's checksum and every index entry of a TF checkpoint,
    reporting every bad tensor rather than stopping at the first.

    A data file that is missing is reported once, with the number of tensors it
    holds.  When most tensors of one data shard fail, the shard most likely comes
    from a different save than the index; that is reported as a note.

    A safetensors model (``*.safetensors``, ``*.safetensors.index.json``) is checked
    against the CRC-32C values tfshard records in its metadata (see
    :data:`tfshard.formats.CHECKSUM_KEY`); tensors without one are noted.

    ``path`` may be a URL; ``storage_options`` are then fsspec's options for it.
    """
    if storage_options is not None:
        with default_options(storage_options):
            return verify(path, progress=progress)
    import os

    from .paths import data_filename
    from .reader import open as open_checkpoint
    from .reader_v1 import V1Checkpoint

    if str(path).lower().endswith((".safetensors", ".safetensors.index.json")):
        return _verify_safetensors(path, progress)
    report = VerifyReport()
    with open_checkpoint(path, verify=True) as ckpt:
        if is_url(ckpt.prefix):  # a HEAD per data object (never fsspec's exists())
            from .storage import Location

            def exists(url):
                return Location.parse(url).exists(what="data shard")
        else:
            exists = os.path.exists
        report.path = ckpt.prefix
        infos = ckpt.infos()
        missing = {}  # shard id -> [names of the tensors it holds]
        if not isinstance(ckpt, V1Checkpoint):  # V1 files were all read when it opened
            for shard in range(ckpt.num_shards):
                if not exists(data_filename(ckpt.prefix, shard, ckpt.num_shards)):
                    missing[shard] = []
        bar = _Progress(sum(i.nbytes for i in infos), "verifying", progress)
        per_shard: dict = {}
        try:
            for info in infos:
                if info.shard in missing:
                    missing[info.shard].append(info.name)
                    continue
                shard = info.shard if info.shard is not None else -1
                counts = per_shard.setdefault(shard, [0, 0])
                counts[0] += 1
                try:
                    ckpt.read(info.name, verify=True)
                except (CorruptCheckpointError, OSError, ValueError) as exc:
                    if not (missing and isinstance(exc, FileNotFoundError)):
                        # (a partitioned tensor with a slice in a missing file: said once below)
                        report.problems.append((info.name, str(exc)))
                    counts[1] += 1
                report.checked += 1
                report.nbytes += info.nbytes
                bar.update(info.nbytes)
        finally:
            bar.close()
        for shard, names in sorted(missing.items()):
            file = data_filename(ckpt.prefix, shard, ckpt.num_shards)
            held = (f"{len(names)} tensor{'s' * (len(names) != 1)} "
                    f"({_first_few(names, repr, 3)})" if names else "no tensor")
            report.missing_files.append(file)
            report.problems.append(
                (file, f"data file {file} is missing; it holds {held} that cannot be checked"))
        for name, exc in ckpt.overlaps():
            report.problems.append((name, str(exc)))
        for shard, (total, failed) in sorted(per_shard.items()):
            if shard >= 0 and total >= 2 and failed * 2 > total:
                report.notes.append(
                    f"{failed} of {total} tensors in data shard {shard} fail their checks: the "
                    f"index and that data file probably come from different saves")
    return report


# Operations of their own modules (tfshard/surgery/), which build on the helpers
# above; imported last so that they find this module complete.
from .surgery.average import AverageReport, average  # noqa: E402
from .surgery.ema import find_ema  # noqa: E402
from .surgery.presets import PRESETS  # noqa: E402
from .surgery.reshard import ReshardReport, reshard  # noqa: E402
