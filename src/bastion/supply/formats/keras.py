"""Keras model configs (``.keras`` zip config.json, legacy HDF5 ``model_config``, model JSON).

Keras runs code from a config through Lambda layers (marshalled Python bytecode) and through
``module``/``class_name``/``registered_name`` references that import arbitrary callables
(CVE-2024-3660, CVE-2025-1550).

HDF5 (legacy Keras ``.h5``): the root attributes ``model_config`` and ``training_config`` are read as
JSON text -- what ``keras.saving.legacy`` reads -- and analysed; external links, external raw storage
and virtual-dataset sources are checked like ONNX external data (HDF5 User Guide, "HDF5 Groups:
external links", "Datasets: external storage", "Virtual Dataset"). The file is read first by bastion's
own reader (:mod:`bastion.supply.formats.hdf5_reader`, standard library only); a file it does not read
(dense storage, virtual datasets, anything odd) goes to ``h5py`` (optional, >= 3.11 for link visits),
which parses it read-only in a bounded worker process; without h5py (or when h5py cannot open the
file) the config JSON is located by its signature in the raw bytes. Every HDF5 finding says which
reader was used (``metrics.hdf5_reader``: ``builtin``, ``h5py`` or ``byte-search``). Nothing is
unpickled or executed; no dataset data is read.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import sys
from typing import Any, BinaryIO

from bastion.core.severity import Severity
from bastion.supply.context import LimitExceeded, ScanContext
from bastion.supply.formats.hdf5_reader import TooLarge

log = logging.getLogger(__name__)

_KERAS_MODULES = ("keras", "tensorflow", "tf_keras", "keras_nlp", "keras_cv", "keras_hub")
_CODE_CLASSES = {"Lambda", "__lambda__", "function", "__function__", "TFOpLambda", "SlicingOpLambda"}


def analyse_config(ctx: ScanContext, doc: Any, *, offset: int | None = None, root: str = "$",
                   **metrics: Any) -> bool:
    """Walk a Keras config tree; returns True if it looks like a Keras model config. ``root`` names the
    tree in finding titles; ``metrics`` are added to every finding (e.g. which HDF5 reader was used)."""
    stack: list[tuple[Any, str]] = [(doc, root)]
    keras_like = False
    seen = 0
    while stack:
        node, path = stack.pop()
        seen += 1
        if seen > 1_000_000:
            break
        if isinstance(node, dict):
            cls = node.get("class_name")
            if isinstance(cls, str):
                keras_like = True
                if cls in _CODE_CLASSES:
                    ctx.add("BASTION-SC-020", Severity.critical, f"Keras {cls} layer at {path} runs code on load",
                            offset=offset, description="Lambda layers carry marshalled Python bytecode (or a "
                            "function reference) that Keras executes when the model is loaded or called.",
                            config_path=path, **metrics)
            mod = node.get("module")
            if isinstance(mod, str) and mod.split(".")[0] not in _KERAS_MODULES:
                verdict, reason = ctx.config.policy.classify(mod, str(node.get("class_name") or "?"))
                sev = Severity.critical if verdict == "deny" else Severity.high
                ctx.add("BASTION-SC-020", sev, f"Keras config at {path} imports module {mod!r}",
                        offset=offset, description=f"Keras imports '{mod}' while deserialising; {reason}.",
                        config_path=path, **metrics)
            else:
                _check_registered_name(ctx, node.get("registered_name"), path, offset, metrics)
            fn = node.get("function")
            if isinstance(fn, (list, tuple, str)) and path.endswith("config") and node.get("function_type"):
                ctx.add("BASTION-SC-020", Severity.critical, f"Keras config at {path} carries a function",
                        offset=offset, config_path=path, **metrics)
            stack.extend((v, f"{path}.{k}") for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return keras_like


def _check_registered_name(ctx: ScanContext, reg: Any, path: str, offset: int | None,
                           metrics: dict[str, Any]) -> None:
    """``registered_name`` "package>Name" resolves through Keras' registry of custom objects: a package
    other than Keras' own means the model needs (and runs) code from outside Keras."""
    if not isinstance(reg, str) or ">" not in reg:
        return
    package, _, name = reg.partition(">")
    if package.split(".")[0] in _KERAS_MODULES:
        return
    verdict, reason = ctx.config.policy.classify(package, name or "?")
    sev = Severity.critical if verdict == "deny" else Severity.high
    ctx.add("BASTION-SC-020", sev, f"Keras config at {path} needs registered object {reg!r}", offset=offset,
            description=f"Loading resolves '{reg}' from Keras' custom-object registry (code outside Keras that "
            f"the loading program must import); {reason}.", config_path=path, **metrics)


def analyse_config_bytes(ctx: ScanContext, data: bytes | str, offset: int | None = None, root: str = "$",
                         **metrics: Any) -> bool:
    """Parse JSON text and analyse it; returns True when it is a Keras config."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"Keras config is not valid JSON: {exc}", offset=offset,
                **metrics)
        return False
    return analyse_config(ctx, doc, offset=offset, root=root, **metrics)


def scan_json(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    if size > ctx.config.max_header_bytes:
        return
    try:
        doc = json.loads(fh.read())
    except (ValueError, RecursionError):
        ctx.formats[-1] = "text"
        return
    if analyse_config(ctx, doc):
        ctx.formats[-1] = "keras-json"


_H5_ATTRS = ("model_config", "training_config")   # root attributes keras.saving.legacy parses as JSON


def scan_hdf5(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    """HDF5: Keras configs in the root attributes, and links or storage outside the file (bastion's reader,
    else h5py when installed, else a byte search for the config JSON)."""
    if _scan_hdf5_builtin(ctx, fh, size):
        return
    if not _h5py_installed():
        _scan_hdf5_bytes(ctx, fh, size)
        return
    from bastion.supply.isolate import run_isolated

    # the HDF5 C library can take unbounded memory or time on a crafted file: it parses in a bounded
    # worker process, which alone imports h5py (and NumPy)
    run_isolated(ctx, fh, size, _scan_hdf5_h5py, "HDF5", setup=_import_h5py)


def _scan_hdf5_builtin(ctx: ScanContext, fh: BinaryIO, size: int) -> bool:
    """Read the file with bastion's HDF5 reader; False (nothing reported) when it does not read it."""
    from bastion.supply.formats.hdf5_reader import Broken, Unsupported, read_hdf5

    fh.seek(0)
    try:
        doc = read_hdf5(fh, size, _H5_ATTRS, max_value_bytes=ctx.config.max_header_bytes,
                        max_links=ctx.config.max_members, check_time=ctx.check_time)
    except Broken as exc:
        ctx.add("BASTION-SC-007", Severity.medium, f"HDF5 file cannot be opened: {exc}",
                description="The HDF5 library refuses such a file, so Keras (h5py) cannot load it either; its "
                "bytes were searched for Keras configs.", hdf5_reader="byte-search")
        fh.seek(0)
        _scan_hdf5_bytes(ctx, fh, size)
        return True
    except Unsupported as exc:
        log.debug("%s: HDF5 left to h5py: %s", ctx.where, exc)
        fh.seek(0)
        return False
    found = False
    for key in _H5_ATTRS:
        if key in doc.attributes:
            found |= _config_attribute(ctx, key, doc.attributes[key], "builtin")
    for kind, location, obj in doc.external:
        _check_external(ctx, kind, os.fsdecode(location), obj, "builtin")
    _hdf5_done(ctx, found, "builtin")
    return True


def _h5py_installed() -> bool:
    """Whether h5py can be imported, without importing it."""
    if "h5py" in sys.modules:
        return sys.modules["h5py"] is not None
    import importlib.util

    return importlib.util.find_spec("h5py") is not None


def _import_h5py() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")   # the worker does no linear algebra: no BLAS thread pool to start
    import h5py  # noqa: F401 - imported once in the worker, before its memory limit is set


def _scan_hdf5_h5py(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    import h5py

    fh.seek(0)
    try:
        f = h5py.File(fh, "r")
    except Exception as exc:  # noqa: BLE001 - OSError for most malformed files; others on odd superblocks
        ctx.add("BASTION-SC-007", Severity.medium, f"HDF5 file cannot be opened by h5py: {exc}",
                description="Keras (h5py) cannot load it either; its bytes were searched for Keras configs.",
                hdf5_reader="byte-search")
        fh.seek(0)
        _scan_hdf5_bytes(ctx, fh, size)
        return
    with f:
        found = False
        for key in _H5_ATTRS:
            value = _attr_text(ctx, h5py, f, key)
            if value is not None:
                found |= _config_attribute(ctx, key, value, "h5py")
        try:
            _check_links(ctx, f)
        except (LimitExceeded, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the HDF5 library's errors on corrupt link or heap messages
            ctx.add("BASTION-SC-007", Severity.medium, f"HDF5 links cannot be read: {exc}", hdf5_reader="h5py",
                    description="The file's group structure is corrupt; external links and storage were not "
                    "all checked.")
            ctx.not_understood(f"HDF5 links cannot be read: {exc}")
    _hdf5_done(ctx, found, "h5py")


def _config_attribute(ctx: ScanContext, key: str, value: str | bytes | TooLarge, reader: str) -> bool:
    """Analyse the root attribute ``key`` (JSON text); True when it is a Keras model config."""
    if isinstance(value, TooLarge) or len(value) > ctx.config.max_header_bytes:
        ctx.add("BASTION-SC-008", Severity.high, f"HDF5 attribute {key!r} larger than max_header_bytes",
                limit="max_header_bytes", hdf5_reader=reader)
        return False
    ctx.check_time()
    keras_like = analyse_config_bytes(ctx, value, root=f"{key}$", hdf5_reader=reader, attribute=key)
    return keras_like and key == "model_config"


def _hdf5_done(ctx: ScanContext, found: bool, reader: str) -> None:
    if found:
        ctx.formats[-1] = "keras-h5"
    else:
        ctx.add("BASTION-SC-050", Severity.info, "HDF5 file without a Keras model config (weights only?)",
                description="No model_config attribute holding a Keras config in the root group; links and "
                "external storage were checked.", hdf5_reader=reader)


def _attr_text(ctx: ScanContext, h5py: Any, f: Any, key: str) -> str | bytes | TooLarge | None:
    """A root attribute as text (str, or bytes decoded by json), TooLarge past max_header_bytes; None if
    absent or not text."""
    try:
        if key not in f.attrs:
            return None
        if h5py.h5a.open(f.id, key.encode()).get_storage_size() > ctx.config.max_header_bytes:
            return TooLarge()
        value = f.attrs[key]
    except Exception as exc:  # noqa: BLE001 - unreadable datatype or corrupt attribute message
        ctx.add("BASTION-SC-007", Severity.medium, f"HDF5 attribute {key!r} cannot be read: {exc}",
                hdf5_reader="h5py")
        return None
    if getattr(value, "size", None) == 1 and hasattr(value, "reshape"):
        value = value.reshape(-1)[0]      # a one-element array of strings
    if isinstance(value, (str, bytes)):
        return value
    ctx.add("BASTION-SC-007", Severity.medium, f"HDF5 attribute {key!r} is not text ({type(value).__name__})",
            description="Keras expects JSON text here; a loader may fail or behave unpredictably.",
            hdf5_reader="h5py")
    return None


def _check_links(ctx: ScanContext, f: Any) -> None:
    """Visit every link once (H5Lvisit does not follow external or soft links) and check external links,
    datasets' external raw storage and virtual-dataset source files."""
    import h5py

    visit = getattr(f, "visititems_links", None)
    if visit is None:
        ctx.add("BASTION-SC-050", Severity.info, "HDF5 links not checked (h5py < 3.11)", hdf5_reader="h5py")
        return
    count = [0]

    def check(name: str, link: Any) -> None:
        count[0] += 1
        if count[0] % 256 == 0:
            ctx.check_time()
        if count[0] > ctx.config.max_members:
            raise LimitExceeded("max_members", f"HDF5 file has more than {ctx.config.max_members} links")
        if isinstance(link, h5py.ExternalLink):
            _check_external(ctx, "external link", os.fsdecode(link.filename), f"/{name}", "h5py")
            return
        if not isinstance(link, h5py.HardLink):
            return
        try:
            obj = f.get(name)
        except Exception:  # noqa: BLE001 - an object that cannot be opened: nothing a loader reads
            return
        if not isinstance(obj, h5py.Dataset):
            return
        for entry in obj.external or ():
            _check_external(ctx, "external storage", os.fsdecode(entry[0]), f"/{name}", "h5py")
        if obj.is_virtual:
            for src in obj.virtual_sources():
                if src.file_name != ".":
                    _check_external(ctx, "virtual dataset source", os.fsdecode(src.file_name), f"/{name}",
                                    "h5py")

    visit(check)


def _check_external(ctx: ScanContext, kind: str, location: str, obj: str, reader: str) -> None:
    """Like ONNX external data: an absolute or climbing path is critical, a path that leaves the
    model directory through a symbolic link is high."""
    loc = location
    if loc.startswith("${ORIGIN}"):           # HDF5 >= 1.10: the directory of the file holding the link
        loc = loc[len("${ORIGIN}"):].lstrip("/\\") or "."
    norm = posixpath.normpath(loc.replace("\\", "/"))
    desc = {"external link": "HDF5 follows the link into that file when the object is accessed",
            "external storage": "the dataset's bytes are read from that file (exfiltration as weights)",
            "virtual dataset source": "the dataset's values are read from that file"}[kind]
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":") \
            or norm == ".." or norm.startswith("../"):
        ctx.add("BASTION-SC-030", Severity.critical, f"HDF5 {kind} at {obj} points outside the model directory: "
                f"{location!r}", description=f"A loader reading it goes outside the model directory: {desc}.",
                external_location=location, hdf5_object=obj, hdf5_reader=reader)
        return
    real_dir = os.path.realpath(ctx.path.parent)
    real = os.path.realpath(ctx.path.parent / norm)
    if os.path.commonpath([real, real_dir]) != real_dir:
        ctx.add("BASTION-SC-030", Severity.high, f"HDF5 {kind} at {obj} ({location!r}) resolves through a link "
                f"to {real}", description=f"A symbolic link inside the model directory sends the loader outside "
                f"it: {desc}.", external_location=location, hdf5_object=obj, hdf5_reader=reader)


def _scan_hdf5_bytes(ctx: ScanContext, fh: BinaryIO, size: int) -> None:
    """Fallback: find JSON model configs (``{"class_name": ...``) stored as HDF5 attributes by signature."""
    limit = min(size, ctx.config.max_member_bytes)
    data = fh.read(limit)
    ctx.count_unpacked(0)
    decoder = json.JSONDecoder()
    found = False
    pos = data.find(b'{"class_name"')
    start = end = -1
    text: str | None = None
    while pos >= 0:
        ctx.check_time()
        if pos >= end:        # the run of bytes up to the next NUL, decoded once when it is ASCII (nested
            start, end = pos, data.find(b"\x00", pos)   # configs: one decode per run, not one per signature)
            end = len(data) if end < 0 else end
            run = data[start:end]
            text = run.decode("ascii") if run.isascii() else None
        try:
            if text is not None:
                doc, stop = decoder.raw_decode(text, pos - start)
                used = stop - (pos - start)
            else:
                doc, used = decoder.raw_decode(data[pos:end].decode("utf-8", "replace"))
            found = True
            analyse_config(ctx, doc, offset=pos, hdf5_reader="byte-search")
            pos = data.find(b'{"class_name"', pos + max(used, 1))
        except (ValueError, RecursionError):
            pos = data.find(b'{"class_name"', pos + 1)
    if not found:
        ctx.add("BASTION-SC-050", Severity.info, "HDF5 file without a Keras model config (weights only?)",
                description="bastion searched the HDF5 bytes for Keras configs (its own reader does not read this "
                "file, and h5py is not installed or cannot open it) and found none; external links and storage "
                "were not checked. Install h5py (pip install 'bastion[formats]') for a full read.",
                hdf5_reader="byte-search")
