"""A model evaluated on the audited data: accuracy per class and per slice (each value of a
user-chosen column), worst first, and calibration — the expected calibration error over
equal-width confidence bins (Naeini, Cooper & Hauskrecht 2015; Guo et al. 2017, "On calibration
of modern neural networks") with its reliability diagram.

The model's predictions are made chunk by chunk while the table is profiled (:func:`model_hook`),
so the data is read once; the profile keeps each record's predicted class, confidence and whether
it was right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from bastion.audit.base import AuditFinding, DataAudit
from bastion.audit.profile import ChunkHook, ColumnKind, Profile, parse_numbers
from bastion.audit.table import Chunk
from bastion.core.params import Params
from bastion.core.results import ReliabilityDiagram, Severity
from bastion.core.run import RunContext
from bastion.core.targets.base import Target
from bastion.errors import DataError

UNKNOWN = 255  #: ``correct`` of a record without a label


def model_hook(target: Target, label: str, features: Sequence[str] | None = None) -> ChunkHook:
    """A profiling hook that predicts each chunk with ``target`` on the ``features`` columns (by
    default every numeric column but the label, in file order) and records ``pred``, ``conf`` and
    ``correct`` per record (labels compared with ``target.classes`` as text)."""
    classes = [str(c) for c in target.classes]

    def hook(chunk: Chunk, kinds: dict[str, ColumnKind], offset: int) -> dict[str, np.ndarray]:
        cols = list(features) if features else [c for c, k in kinds.items() if k is ColumnKind.numeric and c != label]
        missing = [c for c in cols if c not in chunk.columns]
        if missing:
            raise DataError(f"--features: no column(s) {missing} in {chunk.source.path.name}")
        x = np.stack([parse_numbers(chunk.columns[c])[0] for c in cols], axis=1).astype(np.float32)
        probs = np.asarray(target.predict_proba(x))
        pred = probs.argmax(axis=1)
        raw = chunk.columns.get(label)
        correct = np.full(len(chunk), UNKNOWN, np.uint8)
        if raw is not None:
            truth = np.array([_label_text(v) for v in raw], dtype=object)
            known = truth != ""
            correct[known] = (np.array(classes, dtype=object)[pred[known]] == truth[known]).astype(np.uint8)
        return {"pred": pred.astype(np.int32), "conf": probs.max(axis=1).astype(np.float32), "correct": correct}

    return hook


def _label_text(v: object) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else str(int(v)) if v == int(v) else str(v)
    return str(v).strip()


def reliability(conf: np.ndarray, correct: np.ndarray, bins: int = 15) -> ReliabilityDiagram:
    """Accuracy against mean confidence in ``bins`` equal-width bins, and the ECE (bins weighted by
    their share of records); empty bins are left out."""
    edges = np.linspace(0, 1, bins + 1)
    b = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    n = np.bincount(b, minlength=bins)
    mean_conf = np.bincount(b, conf, minlength=bins) / np.maximum(n, 1)
    acc = np.bincount(b, correct.astype(float), minlength=bins) / np.maximum(n, 1)
    ece = float(np.sum(n / max(1, n.sum()) * np.abs(acc - mean_conf)))
    keep = n > 0
    return ReliabilityDiagram(confidence=mean_conf[keep].tolist(), accuracy=acc[keep].tolist(),
                              counts=n[keep].astype(int).tolist(), ece=ece)


class SliceParams(Params):
    slices: list[str] = Field(default_factory=list, description="Columns whose values are slices.")
    min_records: int = Field(20, ge=1, description="Slices with fewer records are not ranked.")
    gap: float = Field(0.05, ge=0, le=1, description="Flag a slice whose accuracy is this far below the overall.")
    bins: int = Field(15, ge=2, le=100, description="Confidence bins of the calibration error.")
    max_ece: float = Field(0.05, ge=0, le=1, description="Flag an expected calibration error above this.")


class SliceAudit(DataAudit):
    """Accuracy per class and per slice, worst first, and the expected calibration error."""

    name = "slices"
    Params = SliceParams

    def _audit(self, data: Profile, columns: list[str], ctx: RunContext) -> list[AuditFinding]:
        p: SliceParams = self.params  # type: ignore[assignment]
        if "correct" not in data.extra:
            raise DataError("the slices audit needs a model's predictions (bastion audit-data --model ...)")
        correct = data.extra["correct"]
        known = correct != UNKNOWN
        if not known.any():
            return []
        ok = correct[known].astype(float)
        overall = float(ok.mean())
        groups: list[tuple[str, np.ndarray]] = []
        names = data.label_names
        for code in range(len(names)):
            groups.append((f"class {names[code]}", known & (data.labels == code)))
        for col in p.slices:
            codes, values = data.kept[col]
            for code, v in enumerate(values):
                groups.append((f"{col}={v}", known & (codes == code)))
        rows = []
        for name, mask in groups:
            n = int(mask.sum())
            if n >= p.min_records:
                rows.append((float(correct[mask].mean()), n, name))
        rows.sort()
        out = []
        if rows:
            worst_acc, worst_n, worst = rows[0]
            flagged = [r for r in rows if r[0] < overall - p.gap]
            out.append(AuditFinding(
                rule_id="BASTION-DA-040", severity=Severity.medium if flagged else Severity.info,
                columns=[c for c in [data.label, *p.slices] if c],
                records=np.flatnonzero(known & ~correct.astype(bool)).tolist() if flagged else [],
                title=(f"{len(flagged)} slice(s) more than {p.gap:.0%} below the overall accuracy {overall:.1%}; worst "
                       f"{worst}: {worst_acc:.1%} ({worst_n} records)" if flagged else
                       f"accuracy {overall:.1%}; every slice within {p.gap:.0%} (worst {worst}: {worst_acc:.1%})"),
                measurements={"accuracy": overall, "worst_slice_accuracy": worst_acc},
                samples=[f"{name}: {acc:.1%} (n={n})" for acc, n, name in rows[:10]]))
        diagram = reliability(data.extra["conf"][known], ok, p.bins)
        out.append(AuditFinding(
            rule_id="BASTION-DA-041", severity=Severity.low if diagram.ece > p.max_ece else Severity.info,
            title=f"expected calibration error {diagram.ece:.3f} over {p.bins} confidence bins",
            measurements={"ece": diagram.ece, "bins": p.bins}))
        return out
