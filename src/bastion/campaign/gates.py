"""Gates: pass/fail conditions on measured metrics, e.g. ``robust_accuracy[pgd, eps=0.1] >= 0.6``.

Syntax: ``METRIC[SELECTORS] OP NUMBER``. Selectors are optional: a bare word matches an attack or
check name, ``key=value`` matches that field of a measurement (numbers compare numerically).
When several measurements match, the gate uses the worst case for its direction (the minimum for
``>=``/``>``, the maximum for ``<=``/``<``). A gate that matches nothing fails, saying why.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from bastion.core.results import CheckResult, GateResult

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
        values = [v for v in (_value(m, self.metric) for m in measurements(checks) if self._matches(m))
                  if v is not None]
        if not values:
            return GateResult(expression=self.expression, metric=self.metric, value=None, threshold=self.threshold,
                              op=self.op, passed=False, reason="no measurement matches this gate")
        value = min(values) if self.op in (">=", ">") else max(values) if self.op in ("<=", "<") else values[0]
        return GateResult(expression=self.expression, metric=self.metric, value=value, threshold=self.threshold,
                          op=self.op, passed=bool(_OPS[self.op](value, self.threshold)),
                          reason=None if len(values) == 1 else f"worst of {len(values)} matching measurements")

    def _matches(self, m: dict[str, Any]) -> bool:
        for name in self.names:
            if name not in (str(m.get("attack")), str(m.get("check")), str(m.get("kind"))):
                return False
        for key, want in self.fields:
            if key not in m:
                return False
            have = m[key]
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


def measurements(checks: list[CheckResult]) -> list[dict[str, Any]]:
    """Every measurement gates can see: each check's scalar metrics, and each entry of its
    ``metrics['results']`` list, tagged with the check's name and kind."""
    out: list[dict[str, Any]] = []
    for c in checks:
        tag = {"check": c.name, "kind": c.kind}
        scalars = {k: v for k, v in c.metrics.items() if not isinstance(v, (list, dict))}
        out.append({**scalars, **tag})
        for entry in c.metrics.get("results", []) or []:
            if isinstance(entry, dict):
                out.append({**entry, **tag})
    return out


def _value(m: dict[str, Any], metric: str) -> float | None:
    v: Any = m
    for part in metric.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
