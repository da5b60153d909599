"""The ``certify`` check and ``bastion certify``: the certified-accuracy curve and abstentions in the
report, gates on them, bad certifier parameters refused by name (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.campaign.policy import load_policy
from bastion.campaign.runner import scan
from bastion.cli.main import main
from bastion.errors import PolicyError

CHECK = {"name": "certify", "kind": "certify", "certifier": "smoothing", "samples": 8,
         "params": {"sigma": 0.25, "n0": 10, "n": 200}, "radii": [0, 0.2, 0.5]}


def policy(tmp_path: Path, **check) -> dict:  # noqa: ANN003
    return {"version": 1, "name": "t", "target": {"model": "demo:digits-cnn"}, "data": {"source": "demo:digits",
            "limit": 40}, "checks": [{**CHECK, **check}], "gates": ["certified_accuracy[certify, radius=0] >= 0.5"],
            "output": {"dir": str(tmp_path / "r"), "formats": ["json", "html"]}}


def test_the_check_measures_the_curve_and_draws_it(tmp_path: Path) -> None:
    result = scan(policy(tmp_path), out_dir=tmp_path / "r")
    res = result.checks[0]
    assert res.status == "complete"
    curve = [res.values("certified_accuracy", radius=r)[0] for r in (0, 0.2, 0.5)]
    assert curve == sorted(curve, reverse=True) and curve[0] >= 0.5 and curve[0] > curve[-1]
    assert res.values("abstain_rate")[0] == pytest.approx(res.metrics["abstained"] / 8)
    assert res.values("queries")[0] == 8 * 210
    art = res.artifacts[0]
    assert art.type == "robustness_curve" and art.norm == "l2" and art.robust_accuracy == curve
    assert result.gates[0].passed
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "Robustness curve" in html and "data:image/svg" in html  # the curve is drawn


@pytest.mark.parametrize("params,field", [({"sigma": -0.5}, "sigma"), ({"n0": 300, "n": 200}, "n"),
                                          ({"alpha": 1.5}, "alpha")])
def test_a_policy_with_bad_certifier_parameters_is_refused(tmp_path: Path, params, field) -> None:  # noqa: ANN001
    with pytest.raises(PolicyError, match=rf"checks\[0\]\.params\.{field}'.*{field}=.* is not allowed"):
        load_policy(policy(tmp_path, params=params))


def _main(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:  # noqa: ANN001
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.mark.parametrize("args,words", [(["--sigma", "0"], "sigma=0.0 is not allowed: input should be greater than 0"),
                                        (["--n0", "50", "--n", "10"], "n=10 is not allowed: must be >= n0 (50)"),
                                        (["--alpha", "1"], "alpha=1.0 is not allowed: input should be less than 1"),
                                        (["--certifier", "nope"], "unknown certifier 'nope'")])
def test_cli_refuses_bad_parameters_with_exit_2(capsys, monkeypatch, tmp_path: Path, args, words) -> None:  # noqa: ANN001
    code, _, err = _main(["certify", "-t", "demo:digits-cnn", "-d", "demo:digits", "-o", str(tmp_path), *args],
                         capsys, monkeypatch)
    assert code == 2 and words in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "report.json").exists()


def test_cli_certifies_and_prints_json(capsys, monkeypatch, tmp_path: Path) -> None:
    code, out, _ = _main(["certify", "-t", "demo:digits-cnn", "-d", "demo:digits", "--n", "100", "--n0", "10",
                          "--samples", "4", "-r", "0", "-r", "0.3", "-o", str(tmp_path), "--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["metrics"]["rows"] == 4 and len(doc["metrics"]["certified_accuracy"]) == 2
    assert np.all(np.diff(doc["metrics"]["certified_accuracy"]) <= 0)
    assert (tmp_path / "report.json").is_file()


def test_the_check_runs_ibp_at_its_eps_and_gates_read_them(tmp_path: Path) -> None:
    doc = policy(tmp_path, certifier="ibp", params={"eps": [0.02, 0.003]})
    del doc["checks"][0]["radii"]
    doc["gates"] = ["certified_accuracy[certify, radius=0.003] >= 0.3"]
    result = scan(doc, out_dir=tmp_path / "r")
    res = result.checks[0]
    assert res.status == "complete" and res.metrics["radii"] == [0.0, 0.003, 0.02]  # 0 and the eps
    curve = res.metrics["certified_accuracy"]
    assert curve == sorted(curve, reverse=True) and curve[1] > 0.3 and curve[1] > curve[2]
    assert res.values("queries")[0] == 8 and res.values("abstain_rate")[0] == 0
    assert res.artifacts[0].norm == "linf" and result.gates[0].passed


def test_ibp_takes_its_eps_from_the_radii_and_needs_one_or_the_other(tmp_path: Path) -> None:
    loaded = load_policy(policy(tmp_path, certifier="ibp", params={}, radii=[0.02, 0, 0.01]))
    assert loaded.checks[0].certifier.params.eps == [0, 0.01, 0.02]
    doc = policy(tmp_path, certifier="ibp", params={})
    del doc["checks"][0]["radii"]
    with pytest.raises(PolicyError, match=r"certifies at given radii: set radii, or params\.eps"):
        load_policy(doc)


def test_cli_verifies_with_ibp_at_eps(capsys, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    code, out, _ = _main(["certify", "-t", "demo:digits-cnn", "-d", "demo:digits", "--certifier", "ibp", "--eps",
                          "0.002", "--samples", "6", "-o", str(tmp_path), "--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["metrics"]["radii"] == [0, 0.002] and doc["metrics"]["norm"] == "linf"
    code, _, err = _main(["certify", "-t", "demo:digits-cnn", "-d", "demo:digits", "--certifier", "ibp",
                          "-o", str(tmp_path / "x")], capsys, monkeypatch)
    assert code == 2 and "certification 'ibp': parameter 'eps' is required" in " ".join(err.split())


def test_cli_jit_certifies_the_same(capsys, monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    args = ["certify", "-t", "demo:digits-cnn", "-d", "demo:digits", "--n", "200", "--n0", "10", "--samples", "4",
            "-r", "0", "-r", "0.3", "--json"]
    runs = [_main([*args, "-o", str(tmp_path / str(i)), *extra], capsys, monkeypatch) for i, extra in
            enumerate(([], ["--jit"], ["--no-jit"]))]
    docs = [json.loads(out) for code, out, _ in runs if code == 0]
    assert len(docs) == 3 and [d["metrics"]["params"]["jit"] for d in docs] == ["auto", True, False]
    for doc in docs[1:]:
        assert docs[0]["metrics"]["certified_accuracy"] == doc["metrics"]["certified_accuracy"]
        assert docs[0]["metrics"]["radius_median"] == doc["metrics"]["radius_median"]
