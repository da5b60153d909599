"""The lazy registries: names without imports, duplicates refused, plug-ins through entry points,
a missing optional library as a one-line install hint."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bastion.attacks import ATTACKS, available_attacks, get_attack
from bastion.campaign.checks import CHECKS, check_kinds
from bastion.core.registry import DuplicateNameError, Registry
from bastion.errors import MissingExtraError, UsageError


def test_names_membership_and_refs_import_nothing(tmp_path: Path) -> None:
    reg = Registry("widget", {"a": "bastion_no_such_module_xyz:thing"})
    assert "a" in reg and list(reg) == ["a"] and len(reg) == 1
    assert reg.ref("a") == "bastion_no_such_module_xyz:thing"
    assert reg.group == "bastion.widgets" and reg.loaded() == {}
    with pytest.raises(UsageError, match="widget 'a'.*cannot import 'bastion_no_such_module_xyz'"):
        reg.get_object("a")
    with pytest.raises(UsageError, match="unknown widget 'b'; available: a"):
        reg.get_object("b")
    with pytest.raises(KeyError):
        reg["b"]


def test_listing_attacks_and_checks_imports_no_heavy_library() -> None:
    code = ("import sys; from bastion.attacks import available_attacks; from bastion.campaign.checks import "
            "check_kinds; n = list(available_attacks()) + list(check_kinds()); "
            "assert 'pgd' in n and 'square' in n and 'evasion' in n, n; "
            "heavy = [m for m in ('torch', 'sklearn', 'scipy', 'onnxruntime', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_duplicate_names_are_errors_and_the_same_reference_is_not() -> None:
    reg = Registry("widget", {"a": "pkg.mod:A"})
    reg.add("a", "pkg.mod:A")  # the same entry again: fine
    with pytest.raises(DuplicateNameError, match="two widgets named 'a': 'pkg.mod:A'.*'pkg.other:B'"):
        reg.add("a", "pkg.other:B")
    with pytest.raises(UsageError, match="not 'package.module:attr'"):
        reg.add("c", "no-colon")


def test_add_an_object_and_the_decorator() -> None:
    reg: Registry[object] = Registry("renderer")

    @reg.register("double")
    def double(x: int) -> int:
        return 2 * x

    assert reg["double"] is double and reg.ref("double").endswith(":test_add_an_object_and_the_decorator.<locals>.double")
    reg.remove("double")
    assert "double" not in reg


def test_builtin_attacks_load_lazily_by_name() -> None:
    assert available_attacks() is ATTACKS and check_kinds() is CHECKS
    assert ATTACKS.ref("square") == "bastion.attacks.evasion.square:Square"
    assert get_attack("square", eps=0.1).name == "square"


def test_a_missing_optional_library_is_a_one_line_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bastion_needs_torch_mod.py").write_text("import torch\nX = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ModuleNotFoundError(name='torch')
    reg = Registry("widget", {"x": "bastion_needs_torch_mod:X"})
    with pytest.raises(MissingExtraError) as err:
        reg.get_object("x")
    assert "pip install 'bastion[torch]'" in str(err.value) and "Traceback" not in str(err.value)


def _plugin(tmp_path: Path, entry_points: str) -> Path:
    """A tiny installed distribution: a module and a dist-info with entry points."""
    (tmp_path / "bastion_demo_plugin.py").write_text(textwrap.dedent('''
        import numpy as np
        from bastion.attacks import Attack
        from bastion.campaign.checks import Check, CheckParams

        class Shift(Attack):
            """Adds eps to every feature (a test plug-in)."""
            name = "plugin-shift"
            needs_gradients = False
            family = "evasion-blackbox"

            def _attack_batch(self, target, x, goal, rows):
                return np.clip(x + self.eps, 0.0, 1.0).astype(np.float32)

        class NoopParams(CheckParams):
            level: int = 1

        class NoopCheck(Check):
            kind = "plugin-noop"
            Params = NoopParams
            needs_model = False

            def run(self, ctx):
                raise NotImplementedError
    '''))
    dist = tmp_path / "bastion_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bastion-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return tmp_path


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    def install(entry_points: str) -> Path:
        path = _plugin(tmp_path, entry_points)
        monkeypatch.syspath_prepend(str(path))
        return path
    yield install
    for reg in (ATTACKS, CHECKS):
        for name in ("plugin-shift", "plugin-noop"):
            reg.remove(name)
        reg._plugins_read = False  # read the (now absent) entry points again on next use


def test_an_entry_point_plugin_adds_an_attack_and_a_check(plugin_path) -> None:  # noqa: ANN001
    plugin_path("[bastion.attacks]\nplugin-shift = bastion_demo_plugin:Shift\n\n"
                "[bastion.checks]\nplugin-noop = bastion_demo_plugin:NoopCheck\n")
    ATTACKS.refresh()
    CHECKS.refresh()
    assert "plugin-shift" in available_attacks() and "bastion-demo-plugin" in ATTACKS.origin("plugin-shift")
    from bastion.core.spec import InputSpec
    from bastion.core.targets.callable_target import CallableTarget

    target = CallableTarget(lambda x: np.stack([1 - x[:, 0], x[:, 0]], 1), [0, 1],
                            InputSpec(shape=(1,), lower=0.0, upper=1.0))
    res = get_attack("plugin-shift", eps=0.6).run(target, np.array([[0.1], [0.2]], np.float32), np.array([0, 0]))
    assert res.success.all()
    assert check_kinds()["plugin-noop"].Params().level == 1


def test_a_plugin_that_reuses_a_builtin_name_is_an_error(plugin_path) -> None:  # noqa: ANN001
    plugin_path("[bastion.attacks]\npgd = bastion_demo_plugin:Shift\n")
    with pytest.raises(DuplicateNameError, match="two attacks named 'pgd'.*bastion-demo-plugin"):
        ATTACKS.refresh()


def test_bastion_attacks_lists_a_plugin_with_its_package(tmp_path: Path) -> None:
    import json
    import os

    from tests.cli.conftest import run_cli

    path = _plugin(tmp_path, "[bastion.attacks]\nplugin-shift = bastion_demo_plugin:Shift\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(path), os.environ.get("PYTHONPATH")) if p)}
    proc = run_cli(["attacks", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in json.loads(proc.stdout) if r["name"] == "plugin-shift")
    assert row["available"] and row["family"] == "evasion-blackbox" and "bastion-demo-plugin" in row["origin"]
    assert row["description"] == "Adds eps to every feature (a test plug-in)."
