"""docs/architecture.md stays true: every module, class and function it names exists in src/."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def resolve(dotted: str) -> bool:
    """``bastion.a.b[.Name[.attr]]``: the longest prefix that is a module or package under src/,
    then (if anything is left) a class, function or assignment of that name defined in it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT / "src" / Path(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not module.is_file():
            continue
        rest = parts[cut:]
        if not rest:
            return True
        text = module.read_text(encoding="utf-8")
        name = rest[0]
        return bool(re.search(rf"^\s*(class|def)\s+{name}\b|^{name}\s*[:=]|^\s*from .* import .*\b{name}\b", text, re.M))
    return False


def named(text: str) -> list[str]:
    dotted = re.findall(r"`(bastion(?:\.\w+)+)", text)
    paths = [p.removeprefix("src/").removesuffix(".py").replace("/", ".")
             for p in re.findall(r"`(src/bastion/[\w/]+\.py)`", text)]
    return sorted(set(dotted + paths))


def test_every_module_path_named_in_the_architecture_doc_exists() -> None:
    names = named(DOC.read_text(encoding="utf-8"))
    assert len(names) > 20
    assert [n for n in names if not resolve(n)] == []


def test_the_check_can_fail() -> None:
    assert resolve("bastion.core.defense.TargetDefense") and resolve("bastion.core.run")
    assert not resolve("bastion.core.nonexistent") and not resolve("bastion.core.defense.NoSuchThing")
