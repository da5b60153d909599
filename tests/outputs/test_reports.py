"""Tests of the report writers: report.json, report.html, junit.xml (and SARIF wiring)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.core.results import (
    CheckResult,
    ExampleGrid,
    Finding,
    GateResult,
    Histogram,
    QueryCurve,
    QueryLog,
    RobustnessCurve,
    ScanResult,
    Severity,
    Stage,
    StageChart,
    TabularExamples,
    TabularRow,
)
from bastion.core.rules import get_rule
from bastion.errors import DataError, UsageError
from bastion.outputs.report import plain_verdict, read_report, report_json_schema, write_reports
from bastion.outputs.report.html import metric_blocks, render_html
from bastion.outputs.report.json_report import SCHEMA_PATH
from bastion.outputs.report.junit import render_junit
from bastion.outputs.report.summary import generate_verdict

# ----------------------------------------------------------------------------- fixtures


def _digit_examples(eps: float, n: int = 8) -> ExampleGrid:
    """Real 8x8 digits (scikit-learn), perturbed by a sign pattern inside the eps-ball."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(digits.images), n, replace=False)
    x = digits.images[idx] / 16.0
    adv = np.clip(x + eps * rng.choice([-1.0, 1.0], size=x.shape), 0, 1)
    labels = [str(int(t)) for t in digits.target[idx]]
    adv_labels = [str((int(t) + 3) % 10) if i % 3 else str(int(t)) for i, t in enumerate(digits.target[idx])]
    return ExampleGrid(attack="pgd", eps=eps, shape=[8, 8], original=x.round(4).tolist(),
                       adversarial=adv.round(4).tolist(), labels=labels, adv_labels=adv_labels,
                       confidence=rng.uniform(0.5, 1.0, n).round(3).tolist())


#: Rules of the catalogue the fixture's findings point to (two findings share BASTION-EV-001).
_RULES = {1: "BASTION-EV-001", 2: "BASTION-EV-001", 3: "BASTION-EV-101", 4: "BASTION-EV-002", 5: "BASTION-EV-010"}


def _finding(sev: Severity, i: int, check: str = "evasion-pgd") -> Finding:
    return get_rule(_RULES[i]).finding(
        title=f"{sev.value.title()} finding number {i}", severity=sev, check=check,
        description="Small changes to the input flip the model's answer.",
        metrics={"robust_accuracy": 0.125 + 0.1 * i, "eps": 0.1, "per_attack": {"pgd": 0.1}})


def _curve(attack: str, norm: str, eps: list[float], acc: list[float]) -> RobustnessCurve:
    return RobustnessCurve(attack=attack, norm=norm, eps=eps, robust_accuracy=acc, clean_accuracy=0.975)


def make_result(*, verdict: str = "fail", status: str = "incomplete") -> ScanResult:
    """A realistic scan: image evasion with curves/examples/histograms/stages, a tabular
    check, a black-box check with query curves and log, an errored and a skipped check."""
    rng = np.random.default_rng(1)
    eps = [0.0, 0.05, 0.1, 0.2, 0.3]
    evasion = CheckResult(
        name="evasion-pgd", kind="evasion", seconds=12.34,
        metrics={"attack": "pgd", "notes": ["ran 2 restarts"], "robust_accuracy": {"fgsm": {"0.05": 0.71, "0.1": 0.42}}},
        findings=[_finding(Severity.critical, 1), _finding(Severity.medium, 3), _finding(Severity.info, 5)],
        artifacts=[
            _curve("fgsm", "linf", eps, [0.975, 0.71, 0.42, 0.2, 0.1]),
            _curve("pgd", "linf", eps, [0.975, 0.55, 0.125, 0.01, 0.0]),
            _curve("pgd-l2", "l2", [0.0, 0.5, 1.0], [0.975, 0.6, 0.2]),
            _digit_examples(0.1),
            Histogram(title="Minimal L∞ perturbation that fools the model",
                      values=rng.gamma(2.0, 0.03, 200).tolist(), xlabel="ε"),
            StageChart(attack="auto", stages=[Stage(stage="clean", robust_accuracy=0.975),
                                              Stage(stage="apgd-ce", robust_accuracy=0.2),
                                              Stage(stage="apgd-t", robust_accuracy=0.15),
                                              Stage(stage="square", robust_accuracy=0.14)]),
        ],
    )
    for e, acc in zip(eps, [0.975, 0.55, 0.125, 0.01, 0.0]):
        evasion.measure("robust_accuracy", acc, "ratio", attack="pgd", norm="linf", eps=e)
    evasion.measure("clean_accuracy", 0.975, "ratio", attack="pgd", norm="linf")
    evasion.measure("queries", 7200, "queries", attack="pgd", norm="linf")
    tabular = CheckResult(
        name="evasion-tabular", kind="evasion", seconds=1.5,
        findings=[_finding(Severity.high, 2, "evasion-tabular")],
        artifacts=[TabularExamples(attack="pgd", feature_names=["mean radius", "mean texture", "worst area"], rows=[
            TabularRow(label="malignant", adv_label="benign",
                       changes={"mean radius": (14.1, 13.2), "mean texture": (20.0, 20.1), "worst area": (880.0, 701.5)}),
            TabularRow(label="benign", adv_label="benign", changes={"mean radius": (11.0, 11.4)})])],
    )
    tabular.measure("robust_accuracy", 0.4, "ratio", attack="pgd", norm="linf", eps=0.1)
    blackbox = CheckResult(
        name="evasion-square", kind="evasion-blackbox", status="incomplete", reason="query budget of 5000 spent",
        seconds=30.0,
        findings=[_finding(Severity.low, 4, "evasion-square")],
        artifacts=[QueryCurve(attack="square", queries=[1, 10, 100, 1000, 5000],
                              success_rate=[0.0, 0.1, 0.3, 0.55, 0.6]),
                   QueryLog(counters={"count": 5000, "seconds": 28.7, "bytes_sent": 2_400_000})],
    )
    blackbox.measure("success_rate", 0.6, "ratio", attack="square", norm="linf", eps=0.05)
    broken = CheckResult(name="membership", kind="privacy", status="error", reason="model has no training data")
    skipped = CheckResult(name="backdoor", kind="poisoning", status="skipped", reason="not applicable to tables")
    gates = [
        GateResult(expression="robust_accuracy[pgd, eps=0.1] >= 0.6", metric="robust_accuracy",
                   value=0.125, threshold=0.6, op=">=", passed=False, unit="ratio", check="evasion-pgd",
                   where={"attack": "pgd", "norm": "linf", "eps": 0.1}),
        GateResult(expression="clean_accuracy >= 0.9", metric="clean_accuracy", value=0.975, threshold=0.9,
                   op=">=", passed=True, unit="ratio", check="evasion-pgd", where={"attack": "pgd", "norm": "linf"}),
        GateResult(expression="mia_auc <= 0.6", metric="mia_auc", value=None, threshold=0.6, op="<=", passed=False,
                   reason="check 'membership' did not run"),
    ]
    if verdict == "pass":
        gates = [g for g in gates if g.passed]
    return ScanResult(
        tool={"name": "bastion", "version": "0.1.0"}, started_at="2025-01-02T10:00:00+00:00",
        finished_at="2025-01-02T10:01:15+00:00", verdict=verdict, status=status,
        status_reason="interrupted by user (Ctrl-C)" if status == "incomplete" else None,
        target={"spec": "demo:digits-cnn", "kind": "torch", "classes": [str(i) for i in range(10)],
                "input_shape": [1, 8, 8], "bounds": [0.0, 1.0]},
        data={"spec": "demo:digits", "n": 360, "seed": 0, "kind": "image"},
        checks=[evasion, tabular, blackbox, broken, skipped], gates=gates,
    )


@pytest.fixture(scope="module")
def result() -> ScanResult:
    return make_result()


@pytest.fixture(scope="module")
def html(result: ScanResult) -> str:
    return render_html(result)


# ----------------------------------------------------------------------------- report.json


def test_json_round_trip(tmp_path: Path, result: ScanResult) -> None:
    paths = write_reports(result, tmp_path, formats=("json",))
    assert paths == {"json": tmp_path / "report.json"}
    doc = json.loads(paths["json"].read_text())
    assert doc["schema_version"] == result.schema_version
    assert [f["severity"] for f in doc["findings"]] == ["critical", "high", "medium", "low", "info"]
    back = read_report(paths["json"])
    assert back == result
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp file


def test_json_is_strict_rfc8259(tmp_path: Path) -> None:
    res = make_result()
    res.gates[0].value = float("nan")
    res.checks[0].artifacts[0].robust_accuracy[1] = float("inf")
    res.checks[0].metrics["raw"] = float("nan")
    path = write_reports(res, tmp_path, formats=("json",))["json"]

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON number {token}")

    doc = json.loads(path.read_text(), parse_constant=refuse)
    assert doc["gates"][0]["value"] is None
    assert doc["checks"][0]["artifacts"][0]["robust_accuracy"][1] is None
    assert doc["checks"][0]["metrics"]["raw"] is None
    back = read_report(path)
    assert back.gates[0].value is None and back.checks[0].artifacts[0].robust_accuracy[1] is None


def test_json_matches_schema(tmp_path: Path, result: ScanResult) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = result.to_json_dict()
    jsonschema.Draft202012Validator(report_json_schema()).validate(doc)
    doc["verdict"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(report_json_schema()).validate(doc)


def test_committed_schema_is_current() -> None:
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == report_json_schema(), (
        "report.schema.json is stale: run python -m bastion.outputs.report.json_report")


@pytest.mark.parametrize(
    ("content", "match"),
    [("{not json", "not a JSON document"), ("[1, 2]", "must be a JSON object"),
     ('{"schema_version": "9.0"}', "schema_version '9.0' is not supported; this bastion reads 1.x, 2.x"),
     ('{"schema_version": "1.0", "verdict": "maybe"}', "field 'verdict'"),
     ('{"schema_version": "2.0", "checks": [{"name": "c", "kind": "k", "artifacts": [{"type": "pie"}]}]}',
      "field 'checks.0.artifacts.0'")],
)
def test_read_report_errors(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        read_report(path)


def test_read_missing_report(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such report file"):
        read_report(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- verdict text


def test_plain_verdict_fail_incomplete(result: ScanResult) -> None:
    text = plain_verdict(result)
    assert "FAILED" in text
    assert "2 of 3 requirements not met" in text
    # the failed gate in words, not gate syntax
    assert ("Under a small change to each image (every pixel moved by at most 10% of its range; pgd attack) "
            "the model was right on 12.5% of inputs; the policy requires at least 60%.") in text
    assert "robust_accuracy[" not in text
    assert "could not be measured" in text  # the gate without a value
    # worst finding, and what to fix first: its rule's remediation from the catalogue
    assert "Critical finding number 1" in text and get_rule("BASTION-EV-001").remediation in text
    assert "INCOMPLETE" in text and "Ctrl-C" in text


def test_plain_verdict_pass_and_summary_override() -> None:
    res = make_result(verdict="pass", status="complete")
    text = generate_verdict(res)
    assert "PASSED" in text and "its one requirement was met" in text and "INCOMPLETE" not in text
    assert "2 serious problems that the policy does not gate on" in text
    res.checks = []
    assert "No check reported a finding" in generate_verdict(res)
    assert "does not prove" in generate_verdict(res)
    res.summary = "  Written by the campaign.  "
    assert plain_verdict(res) == "Written by the campaign."


# ----------------------------------------------------------------------------- report.html


class _Collector(HTMLParser):
    """Checks tags balance and collects resource references and text."""

    VOID: ClassVar[set[str]] = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.resources: list[tuple[str, str, str]] = []
        self.links: list[str] = []
        self.imgs: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)
        for name, value in attrs:
            if name in ("src", "srcset", "poster", "data") or (name == "href" and tag != "a"):
                self.resources.append((tag, name, value or ""))
            if tag == "a" and name == "href":
                self.links.append(value or "")
            if tag == "img" and name == "src":
                self.imgs.append(value or "")

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>, open: {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(doc: str) -> _Collector:
    p = _Collector()
    p.feed(doc)
    p.close()
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p


def test_html_structure(html: str, result: ScanResult) -> None:
    p = _parse(html)
    text = re.sub(r"\s+", " ", " ".join(p.text))
    assert "FAIL" in text and "Scan INCOMPLETE: interrupted by user (Ctrl-C)" in text
    assert re.sub(r"\s+", " ", plain_verdict(result)) in text
    for f in result.findings:
        assert f.title in text and f.remediation in text
    for g in result.gates:
        assert g.expression in text
    for c in result.checks:
        assert c.name in text
    assert "demo:digits-cnn" in text and "demo:digits" in text
    assert "query budget of 5000 spent" in text and "model has no training data" in text
    # findings appear worst first
    positions = [text.index(f.title) for f in result.findings]
    assert positions == sorted(positions)
    # ATLAS ids link to the ATLAS site
    assert "https://atlas.mitre.org/techniques/AML.T0043.000" in p.links
    assert "OWASP ML01 · Input Manipulation Attack" in text
    # tabular example: changes in the order the check gives them (largest first)
    table = text[text.index("Largest feature changes"):]
    assert table.index("mean radius") < table.index("mean texture") < table.index("worst area")
    assert "2.3 MiB" in text  # query log bytes, human-readable


def test_html_for_a_non_specialist(html: str) -> None:
    fixes = html[html.index('<section id="fixes">'):html.index('<section id="checks">')]
    findings = html[html.index('<section id="findings">'):html.index('<section id="fixes">')]
    import html as htmllib

    shared = htmllib.escape(get_rule("BASTION-EV-001").remediation).replace("&#x27;", "&#39;")  # two findings share it
    assert fixes.count(shared) == 1 and shared not in findings  # each remediation once per rule
    assert "findings_" not in html  # the derived counters are not shown
    checks = html[html.index('<section id="checks">'):]
    assert "<details>" in checks and "<summary>Measurements (7)</summary>" in checks  # raw tables folded
    gates = html[html.index('<section id="gates">'):html.index('<section id="findings">')]
    assert "the model was right on 12.5% of inputs; the policy requires at least 60%" in gates


@pytest.mark.parametrize(("verdict", "serious", "state", "note"), [
    ("fail", True, "fail", "policy not met"),
    ("pass", True, "warn", "policy met, serious findings"),   # amber: a pass with high findings
    ("pass", False, "pass", "policy met"),
])
def test_html_verdict_states(verdict: str, serious: bool, state: str, note: str) -> None:
    res = make_result(verdict=verdict, status="complete")
    if not serious:
        for c in res.checks:
            c.findings = [f for f in c.findings if f.severity.rank < Severity.high.rank]
    doc = render_html(res)
    assert f'<section class="hero {state}" id="verdict">' in doc and f"<small>{note}</small>" in doc


def test_html_is_self_contained(html: str) -> None:
    p = _parse(html)
    assert p.imgs, "expected inline figures"
    for tag, attr, value in p.resources:
        assert value.startswith("data:image/"), f"<{tag} {attr}> references {value[:60]}"
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html), "CSS loads an external resource"
    assert "@import" not in html and "@font-face" not in html
    for anchor in p.links:  # links are fine (not loaded), but only to https or in-page
        assert anchor.startswith(("#", "https://atlas.mitre.org/"))


def test_html_figures_decode(html: str) -> None:
    p = _parse(html)
    kinds = []
    for uri in p.imgs:
        mime, b64 = re.match(r"data:(image/[a-z+]+);base64,(.*)", uri).groups()
        raw = base64.b64decode(b64, validate=True)
        kinds.append(mime)
        if mime == "image/png":
            assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        else:
            root = ET.fromstring(raw)
            assert root.tag.endswith("svg")
            assert b"<script" not in raw
            assert not re.search(rb'href="(?!data:|#)', raw), "SVG references an external resource"
    # curves, examples, stages, query curves, one histogram
    assert len(p.imgs) == 5
    assert kinds.count("image/png") == 1


def test_html_escapes_untrusted_strings() -> None:
    evil = '<script>alert(1)</script><img src="http://evil.example/x.png">'
    res = make_result()
    res.target["spec"] = evil
    res.checks[0].findings[0].title = evil
    res.checks[0].findings[0].atlas = ['javascript:alert(1)"', "AML.T0015"]
    res.checks[0].metrics[evil] = evil
    res.checks[0].artifacts[0].attack = "$\\frac{a}{$ " + evil  # would break mathtext
    res.checks[0].artifacts[3].labels[0] = evil
    doc = render_html(res)
    assert "<script>" not in doc and 'src="http://evil' not in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    p = _parse(doc)
    assert all(link.startswith(("#", "https://atlas.mitre.org/techniques/AML.T")) for link in p.links)
    assert "javascript:alert(1)&#34;" in doc  # shown as text, not linked


def test_html_survives_malformed_artifacts() -> None:
    res = make_result()
    # artifacts that fit their types but not a picture: each renderer's error is shown in place
    res.checks[0].artifacts = [
        RobustnessCurve(attack="pgd", eps=[0.1, 0.2], robust_accuracy=[0.5]),
        ExampleGrid(shape=[8, 8], original=[[1, 2, 3]], adversarial=[[1, 2, 3]]),
        Histogram(title="empty", values=[]),
        StageChart(stages=[]),
    ]
    doc = render_html(res)
    _parse(doc)
    assert "Robustness curve: could not be drawn (curve &#39;pgd&#39;: eps and robust_accuracy differ" in doc
    assert doc.count("could not be drawn") == 4
    assert "Critical finding number 1" in doc  # the rest of the report is intact


def test_html_rgb_and_single_channel_examples() -> None:
    from bastion.outputs.report import plots

    rng = np.random.default_rng(0)
    for shape in ([3, 6, 5], [1, 6, 5]):
        x = rng.uniform(0, 1, (4, *shape))
        ex = {"shape": shape, "original": x.tolist(), "adversarial": np.clip(x + 0.05, 0, 1).tolist(),
              "labels": ["cat"] * 4, "adv_labels": ["dog"] * 4}
        assert plots.example_grid(ex).startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        plots.example_grid({"shape": [2, 4, 4], "original": np.zeros((1, 2, 4, 4)).tolist(),
                            "adversarial": np.zeros((1, 2, 4, 4)).tolist()})


def test_inversion_grid_draws_colour_and_grey_and_refuses_mismatched_data() -> None:
    from bastion.outputs.report import plots

    rng = np.random.default_rng(0)
    for shape in ([3, 6, 5], [1, 6, 5], [6, 5]):
        grid = {"shape": shape, "class_means": rng.uniform(0, 1, (3, *shape)).tolist(),
                "reconstructions": rng.uniform(-1, 2, (3, *shape)).tolist(), "labels": ["a", "b", "c"],
                "similarity": [0.5, 0.1, -0.2], "nearest": ["a", "c", "c"]}
        assert plots.inversion_grid(grid).startswith("data:image/png;base64,")
    with pytest.raises(ValueError, match="different numbers of images"):
        plots.inversion_grid({"shape": [4, 4], "class_means": np.zeros((2, 4, 4)).tolist(),
                              "reconstructions": np.zeros((3, 4, 4)).tolist()})


def test_html_minimal_result() -> None:
    doc = render_html(ScanResult())
    p = _parse(doc)
    text = " ".join(p.text)
    assert "PASS" in text and "The policy sets no gates." in text and "No check ran." in text
    assert not p.imgs


def test_metric_blocks_matrix() -> None:
    # raw details carry no unit: numbers are shown as they are, whatever their name
    blocks = metric_blocks({"clean_accuracy": 0.5, "robust_accuracy": {"pgd": {0.1: 0.25, 0.2: 0.125}},
                            "eps": [0.1, 0.2], "queries": 1200, "nested": {"a": {"b": [1, 2]}}})
    rows = dict(blocks[0]["rows"])
    assert rows["clean_accuracy"] == "0.5" and rows["queries"] == "1,200" and rows["eps"] == "[0.1, 0.2]"
    matrix = blocks[1]
    assert matrix["title"] == "robust_accuracy" and matrix["columns"] == ["0.1", "0.2"]
    assert matrix["rows"] == [("pgd", ["0.25", "0.125"])]
    assert rows["nested › a › b"] == "[1, 2]"


def test_metric_blocks_records() -> None:
    per_eps = [{"eps": 0.05, "robust_accuracy": 0.86, "n": 200}, {"eps": 0.1, "robust_accuracy": 0.535, "n": 200}]
    (block,) = metric_blocks({"results": per_eps})
    assert block["columns"] == ["ε = 0.05", "ε = 0.1"]
    assert block["rows"] == [("robust_accuracy", ["0.86", "0.535"]), ("n", ["200", "200"])]
    many = [{"x": i} for i in range(60)]
    (block,) = metric_blocks({"trace": many})
    assert block["columns"] == ["x"] and len(block["rows"]) == 50 and "first 50 of 60" in block["title"]
    rows = dict(metric_blocks({"notes": ["one", "two"]})[0]["rows"])
    assert rows["notes"] == "one; two"


def test_target_facts_are_summarised() -> None:
    res = ScanResult(target={"spec": "demo:breast-cancer", "input": {
        "shape": [30], "lower": [0.0] * 30, "upper": [float(i) for i in range(30)],
        "features": [{"name": f"f{i}", "scale": 1.0} for i in range(30)]}})
    text = " ".join(_parse(render_html(res)).text)
    assert "shape: 30; lower: 30 values, 0 to 0; upper: 30 values, 0 to 29; features: 30 entries" in text


def test_html_deterministic(result: ScanResult, html: str) -> None:
    assert render_html(result) == html


CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed (.ci/install-chromium.sh)")


def _chromium(tmp_path: Path, *args: str) -> str:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, timeout=90, text=True).stdout


@needs_chromium
def test_html_renders_in_chromium(tmp_path: Path, result: ScanResult) -> None:
    path = write_reports(result, tmp_path, formats=("html",))["html"]
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", path.as_uri())
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    from matplotlib.image import imread

    img = imread(str(shot))
    assert img.shape[:2] == (2000, 1280)
    assert img[..., :3].std() > 0.05  # not a blank page


#: Measures, inside a 390 px wide frame (an iPhone's CSS width), how wide the page and its tables are.
_PHONE_PROBE = """<!DOCTYPE html><html><head><title>probe</title></head><body style="margin:0">
<iframe id="f" style="border:0;width:390px;height:2000px" srcdoc="{doc}"></iframe>
<script>
const f = document.getElementById("f");
f.addEventListener("load", () => {{
  const d = f.contentDocument, right = el => Math.ceil(el.getBoundingClientRect().right);
  const tables = [...d.querySelectorAll("#gates table, #findings table, #fixes .fix")].map(right);
  document.title = JSON.stringify({{viewport: f.contentWindow.innerWidth, page: d.documentElement.scrollWidth,
                                    tables: tables}});
}});
</script></body></html>"""


@needs_chromium
def test_html_tables_fit_a_phone(tmp_path: Path) -> None:
    """Gates and findings read at 390 px: the page never scrolls sideways (headless Chromium has a
    500 px minimum window, so the report is measured inside a 390 px frame)."""
    import html as htmllib

    res = make_result()
    res.checks[0].findings[0].location = "models/" + "very-long-directory-name/" * 6 + "weights.pt"
    probe = tmp_path / "probe.html"
    probe.write_text(_PHONE_PROBE.format(doc=htmllib.escape(render_html(res), quote=True)), encoding="utf-8")
    out = _chromium(tmp_path, "--window-size=500,900", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = json.loads(htmllib.unescape(re.search(r"<title>(.*?)</title>", out, re.S).group(1)))
    assert found["viewport"] == 390
    assert len(found["tables"]) == 2 + len({f.rule_id for f in res.findings})
    assert found["page"] <= 390 and max(found["tables"]) <= 390, found


# ----------------------------------------------------------------------------- junit.xml


def test_junit_structure(tmp_path: Path, result: ScanResult) -> None:
    path = write_reports(result, tmp_path, formats=["junit"])["junit"]
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(result.gates) + len(result.checks)
    assert int(suite.get("tests")) == len(cases) == int(root.get("tests"))
    n_fail = sum(c.find("failure") is not None for c in cases)
    n_err = sum(c.find("error") is not None for c in cases)
    n_skip = sum(c.find("skipped") is not None for c in cases)
    assert (n_fail, n_err, n_skip) == (2, 2, 1)
    assert (int(suite.get("failures")), int(suite.get("errors")), int(suite.get("skipped"))) == (n_fail, n_err, n_skip)
    gate_cases = [c for c in cases if c.get("classname") == "bastion.gates"]
    assert [c.get("name") for c in gate_cases] == [g.expression for g in result.gates]
    assert "measured 0.125, required >= 0.6" in gate_cases[0].find("failure").get("message")
    by_name = {c.get("name"): c for c in cases if c.get("classname") != "bastion.gates"}
    assert by_name["evasion-pgd"].get("classname") == "bastion.checks.evasion"
    assert by_name["evasion-square"].get("classname") == "bastion.checks.evasion-blackbox"
    assert by_name["evasion-square"].find("error").get("message") == "query budget of 5000 spent"
    assert by_name["backdoor"].find("skipped") is not None
    out = by_name["evasion-pgd"].find("system-out").text
    assert "[CRITICAL] BASTION-EV-001" in out and "Medium finding" not in out  # only >= high
    assert "[HIGH]" in by_name["evasion-tabular"].find("system-out").text
    assert by_name["evasion-square"].find("system-out") is None  # low finding only
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["verdict"] == "fail" and props["status"] == "incomplete"
    assert float(suite.get("time")) == pytest.approx(sum(c.seconds for c in result.checks), abs=1e-3)


def test_junit_survives_control_characters() -> None:
    res = make_result(verdict="pass", status="complete")
    res.checks[3].reason = "bad byte \x00\x07 here & <there>"
    root = ET.fromstring(render_junit(res))
    err = root.find(".//testcase[@name='membership']/error")
    assert err.get("message") == "bad byte \ufffd\ufffd here & <there>"
    assert int(root.get("failures")) == 0


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=40), value=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_junit_any_text_stays_valid_xml(text: str, value: float | None) -> None:
    res = ScanResult(
        target={"spec": text},
        checks=[CheckResult(name=text, kind="k", status="error", reason=text,
                            findings=[Finding(rule_id="R", title=text, severity=Severity.high, check=text,
                                              remediation=text, metrics={"m": value})])],
        gates=[GateResult(expression=text, metric="m", value=value, threshold=0.5, op=">=", passed=False,
                          reason=text)],
    )
    root = ET.fromstring(render_junit(res))
    assert root.get("tests") == "2" and root.get("failures") == "1" and root.get("errors") == "1"


# ----------------------------------------------------------------------------- writer


def test_write_reports_rejects_unknown_format(tmp_path: Path, result: ScanResult) -> None:
    with pytest.raises(UsageError, match="unknown report format.*pdf.*allowed: json, html, junit, sarif"):
        write_reports(result, tmp_path, formats=("json", "pdf"))
    assert not (tmp_path / "report.json").exists()  # nothing half-written


def test_write_reports_all_formats(tmp_path: Path, result: ScanResult) -> None:
    pytest.importorskip("bastion.outputs.report.sarif", reason="SARIF writer not merged yet")
    out = tmp_path / "nested" / "out"
    paths = write_reports(result, out)
    assert set(paths) == {"json", "html", "junit", "sarif"}
    assert {p.name for p in out.iterdir()} == {"report.json", "report.html", "junit.xml", "report.sarif"}
    sarif = json.loads(paths["sarif"].read_text())
    assert sarif["version"] == "2.1.0"
    assert read_report(paths["json"]) == result


def test_write_reports_overwrites_atomically(tmp_path: Path, result: ScanResult) -> None:
    write_reports(result, tmp_path, formats=("json", "junit"))
    res2 = make_result(verdict="pass", status="complete")
    write_reports(res2, tmp_path, formats=("junit", "json"))
    assert read_report(tmp_path / "report.json").verdict == "pass"
    assert ET.parse(tmp_path / "junit.xml").getroot().get("failures") == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "report.json"]

