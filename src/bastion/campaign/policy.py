"""The policy file: what to test, how, and the gates a model must pass.

A policy is YAML validated by pydantic. Every error names the file, the line and the field, and
says what is allowed. Example::

    version: 1
    name: digits
    target: {model: demo:digits-cnn}
    data: {source: demo:digits, limit: 200}
    checks:
      - name: pgd-linf
        kind: evasion
        attack: pgd
        eps: [0.05, 0.1]
    gates:
      - robust_accuracy[pgd, eps=0.1] >= 0.6
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.campaign.checks.base import Check, CheckParams, check_kinds
from bastion.campaign.gates import Gate, parse_gate
from bastion.core.results import Severity
from bastion.errors import PolicyError

REPORT_FORMATS = ("json", "html", "junit", "sarif")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetSpec(_Strict):
    """The model under test. ``model`` is a spec string (see ``bastion.load_target``)."""

    model: str
    input_shape: list[int] | None = None
    bounds: tuple[float, float] | None = None
    classes: list[Any] | None = None
    output: Literal["logits", "probabilities", "auto"] | None = None
    query_budget: int | None = Field(default=None, gt=0)
    features: list[dict[str, Any]] | None = None
    http: dict[str, Any] | None = None


class DataSpec(_Strict):
    source: str
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0
    label: str | None = None
    image_size: tuple[int, int] | None = None


class CheckSpec(BaseModel):
    """One check: ``name`` and ``kind`` plus the kind's own parameters (validated per kind)."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OutputSpec(_Strict):
    dir: str = "bastion-report"
    formats: list[Literal["json", "html", "junit", "sarif"]] = Field(default_factory=lambda: list(REPORT_FORMATS))


class Policy(_Strict):
    version: Literal[1] = 1
    name: str = "bastion scan"
    description: str = ""
    seed: int = 0
    target: TargetSpec | None = None
    data: DataSpec | None = None
    checks: list[CheckSpec] = Field(min_length=1)
    gates: list[str] = Field(default_factory=list)
    fail_on: Severity | None = Field(default=None, description="Also fail when a finding is at least this severe.")
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("fail_on", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        seen: set[str] = set()
        for c in self.checks:
            if c.name in seen:
                raise ValueError(f"two checks are named '{c.name}'; names must be unique")
            seen.add(c.name)
        return self


class LoadedPolicy:
    """A validated policy with its checks built and gates parsed."""

    def __init__(self, policy: Policy, checks: list[Check], gates: list[Gate], path: Path | None) -> None:
        self.policy, self.checks, self.gates, self.path = policy, checks, gates, path

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def load_policy(source: str | Path | dict[str, Any]) -> LoadedPolicy:
    """Read and validate a policy from a YAML file path or an already-parsed dict."""
    if isinstance(source, dict):
        return _build(source, None, None)
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror or exc}", file=str(path)) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", file=str(path),
                          line=mark.line + 1 if mark else None) from exc
    if not isinstance(doc, dict):
        raise PolicyError("a policy must be a YAML mapping (key: value pairs)", file=str(path), line=1)
    return _build(doc, node, path)


def _build(doc: dict[str, Any], node: yaml.Node | None, path: Path | None) -> LoadedPolicy:
    file = str(path) if path else None
    try:
        policy = Policy.model_validate(doc)
    except ValidationError as exc:
        raise _policy_error(exc, node, file, ()) from None
    kinds = check_kinds()
    checks: list[Check] = []
    for i, spec in enumerate(policy.checks):
        if spec.kind not in kinds:
            raise PolicyError(f"unknown check kind '{spec.kind}'; allowed: {', '.join(kinds)}", file=file,
                              line=_line(node, ("checks", i, "kind")), field=f"checks[{i}].kind")
        cls = kinds[spec.kind]
        try:
            params: CheckParams = cls.Params.model_validate(spec.params())
        except ValidationError as exc:
            raise _policy_error(exc, node, file, ("checks", i)) from None
        if cls.needs_model and (policy.target is None or policy.data is None):
            raise PolicyError(f"check '{spec.name}' ({spec.kind}) needs 'target' and 'data' sections", file=file,
                              line=_line(node, ("checks", i)), field=f"checks[{i}]")
        try:
            checks.append(cls(spec.name, params))
        except PolicyError:
            raise
        except Exception as exc:  # a check may validate combinations of parameters itself
            raise PolicyError(str(exc), file=file, line=_line(node, ("checks", i)), field=f"checks[{i}]") from None
    gates = []
    for i, expr in enumerate(policy.gates):
        try:
            gates.append(parse_gate(expr))
        except ValueError as exc:
            raise PolicyError(str(exc), file=file, line=_line(node, ("gates", i)), field=f"gates[{i}]",
                              hint="write gates like: robust_accuracy[pgd, eps=0.1] >= 0.6") from None
    return LoadedPolicy(policy, checks, gates, path)


def _policy_error(exc: ValidationError, node: yaml.Node | None, file: str | None,
                  prefix: tuple[Any, ...]) -> PolicyError:
    err = exc.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
        allowed = _allowed_fields(exc)
        if allowed:
            msg += f"; allowed here: {allowed}"
    elif err["type"] == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    elif err["type"] == "missing":
        msg = "this field is required"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return PolicyError(msg, file=file, line=_line(node, loc), field=field or None)


def _allowed_fields(exc: ValidationError) -> str:
    model = exc.title
    for cls in (Policy, TargetSpec, DataSpec, OutputSpec, *[k.Params for k in check_kinds().loaded().values()]):
        if cls.__name__ == model:
            return ", ".join(cls.model_fields)
    return ""


def _line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (the deepest node found)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    child = v if not isinstance(v, yaml.ScalarNode) else k
                    line = k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = node.value[key]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
