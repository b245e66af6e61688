# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""``MetaGraphDef`` and ``SavedModel`` files at the wire level (Cython over the protobuf
reader of csrc/tfs_format.c, with the message helpers of _pb.pxd).

Every function reads a message that lies at ``buf[start:end]`` (``buf``: bytes or an mmap)
and returns plain values: tuples, lists, dicts, strings and *spans* -- ``(start, end)``
offsets of a sub-message left undecoded, so that :mod:`tfshard.graph` decodes a graph of
hundreds of megabytes piece by piece (its GraphDef: _graphdef.pyx).  Nothing here opens a
file.

Field numbers (tensorflow/core/protobuf/{saved_model,meta_graph,saver,saved_object_graph,
struct}.proto, tensorflow/core/framework/{tensor,tensor_shape,variable}.proto)::

    SavedModel       1 saved_model_schema_version (int64), 2 meta_graphs (MetaGraphDef)
    MetaGraphDef     1 meta_info_def, 2 graph_def, 3 saver_def, 4 collection_def (map),
                     5 signature_def (map), 6 asset_file_def, 7 object_graph_def
    MetaInfoDef      1 meta_graph_version, 2 stripped_op_list (OpList: 1 op; OpDef: 1 name),
                     3 any_info (Any), 4 tags, 5 tensorflow_version, 6 tensorflow_git_version,
                     7 stripped_default_attrs, 8 function_aliases (map<string, string>)
    Any              1 type_url, 2 value
    SaverDef         1 filename_tensor_name, 2 save_tensor_name, 3 restore_op_name,
                     4 max_to_keep (int32), 5 sharded, 6 keep_checkpoint_every_n_hours (float),
                     7 version (enum)
    CollectionDef    1 node_list, 2 bytes_list, 3 int64_list, 4 float_list, 5 any_list
                     (each: 1 value, repeated)
    SignatureDef     1 inputs (map<string, TensorInfo>), 2 outputs, 3 method_name,
                     4 defaults (map<string, TensorProto>)
    TensorInfo       1 name, 2 dtype, 3 tensor_shape, 4 coo_sparse (1 values_tensor_name,
                     2 indices_tensor_name, 3 dense_shape_tensor_name), 5 composite_tensor
                     (1 type_spec: TypeSpecProto 3 type_spec_class_name; 2 components)
    AssetFileDef     1 tensor_info, 2 filename
    VariableDef      1 variable_name, 2 initializer_name, 3 snapshot_name,
                     4 save_slice_info_def, 5 is_resource, 6 initial_value_name,
                     7 trainable, 8 synchronization, 9 aggregation
    SaveSliceInfoDef 1 full_name, 2 full_shape, 3 var_offset, 4 var_shape (repeated int64)
    TensorShapeProto 2 dim (1 size, 2 name), 3 unknown_rank
    TensorProto      1 dtype, 2 tensor_shape, 4 tensor_content, 5.. typed values
    SavedObjectGraph 1 nodes (SavedObject), 2 concrete_functions (map)
    SavedObject      1 children (1 node_id, 2 local_name), 4 user_object (1 identifier),
                     5 asset (1 asset_file_def_index), 6 function (1 concrete_functions),
                     7 variable, 8 bare_concrete_function (1 concrete_function_name,
                     2 argument_keywords, 3 allowed_positional_arguments), 9 constant
                     (1 operation), 10 resource (1 device), 12 captured_tensor (1 name,
                     2 concrete_function), 13 registered_name, 16 registered_saver
    SavedVariable    1 dtype, 2 shape, 3 trainable, 4 synchronization, 5 aggregation,
                     6 name, 7 device, 8 experimental_distributed_variable_components
    SavedConcreteFunction 2 bound_inputs (repeated int32)

Rules as protobuf parsers apply them: unknown fields are skipped; of a singular scalar or
string the last occurrence wins; repeated scalars are read packed or not; map entries
with the same key: the last wins.  A known field with another wire type, a length past
its message, a malformed varint, nesting deeper than ``MAX_DEPTH``: CorruptGraphError
with the offset of the problem.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8

from ._format cimport *
from ._pb cimport *


# ---- SavedModel and MetaGraphDef --------------------------------------------------------

def saved_model(buf, Py_ssize_t start, Py_ssize_t end):
    """A SavedModel: (saved_model_schema_version, [meta graph span, ...])."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m
    cdef tfs_pb_field f
    cdef int64_t version = 0
    cdef list graphs = []
    _open(&m, view, start, end)
    while _next(&m, &f):
        if f.field == 1:
            version = _int(&m, &f, "saved_model_schema_version")
        elif f.field == 2:
            _need(&m, &f, TFS_PB_LEN, "a meta graph")
            graphs.append((f.data - m.base, f.data + f.len - m.base))
    return version, graphs


def fields(buf, Py_ssize_t start, Py_ssize_t end, tuple wanted):
    """The spans of the length-delimited fields numbered in ``wanted`` of the message at
    ``buf[start:end]``: {field: [(start, end), ...]} in order (a repeated message, or a
    singular one given more than once, which protobuf merges)."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m
    cdef tfs_pb_field f
    cdef dict out = {w: [] for w in wanted}
    _open(&m, view, start, end)
    while _next(&m, &f):
        if f.field in out:
            _need(&m, &f, TFS_PB_LEN, f"field {f.field}")
            out[f.field].append((f.data - m.base, f.data + f.len - m.base))
    return out


def meta_info(buf, list spans):
    """MetaInfoDef (its occurrences merged): dict of its fields; ``stripped_ops`` holds
    the names of the stripped op list, ``any_info`` (type_url, value) or None."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub, op
    cdef tfs_pb_field f, g, h, value
    cdef dict out = {"meta_graph_version": "", "stripped_ops": [], "any_info": None,
                     "tags": [], "tensorflow_version": "", "tensorflow_git_version": "",
                     "stripped_default_attrs": False, "function_aliases": {}}
    cdef str name
    for start, end in spans:
        _open(&m, view, start, end)
        while _next(&m, &f):
            if f.field == 1:
                out["meta_graph_version"] = _text(&m, &f, "meta_graph_version")
            elif f.field == 2:
                _need(&m, &f, TFS_PB_LEN, "stripped_op_list")
                _enter(&sub, &m, &f)
                while _next(&sub, &g):
                    if g.field != 1:
                        continue
                    _need(&sub, &g, TFS_PB_LEN, "an op of the stripped op list")
                    _enter(&op, &sub, &g)
                    name = ""
                    while _next(&op, &h):
                        if h.field == 1:
                            name = _text(&op, &h, "an op's name")
                    out["stripped_ops"].append(name)
            elif f.field == 3:
                _need(&m, &f, TFS_PB_LEN, "any_info")
                _enter(&sub, &m, &f)
                out["any_info"] = _any(&sub)
            elif f.field == 4:
                out["tags"].append(_text(&m, &f, "a tag"))
            elif f.field == 5:
                out["tensorflow_version"] = _text(&m, &f, "tensorflow_version")
            elif f.field == 6:
                out["tensorflow_git_version"] = _text(&m, &f, "tensorflow_git_version")
            elif f.field == 7:
                out["stripped_default_attrs"] = _int(&m, &f, "stripped_default_attrs") != 0
            elif f.field == 8:
                _need(&m, &f, TFS_PB_LEN, "a function alias")
                _enter(&sub, &m, &f)
                key, alias = "", ""
                while _next(&sub, &g):
                    if g.field == 1:
                        key = _text(&sub, &g, "a function alias key")
                    elif g.field == 2:
                        alias = _text(&sub, &g, "a function alias")
                out["function_aliases"][key] = alias
    return out


def saver_def(buf, list spans):
    """SaverDef: (filename_tensor_name, save_tensor_name, restore_op_name, max_to_keep,
    sharded, keep_checkpoint_every_n_hours, version)."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m
    cdef tfs_pb_field f
    cdef list v = ["", "", "", 0, False, 0.0, 0]
    for start, end in spans:
        _open(&m, view, start, end)
        while _next(&m, &f):
            if f.field == 1:
                v[0] = _text(&m, &f, "filename_tensor_name")
            elif f.field == 2:
                v[1] = _text(&m, &f, "save_tensor_name")
            elif f.field == 3:
                v[2] = _text(&m, &f, "restore_op_name")
            elif f.field == 4:
                v[3] = _int32(&m, &f, "max_to_keep")
            elif f.field == 5:
                v[4] = _int(&m, &f, "sharded") != 0
            elif f.field == 6:
                v[5] = _float(&m, &f, "keep_checkpoint_every_n_hours")
            elif f.field == 7:
                v[6] = _int32(&m, &f, "version")
    return tuple(v)


cdef tuple _collection(Msg *m):
    """A CollectionDef: (kind, values); kind is None when no kind is set.  Of several
    kinds the last one given wins (a oneof); values of a kind given twice are merged."""
    cdef tfs_pb_field f, g
    cdef Msg sub, item
    cdef object kind = None
    cdef list values = []
    cdef str name
    while _next(m, &f):
        if f.field < 1 or f.field > 5:
            continue
        _need(m, &f, TFS_PB_LEN, "a collection's list")
        name = ("node_list", "bytes_list", "int64_list", "float_list", "any_list")[f.field - 1]
        if name != kind:
            kind, values = name, []
        _enter(&sub, m, &f)
        while _next(&sub, &g):
            if g.field != 1:
                continue
            if f.field == 1:
                values.append(_text(&sub, &g, "a node name"))
            elif f.field == 2:
                values.append(_bytes(&sub, &g, "a bytes value"))
            elif f.field == 3:
                _repeated_ints(&sub, &g, values, False, "an int64 value")
            elif f.field == 4:
                _repeated_floats(&sub, &g, values, "a float value")
            else:
                _need(&sub, &g, TFS_PB_LEN, "an Any value")
                _enter(&item, &sub, &g)
                values.append(_any(&item))
    return (kind, values)


def collections(buf, list spans):
    """The collection_def map entries at ``spans``: {name: (kind, values)}; node_list
    values are str, bytes_list bytes, any_list (type_url, value)."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub
    cdef tfs_pb_field value
    cdef dict out = {}
    for start, end in spans:
        _open(&m, view, start, end)
        key, found = _map_entry_head(&m, &value, "a collection")
        if found:
            _enter(&sub, &m, &value)
            out[key] = _collection(&sub)
        else:
            out[key] = (None, [])
    return out


cdef tuple _tensor_info(Msg *m, int depth):
    """A TensorInfo: (name or None, dtype, shape or (), coo_sparse (values, indices,
    dense_shape) or None, composite (type_spec_class_name, [TensorInfo...]) or None)."""
    cdef tfs_pb_field f, g, h
    cdef Msg sub, spec
    cdef object name = None, shape = (), coo = None, composite = None
    cdef int64_t dtype = 0
    cdef list parts, components
    cdef str spec_name
    if depth > MAX_DEPTH:
        _corrupt(f"tensor infos nested deeper than {MAX_DEPTH}", m.p - m.base)
    while _next(m, &f):
        if f.field == 1:
            name = _text(m, &f, "a tensor info's name")
            coo = composite = None  # a oneof: the last member given wins
        elif f.field == 2:
            dtype = _int32(m, &f, "a tensor info's dtype")
        elif f.field == 3:
            shape = _shape_field(m, &f, "a tensor info's shape")
        elif f.field == 4:
            _need(m, &f, TFS_PB_LEN, "coo_sparse")
            _enter(&sub, m, &f)
            parts = ["", "", ""] if coo is None else list(coo)
            while _next(&sub, &g):
                if 1 <= g.field <= 3:
                    parts[g.field - 1] = _text(&sub, &g, "a coo_sparse tensor name")
            coo, name, composite = tuple(parts), None, None
        elif f.field == 5:
            _need(m, &f, TFS_PB_LEN, "composite_tensor")
            _enter(&sub, m, &f)
            spec_name, components = ("", []) if composite is None else composite
            while _next(&sub, &g):
                if g.field == 1:
                    _need(&sub, &g, TFS_PB_LEN, "a type_spec")
                    _enter(&spec, &sub, &g)
                    while _next(&spec, &h):
                        if h.field == 3:
                            spec_name = _text(&spec, &h, "type_spec_class_name")
                elif g.field == 2:
                    _need(&sub, &g, TFS_PB_LEN, "a component")
                    _enter(&spec, &sub, &g)
                    components.append(_tensor_info(&spec, depth + 1))
            composite, name, coo = (spec_name, components), None, None
    return (name, dtype, shape, coo, composite)


cdef dict _tensor_infos(Msg *m, tfs_pb_field *f, dict out, str what):
    cdef Msg entry, sub
    cdef tfs_pb_field value
    _need(m, f, TFS_PB_LEN, what)
    _enter(&entry, m, f)
    key, found = _map_entry_head(&entry, &value, what)
    if found:
        _enter(&sub, &entry, &value)
        out[key] = _tensor_info(&sub, 0)
    else:
        out[key] = (None, 0, (), None, None)
    return out


def signatures(buf, list spans):
    """The signature_def map entries at ``spans``: {key: (method_name, inputs, outputs,
    defaults)}; inputs and outputs map names to TensorInfo tuples (see _tensor_info),
    defaults to tensor heads (dtype, shape, start, end)."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub, entry
    cdef tfs_pb_field f, value, g
    cdef dict out = {}
    cdef dict inputs, outputs, defaults
    cdef str method
    for start, end in spans:
        _open(&m, view, start, end)
        key, found = _map_entry_head(&m, &value, "a signature")
        inputs, outputs, defaults, method = {}, {}, {}, ""
        if found:
            _enter(&sub, &m, &value)
            while _next(&sub, &f):
                if f.field == 1:
                    _tensor_infos(&sub, &f, inputs, "a signature input")
                elif f.field == 2:
                    _tensor_infos(&sub, &f, outputs, "a signature output")
                elif f.field == 3:
                    method = _text(&sub, &f, "method_name")
                elif f.field == 4:
                    _need(&sub, &f, TFS_PB_LEN, "a signature default")
                    _enter(&entry, &sub, &f)
                    dkey, dfound = _map_entry_head(&entry, &g, "a signature default")
                    if dfound:
                        defaults[dkey] = _tensor_head(&entry, &g)
        out[key] = (method, inputs, outputs, defaults)
    return out


def asset_files(buf, list spans):
    """AssetFileDefs: [(TensorInfo tuple or None, filename)]."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, sub
    cdef tfs_pb_field f
    cdef list out = []
    for start, end in spans:
        _open(&m, view, start, end)
        info, filename = None, ""
        while _next(&m, &f):
            if f.field == 1:
                _need(&m, &f, TFS_PB_LEN, "an asset's tensor_info")
                _enter(&sub, &m, &f)
                info = _tensor_info(&sub, 0)
            elif f.field == 2:
                filename = _text(&m, &f, "an asset's filename")
        out.append((info, filename))
    return out


def variable_def(data):
    """A serialized VariableDef (a bytes_list value of the ``variables`` collections):
    (variable_name, initial_value_name, initializer_name, snapshot_name, save_slice_info
    (full_name, full_shape, var_offset, var_shape) or None, is_resource, trainable,
    synchronization, aggregation)."""
    cdef const uint8_t[::1] view = data
    cdef Msg m, sub
    cdef tfs_pb_field f, g
    cdef list v = ["", "", "", "", None, False, False, 0, 0]
    cdef list info
    _open(&m, view, 0, view.shape[0])
    while _next(&m, &f):
        if f.field == 1:
            v[0] = _text(&m, &f, "variable_name")
        elif f.field == 6:
            v[1] = _text(&m, &f, "initial_value_name")
        elif f.field == 2:
            v[2] = _text(&m, &f, "initializer_name")
        elif f.field == 3:
            v[3] = _text(&m, &f, "snapshot_name")
        elif f.field == 4:
            _need(&m, &f, TFS_PB_LEN, "save_slice_info_def")
            _enter(&sub, &m, &f)
            info = ["", [], [], []] if v[4] is None else [v[4][0]] + [list(x) for x in v[4][1:]]
            while _next(&sub, &g):
                if g.field == 1:
                    info[0] = _text(&sub, &g, "a slice's full_name")
                elif 2 <= g.field <= 4:
                    _repeated_ints(&sub, &g, info[g.field - 1], False, "a slice extent")
            v[4] = (info[0], tuple(info[1]), tuple(info[2]), tuple(info[3]))
        elif f.field == 5:
            v[5] = _int(&m, &f, "is_resource") != 0
        elif f.field == 7:
            v[6] = _int(&m, &f, "trainable") != 0
        elif f.field == 8:
            v[7] = _int32(&m, &f, "synchronization")
        elif f.field == 9:
            v[8] = _int32(&m, &f, "aggregation")
    return tuple(v)


def variable_defs(list values):
    """:func:`variable_def` of each serialized VariableDef of a list."""
    return [variable_def(v) for v in values]


# ---- SavedObjectGraph ----------------------------------------------------------------

cdef tuple _saved_variable(Msg *m, int depth):
    """A SavedVariable: (dtype, shape, trainable, synchronization, aggregation, name,
    device, number of distributed components)."""
    cdef tfs_pb_field f
    cdef list v = [0, (), False, 0, 0, "", "", 0]
    if depth > MAX_DEPTH:
        _corrupt(f"saved variables nested deeper than {MAX_DEPTH}", m.p - m.base)
    while _next(m, &f):
        if f.field == 1:
            v[0] = _int32(m, &f, "a variable's dtype")
        elif f.field == 2:
            v[1] = _shape_field(m, &f, "a variable's shape")
        elif f.field == 3:
            v[2] = _int(m, &f, "trainable") != 0
        elif f.field == 4:
            v[3] = _int32(m, &f, "synchronization")
        elif f.field == 5:
            v[4] = _int32(m, &f, "aggregation")
        elif f.field == 6:
            v[5] = _text(m, &f, "a variable's name")
        elif f.field == 7:
            v[6] = _text(m, &f, "a variable's device")
        elif f.field == 8:
            _need(m, &f, TFS_PB_LEN, "a distributed component")
            v[7] += 1
    return tuple(v)


def object_graph(buf, list spans):
    """A SavedObjectGraph (its occurrences merged): ([object...], {concrete function
    name: [bound input node id...]}).  Each object is (children [(node_id, local_name)],
    kind, detail, registered_name): kind one of "user_object" (identifier), "asset"
    (asset_file_def_index), "function" ([concrete function names]), "variable"
    (_saved_variable), "bare_concrete_function" ((name, [argument keywords],
    allowed_positional_arguments)), "constant" (operation), "resource" (device),
    "captured_tensor" ((name, concrete_function)), or None."""
    cdef const uint8_t[::1] view = buf
    cdef Msg m, obj, sub
    cdef tfs_pb_field f, g, h, value
    cdef list nodes = []
    cdef dict concrete = {}
    cdef list children, names, bound
    cdef object kind, detail
    cdef str text, registered
    for start, end in spans:
        _open(&m, view, start, end)
        while _next(&m, &f):
            if f.field == 1:
                _need(&m, &f, TFS_PB_LEN, "an object")
                _enter(&obj, &m, &f)
                children, kind, detail, registered = [], None, None, ""
                while _next(&obj, &g):
                    if g.field == 1:
                        _need(&obj, &g, TFS_PB_LEN, "a child reference")
                        _enter(&sub, &obj, &g)
                        node_id, text = 0, ""
                        while _next(&sub, &h):
                            if h.field == 1:
                                node_id = _int32(&sub, &h, "a child's node_id")
                            elif h.field == 2:
                                text = _text(&sub, &h, "a child's local_name")
                        children.append((node_id, text))
                    elif 4 <= g.field <= 12 and g.field != 11:
                        _need(&obj, &g, TFS_PB_LEN, "an object's kind")
                        _enter(&sub, &obj, &g)
                        if g.field == 7:
                            kind, detail = "variable", _saved_variable(&sub, 0)
                            continue
                        if g.field == 6:
                            names = []
                            while _next(&sub, &h):
                                if h.field == 1:
                                    names.append(_text(&sub, &h, "a concrete function"))
                            kind, detail = "function", names
                            continue
                        if g.field == 8:
                            text, names, positional = "", [], 0
                            while _next(&sub, &h):
                                if h.field == 1:
                                    text = _text(&sub, &h, "concrete_function_name")
                                elif h.field == 2:
                                    names.append(_text(&sub, &h, "an argument keyword"))
                                elif h.field == 3:
                                    positional = _int(&sub, &h, "allowed_positional_arguments")
                            kind, detail = "bare_concrete_function", (text, names, positional)
                            continue
                        if g.field == 12:
                            parts = ["", ""]
                            while _next(&sub, &h):
                                if 1 <= h.field <= 2:
                                    parts[h.field - 1] = _text(&sub, &h, "a captured tensor")
                            kind, detail = "captured_tensor", tuple(parts)
                            continue
                        # user_object 4 (identifier 1), asset 5 (index 1, int32),
                        # constant 9 (operation 1), resource 10 (device 1)
                        kind = {4: "user_object", 5: "asset", 9: "constant",
                                10: "resource"}[g.field]
                        detail = 0 if g.field == 5 else ""
                        while _next(&sub, &h):
                            if h.field == 1:
                                detail = (_int32(&sub, &h, "asset_file_def_index")
                                          if g.field == 5 else _text(&sub, &h, kind))
                    elif g.field == 13:
                        registered = _text(&obj, &g, "registered_name")
                nodes.append((children, kind, detail, registered))
            elif f.field == 2:
                _need(&m, &f, TFS_PB_LEN, "a concrete function")
                _enter(&obj, &m, &f)
                key, found = _map_entry_head(&obj, &value, "a concrete function")
                bound = []
                if found:
                    _enter(&sub, &obj, &value)
                    while _next(&sub, &h):
                        if h.field == 2:
                            _repeated_ints(&sub, &h, bound, True, "a bound input")
                concrete[key] = bound
    return nodes, concrete


# ---- SessionBundle signatures (TF Serving before SavedModel) ---------------------------
# tensorflow/contrib/session_bundle/manifest.proto: Signatures 1 default_signature,
# 2 named_signatures (map<string, Signature>); Signature (a oneof) 1 regression_signature
# (1 input, 2 output), 2 classification_signature (1 input, 2 classes, 3 scores),
# 3 generic_signature (1 map<string, TensorBinding>); TensorBinding 1 tensor_name.

cdef str _binding(Msg *m):
    cdef tfs_pb_field f
    cdef str name = ""
    while _next(m, &f):
        if f.field == 1:
            name = _text(m, &f, "a tensor binding's name")
    return name


cdef tuple _bundle_signature(Msg *m):
    """A Signature: (kind, {role: tensor name}); kind None when unset."""
    cdef tfs_pb_field f, g, value
    cdef Msg sub, entry, item
    cdef object kind = None
    cdef dict tensors = {}
    cdef tuple roles
    while _next(m, &f):
        if f.field < 1 or f.field > 3:
            continue
        _need(m, &f, TFS_PB_LEN, "a signature")
        _enter(&sub, m, &f)
        kind, tensors = ("regression", "classification", "generic")[f.field - 1], {}
        roles = (("input", "output"), ("input", "classes", "scores"), ())[f.field - 1]
        while _next(&sub, &g):
            if f.field == 3 and g.field == 1:
                _need(&sub, &g, TFS_PB_LEN, "a generic binding")
                _enter(&entry, &sub, &g)
                key, found = _map_entry_head(&entry, &value, "a generic binding")
                if found:
                    _enter(&item, &entry, &value)
                    tensors[key] = _binding(&item)
                else:
                    tensors[key] = ""
            elif f.field != 3 and 1 <= g.field <= len(roles):
                _need(&sub, &g, TFS_PB_LEN, "a tensor binding")
                _enter(&item, &sub, &g)
                tensors[roles[g.field - 1]] = _binding(&item)
    return (kind, tensors)


def serving_signatures(data):
    """A serialized ``tensorflow.serving.Signatures`` (the ``serving_signatures``
    collection of SessionBundle exports): (default signature or None, {name: signature});
    each signature (kind, {role: tensor name}) as _bundle_signature gives it."""
    cdef const uint8_t[::1] view = data
    cdef Msg m, sub, entry
    cdef tfs_pb_field f, value
    cdef object default = None
    cdef dict named = {}
    _open(&m, view, 0, view.shape[0])
    while _next(&m, &f):
        if f.field == 1:
            _need(&m, &f, TFS_PB_LEN, "default_signature")
            _enter(&sub, &m, &f)
            default = _bundle_signature(&sub)
        elif f.field == 2:
            _need(&m, &f, TFS_PB_LEN, "a named signature")
            _enter(&entry, &m, &f)
            key, found = _map_entry_head(&entry, &value, "a named signature")
            if found:
                _enter(&sub, &entry, &value)
                named[key] = _bundle_signature(&sub)
            else:
                named[key] = (None, {})
    return default, named
