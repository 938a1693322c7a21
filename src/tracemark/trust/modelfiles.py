"""Which model files may be opened, and how: nothing in a model file from someone else is ever unpickled or run.

- safetensors and ONNX need no rule here (no code in the format; onnxruntime keeps external data inside
  the model's folder, and none for a model given as bytes);
- a ``.pt``/``.pth`` state dict is read by :func:`load_state_dict_file` with ``weights_only=True`` only;
- a torch.export ``.pt2`` archive is checked and rebuilt by :func:`load_exported_program` before torch sees it.

``torch.export.load`` is not safe on a file from someone else. Inside an archive it honours
``use_pickle`` weights and constants (``torch.load(weights_only=False)``), custom and opaque objects
(``pickle.loads``), AOTInductor members (native shared libraries), example inputs that fall back to a full
unpickle, symbolic-shape expressions evaluated by ``sympy.sympify`` (Python ``eval``), guard code passed to
``exec`` when the module is built, and graph nodes that may call any attribute of ``torch``.

So an archive is opened only through :func:`load_exported_program`, which

1. bounds the file (size, member count, stored members only, no duplicates, one root folder);
2. admits only the members a plain ``torch.export.save`` writes (refusing anything else by name);
3. refuses pickled, custom-object and opaque payloads in the weights and constants configs, and
   example inputs that need more than ``weights_only=True``;
4. admits only graph calls to ATen operators (less file access), a few higher-order operators,
   symbolic-integer arithmetic and ``getitem``, and symbolic expressions made of numbers, quoted
   symbol names and the sympy constructors torch writes;
5. rebuilds the archive from the checked members, with the guard code and node metadata dropped,
   so torch parses exactly what was checked.

Every refusal is an :class:`~tracemark.errors.UnsafeFileError` naming the member and the reason.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from tracemark.errors import ArchiveBoundsError, ArchiveError, ArchiveFeatureError, ModelFileError, UnsafeFileError
from tracemark.trust.archives import ZipLimits, check_directory, read_member

MAX_ARCHIVE_BYTES = 16 << 30
"""Largest ``.pt2`` file accepted (16 GiB); it is read into memory once."""
PT2_LIMITS = ZipLimits(max_archive_bytes=MAX_ARCHIVE_BYTES, max_members=100_000, max_member_bytes=MAX_ARCHIVE_BYTES,
                       max_total_bytes=MAX_ARCHIVE_BYTES, methods=frozenset({zipfile.ZIP_STORED}))
"""What a ``.pt2`` archive may hold: 100,000 members, 16 GiB in all, stored (torch.export.save never compresses)."""
MAX_JSON_BYTES = 256 << 20
"""Largest JSON member (program, configs) parsed."""

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"})
"""Suffixes of torch.save files: read as state dicts with ``weights_only=True``, never fully unpickled."""

_FIXED_MEMBERS = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "data/sample_inputs/model.pt",
}
_WEIGHT_FILE = re.compile(r"weight_\d{1,9}")
_TENSOR_CONSTANT_FILE = re.compile(r"tensor_\d{1,9}")
_ROOT = re.compile(r"[A-Za-z0-9_.-]{1,255}")

_OPERATOR_FUNCTIONS = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift",
}
_MATH_FUNCTIONS = {"ceil", "floor", "trunc", "sqrt"}
_TORCH_SYM_FUNCTIONS = {"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt", "_sym_sqrt", "sym_sum"}
_HIGHER_ORDER = {"cond", "while_loop", "map_impl", "wrap_with_set_grad_enabled", "wrap_with_autocast"}
_ATEN_REFUSED = re.compile(r"file|save|load|_print|_debug|profiler|record_function", re.IGNORECASE)

_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le",
    "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not", "true", "false", "True", "False", "oo", "zoo", "nan", "Piecewise", "ITE",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
    "RoundToInt", "RoundDecimal", "ToFloat", "FloatTrueDiv", "IntTrueDiv", "FloatPow", "PowByNatural",
    "Identity", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    # keyword arguments of Symbol(...) in torch's srepr
    "positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "infinite", "evaluate",
}
_SYMPY_TOKEN = re.compile(
    r"\s+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|'[A-Za-z_][A-Za-z0-9_]{0,63}'|[A-Za-z_][A-Za-z0-9_]{0,63}|\*\*|[-+*/%(),=<>!]=?|[&|~]"
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` state dict, read with ``weights_only=True``.

    A file holding pickled Python objects (a whole module, custom classes) is refused with
    :class:`~tracemark.errors.UnsafeFileError`; anything unreadable is a :class:`~tracemark.errors.ModelFileError`.
    """
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: this file holds pickled Python objects, not just weights; loading it could run "
            "arbitrary code, so tracemark refuses. Ask for safetensors, ONNX or a torch.export .pt2 file."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable torch file ({_first_line(exc)})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def load_exported_program(source: str | Path | bytes | bytearray, *, name: str | None = None) -> Any:
    """A ``torch.export.ExportedProgram`` from a checked ``.pt2`` file or its bytes; never unpickles.

    Raises :class:`~tracemark.errors.UnsafeFileError` for anything that could run code, and
    :class:`~tracemark.errors.ModelFileError` for a file that is not a readable archive.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "<torch.export program>")
    data = _read_bounded(source, label)
    rebuilt = sanitized_archive(data, label)
    try:
        return torch.export.load(io.BytesIO(rebuilt))
    except Exception as exc:  # torch raises many unrelated types for an archive it cannot deserialize
        raise ModelFileError(f"{label}: not a loadable torch.export program ({_first_line(exc)})") from exc


def check_exported_archive(source: str | Path | bytes | bytearray, *, name: str | None = None) -> None:
    """Raise :class:`~tracemark.errors.UnsafeFileError` unless the ``.pt2`` archive passes every check (nothing is loaded)."""
    label = name or (str(source) if isinstance(source, (str, Path)) else "<torch.export program>")
    sanitized_archive(_read_bounded(source, label), label)


def sanitized_archive(data: bytes | bytearray, label: str) -> bytes:
    """The archive rebuilt from its checked members only (guard code and node metadata dropped)."""
    members = _checked_members(bytes(data), label)
    program = _json_member(members, "models/model.json", label)
    _check_program(program, label)
    program["guards_code"] = []
    _drop_node_metadata(program)
    members["models/model.json"] = json.dumps(program).encode("utf-8")
    for config_name, folder, pattern in (
        ("data/weights/model_weights_config.json", "data/weights/", _WEIGHT_FILE),
        ("data/constants/model_constants_config.json", "data/constants/", _TENSOR_CONSTANT_FILE),
    ):
        _check_payload_config(members, config_name, folder, pattern, label)
    _check_sample_inputs(members, label)
    return _rebuild(members)


def _read_bounded(source: str | Path | bytes | bytearray, label: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_ARCHIVE_BYTES:
            raise UnsafeFileError(f"{label}: {len(source)} bytes, larger than the {MAX_ARCHIVE_BYTES >> 30} GiB accepted")
        return bytes(source)
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > MAX_ARCHIVE_BYTES:
            raise UnsafeFileError(f"{label}: {size} bytes, larger than the {MAX_ARCHIVE_BYTES >> 30} GiB accepted")
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{label}: cannot read the file ({exc.strerror or exc})") from exc


def _checked_members(data: bytes, label: str) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = check_directory(archive, PT2_LIMITS, label)  # counts, sizes, flags and methods, before any read
    except (ArchiveBoundsError, ArchiveFeatureError) as exc:
        raise UnsafeFileError(str(exc)) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ModelFileError(f"{label}: not a torch.export .pt2 archive ({_first_line(exc)})") from exc
    if not infos:
        raise ModelFileError(f"{label}: empty archive, not a torch.export program")
    root = infos[0].filename.split("/", 1)[0]
    if not _ROOT.fullmatch(root):
        raise UnsafeFileError(f"{label}: archive root folder {root!r} is not a plain name")
    members: dict[str, bytes] = {}
    for info in infos:
        if not info.filename.startswith(root + "/"):
            raise UnsafeFileError(f"{label}: member {info.filename!r} lies outside the archive's root folder {root!r}")
        relative = info.filename[len(root) + 1:]
        if relative in members:
            raise UnsafeFileError(f"{label}: member {relative!r} appears twice")
        _admit_member(relative, label)
        try:
            members[relative] = read_member(archive, info, PT2_LIMITS.max_member_bytes, label)
        except ArchiveError as exc:
            raise ModelFileError(str(exc)) from exc
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as exc:
            raise ModelFileError(f"{label}: member {relative!r} is unreadable ({_first_line(exc)})") from exc
    if members.get("archive_format", b"").strip() != b"pt2":
        raise ModelFileError(f"{label}: not a torch.export .pt2 archive (no archive_format 'pt2'; an older torch.export file must be re-saved)")
    for required in ("models/model.json", "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        if required not in members:
            raise ModelFileError(f"{label}: archive lacks {required}")
    return members


def _admit_member(relative: str, label: str) -> None:
    if relative in _FIXED_MEMBERS:
        return
    folder, _, leaf = relative.rpartition("/")
    if folder == "data/weights" and _WEIGHT_FILE.fullmatch(leaf):
        return
    if folder == "data/constants" and _TENSOR_CONSTANT_FILE.fullmatch(leaf):
        return
    if relative.startswith("extra/") and ".." not in relative:
        return
    if relative.startswith("data/aotinductor/"):
        reason = "compiled native code (AOTInductor), which loading would run"
    elif folder == "data/constants" and leaf.startswith(("custom_obj", "opaque_obj")):
        reason = "a pickled custom or opaque object"
    elif relative.endswith((".pt", ".pkl", ".pickle")):
        reason = "a pickled payload (legacy format or a custom member)"
    elif relative.startswith("models/"):
        reason = "a second program (only 'model' is read)"
    else:
        reason = "a member torch.export.save does not write"
    raise UnsafeFileError(f"{label}: archive member {relative!r} holds {reason}; tracemark refuses to load it")


def _json_member(members: dict[str, bytes], relative: str, label: str) -> Any:
    raw = members[relative]
    if len(raw) > MAX_JSON_BYTES:
        raise UnsafeFileError(f"{label}: {relative} is {len(raw)} bytes, more than the {MAX_JSON_BYTES >> 20} MiB accepted")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{label}: {relative} is not valid JSON ({_first_line(exc)})") from exc
    if not isinstance(value, dict):
        raise ModelFileError(f"{label}: {relative} is not a JSON object")
    return value


def _check_payload_config(members: dict[str, bytes], config_name: str, folder: str, pattern: re.Pattern, label: str) -> None:
    entries = _json_member(members, config_name, label).get("config")
    if not isinstance(entries, dict):
        raise ModelFileError(f"{label}: {config_name} has no 'config' object")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise ModelFileError(f"{label}: {config_name} entry {fqn!r} is not an object")
        path_name = meta.get("path_name")
        if meta.get("use_pickle") is not False:
            raise UnsafeFileError(f"{label}: {config_name} marks {fqn!r} as pickled (use_pickle); unpickling could run code, so tracemark refuses")
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            raise UnsafeFileError(f"{label}: {config_name} entry {fqn!r} points at {path_name!r}, not a plain tensor payload")
        if folder + path_name not in members:
            raise ModelFileError(f"{label}: {config_name} entry {fqn!r} points at a missing member {path_name!r}")
        if not isinstance(meta.get("tensor_meta"), dict):
            raise ModelFileError(f"{label}: {config_name} entry {fqn!r} has no tensor metadata")


def _check_sample_inputs(members: dict[str, bytes], label: str) -> None:
    raw = members.get("data/sample_inputs/model.pt")
    if not raw:
        return
    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # the restricted unpickler raises UnpicklingError, RuntimeError, ...
        raise UnsafeFileError(
            f"{label}: the example inputs need a full unpickle (not plain tensors); tracemark refuses ({_first_line(exc)})"
        ) from exc


def _check_program(program: dict, label: str) -> None:
    for node in _nodes(program):
        target = node.get("target")
        if not isinstance(target, str) or not _allowed_target(target):
            raise UnsafeFileError(f"{label}: the graph calls {target!r}, which is not an operator tracemark admits")
    for key, value in _walk(program):
        if key == "expr_str":
            _check_sympy(value, label)
        elif key == "name" and isinstance(value, str) and not _NAME.fullmatch(value):
            raise UnsafeFileError(f"{label}: the graph names a value {value[:60]!r}, not a plain identifier")
    constraints = program.get("range_constraints", {})
    if not isinstance(constraints, dict):
        raise ModelFileError(f"{label}: malformed range constraints")
    for symbol in constraints:
        _check_sympy(symbol, label)


def _allowed_target(target: str) -> bool:
    parts = target.split(".")
    if parts[:3] == ["torch", "ops", "aten"] and len(parts) in (4, 5):
        return all(_NAME.fullmatch(p) for p in parts[3:]) and not _ATEN_REFUSED.search(parts[3])
    if parts[:3] == ["torch", "ops", "higher_order"] and len(parts) == 4:
        return parts[3] in _HIGHER_ORDER
    if len(parts) == 2 and parts[0] == "_operator":
        return parts[1] in _OPERATOR_FUNCTIONS
    if len(parts) == 2 and parts[0] == "math":
        return parts[1] in _MATH_FUNCTIONS
    if len(parts) == 2 and parts[0] == "torch":
        return parts[1] in _TORCH_SYM_FUNCTIONS
    return False


def _check_sympy(expr: Any, label: str) -> None:
    if not isinstance(expr, str) or len(expr) > 10_000 or "__" in expr:
        raise UnsafeFileError(f"{label}: a symbolic shape expression is not plain arithmetic")
    position = 0
    while position < len(expr):
        match = _SYMPY_TOKEN.match(expr, position)
        if match is None:
            raise UnsafeFileError(f"{label}: symbolic shape expression {expr[:60]!r} holds {expr[position:position + 10]!r}, not plain arithmetic")
        token = match.group()
        if token[0].isalpha() or token[0] == "_":
            if token not in _SYMPY_NAMES and not re.fullmatch(r"[a-z]{1,4}\d{1,9}", token):
                raise UnsafeFileError(f"{label}: symbolic shape expression {expr[:60]!r} names {token!r}, not a sympy constructor or symbol")
        position = match.end()


def _nodes(value: Any) -> Iterator[dict]:
    if isinstance(value, dict):
        if "target" in value and "inputs" in value and "outputs" in value:
            yield value
        for child in value.values():
            yield from _nodes(child)
    elif isinstance(value, list):
        for child in value:
            yield from _nodes(child)


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                yield key, child
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _drop_node_metadata(program: dict) -> None:
    for node in _nodes(program):
        node["metadata"] = {}


def _rebuild(members: dict[str, bytes]) -> bytes:
    writer = torch._C.PyTorchFileWriter(buffer := io.BytesIO())  # type: ignore[attr-defined]
    for relative, raw in members.items():
        if relative == ".data/version" or relative.startswith("extra/"):
            continue  # the writer adds its own version record; extra files are never read
        writer.write_record(relative, raw, len(raw))
    writer.write_end_of_file()
    return buffer.getvalue()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
