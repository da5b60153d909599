"""The example policy shipped in examples/ runs and passes its gates."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.campaign.runner import scan

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "bastion.yaml"


def test_example_policy(tmp_path: Path) -> None:
    result = scan(EXAMPLE, out_dir=tmp_path)
    assert result.status == "complete", result.status_reason
    assert result.verdict == "pass", [(g.expression, g.value) for g in result.gates]
    kinds = {c.name: c.kind for c in result.checks}
    assert kinds == {"model-file": "model-file", "pgd-linf": "evasion", "square-linf": "evasion",
                     "transfer": "evasion"}
    atlas = {a for f in result.findings for a in f.atlas}
    assert {"AML.T0043.000", "AML.T0043.001", "AML.T0043.002"} <= atlas   # white-box, black-box, transfer
    doc = json.loads((tmp_path / "report.json").read_text())
    immutable = [f["name"] for f in doc["target"]["input"]["features"] if not f["mutable"]]
    assert immutable == ["mean radius", "worst radius"]


def test_example_policy_v2(tmp_path: Path) -> None:
    """Policy v2: datasets by role, a trainer, a threat the checks inherit or override."""
    result = scan(EXAMPLE.with_name("bastion-v2.yaml"), out_dir=tmp_path)
    assert result.status == "complete", result.status_reason
    assert result.verdict == "pass", [(g.expression, g.value, g.reason) for g in result.gates]
    eps = {c.name: sorted({m.where["eps"] for m in c.measurements if m.name == "robust_accuracy"})
           for c in result.checks if c.kind == "evasion"}
    assert eps == {"pgd-linf": [0.05, 0.1], "square-l2": [0.5]}   # from the threat, and overridden
    masking = next(c for c in result.checks if c.kind == "gradient-masking")
    assert masking.metrics["n_samples"] == 60 and masking.findings == []  # a logistic regression masks nothing
    assert all(g.untrusted is None for g in result.gates)
