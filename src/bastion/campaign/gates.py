"""Gates: pass/fail conditions on measured metrics, e.g. ``robust_accuracy[pgd, eps=0.1] >= 0.6``.

Gates read the typed :class:`~bastion.core.results.Measurement`s of each check (and the
``findings_<severity>`` counts of each completed check), nothing else.

Syntax: ``METRIC[SELECTORS] OP NUMBER``. Selectors are optional: a bare word matches an attack,
check or check kind, ``key=value`` matches that field of a measurement's ``where`` (numbers
compare numerically).
When several measurements match, the gate uses the worst case for its direction (the minimum for
``>=``/``>``, the maximum for ``<=``/``<``). A gate that matches nothing fails, saying why.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from bastion.core.results import CheckResult, GateResult, Measurement

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_GATE_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\[([^\]]*)\])?\s*(>=|<=|==|>|<)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?%?)\s*$")


@dataclass(frozen=True)
class Gate:
    expression: str
    metric: str
    names: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]
    op: str
    threshold: float

    def evaluate(self, checks: list[CheckResult]) -> GateResult:
        found = [(c, m) for c, m in measurements(checks) if m.name == self.metric and m.value is not None
                 and self._matches(c, m)]
        if not found:
            return GateResult(expression=self.expression, metric=self.metric, value=None, threshold=self.threshold,
                              op=self.op, passed=False, reason="no measurement matches this gate")
        if self.op in (">=", ">"):  # the worst case for the gate's direction
            check, m = min(found, key=lambda cm: float(cm[1].value))  # type: ignore[arg-type]
        elif self.op in ("<=", "<"):
            check, m = max(found, key=lambda cm: float(cm[1].value))  # type: ignore[arg-type]
        else:
            check, m = found[0]
        value = float(m.value)  # type: ignore[arg-type]
        return GateResult(expression=self.expression, metric=self.metric, value=value, threshold=self.threshold,
                          op=self.op, passed=bool(_OPS[self.op](value, self.threshold)), unit=m.unit,
                          check=check.name, where=dict(m.where),
                          reason=None if len(found) == 1 else f"worst of {len(found)} matching measurements")

    def _matches(self, check: CheckResult, m: Measurement) -> bool:
        for name in self.names:
            if name not in (str(m.where.get("attack")), check.name, check.kind):
                return False
        for key, want in self.fields:
            if key not in m.where:
                return False
            have = m.where[key]
            try:
                if not math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12):
                    return False
            except (TypeError, ValueError):
                if str(have) != want:
                    return False
        return True


def parse_gate(expression: str) -> Gate:
    """Parse a gate expression; ValueError with a readable message if it is malformed."""
    if not isinstance(expression, str):
        raise ValueError(f"a gate must be a string expression, got {type(expression).__name__}")
    m = _GATE_RE.match(expression)
    if not m:
        raise ValueError(f"cannot parse gate '{expression}'")
    metric, sel, op, num = m.groups()
    names, fields = [], []
    for part in filter(None, (p.strip() for p in (sel or "").split(","))):
        if "=" in part:
            k, v = (s.strip() for s in part.split("=", 1))
            if not k or not v:
                raise ValueError(f"bad selector '{part}' in gate '{expression}'")
            fields.append((k, v))
        else:
            names.append(part)
    threshold = float(num[:-1]) / 100 if num.endswith("%") else float(num)
    return Gate(expression.strip(), metric, tuple(names), tuple(fields), op, threshold)


def measurements(checks: list[CheckResult]) -> list[tuple[CheckResult, Measurement]]:
    """Every measurement gates can see, with its check: each check's measurements and, for a
    completed check, its ``findings_<severity>`` counts."""
    return [(c, m) for c in checks for m in [*c.measurements, *c.finding_counts()]]
