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

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.campaign.checks.base import Check, CheckParams, ParamError, check_kinds
from bastion.campaign.gates import Gate, parse_gate, resolve_gate
from bastion.core.results import Severity
from bastion.errors import BastionError, PolicyError, UsageError

if TYPE_CHECKING:
    from bastion.core.targets.base import Target

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
    seed: int = Field(default=0, ge=0, lt=2**63)
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
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seed of every random choice (a non-negative integer).")
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
    """A validated policy with its checks built and gates parsed; ``gate_reads[i]`` names the
    checks gate ``i`` reads."""

    def __init__(self, policy: Policy, checks: list[Check], gates: list[Gate], path: Path | None,
                 node: yaml.Node | None = None, gate_reads: list[list[str]] | None = None) -> None:
        self.policy, self.checks, self.gates, self.path, self.node = policy, checks, gates, path, node
        self.gate_reads: list[list[str] | None] = list(gate_reads) if gate_reads is not None else [None] * len(gates)

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def error(self, message: str, loc: tuple[Any, ...], hint: str | None = None) -> PolicyError:
        """A PolicyError at ``loc`` (e.g. ``("checks", 2, "params", "steps")``): file, line and field."""
        return PolicyError(message, file=str(self.path) if self.path else None, line=_line(self.node, loc),
                           field=_field(loc), hint=hint)

    @contextmanager
    def blame(self, *loc: Any) -> Iterator[None]:
        """Errors from the block name the policy file, line and field ``loc``; their class (and so
        the exit code: 2 for a user error, 3 for a runtime error) is kept."""
        try:
            yield
        except PolicyError:
            raise
        except BastionError as exc:
            where = self.error("", loc)
            exc.message = f"{where.message}{exc.message}"
            exc.args = (exc.message,)
            raise

    def check_capabilities(self, target: Target | None) -> None:
        """Refuse, before anything runs, a check that needs what the loaded target lacks."""
        if target is None:
            return
        for i, check in enumerate(self.checks):
            if "gradients" in check.requirements() and not target.white_box:
                raise self.error(f"check '{check.name}' needs gradients but the target '{target.name}' is a black "
                                 "box", ("checks", i),
                                 hint="use a black-box attack (square, hopskipjump) or a transfer attack, "
                                      "or give a model bastion can differentiate")


def load_policy(source: str | Path | dict[str, Any]) -> LoadedPolicy:
    """Read and validate a policy from a YAML file path or an already-parsed dict."""
    if isinstance(source, dict):
        return _build(source, None, None)
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read policy: {exc.strerror or exc}", file=str(path)) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise PolicyError(f"the policy is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                          file=str(path), line=line, hint="save the file as UTF-8") from None
    try:
        node = yaml.compose(text, Loader=_PolicyLoader)
        doc = yaml.load(text, Loader=_PolicyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(f"not valid YAML: {problem}", file=str(path),
                          line=mark.line + 1 if mark else None) from exc
    if not isinstance(doc, dict):
        raise PolicyError("a policy must be a YAML mapping (key: value pairs)", file=str(path), line=1)
    return _build(doc, node, path)


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML keeps only the last: a check would vanish)
    and reads ``3e-2`` as a number, as YAML 1.2 and JSON do."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {seen[key]}); the first value would be "
                    "silently lost", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


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
            check = cls(spec.name, params)
            check.validate_inputs(path.parent if path else Path.cwd())
        except PolicyError:
            raise
        except ParamError as exc:
            loc = ("checks", i, *exc.loc)
            raise PolicyError(exc.message, file=file, line=_line(node, loc), field=_field(loc)) from None
        except Exception as exc:  # a check may validate combinations of parameters itself
            raise PolicyError(getattr(exc, "message", str(exc)), file=file, line=_line(node, ("checks", i)),
                              field=f"checks[{i}]") from None
        checks.append(check)
    gates, reads = [], []
    views = [c.gate_view() for c in checks]
    for i, expr in enumerate(policy.gates):
        try:
            gate = parse_gate(expr)
            reads.append(resolve_gate(gate, views))
        except ValueError as exc:
            raise PolicyError(str(exc), file=file, line=_line(node, ("gates", i)), field=f"gates[{i}]",
                              hint="write gates like: robust_accuracy[pgd, eps=0.1] >= 0.6") from None
        gates.append(gate)
    return LoadedPolicy(policy, checks, gates, path, node, reads)


def _policy_error(exc: ValidationError, node: yaml.Node | None, file: str | None,
                  prefix: tuple[Any, ...]) -> PolicyError:
    err = exc.errors()[0]
    loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    field = _field(loc)
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


def _field(loc: tuple[Any, ...]) -> str:
    """``("checks", 2, "params", "steps")`` -> ``checks[2].params.steps``."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


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
