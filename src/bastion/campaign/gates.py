"""Gates: pass/fail conditions on measured metrics, e.g. ``robust_accuracy[pgd, eps=0.1] >= 0.6``.

Gates read the typed :class:`~bastion.core.results.Measurement`s of each check (and the
``findings_<severity>`` counts of each completed check), nothing else.

Syntax: ``METRIC[SELECTORS] OP NUMBER``. Selectors are optional: a bare word matches an attack,
check or check kind, ``key=value`` matches that field of a measurement's ``where`` (numbers
compare numerically).
When several measurements match, the gate uses the worst case for its direction (the minimum for
``>=``/``>``, the maximum for ``<=``/``<``). A gate that matches nothing fails, saying why.

A gate never passes on something that was not measured: it fails with "no measurement" when a
check it reads errored or did not run, and fails when a check it reads is incomplete. Nor on a
figure a sign of gradient masking put in doubt (``Measurement.untrusted``, see
:mod:`bastion.campaign.trust`): it fails with that reason unless the gate allows untrusted figures
(``allow_untrusted``, a policy opt-out); the result says so either way. When the
policy loads, :func:`resolve_gate` finds the checks each gate reads and refuses a gate whose
metric or selectors can never match (typos, wrong case, an ε no check measures).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bastion.core.results import CheckResult, GateResult, Measurement, Severity

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_GATE_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\[([^\]]*)\])?\s*(>=|<=|==|>|<)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?%?)\s*$")
FINDING_COUNTERS = frozenset(f"findings_{s.value}" for s in Severity)


@dataclass(frozen=True)
class GateView:
    """What a check can measure, declared before it runs: the names a bare selector matches
    (check name, kind, attack), its measurement names (None: not declared, anything may appear),
    and the ``where`` fields selectors may test (None: any value)."""

    check: str
    names: frozenset[str]
    metrics: frozenset[str] | None = None
    fields: dict[str, frozenset[str] | None] = field(default_factory=dict)

    def has_metric(self, metric: str) -> bool:
        return self.metrics is None or metric in FINDING_COUNTERS or metric in self.metrics


@dataclass(frozen=True)
class Gate:
    expression: str
    metric: str
    names: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]
    op: str
    threshold: float
    allow_untrusted: bool = False

    def evaluate(self, checks: list[CheckResult], reads: Sequence[str] | None = None) -> GateResult:
        """Evaluate on the results of a scan. ``reads`` names the checks this gate reads (see
        :func:`resolve_gate`); by default, every check whose name or measurements match."""
        by_name = {c.name: c for c in checks}
        if reads is None:
            reads = [c.name for c in checks if self._may_read(c)]
        missing, partial = [], []
        for name in reads:
            c = by_name.get(name)
            if c is None:
                missing.append(f"check '{name}' did not run")
            elif c.status == "error":
                missing.append(f"check '{name}' errored" + (f" ({c.reason})" if c.reason else ""))
            elif c.status != "complete":
                partial.append(f"check '{name}' is {c.status}" + (f" ({c.reason})" if c.reason else ""))
        base: dict[str, Any] = {"expression": self.expression, "metric": self.metric, "threshold": self.threshold,
                                "op": self.op}
        if missing:
            return GateResult(**base, value=None, passed=False, reason="no measurement: " + "; ".join(missing))
        found = [(c, m) for c, m in measurements([by_name[n] for n in reads])
                 if m.name == self.metric and m.value is not None and self._matches(c, m)]
        if not found:
            return GateResult(**base, value=None, passed=False,
                              reason="no measurement matches this gate" + (": " + "; ".join(partial) if partial else ""))
        if self.op in (">=", ">"):  # the worst case for the gate's direction
            check, m = min(found, key=lambda cm: float(cm[1].value))  # type: ignore[arg-type]
        elif self.op in ("<=", "<"):
            check, m = max(found, key=lambda cm: float(cm[1].value))  # type: ignore[arg-type]
        else:
            check, m = found[0]
        value = float(m.value)  # type: ignore[arg-type]
        untrusted = "; ".join(dict.fromkeys(x.untrusted for _, x in found if x.untrusted)) or None
        blocked = untrusted is not None and not self.allow_untrusted
        passed = bool(_OPS[self.op](value, self.threshold)) and not partial and not blocked
        reason = ("partial measurement cannot pass: " + "; ".join(partial) if partial
                  else f"untrusted figure cannot pass: {untrusted}" if blocked
                  else None if len(found) == 1 else f"worst of {len(found)} matching measurements")
        if untrusted and not blocked:
            reason = f"passed on an untrusted figure (allow_untrusted): {untrusted}" if passed else reason
        return GateResult(**base, value=value, passed=passed, unit=m.unit, check=check.name, where=dict(m.where),
                          reason=reason, untrusted=untrusted)

    def _may_read(self, c: CheckResult) -> bool:
        if c.status == "error":  # nothing measured: only its name and kind can be matched
            return all(n in (c.name, c.kind) for n in self.names) and not self.fields
        return any(m.name == self.metric and self._matches(c, m) for _, m in measurements([c]))

    def _matches(self, check: CheckResult, m: Measurement) -> bool:
        for name in self.names:
            if name not in (str(m.where.get("attack")), check.name, check.kind):
                return False
        tags = {"check": check.name, "kind": check.kind}
        return all((key in m.where and _same(m.where[key], want)) or tags.get(key) == want
                   for key, want in self.fields)


def _same(have: Any, want: str) -> bool:
    try:
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(have) == want


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
    if not math.isfinite(threshold):
        raise ValueError(f"the threshold of gate '{expression}' must be a finite number")
    return Gate(expression.strip(), metric, tuple(names), tuple(fields), op, threshold)


def resolve_gate(gate: Gate, views: Sequence[GateView]) -> list[str]:
    """The names of the checks ``gate`` reads; ValueError saying why when it can never match."""
    named = [v for v in views if all(n in v.names for n in gate.names)]
    if not named:
        known = sorted({n for v in views for n in v.names})
        bad = next(n for n in gate.names if not any(n in v.names for v in views))
        raise ValueError(f"no check, kind or attack is named '{bad}'{_suggest(bad, known, 'names here')}")
    measured = [v for v in named if v.has_metric(gate.metric)]
    if not measured:
        known = sorted({m for v in named for m in (v.metrics or ())} | FINDING_COUNTERS)
        raise ValueError(f"no check {_which(gate)}measures '{gate.metric}'"
                         f"{_suggest(gate.metric, known, 'measurements here')}")
    reads = [v.check for v in measured if all(_field_ok(v, k, want) for k, want in gate.fields)]
    if not reads:
        key, want = next((k, w) for k, w in gate.fields if not any(_field_ok(v, k, w) for v in measured))
        have = sorted({x for v in measured for x in (v.fields.get(key) or ())}, key=_sort_key)
        known = sorted({f for v in measured for f in v.fields} | {"check", "kind"})
        where = f"measured {key} values: {', '.join(have)}" if have else f"fields here: {', '.join(known)}"
        raise ValueError(f"no check {_which(gate)}measures {key}={want}{_suggest(key, known)}; {where}")
    return reads


def _field_ok(v: GateView, key: str, want: str) -> bool:
    if key == "check":
        return v.check == want
    if key == "kind":
        return want in v.names
    if key in v.fields:
        allowed = v.fields[key]
        return allowed is None or any(_same(a, want) for a in allowed)
    return False


def _which(gate: Gate) -> str:
    return f"matching [{', '.join(gate.names)}] " if gate.names else ""


def _suggest(word: str, known: Sequence[str], listing: str = "") -> str:
    """" (did you mean 'x'?)" for a near miss or a case slip; else the list of what exists."""
    lower = {k.lower(): k for k in known}
    close = [lower[word.lower()]] if word.lower() in lower else difflib.get_close_matches(word, list(known), 1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f"; {listing}: {', '.join(known)}" if listing else ""


def _sort_key(s: str) -> tuple[int, float, str]:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def measurements(checks: list[CheckResult]) -> list[tuple[CheckResult, Measurement]]:
    """Every measurement gates can see, with its check: each check's measurements and, for a
    completed check, its ``findings_<severity>`` counts."""
    return [(c, m) for c in checks for m in [*c.measurements, *c.finding_counts()]]
