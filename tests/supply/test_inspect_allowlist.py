"""Allow-list precedence (issue 7): exact allow entries beat module-level deny rules, torch's own
weights-only allow-list is the reference for torch files, and published gadgets are always critical."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from bastion.core.results import Severity
from bastion.supply import InspectConfig, scan_paths
from bastion.supply.allowlist import Policy, _default_doc
from corpus import G, SG, SU, U, call, p2, p4


def test_sparse_tensor_saved_by_torch_is_clean(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]), (2, 2))
    torch.save({"s": sparse, "csr": sparse.to_sparse_csr()}, tmp_path / "sparse.pt")
    res = scan_paths([tmp_path / "sparse.pt"])
    assert res.findings == [] and res.complete     # torch.serialization._get_layout is allowed exactly


def test_exact_allow_entry_wins_over_a_module_deny_but_not_an_exact_deny(tmp_path: Path) -> None:
    policy = Policy.default()
    assert policy.classify("torch.serialization", "_get_layout")[0] == "allow"
    assert policy.classify("torch.serialization", "load")[0] == "deny"
    policy.extend({"allow": ["shutil.disk_usage", "subprocess.list2cmdline"], "deny": ["collections.OrderedDict"]})
    assert policy.classify("shutil", "disk_usage")[0] == "allow"
    assert policy.classify("shutil", "rmtree")[0] == "deny"
    assert policy.classify("subprocess", "list2cmdline")[0] == "deny"     # known dangerous: never admitted
    assert policy.classify("collections", "OrderedDict")[0] == "deny"


def test_shipped_torch_list_is_torchs_weights_only_list() -> None:
    pytest.importorskip("torch")
    from torch._weights_only_unpickler import _get_allowed_globals

    shipped = set(_default_doc("torch_weights_only.yaml")["allow"])
    assert shipped == set(_get_allowed_globals())
    policy = Policy.default()
    for full in sorted(shipped):
        mod, _, name = full.rpartition(".")
        assert policy.classify(mod, name)[0] == "allow", full


_DANGEROUS = _default_doc("known_dangerous.yaml")["dangerous"]


@pytest.mark.parametrize("full", _DANGEROUS)
def test_every_known_dangerous_callable_is_critical(tmp_path: Path, full: str) -> None:
    mod, _, name = full.rpartition(".")
    if not mod:                       # a whole module: any name in it
        mod, name = full, "run"
    data = p4(call(SG(mod, name), SU("id")))
    (tmp_path / "m.pkl").write_bytes(data)
    res = scan_paths([tmp_path / "m.pkl"])
    assert res.worst() is Severity.critical and res.failed(Severity.critical), res.findings


@pytest.mark.parametrize(("mod", "name"), [("imaplib", "IMAP4_stream"), ("uuid", "_get_command_stdout"),
                                           ("torch.utils.bottleneck.__main__", "run_cprofile")])
def test_issue_examples_fail_at_fail_on_critical_even_if_allowed(tmp_path: Path, mod: str, name: str) -> None:
    (tmp_path / "m.pkl").write_bytes(p2(call(G(mod, name), U("id"))))
    cfg = InspectConfig()
    cfg.policy.extend({"allow": [f"{mod}.{name}"]})          # an allow entry cannot admit a published gadget
    res = scan_paths([tmp_path / "m.pkl"], config=cfg)
    assert res.exit_code(Severity.critical) == 1


def test_policy_data_files_ship_with_the_package() -> None:
    for name in ("default_allowlist.yaml", "torch_weights_only.yaml", "known_dangerous.yaml"):
        assert resources.files("bastion.supply").joinpath(name).is_file()
