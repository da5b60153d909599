"""Configuration of ``bastion inspect``: resource limits and allow-list extensions."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from bastion.errors import PolicyError
from bastion.supply.allowlist import Policy, load_policy_file

_LIMIT_KEYS = ("max_pickle_bytes", "max_opcodes", "max_memo", "max_stack", "max_member_bytes",
               "max_total_unpacked", "max_ratio", "max_members", "max_depth", "max_file_seconds",
               "max_header_bytes", "max_onnx_bytes", "max_findings_per_rule", "max_parser_memory",
               "follow_symlinks")


@dataclass
class InspectConfig:
    """Limits that bound time and memory per file, and the allow-list policy.

    Every limit, when exceeded, yields a ``BASTION-SC-008`` finding for that file (the file
    could not be fully analysed) and the scan of the other files goes on.
    """

    max_pickle_bytes: int = 512 * 1024**2      # bytes of pickle opcodes read per stream
    max_opcodes: int = 20_000_000              # opcodes walked per stream
    max_memo: int = 5_000_000                  # memo entries per stream
    max_stack: int = 5_000_000                 # symbolic stack depth
    max_member_bytes: int = 1024**3            # bytes decompressed from one archive member
    max_total_unpacked: int = 4 * 1024**3      # bytes decompressed from one top-level file
    max_ratio: float = 200.0                   # compression ratio above which a member is a bomb
    max_members: int = 100_000                 # members of one archive
    max_depth: int = 6                         # nested archives / nested pickle.loads
    max_file_seconds: float = 60.0             # wall time per top-level file
    max_header_bytes: int = 100 * 1024**2      # safetensors / npy / json header size
    max_onnx_bytes: int = 2 * 1024**3          # ONNX protobuf size parsed
    max_findings_per_rule: int = 100           # findings listed per rule and file; the rest are counted
    max_parser_memory: int = 512 * 1024**2     # extra memory a C-library parser (HDF5) may take, in a child
    follow_symlinks: bool = False              # walk into symlinked directories
    policy: Policy = field(default_factory=Policy.default)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> InspectConfig:
        """Load a YAML/TOML file with optional ``limits:`` and allow-list keys.

        Example (YAML)::

            limits: {max_file_seconds: 10, max_depth: 4}
            allow: [mypkg.models.MyNet]
            allow_patterns: ["mypkg.layers:*Layer"]
            deny: [mypkg.unsafe]
        """
        doc = load_policy_file(path)
        return cls.from_dict(doc, source=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, source: str = "<config>") -> InspectConfig:
        doc = dict(doc)
        limits = doc.pop("limits", None) or {}
        if not isinstance(limits, dict):
            raise PolicyError("must be a mapping", file=source, field="limits")
        cfg = cls()
        types = {f.name: f.type for f in fields(cls)}
        for key, value in limits.items():
            if key not in _LIMIT_KEYS:
                raise PolicyError(f"unknown limit; allowed: {', '.join(_LIMIT_KEYS)}", file=source,
                                  field=f"limits.{key}")
            want = bool if key == "follow_symlinks" else (float if "float" in str(types[key]) else int)
            if isinstance(value, bool) != (want is bool) or not isinstance(value, (int, float)) or \
                    (want is int and not isinstance(value, int)) or \
                    (want is not bool and not (math.isfinite(value) and value > 0)):
                raise PolicyError(f"must be a positive finite {want.__name__}, got {value!r}", file=source,
                                  field=f"limits.{key}")
            setattr(cfg, key, want(value))
        cfg.policy.extend(doc, source=source)
        return cfg
