"""Audit and detector contracts: an exact-duplicate audit and a mean-shift detector written here."""

from __future__ import annotations

import numpy as np
import pytest
from family_helpers import blobs

from bastion.audit import AuditFinding, DataAudit
from bastion.core.data import Dataset
from bastion.core.results import Severity
from bastion.errors import BastionRuntimeError, DataError, UsageError
from bastion.monitor import Alert, Detector


class Duplicates(DataAudit):
    name = "duplicates"

    def _audit(self, data, columns, ctx):
        _, inverse, counts = np.unique(data.x, axis=0, return_inverse=True, return_counts=True)
        dup = np.flatnonzero(counts[inverse] > 1)
        const = [c for c, col in zip(columns, data.x.T) if np.all(col == col[0])]
        out = [AuditFinding(rule_id="DATA-DUP", title="duplicate records", severity="medium",
                            records=dup[::-1].tolist(), measurements={"share": len(dup) / len(data)})]
        if const:
            out.append(AuditFinding(rule_id="DATA-CONST", title="constant column", severity="high", columns=const))
        return out


def test_duplicate_audit_names_records_and_columns() -> None:
    x, y = blobs(50, 0)
    x[:, 2] = 0.5
    x[10], x[20] = x[3], x[3]
    res = Duplicates().audit(Dataset(x, y, feature_names=["a", "b", "c", "d"]))
    assert [f.rule_id for f in res.findings] == ["DATA-CONST", "DATA-DUP"]  # worst first
    assert res.findings[0].columns == ["c"] and res.findings[1].records == [3, 10, 20]  # sorted, once
    assert res.flagged_records == [3, 10, 20] and res.findings[0].severity is Severity.high
    assert res.columns == ["a", "b", "c", "d"] and res.n_records == 50


@pytest.mark.parametrize("finding,msg", [
    (AuditFinding(rule_id="X", title="t", severity="low", records=[50]), r"records outside \[0, 49\]"),
    (AuditFinding(rule_id="X", title="t", severity="low", columns=["zz"]), r"unknown columns \['zz'\]"),
])
def test_audit_findings_must_point_into_the_data(finding, msg) -> None:
    class Bad(DataAudit):
        def _audit(self, data, columns, ctx):
            return [finding]

    with pytest.raises(BastionRuntimeError, match=msg):
        Bad().audit(Dataset(*blobs(50, 0)))  # columns col0..col3


class MeanShift(Detector):
    """Alert when a window's mean moves more than ``threshold`` standard errors from the reference
    mean on any feature; ``state`` counts the consecutive alerting windows."""

    name = "mean-shift"
    threshold = 4.0

    def _fit(self, reference):
        return reference.mean(axis=0), reference.std(axis=0) + 1e-12

    def _initial_state(self):
        return {"run": 0}

    def _update(self, window, state):
        mean, std = self.reference_
        z = float(np.max(np.abs(window.mean(axis=0) - mean) / (std / np.sqrt(len(window)))))
        state["run"] = state["run"] + 1 if z >= self.threshold else 0
        if z < self.threshold:
            return []
        return [Alert(detector="", score=z, threshold=self.threshold, message=f"drift for {state['run']} windows")]


def stream(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(40, 3)) + (1.0 if i >= 6 else 0.0) for i in range(10)]


def test_detector_alerts_on_drift_and_offline_equals_online() -> None:
    det = MeanShift().fit(np.random.default_rng(0).normal(size=(500, 3)))
    offline = det.scan(stream(1))
    assert [a.window for a in offline] == [6, 7, 8, 9]
    assert offline[-1].message == "drift for 4 windows" and offline[0].detector == "mean-shift"
    det.reset()
    online = [a for w in stream(1) for a in det.update(w)]
    assert online == offline
    det.reset()
    assert det.update(stream(1)[7])[0].window == 0  # numbering and state restart after reset
    assert det.update(stream(1)[8])[0].message == "drift for 2 windows"


def test_detector_contract_is_enforced() -> None:
    with pytest.raises(UsageError, match="not fitted"):
        MeanShift().update(np.zeros((4, 3)))
    det = MeanShift().fit(np.zeros((10, 3)) + np.arange(10)[:, None])
    with pytest.raises(DataError, match="window 0 contains NaN"):
        det.update(np.full((4, 3), np.nan))

    class Weak(MeanShift):
        def _update(self, window, state):
            return [Alert(detector="", score=1.0, threshold=2.0)]

    with pytest.raises(BastionRuntimeError, match="below its threshold"):
        Weak().fit(np.zeros((10, 3))).update(np.zeros((4, 3)))


def test_detectors_are_reachable_by_name_and_names_are_unique() -> None:
    from bastion.core.registry import DuplicateNameError
    from bastion.monitor import DETECTORS

    DETECTORS.add("mean-shift", MeanShift)
    try:
        assert DETECTORS.get_object("mean-shift") is MeanShift
        with pytest.raises(DuplicateNameError, match="two detectors named 'mean-shift'"):
            DETECTORS.add("mean-shift", Duplicates)
    finally:
        DETECTORS.remove("mean-shift")
