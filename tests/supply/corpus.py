"""Test corpus for ``bastion inspect``: malicious files written opcode by opcode, benign files made by
the real libraries. Generated at test time into a temporary directory; nothing binary is committed.

Malicious pickles are assembled from raw opcodes (never by pickling an object whose __reduce__ runs
code), and nothing here ever loads them. Each entry names the technique it exercises, following
the bypass classes of deny-list scanners listed in shared/ANCHORS.md.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- a tiny pickle assembler


def P(n: int) -> bytes:
    """PROTO opcode."""
    return b"\x80" + bytes([n])


def U(s: str) -> bytes:
    """BINUNICODE (protocol 1+)."""
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def SU(s: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def BY(b: bytes) -> bytes:
    """BINBYTES (protocol 3)."""
    return b"B" + struct.pack("<I", len(b)) + b


def G(module: str, name: str) -> bytes:
    """GLOBAL (protocol 0 text form)."""
    return f"c{module}\n{name}\n".encode()


def SG(module: str, name: str) -> bytes:
    """STACK_GLOBAL with constant names (protocol 4)."""
    return SU(module) + SU(name) + b"\x93"


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) via MARK ... TUPLE REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def p2(body: bytes) -> bytes:
    return P(2) + body + b"."


def p4(body: bytes) -> bytes:
    return P(4) + body + b"."


def framed(body: bytes) -> bytes:
    """Protocol 5 with a FRAME around the body."""
    return P(5) + b"\x95" + struct.pack("<Q", len(body) + 1) + body + b"."


# ---------------------------------------------------------------- corpus items


@dataclass(frozen=True)
class Item:
    name: str          # file or directory created under the corpus root
    technique: str
    malicious: bool


MaliciousMaker = Callable[[Path], None]
_MAL: list[tuple[str, str, MaliciousMaker]] = []


def mal(name: str, technique: str) -> Callable[[MaliciousMaker], MaliciousMaker]:
    def deco(fn: MaliciousMaker) -> MaliciousMaker:
        _MAL.append((name, technique, fn))
        return fn
    return deco


def _bytes_item(name: str, technique: str, data: bytes) -> None:
    _MAL.append((name, technique, lambda p, d=data: p.write_bytes(d)))


SH = "echo pwned > /tmp/bastion-should-never-exist"
RCE_P0 = G("os", "system") + b"(S'" + SH.encode() + b"'\ntR."

_bytes_item("p0_os_system.pkl", "protocol 0 GLOBAL os.system + REDUCE", RCE_P0)
_bytes_item("p1_posix_system.bin", "protocol 1, posix alias, safe-looking .bin name",
            G("posix", "system") + b"(" + U(SH) + b"tR.")
_bytes_item("p2_builtin_eval.pt", "protocol 2, __builtin__.eval (Python 2 name)",
            p2(call(G("__builtin__", "eval"), U("__import__('os').system('id')"))))
_bytes_item("p2_builtins_exec.ckpt", "builtins.exec", p2(call(G("builtins", "exec"), U("import os"))))
_bytes_item("p4_stack_global_popen.pkl", "STACK_GLOBAL subprocess.Popen",
            p4(call(SG("subprocess", "Popen"), b"]" + SU("id") + b"a")))
# memo tricks: names stored in the memo (one at a huge LONG_BINPUT index) and fetched for STACK_GLOBAL
_bytes_item("p4_memo_stack_global.pkl", "memo trick: STACK_GLOBAL names come from the memo",
            p4(SU("nt") + b"r\xff\xff\xff\x7f" + b"0" + SU("system") + b"\x94" + b"0"
               + b"j\xff\xff\xff\x7f" + b"h\x01" + b"\x93" + b"(" + SU("id") + b"tR"))
_bytes_item("p5_framed_os.pkl", "protocol 5 with FRAME, os.popen", framed(call(SG("os", "popen"), SU("id"))))
_bytes_item("dynamic_stack_global.pkl", "STACK_GLOBAL with a module name computed at load time",
            p4(call(SG("builtins", "str"), SU("os")) + SU("system") + b"\x93" + b"(" + SU("id") + b"tR"))
_bytes_item("pkgutil_resolve_name.pkl", "pkgutil.resolve_name then call the result",
            p4(call(call(SG("pkgutil", "resolve_name"), SU("os:system")), SU("id"))))
_bytes_item("importlib_getattr.pkl", "importlib.import_module + builtins.getattr",
            p4(call(call(SG("builtins", "getattr"), call(SG("importlib", "import_module"), SU("os")),
                         SU("system")), SU("id"))))
_bytes_item("runpy_run_path.pkl", "runpy.run_path", p4(call(SG("runpy", "run_path"), SU("/tmp/x.py"))))
_bytes_item("pty_spawn.pkl", "pty.spawn", p4(call(SG("pty", "spawn"), SU("/bin/sh"))))
_bytes_item("ctypes_cdll.pkl", "ctypes.CDLL", p4(call(SG("ctypes", "CDLL"), SU("libc.so.6"))))
_bytes_item("profile_run.pkl", "profile.run code string", p4(call(SG("profile", "run"), SU("import os"))))
_bytes_item("cprofile_run.pkl", "cProfile.run code string", p4(call(SG("cProfile", "run"), SU("import os"))))
_bytes_item("pydoc_locate.pkl", "pydoc.locate('os.system') then call",
            p4(call(call(SG("pydoc", "locate"), SU("os.system")), SU("id"))))
_bytes_item("torch_collect_env_run.pt", "torch.utils.collect_env.run",
            p2(call(G("torch.utils.collect_env", "run"), U("id"))))
_bytes_item("pip_main.pkl", "pip.main install", p4(call(SG("pip", "main"), b"]" + SU("install") + b"a")))
_bytes_item("functools_partial.pkl", "functools.partial wrapping a callable",
            p4(call(call(SG("functools", "partial"), SG("timeit", "timeit"), SU("import os")))))
_bytes_item("operator_attrgetter.pkl", "operator.attrgetter chain",
            p4(call(call(SG("operator", "attrgetter"), SU("system")), call(SG("importlib", "import_module"),
                                                                             SU("os")))))
_bytes_item("operator_methodcaller.pkl", "operator.methodcaller",
            p4(call(call(SG("_operator", "methodcaller"), SU("system"), SU("id")), SG("builtins", "object"))))
_bytes_item("numpy_runstring.pkl", "numpy internals reaching exec (numpy.testing runstring)",
            p2(call(G("numpy.testing._private.utils", "runstring"), U("import os"), b"}")))
_bytes_item("numpy_dunder_builtins.pkl", "numpy module attribute reaching builtins (dotted name)",
            p4(call(SG("numpy", "__builtins__.eval"), SU("1"))))
_bytes_item("submodule_os.pkl", "submodule import: os reached through another module's attribute",
            p4(call(SG("logging", "os.system"), SU("id"))))
_bytes_item("submodule_torch_serialization.pkl", "submodule import through torch.serialization",
            p2(call(G("torch.serialization", "load"), U("/tmp/x"))))
_INNER = p4(call(SG("os", "system"), SU("id")))
_bytes_item("nested_pickle_loads.pkl", "nested pickle.loads of a bytes payload",
            p4(call(SG("pickle", "loads"), BY(_INNER))))
_bytes_item("nested_loads_unknown.pkl", "nested _pickle.loads hiding a non-allow-listed call",
            p4(call(SG("_pickle", "loads"), BY(p4(call(SG("evilpkg.payload", "Dropper"), SU("x")))))))
_bytes_item("torch_load_from_bytes.pt", "torch.storage._load_from_bytes nested payload",
            p2(call(G("torch.storage", "_load_from_bytes"), BY(_INNER))))
_bytes_item("inst_opcode.pkl", "INST opcode (protocol 0)", b"(S'id'\nios\nsystem\n.")
_bytes_item("obj_opcode.pkl", "OBJ opcode", b"(cos\nsystem\nS'id'\no.")
_bytes_item("newobj_unknown_class.pkl", "NEWOBJ of a class outside the allow-list",
            p2(G("evilpkg.models", "Backdoor") + b")" + b"\x81" + b"}" + U("cmd") + U("id") + b"sb"))
_bytes_item("newobj_ex_popen.pkl", "NEWOBJ_EX subprocess.Popen",
            p4(SG("subprocess", "Popen") + b"]" + SU("id") + b"a\x85" + b"}" + b"\x92"))
_bytes_item("build_patches_global.pkl", "BUILD on an imported class (monkey-patching)",
            p2(G("collections", "OrderedDict") + b"N}" + U("__repr__") + G("builtins", "print")
               + b"s\x86b"))
_bytes_item("ext_registry.pkl", "EXT1 copyreg extension code", p2(b"\x82\x01(" + U("id") + b"tR"))
_bytes_item("indirect_call.pkl", "call of a value produced by another call",
            p2(call(call(G("evilpkg", "factory")), U("id"))))
_bytes_item("webbrowser_open.pkl", "webbrowser.open", p4(call(SG("webbrowser", "open"), SU("http://x"))))
_bytes_item("timeit_timeit.pkl", "timeit.timeit code string", p4(call(SG("timeit", "timeit"), SU("import os"))))
_bytes_item("marshal_loads.pkl", "marshal.loads bytecode", p4(call(SG("marshal", "loads"), BY(b"\xe3" * 8))))
_bytes_item("shutil_rmtree.pkl", "shutil.rmtree", p4(call(SG("shutil", "rmtree"), SU("/tmp/x"))))
_bytes_item("socket_connect.pkl", "socket.create_connection",
            p4(call(SG("socket", "create_connection"), SU("127.0.0.1") + b"K\x50\x86")))
_bytes_item("builtins_import.pkl", "builtins.__import__",
            p2(call(G("builtins", "__import__"), U("os"))))
_bytes_item("truncated_rce.pkl", "truncated pickle (no STOP) that still calls os.system", RCE_P0[:-1])
_bytes_item("looks_safe.onnx", "pickle named .onnx", RCE_P0)
_bytes_item("looks_safe.safetensors", "pickle named .safetensors", p4(call(SG("os", "system"), SU("id"))))
_bytes_item("config.json", "pickle named .json", RCE_P0)
_bytes_item("second_pickle.pkl", "benign pickle followed by a malicious one in the same stream",
            p2(b"}") + b"." + RCE_P0)


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _torch_zip(payload: bytes, prefix: str = "archive") -> bytes:
    return _zip([(f"{prefix}/data.pkl", payload), (f"{prefix}/byteorder", b"little"),
                 (f"{prefix}/version", b"3\n"), (f"{prefix}/data/0", b"\x00" * 64)], zipfile.ZIP_STORED)


_bytes_item("torch_zip_rce.pt", "PyTorch zip whose data.pkl calls os.system", _torch_zip(RCE_P0))
_bytes_item("torch_zip_rce.bin", "PyTorch zip named .bin, STACK_GLOBAL payload",
            _torch_zip(p4(call(SG("subprocess", "check_output"), SU("id")))))
_bytes_item("torchscript_rce.pt", "TorchScript archive with a malicious constants.pkl",
            _zip([("m/data.pkl", p2(b"}")), ("m/constants.pkl", RCE_P0), ("m/code/__torch__/m.py", b"def f(): pass\n"),
                  ("m/version", b"1\n")]))


@mal("torch_legacy_rce.bin", "legacy (non-zip) torch format with a malicious main pickle")
def _legacy(p: Path) -> None:
    p.write_bytes(p2(b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")) + p2(b"K\xe9")
                  + p2(b"}") + RCE_P0 + p2(b"]") + b"\x00" * 32)


_bytes_item("joblib_gzip_rce.joblib", "joblib-style gzip-compressed malicious pickle",
            __import__("gzip").compress(RCE_P0))
_bytes_item("zlib_rce.joblib", "joblib zlib-compressed malicious pickle", zlib.compress(RCE_P0))


def _npy_object(payload: bytes) -> bytes:
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += b" " * (64 - 10 - len(header) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


_bytes_item("object_array_rce.npy", "NumPy object array whose pickle calls os.system", _npy_object(RCE_P0))
_bytes_item("npz_rce.npz", "npz with a malicious object array",
            _zip([("a.npy", _npy_object(p4(call(SG("subprocess", "run"), SU("id")))))]))


def _keras(config: dict) -> bytes:
    return _zip([("config.json", json.dumps(config).encode()),
                 ("metadata.json", json.dumps({"keras_version": "3.3.3"}).encode())])


_LAMBDA_CFG = {"module": "keras", "class_name": "Sequential", "config": {"layers": [
    {"module": "keras.layers", "class_name": "Lambda", "config": {
        "name": "lambda", "function": {"class_name": "__lambda__", "config": {
            "code": "4wEAAAAAAAAAAAAAAAEAAAADAAAA8wgAAAB0AGQBgwFTACkCTnoCaWQpAdoEZXhlYykB2gF4qQByBAAAAPoAWgg8bGFtYmRhPg==",
            "defaults": None, "closure": None}}}}]}}
_bytes_item("keras_lambda.keras", "Keras .keras with a Lambda layer", _keras(_LAMBDA_CFG))
_bytes_item("keras_module_ref.keras", "Keras config importing a function from builtins/os (CVE-2025-1550)",
            _keras({"module": "keras", "class_name": "Sequential", "config": {"layers": [
                {"module": "os", "class_name": "function", "config": "system", "registered_name": "system"}]}}))
_bytes_item("keras_lambda.h5", "HDF5 (legacy Keras) whose model_config has a Lambda layer",
            b"\x89HDF\r\n\x1a\n" + b"\x00" * 120 + b"model_config\x00" + json.dumps(_LAMBDA_CFG).encode()
            + b"\x00" * 64)


@mal("onnx_traversal", "ONNX external data with ../ path traversal")
def _onnx_traversal(p: Path) -> None:
    p.mkdir()
    (p / "model.onnx").write_bytes(_onnx_model_bytes("../../../../etc/passwd"))


@mal("onnx_symlink", "ONNX external data through a symlink leaving the model directory")
def _onnx_symlink(p: Path) -> None:
    p.mkdir()
    os.symlink("/etc/hostname", p / "weights.bin")
    (p / "model.onnx").write_bytes(_onnx_model_bytes("weights.bin"))


@mal("onnx_absolute.onnx", "ONNX external data with an absolute path")
def _onnx_abs(p: Path) -> None:
    p.write_bytes(_onnx_model_bytes("/etc/shadow"))


def _onnx_model_bytes(location: str | None, domain: str = "") -> bytes:
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [2], [1.0, 2.0])
    if location is not None:
        w.ClearField("float_data")
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", "0"), ("length", "8")):
            e = w.external_data.add()
            e.key, e.value = k, v
    node = helper.make_node("Add", ["X", "W"], ["Y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])], [w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return onnx.helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _patch_local_name(data: bytes, old: str, new: str) -> bytes:
    i = data.index(b"PK\x03\x04" + data[4:4])  # first local header
    j = data.index(old.encode(), i)
    return data[:j] + new.encode() + data[j + len(old):]


_bytes_item("zip_name_mismatch.pt", "zip local header name differs from central directory",
            _patch_local_name(_torch_zip(RCE_P0.replace(b"os\nsystem", b"os\nsystem")), "archive/data.pkl",
                              "archive/data.pk_"))


def _crc_broken() -> bytes:
    data = bytearray(_zip([("payload.pkl", RCE_P0)], zipfile.ZIP_STORED))
    cd = data.index(b"PK\x01\x02")
    data[cd + 16: cd + 20] = b"\xde\xad\xbe\xef"   # central CRC
    data[14:18] = b"\xde\xad\xbe\xef"              # local CRC
    return bytes(data)


_bytes_item("zip_crc_mismatch.pt", "zip CRC mismatch (breaks scanners that stop on CRC errors)", _crc_broken())


def _flag_bits() -> bytes:
    data = bytearray(_torch_zip(p2(b"}")))
    cd = data.index(b"PK\x01\x02")
    data[cd + 8] |= 0x01                          # encrypted flag in the central directory only
    return bytes(data)


_bytes_item("zip_flag_bits.pt", "zip encrypted flag bit set in the central directory only", _flag_bits())


def _eocd_count() -> bytes:
    data = bytearray(_zip([("a.pkl", p2(b"}")), ("b.pkl", RCE_P0)]))
    e = data.rindex(b"PK\x05\x06")
    data[e + 8: e + 12] = struct.pack("<HH", 1, 1)  # end record claims one entry
    return bytes(data)


_bytes_item("zip_eocd_count.zip", "zip end record entry count differs from central directory", _eocd_count())
_bytes_item("zip_traversal.zip", "zip member path traversal", _zip([("../../evil.pkl", p2(b"}"))]))
_bytes_item("zip_nested.zip", "zip inside zip inside zip with a malicious pickle",
            _zip([("inner.zip", _zip([("model.zip", _zip([("w.bin", RCE_P0)]))]))]))
_bytes_item("zip_bomb.zip", "zip bomb (highly compressible member)",
            _zip([("weights.bin", b"\x00" * (20 * 1024**2))]))


def _deep_zip(levels: int) -> bytes:
    data = p2(b"}")
    for i in range(levels):
        data = _zip([(f"l{i}.zip", data)])
    return data


_bytes_item("zip_deep_nesting.zip", "archives nested deeper than the limit", _deep_zip(12))
_bytes_item("polyglot_pickle_zip.pkl", "benign pickle that is also a zip holding a malicious pickle",
            p2(b"}") + b"." + _zip([("archive/data.pkl", RCE_P0)]))


def _safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


_bytes_item("st_overlap.safetensors", "safetensors tensors overlapping", _safetensors(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12))
_bytes_item("st_out_of_bounds.safetensors", "safetensors offsets past the buffer", _safetensors(
    {"a": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}}, b"\x00" * 16))
_bytes_item("st_trailing_pickle.safetensors", "safetensors with a pickle appended after the data",
            _safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8) + RCE_P0)
_bytes_item("st_bad_dtype.safetensors", "safetensors with an unknown dtype and size mismatch", _safetensors(
    {"a": {"dtype": "PYOBJ", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8))


def _tar(members: list[tuple[str, bytes]], link: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        if link:
            ti = tarfile.TarInfo(link[0])
            ti.type, ti.linkname = tarfile.SYMTYPE, link[1]
            t.addfile(ti)
    return buf.getvalue()


_bytes_item("tar_legacy_rce.tar", "legacy torch tar format with a malicious pickle member",
            _tar([("sys_info", p2(b"}")), ("pickle", RCE_P0), ("tensors", p2(b"]")), ("storages", b"\x00" * 8)]))
_bytes_item("tar_symlink.tar", "tar with a symlink member escaping", _tar([("a.pkl", p2(b"}"))],
                                                                          ("weights", "/etc/passwd")))


def _sevenzip_bad_crc() -> bytes:
    start = struct.pack("<QQI", 1000, 10, 0)
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00\x00\x00\x00" + start + b"\x00" * 64


_bytes_item("archive_bad_header.7z", "7z archive with a corrupt start header (CRC mismatch)", _sevenzip_bad_crc())


def build_malicious(root: Path) -> list[Item]:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for name, technique, maker in _MAL:
        if not has_module(_REQUIRES.get(name)):
            continue      # made with an optional library that is not installed: skipped, not failed
        maker(root / name)
        items.append(Item(name, technique, True))
    return items


# ---------------------------------------------------------------- benign files (real libraries)


def build_benign(root: Path) -> list[Item]:
    import pickle

    import joblib
    import numpy as np
    import onnx
    import torch
    from sklearn.datasets import load_iris
    from sklearn.decomposition import PCA
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    items: list[Item] = []

    def add(name: str, technique: str) -> Path:
        items.append(Item(name, technique, False))
        return root / name

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    torch.save(net.state_dict(), add("state_dict.pt", "torch.save state dict"))
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "loss": 0.25,
                "dtype": torch.float16, "device": torch.device("cpu")}, add("checkpoint.pth", "torch checkpoint"))
    torch.save(net.state_dict(), add("legacy.pt", "legacy torch format"), _use_new_zipfile_serialization=False)
    torch.save({"w": torch.randn(3, dtype=torch.float64).to(torch.bfloat16), "i": torch.arange(4)},
               add("tensors.bin", "torch tensors named .bin"))
    torch.jit.save(torch.jit.script(net.eval()), add("scripted.pt", "TorchScript archive"))

    X, y = load_iris(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    joblib.dump(pipe, add("pipeline.joblib", "joblib sklearn pipeline"))
    joblib.dump(forest, add("forest.joblib", "joblib random forest"))
    joblib.dump(forest, add("forest_compressed.joblib", "joblib compressed forest"), compress=3)
    for proto in (2, 4, 5):
        with open(add(f"pipeline_p{proto}.pkl", f"pickle sklearn pipeline protocol {proto}"), "wb") as fh:
            pickle.dump(pipe, fh, protocol=proto)
    with open(add("forest.pkl", "pickle random forest"), "wb") as fh:
        pickle.dump(forest, fh)
    others = {"gb.pkl": GradientBoostingClassifier(n_estimators=3, random_state=0),
              "hgb.pkl": HistGradientBoostingClassifier(max_iter=3),
              "svc.pkl": SVC(), "knn.pkl": KNeighborsClassifier(algorithm="kd_tree"), "pca.pkl": PCA(2)}
    for name, est in others.items():
        with open(add(name, f"pickle {type(est).__name__}"), "wb") as fh:
            pickle.dump(est.fit(X, y), fh)
    with open(add("numpy_objects.pkl", "pickle of numpy arrays, scalars, RandomState"), "wb") as fh:
        pickle.dump({"a": np.arange(6).reshape(2, 3), "s": np.float32(1.5), "rs": np.random.RandomState(0),
                     "g": np.random.default_rng(0), "set": {1, 2}}, fh)

    np.save(add("array.npy", "numpy .npy"), np.random.default_rng(0).normal(size=(4, 5)))
    np.savez(add("arrays.npz", "numpy .npz"), a=np.arange(3), b=np.ones((2, 2), dtype=np.float16))
    np.savez_compressed(add("arrays_compressed.npz", "numpy compressed .npz"), a=np.zeros(100))

    tensors = {"w": np.random.default_rng(1).normal(size=(3, 2)).astype("<f4"), "b": np.arange(3, dtype="<i8")}
    header: dict = {"__metadata__": {"format": "pt"}}
    blob = b""
    for k, v in tensors.items():
        header[k] = {"dtype": {"float32": "F32", "int64": "I64"}[str(v.dtype)], "shape": list(v.shape),
                     "data_offsets": [len(blob), len(blob) + v.nbytes]}
        blob += v.tobytes()
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    add("model.safetensors", "safetensors written per the spec").write_bytes(struct.pack("<Q", len(h)) + h + blob)

    add("model.onnx", "ONNX model (onnx.helper)").write_bytes(_onnx_model_bytes(None))
    d = add("onnx_external", "ONNX with external data inside the model directory")
    d.mkdir()
    (d / "model.onnx").write_bytes(_onnx_model_bytes("weights.bin"))
    (d / "weights.bin").write_bytes(np.array([1.0, 2.0], dtype="<f4").tobytes())
    model = onnx.load_model_from_string(_onnx_model_bytes(None))
    onnx.save_model(model, str(add("onnx_saved.onnx", "ONNX saved by onnx.save_model")))
    add("keras_dense.keras", "Keras-format zip with Dense layers only").write_bytes(_keras({
        "module": "keras", "class_name": "Sequential", "config": {"layers": [
            {"module": "keras.layers", "class_name": "Dense", "config": {"units": 3, "activation": "relu"}}]}}))
    add("README.md", "text file").write_text("# model card\n\nA small model.\n")
    add("config.json", "HF-style JSON config").write_text(json.dumps({"hidden_size": 8, "num_layers": 2}))
    items += build_benign_optional(root)
    return items


# ---------------------------------------------------------------- 7z and HDF5 (py7zr / h5py, optional)
# Items below are made with the real libraries at test time; where py7zr or h5py is missing they are
# left out of the corpus (skipped), so the core corpus still runs without the optional extra.

_REQUIRES: dict[str, str] = {}


def has_module(name: str | None) -> bool:
    import importlib

    if name is None:
        return True
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def needs(module: str, name: str, technique: str) -> Callable[[MaliciousMaker], MaliciousMaker]:
    """Register a malicious item whose maker imports ``module``."""
    _REQUIRES[name] = module
    return mal(name, technique)


def sevenzip(members: list[tuple[str, bytes]], **kw: object) -> bytes:
    """A 7z archive written by py7zr (kw: password=, header_encryption=, filters=)."""
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", **kw) as z:   # type: ignore[arg-type]
        for name, data in members:
            z.writestr(data, name)
    return buf.getvalue()


def sevenzip_dir(src: Path, arcname: str) -> bytes:
    """A 7z archive of a directory tree (keeps symbolic links as links)."""
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writeall(src, arcname)
    return buf.getvalue()


def keras_h5(path: Path, model_config: dict | None, training_config: dict | None = None,
             links: dict[str, object] | None = None) -> None:
    """An HDF5 file laid out as legacy Keras ``model.save('m.h5')`` writes it (root attributes
    keras_version/backend/model_config/training_config, a model_weights group), made with h5py.
    ``links``: name -> h5py link object, or (file, offset, size) for a dataset with external storage."""
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.13.1"
        f.attrs["backend"] = "tensorflow"
        if model_config is not None:
            f.attrs["model_config"] = json.dumps(model_config)
        if training_config is not None:
            f.attrs["training_config"] = np.bytes_(json.dumps(training_config).encode())   # fixed-length
        w = f.create_group("model_weights")
        w.attrs["layer_names"] = np.array([b"dense"])
        g = w.create_group("dense/dense")
        g.create_dataset("kernel:0", data=np.arange(8, dtype="<f4").reshape(4, 2))
        g.create_dataset("bias:0", data=np.zeros(2, dtype="<f4"))
        for name, link in (links or {}).items():
            if isinstance(link, tuple):
                f.create_dataset(name, shape=(link[2],), dtype="u1", external=[link])
            else:
                f[name] = link


_DENSE_CFG = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
    {"module": "keras.layers", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 4]},
     "registered_name": None},
    {"module": "keras.layers", "class_name": "Dense", "config": {"name": "dense", "units": 2,
                                                                 "activation": "relu"}, "registered_name": None}]}}
_ADAM_TRAINING = {"loss": "mse", "metrics": ["accuracy"], "optimizer_config": {
    "module": "keras.optimizers", "class_name": "Adam", "config": {"learning_rate": 0.001}, "registered_name": None}}


@needs("py7zr", "sevenzip_rce.7z", "7z archive whose member is a pickle calling os.system")
def _7z_rce(p: Path) -> None:
    p.write_bytes(sevenzip([("README.txt", b"weights\n"), ("model/data.pkl", RCE_P0)]))


@needs("py7zr", "sevenzip_nested.7z", "7z inside 7z inside zip... inside 7z, malicious pickle at the bottom")
def _7z_nested(p: Path) -> None:
    inner = sevenzip([("w.bin", RCE_P0)])
    p.write_bytes(sevenzip([("pack.zip", _zip([("inner.7z", sevenzip([("deep.7z", inner)]))]))]))


@needs("py7zr", "sevenzip_bomb.7z", "7z bomb: a solid block expanding thousands of times")
def _7z_bomb(p: Path) -> None:
    p.write_bytes(sevenzip([("weights.bin", b"\x00" * (20 * 1024**2)), ("data.pkl", RCE_P0)]))


@needs("py7zr", "sevenzip_encrypted.7z", "password-protected 7z hiding a malicious pickle")
def _7z_encrypted(p: Path) -> None:
    p.write_bytes(sevenzip([("data.pkl", RCE_P0)], password="infected"))


@needs("py7zr", "sevenzip_header_encrypted.7z", "7z with an encrypted header (member list hidden)")
def _7z_header_encrypted(p: Path) -> None:
    p.write_bytes(sevenzip([("data.pkl", RCE_P0)], password="infected", header_encryption=True))


def _7z_stored(members: list[tuple[str, bytes]]) -> bytes:
    import py7zr

    return sevenzip(members, filters=[{"id": py7zr.FILTER_COPY}])


@needs("py7zr", "sevenzip_crc_mismatch.7z", "7z member altered after packing (CRC mismatch), payload inside")
def _7z_crc(p: Path) -> None:
    data = bytearray(_7z_stored([("data.pkl", RCE_P0), ("b.pkl", p2(b"}"))]))
    i = data.index(SH.encode())
    data[i] ^= 0x20                      # 'e' -> 'E' in the shell command: same opcodes, other CRC
    p.write_bytes(bytes(data))


@needs("py7zr", "sevenzip_symlink.7z", "7z with a symbolic-link member pointing at /etc/passwd")
def _7z_symlink(p: Path) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "m"
        src.mkdir()
        (src / "a.pkl").write_bytes(p2(b"}"))
        os.symlink("/etc/passwd", src / "weights.bin")
        p.write_bytes(sevenzip_dir(src, "model"))


@needs("h5py", "keras_lambda_h5py.h5", "legacy Keras HDF5 (h5py) whose model_config has a Lambda layer")
def _h5_lambda(p: Path) -> None:
    keras_h5(p, _LAMBDA_CFG, _ADAM_TRAINING)


@needs("h5py", "keras_module_h5py.h5", "legacy Keras HDF5 (h5py): layer from a foreign module / registered name")
def _h5_module(p: Path) -> None:
    cfg = json.loads(json.dumps(_DENSE_CFG))
    cfg["config"]["layers"].append({"module": "evilpkg.layers", "class_name": "Backdoor", "config": {},
                                    "registered_name": "evilpkg>Backdoor"})
    keras_h5(p, cfg, _ADAM_TRAINING)


@needs("h5py", "keras_training_config_h5py.h5", "legacy Keras HDF5: training_config loss resolves builtins.eval")
def _h5_training(p: Path) -> None:
    keras_h5(p, _DENSE_CFG, {"loss": {"module": "builtins", "class_name": "function", "config": "eval",
                                      "registered_name": "eval"}})


@needs("h5py", "hdf5_external_link.h5", "HDF5 external link climbing out of the model directory")
def _h5_external_link(p: Path) -> None:
    import h5py

    keras_h5(p, _DENSE_CFG, _ADAM_TRAINING, {"model_weights/dense/extra": h5py.ExternalLink(
        "../../../../tmp/attacker.h5", "/kernel")})


@needs("h5py", "hdf5_external_storage.h5", "HDF5 dataset whose raw storage is /etc/passwd (read as weights)")
def _h5_external_storage(p: Path) -> None:
    keras_h5(p, _DENSE_CFG, _ADAM_TRAINING, {"model_weights/dense/dense/scale:0": ("/etc/passwd", 0, 64)})


@needs("h5py", "hdf5_link_symlink", "HDF5 external link to a file in the directory that is a symlink out of it")
def _h5_symlink(p: Path) -> None:
    import h5py

    p.mkdir()
    os.symlink("/etc/hostname", p / "shard.h5")
    keras_h5(p / "model.h5", _DENSE_CFG, None, {"model_weights/shard": h5py.ExternalLink("shard.h5", "/w")})


def hdf5_variants(out: Path) -> dict[str, Path]:
    """HDF5 files written by h5py with every superblock version, group storage, attribute type and link kind
    that bastion's HDF5 reader reads or must leave to h5py (tests/supply/test_hdf5_reader.py)."""
    import h5py
    import numpy as np

    lam, adam = json.dumps(_LAMBDA_CFG), json.dumps(_ADAM_TRAINING)

    def keras_like(name: str, libver: str = "earliest", **kw: object) -> None:
        with h5py.File(out / name, "w", libver=libver, **kw) as f:
            f.attrs["keras_version"] = "2.13.1"
            f.attrs["model_config"] = lam                                 # variable-length string
            f.attrs["training_config"] = np.bytes_(adam.encode())          # fixed-length, null-padded
            g = f.create_group("model_weights/dense")
            g.create_dataset("kernel", data=np.ones(3, "<f4"))
            g["ext"] = h5py.ExternalLink("/etc/x.h5", "/w")                # makes the group a compact one
            f["soft"] = h5py.SoftLink("/model_weights")
            f.create_dataset("e", shape=(8,), dtype="u1", external=[("a.bin", 0, 4), ("../b.bin", 0, 4)])

    for libver in ("earliest", "v108", "v110", "latest"):                  # superblock 0, 2, 3; headers v1, v2
        keras_like(f"lib_{libver}.h5", libver)
    keras_like("track_order.h5", "latest", track_order=True)
    keras_like("track_order_early.h5", track_order=True)
    with h5py.File(out / "many_links.h5", "w") as f:                      # a two-level group B-tree
        f.attrs["model_config"] = json.dumps(_DENSE_CFG)
        for i in range(300):
            f.create_dataset(f"d{i:03d}", data=np.zeros(1))
        g = f.create_group("g")
        for i in range(4):
            g[f"l{i}"] = h5py.ExternalLink(f"/abs{i}.h5", "/")
        g["z"] = h5py.ExternalLink("../../up.h5", "/")
    with h5py.File(out / "dense_links.h5", "w", libver="latest") as f:  # fractal heap: declined
        for i in range(20):
            f[f"l{i:02d}"] = h5py.ExternalLink(f"/abs{i}.h5", "/")
    with h5py.File(out / "hard_links.h5", "w") as f:                      # a group and a dataset linked twice
        a = f.create_group("a")
        a["x"] = h5py.ExternalLink("/etc/passwd", "/")
        f["b"] = a
        a["self"] = a
        f["ds2"] = f.create_dataset("ds", shape=(4,), dtype="u1", external=[("/etc/shadow", 0, 4)])
    with h5py.File(out / "string_types.h5", "w") as f:                    # fixed UTF-8, variable-length ASCII
        f.attrs.create("model_config", lam.encode(), dtype=h5py.string_dtype("utf-8", len(lam)))
        f.attrs.create("training_config", adam, dtype=h5py.string_dtype("ascii"))
    with h5py.File(out / "one_element.h5", "w") as f:
        f.attrs["model_config"] = np.array([lam], dtype=h5py.string_dtype())
        f.attrs["training_config"] = np.array([[adam.encode()]])
    with h5py.File(out / "not_text.h5", "w") as f:
        f.attrs["model_config"] = 3
        f.attrs["training_config"] = np.array([b"a", b"b"])
    with h5py.File(out / "empty.h5", "w") as f:
        f.attrs["model_config"] = ""
        f.attrs["training_config"] = np.bytes_(b"")
    with h5py.File(out / "big_config.h5", "w") as f:                       # a 330 KB global heap object
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": [
            {"class_name": "Dense", "config": {"name": "d" * 50, "i": i}} for i in range(3000)]
            + [{"class_name": "Lambda"}]}})
    with h5py.File(out / "committed_type.h5", "w") as f:
        f["t"] = np.dtype("<f4")
        f.create_dataset("x", shape=(2,), dtype=f["t"])
        f.attrs["model_config"] = json.dumps(_DENSE_CFG)
    with h5py.File(out / "chunked.h5", "w") as f:
        f.create_dataset("c", data=np.zeros((64, 64)), chunks=(8, 8), compression="gzip")
        f.attrs["model_config"] = json.dumps(_DENSE_CFG)
    with h5py.File(out / "names.h5", "w") as f:
        f.create_group("ünï cödé")["e"] = h5py.ExternalLink("${ORIGIN}/../x.h5", "/")
        f["sp ace"] = h5py.ExternalLink("C:\\evil.h5", "/")
    layout = h5py.VirtualLayout(shape=(4,), dtype="<f4")
    layout[:] = h5py.VirtualSource("/tmp/elsewhere.h5", "w", shape=(4,))
    with h5py.File(out / "virtual.h5", "w", libver="latest") as f:
        f.create_virtual_dataset("v", layout)
    with h5py.File(out / "nullterm.h5", "w") as f:
        tid = h5py.h5t.C_S1.copy()
        tid.set_size(400)
        tid.set_strpad(h5py.h5t.STR_NULLTERM)
        attr = h5py.h5a.create(f.id, b"model_config", tid, h5py.h5s.create(h5py.h5s.SCALAR))
        attr.write(np.array(lam.encode().ljust(400, b"\0"), dtype="S400"))
    with h5py.File(out / "inner_nul.h5", "w") as f:
        f.attrs["model_config"] = np.bytes_(json.dumps(_DENSE_CFG).encode() + b"\0" + lam.encode())
    return {p.name: p for p in sorted(out.iterdir())}


def build_benign_optional(root: Path) -> list[Item]:
    """Benign 7z and Keras HDF5 files (skipped where py7zr / h5py is missing). Call after the other
    benign files exist: the 7z archive packs some of them."""
    items: list[Item] = []
    if has_module("py7zr"):
        members = [(n, (root / n).read_bytes()) for n in ("state_dict.pt", "model.safetensors", "array.npy",
                                                        "pipeline_p4.pkl", "model.onnx", "keras_dense.keras")
                   if (root / n).exists()]
        (root / "models.7z").write_bytes(sevenzip(members))
        items.append(Item("models.7z", "7z (py7zr) of benign model files", False))
        # stored (no compression) and not ending with a zip: a stored zip member would let zipfile read the
        # .7z as a zip (a real polyglot, reported high)
        stored = [(n, d) for n, d in members if n in ("model.safetensors", "array.npy")]
        (root / "models_stored.7z").write_bytes(_7z_stored(stored))
        items.append(Item("models_stored.7z", "7z (py7zr), stored (no compression)", False))
    if has_module("h5py"):
        import h5py

        keras_h5(root / "keras_dense.h5", _DENSE_CFG, _ADAM_TRAINING,
                 {"model_weights/alias": h5py.SoftLink("/model_weights/dense")})
        items.append(Item("keras_dense.h5", "legacy Keras HDF5 (h5py) with Dense layers and Adam", False))
        keras_h5(root / "weights_only.h5", None)
        items.append(Item("weights_only.h5", "HDF5 weights without a model config", False))
    return items
