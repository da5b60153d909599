"""docs/architecture.md's layer rules, checked on the source: imports point down only
(interfaces > campaign > outputs > capabilities > core), a capability never imports another
capability, and core imports no capability. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {"cli": 4, "guard": 4, "dashboard": 4, "campaign": 3, "outputs": 2,
          "attacks": 1, "defenses": 1, "certify": 1, "audit": 1, "monitor": 1, "supply": 1,
          "core": 0, "errors": 0}
ATTACK_FAMILIES = ("privacy", "extraction", "poisoning")  # attacks/base.py and evasion/ are "evasion"


def unit(module: str) -> str | None:
    """The layer unit of a ``bastion.*`` module: its top package, or attacks.<family>."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "bastion" or parts[1].startswith("__"):
        return None
    if parts[1] == "attacks":
        return "attacks." + (parts[2] if len(parts) > 2 and parts[2] in ATTACK_FAMILIES else "evasion")
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "bastion" else [node.module]
            out += [(node.lineno, n) for n in names]
    return out


def violations(src_root: Path = SRC) -> list[str]:
    """Every import that breaks a rule, as ``file:line: module imports name``. A new top-level
    package must be given a layer in LAYERS (a KeyError otherwise)."""
    bad = []
    for path in sorted((src_root / "bastion").rglob("*.py")):
        module = ".".join(path.relative_to(src_root).with_suffix("").parts).removesuffix(".__init__")
        src = unit(module)
        if src is None:
            continue
        for line, name in imports(path):
            dst = unit(name)
            if dst is None or dst == src:
                continue
            up = LAYERS[dst.split(".")[0]] > LAYERS[src.split(".")[0]]
            sideways = LAYERS[src.split(".")[0]] == LAYERS[dst.split(".")[0]] == 1
            if up or sideways:
                bad.append(f"{path.relative_to(src_root.parent)}:{line}: {module} imports {name}")
    return bad


def test_imports_follow_the_layer_rules() -> None:
    assert violations() == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The rule can fail: a core module importing a capability, a capability importing another."""
    pkg = tmp_path / "bastion"
    (pkg / "core").mkdir(parents=True)
    (pkg / "certify").mkdir()
    (pkg / "core" / "x.py").write_text("def f():\n    from bastion.monitor.base import Detector\n")
    (pkg / "certify" / "y.py").write_text("from bastion.attacks.privacy import roc_curve\n")
    (pkg / "certify" / "z.py").write_text("from bastion.core.data import Dataset\n")  # allowed
    found = violations(tmp_path)
    assert [f.split(": ", 1)[1] for f in found] == ["bastion.certify.y imports bastion.attacks.privacy",
                                                   "bastion.core.x imports bastion.monitor.base"]
