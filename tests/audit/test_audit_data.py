"""``bastion audit-data``: each detector on tiny tables (seconds), bad input, manifests, the CLI."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.audit.sensitive import card_issuer, iban_valid, luhn
from bastion.audit.table import Source
from bastion.audit.tabular import audit_table, sources_from
from bastion.cli.main import main

ENGINES = ["stdlib", pytest.param("pyarrow", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("pyarrow") is None, reason="pyarrow not installed"))]
HEADER = ["x1", "x2", "colour", "notes", "uid", "ts", "label"]
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]


def luhn_complete(prefix: str, length: int, rng: np.random.Generator) -> str:
    """A Luhn-valid number of ``length`` digits starting with ``prefix``."""
    body = prefix + "".join(str(d) for d in rng.integers(0, 10, length - len(prefix) - 1))
    return next(body + str(c) for c in range(10) if luhn(body + str(c)))


def rows(n: int, seed: int, tag: str) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ts = luhn_complete("17" + str(rng.integers(0, 10)), 16, rng)  # a Luhn-valid epoch-µs timestamp: a decoy
        out.append([f"{rng.normal():.6f}", f"{rng.uniform(0, 100):.4f}", str(rng.choice(["red", "green", "blue"])),
                    " ".join(rng.choice(WORDS, 8)) + f" {tag} {i}", str(rng.integers(10 ** 15, 10 ** 16)), ts,
                    str(int(rng.integers(0, 2)))])
    return out


def write(path: Path, body: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(body)
    return path


def run(tmp_path: Path, train: list[list[str]], test: list[list[str]] | None = None, **kw):  # noqa: ANN201
    tr = write(tmp_path / "train.csv", train)
    te = [write(tmp_path / "test.csv", test)] if test is not None else []
    kw.setdefault("label", "label")
    kw.setdefault("audits", ("integrity", "duplicates", "sensitive-data", "class-balance", "outliers"))
    return audit_table(sources_from([], [tr], te), **kw)


def by_rule(res, rule: str) -> list:  # noqa: ANN001
    return [f for r in res.results for f in r.findings if f.rule_id == rule]


# --- validators -------------------------------------------------------------------------------------
def test_card_rules_need_issuer_length_and_luhn() -> None:
    assert luhn("4111111111111111") and card_issuer("4111111111111111") == "Visa"
    assert not luhn("4111111111111112")
    assert card_issuer("1712345678901234") is None          # a timestamp: no issuer starts with 1
    assert card_issuer("41111111111111") is None            # Visa has no 14-digit numbers
    assert card_issuer("378282246310005") == "American Express"
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")
    assert not iban_valid("GB82 WEST 1234 5698 7654")       # wrong length for GB


# --- sensitive data ---------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_cards_found_decoys_not_and_samples_masked(tmp_path: Path, engine: str) -> None:
    rng = np.random.default_rng(1)
    body = rows(200, 0, "tr")
    cards = [luhn_complete("4", 16, rng), luhn_complete("51", 16, rng), "3782 822463 10005"]
    secrets = {"email": "jane.roe@example.org", "iban": "GB82 WEST 1234 5698 7654 32", "ssn": "123-45-6789",
               "key": "AKIAIOSFODNN7EXAMPLE", "phone": "+44 20 7946 0958"}
    for i, c in enumerate(cards):
        body[10 + i][3] += f" paid with {c} today"
    for i, v in enumerate(secrets.values()):
        body[20 + i][3] += f" contact {v}"
    res = run(tmp_path, body, engine=engine)
    found = by_rule(res, "BASTION-DA-010")
    assert len(found) == 1 and found[0].columns == ["notes"] and found[0].records == [10, 11, 12]
    for rule, rec in [("BASTION-DA-011", 20), ("BASTION-DA-013", 21), ("BASTION-DA-014", 22),
                      ("BASTION-DA-015", 23), ("BASTION-DA-012", 24)]:
        fs = by_rule(res, rule)
        assert [f.records for f in fs] == [[rec]], rule
    # the uid column (random 16-digit ids, some Luhn-valid Visa-shaped) and the Luhn-valid timestamps: nothing
    assert not [f for f in res.check.findings if f.metrics.get("columns") in (["uid"], ["ts"])]
    report = json.dumps(res.check.model_dump(mode="json"))
    for value in [*cards, *secrets.values()]:
        digits = value.replace(" ", "")
        assert value not in report and digits not in report and digits[:8] not in report


def test_card_column_is_flagged_when_its_numbers_are_not_random(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    body = rows(60, 0, "tr")
    for r in body:
        r[4] = luhn_complete("4", 16, rng)  # every uid is a Luhn-valid Visa number: a card column
    res = run(tmp_path, body)
    found = by_rule(res, "BASTION-DA-010")
    assert len(found) == 1 and found[0].columns == ["uid"] and len(found[0].records) == 60


# --- duplicates, leaks, conflicts ---------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_duplicates_near_duplicates_leaks_and_conflicts(tmp_path: Path, engine: str) -> None:
    train, test = rows(300, 0, "tr"), rows(100, 1, "te")
    train.append(list(train[10]))                                   # exact duplicate: record 300
    near = list(train[11])                                          # near duplicate: record 301
    near[3] = near[3].upper().replace(" ", "  ", 2)
    near[0] = f"{float(near[0]) + 1e-6:.7f}"
    train.append(near)
    typo = list(train[12])                                          # one character changed: record 302
    typo[3] = typo[3][:5] + "x" + typo[3][6:]
    train.append(typo)
    conflict = list(train[13])                                      # same inputs, other label: record 303
    conflict[-1] = "1" if conflict[-1] == "0" else "0"
    train.append(conflict)
    test[5] = list(train[40])                                       # exact leak: record 304 + 5
    test[6] = list(train[41])                                       # near leak
    test[6][3] = test[6][3].title()
    res = run(tmp_path, train, test, engine=engine)
    n_train = len(train)
    assert [f.records for f in by_rule(res, "BASTION-DA-001")] == [[10, 300]]
    near_dups = by_rule(res, "BASTION-DA-002")
    assert len(near_dups) == 1 and set(near_dups[0].records) == {11, 301, 12, 302}
    assert [f.records for f in by_rule(res, "BASTION-DA-005")] == [[13, 303]]
    assert [f.records for f in by_rule(res, "BASTION-DA-003")] == [[40, n_train + 5]]
    assert [f.records for f in by_rule(res, "BASTION-DA-004")] == [[41, n_train + 6]]
    assert res.check.values("leaked_test_records") == [1.0] and res.check.values("near_leaked_test_records") == [1.0]


def test_clean_table_has_no_findings(tmp_path: Path) -> None:
    res = run(tmp_path, rows(400, 0, "tr"), rows(100, 1, "te"))
    assert res.check.findings == [] and res.check.status == "complete"
    assert res.check.values("duplicate_records") == [0.0]   # measured, so a gate can read it


def test_near_duplicate_search_is_not_quadratic(tmp_path: Path) -> None:
    """2,000 near copies of one record: all found as one group, from a number of compared pairs that
    grows with n (window * keys per record), not the n^2 / 2 = 2,000,000 pairs of a pairwise search."""
    from bastion.audit.duplicates import DuplicateParams, _components, near_pairs
    from bastion.audit.profile import profile_table
    from bastion.core.run import RunContext

    base = rows(1, 3, "tr")[0]
    body = []
    for i in range(2000):
        r = list(base)
        r[0] = f"{float(base[0]) + i * 1e-9:.12f}" if i < 1990 else f"{i / 7:.4f}"   # the last ten are far away
        body.append(r)
    prof = profile_table([Source(write(tmp_path / "t.csv", body), "train")], label="label")
    p = DuplicateParams()
    a, b = near_pairs(prof, p, RunContext())
    assert len(a) <= len(body) * p.window * p.grids * p.bands
    groups = _components(a, b, len(body))
    assert len(np.unique(groups[:1990])) == 1 and not set(groups[1990:]) & {groups[0]}


# --- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_bad_input_is_reported_and_the_rest_audited(tmp_path: Path, engine: str) -> None:
    body = rows(100, 0, "tr")
    body[7][0] = "n/a"                                             # mixed types in a numeric column
    body[9][3] += " contact jane.roe@example.org"
    path = write(tmp_path / "train.csv", body)
    raw = path.read_bytes().replace(b" tr 3,", b" tr \xe93,")   # Latin-1 byte, not UTF-8
    path.write_bytes(raw + b"0.1,2.0,red,cut sh")                   # a truncated last row
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    res = audit_table(sources_from([path, broken]), label="label", engine=engine,
                      audits=("integrity", "sensitive-data"))
    rules = {f.rule_id for f in res.check.findings}
    assert {"BASTION-DA-031", "BASTION-DA-033", "BASTION-DA-030", "BASTION-DA-011"} <= rules
    assert by_rule(res, "BASTION-DA-031")[0].records == [7] and by_rule(res, "BASTION-DA-033")[0].records == [3]
    assert res.check.status == "incomplete" and len(res.usage_problems) == 2   # truncated + unreadable
    assert res.profile.n == 100


@pytest.mark.parametrize("engine", ENGINES)
def test_column_of_numbers_and_placeholders_is_mixed(tmp_path: Path, engine: str) -> None:
    """10% 'unknown' in a column of ages: too many to read it as numbers, but still mixed types."""
    body = rows(100, 0, "tr")
    for i, r in enumerate(body):
        r[1] = "unknown" if i % 10 == 3 else str(20 + i % 50)
    path = write(tmp_path / "train.csv", body)
    res = audit_table(sources_from([path]), label="label", engine=engine, audits=("integrity",))
    (f,) = by_rule(res, "BASTION-DA-031")
    assert f.columns == ["x2"] and f.records == list(range(3, 100, 10)) and "mixes numbers and text" in f.title
    clean = audit_table(sources_from([write(tmp_path / "clean.csv", rows(100, 0, "tr"))]), label="label",
                        engine=engine, audits=("integrity",))
    assert by_rule(clean, "BASTION-DA-031") == []   # text, categories, ids and timestamps are not mixed


@pytest.mark.parametrize("engine", ENGINES)
def test_header_that_is_not_utf8_is_read_and_reported(tmp_path: Path, engine: str, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "train.csv", rows(40, 0, "tr"), header=["x1", "\u00e2ge", *HEADER[2:]])
    path.write_bytes(path.read_bytes().replace("\u00e2".encode(), b"\xe2"))   # a Latin-1 column name
    res = audit_table(sources_from([path]), label="label", engine=engine, audits=("integrity",))
    assert res.profile.n == 40 and res.check.status == "complete" and "\ufffdge" in res.profile.columns
    (f,) = by_rule(res, "BASTION-DA-033")
    assert "\ufffdge" in f.title
    monkeypatch.setattr("bastion.audit.table._has_pyarrow", lambda: engine == "pyarrow")
    for fmt in ("json", "sarif"):     # every report format can encode the name
        code, out, _ = _main(["audit-data", str(path), "--label", "label", "--audits", "integrity", "--format", fmt],
                             capsys, monkeypatch)
        assert code == 0 and "\\ufffdge" in out


@pytest.mark.parametrize("engine", ENGINES)
def test_file_cut_inside_a_quoted_field_is_truncated(tmp_path: Path, engine: str) -> None:
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows([HEADER, *rows(20, 0, "tr")])
    raw = path.read_bytes()
    path.write_bytes(raw[:raw.rindex(b" tr 19") + 4])  # the last record ends inside its quoted 'notes' field
    res = audit_table(sources_from([path]), label="label", engine=engine, audits=("integrity",))
    (f,) = by_rule(res, "BASTION-DA-030")
    assert "truncated" in f.title and res.profile.n == 19 and res.usage_problems


@pytest.mark.parametrize("engine", ENGINES)
def test_records_after_a_skipped_row_point_to_their_own_rows(tmp_path: Path, engine: str) -> None:
    body = rows(30, 0, "tr")
    body[25] = list(body[20])                        # an exact duplicate ...
    body.insert(5, body[4] + ["an extra field"])     # ... after a malformed row (data row 6), which is skipped
    res = audit_table(sources_from([write(tmp_path / "d.csv", body)]), label="label", engine=engine,
                      chunk_rows=8, audits=("integrity", "duplicates"))
    assert res.profile.n == 30 and by_rule(res, "BASTION-DA-030")[0].samples == ["row 6"]
    (dup,) = by_rule(res, "BASTION-DA-001")
    assert dup.samples == ["d.csv:22 = d.csv:27"]    # the file's data rows, counted from 1


@pytest.mark.parametrize("engine", ENGINES)
def test_header_with_a_quoted_line_break(tmp_path: Path, engine: str) -> None:
    path = write(tmp_path / "d.csv", rows(20, 0, "tr"), header=["x1", "x2\n(cm)", *HEADER[2:]])
    res = audit_table(sources_from([path]), label="label", engine=engine, audits=("integrity",))
    assert res.profile.n == 20 and res.check.findings == [] and res.profile.columns[1] == "x2\n(cm)"


def test_compressed_or_utf16_file_is_unreadable_not_garbage(tmp_path: Path) -> None:
    import gzip

    good = write(tmp_path / "good.csv", rows(30, 0, "tr"))
    gz = tmp_path / "packed.csv"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    wide = tmp_path / "wide.csv"
    wide.write_bytes(good.read_text().encode("utf-16"))
    res = audit_table(sources_from([gz, wide, good]), label="label", audits=("integrity", "duplicates"))
    titles = sorted(f.title for f in by_rule(res, "BASTION-DA-030"))
    assert titles == ["packed.csv: not a text table: it looks like gzip-compressed data",
                      "wide.csv: not a text table: it looks like UTF-16 text"]
    assert res.profile.n == 30 and res.profile.columns == HEADER and len(res.usage_problems) == 2
    assert {f.rule_id for f in res.check.findings} == {"BASTION-DA-030"}     # no garbage columns, no false duplicates


# --- provenance --------------------------------------------------------------------------------------
def test_manifest_diff_is_record_level(tmp_path: Path) -> None:
    from bastion.audit.provenance import build_manifest

    body = rows(50, 0, "tr")
    res = run(tmp_path, body, audits=("integrity",))
    manifest = build_manifest(res.profile, note="from the test")
    assert manifest["files"][0]["records"] == 50
    body[3][1] = "1.2345"                          # changed in place
    del body[10]                                   # removed
    body.append(rows(1, 9, "new")[0])              # added
    res2 = run(tmp_path, body, audits=("integrity",), manifest=manifest)
    (f,) = by_rule(res2, "BASTION-DA-020")
    assert f.measurements == {"added": 1, "removed": 1, "changed": 1}
    assert "row 4 changed" in f.samples and "old row 11 removed" in f.samples and "row 50 added" in f.samples
    same = run(tmp_path, rows(50, 0, "tr"), audits=("integrity",), manifest=build_manifest(res.profile))
    assert by_rule(same, "BASTION-DA-020") == []


def test_manifest_with_a_key_column(tmp_path: Path) -> None:
    from bastion.audit.provenance import build_manifest

    body = rows(30, 0, "tr")
    res = run(tmp_path, body, audits=("integrity",), key="uid")
    manifest = build_manifest(res.profile)
    body = body[1:]                          # removed: the first record
    body[0][0] = "9.0"                       # changed: the (old) second record, now first
    res2 = run(tmp_path, body, audits=("integrity",), key="uid", manifest=manifest)
    (f,) = by_rule(res2, "BASTION-DA-020")
    assert f.measurements == {"added": 0, "removed": 1, "changed": 1}


# --- CLI ---------------------------------------------------------------------------------------------
def _main(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_cli_exit_codes(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    clean = write(tmp_path / "clean.csv", rows(80, 0, "tr"))
    leaky = rows(80, 0, "tr")
    leaky[3][3] += " card 4111 1111 1111 1111"
    leaky_path = write(tmp_path / "leaky.csv", leaky)
    audits = ["--audits", "integrity,duplicates,sensitive-data"]
    code, out, _ = _main(["audit-data", str(clean), "--label", "label", *audits], capsys, monkeypatch)
    assert code == 0 and "PASS" in out
    code, out, _ = _main(["audit-data", str(leaky_path), "--label", "label", *audits, "--format", "json"],
                         capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 1 and doc["findings"][0]["rule_id"] == "BASTION-DA-010" and "4111 1111" not in out
    code, out, _ = _main(["audit-data", str(leaky_path), "--label", "label", *audits, "--format", "sarif"],
                         capsys, monkeypatch)
    (result,) = json.loads(out)["runs"][0]["results"]
    assert code == 1 and result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith("leaky.csv")
    code, out, _ = _main(["audit-data", str(clean), "--label", "nope", *audits], capsys, monkeypatch)
    assert code == 2 and "label column 'nope' not found" in out
    code, _, err = _main(["audit-data", str(tmp_path / "missing.csv")], capsys, monkeypatch)
    assert code == 2 and "no such file" in err
    code, _, err = _main(["audit-data", str(clean), "--manifest", str(clean)], capsys, monkeypatch)
    assert code == 2 and "manifest" in err
    m = tmp_path / "m.json"
    code, out, _ = _main(["audit-data", str(clean), "--label", "label", *audits, "--write-manifest", str(m)],
                         capsys, monkeypatch)
    assert code == 0 and json.loads(m.read_text())["files"][0]["records"] == 80
    code, out, _ = _main(["audit-data", str(leaky_path), "--label", "label", "--audits", "integrity",
                          "--manifest", str(m)], capsys, monkeypatch)
    assert code == 1 and "BASTION-DA-020" in out


# --- label noise -------------------------------------------------------------------------------------
def test_confident_learning_flags_flipped_labels(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(4)
    body = rows(1500, 0, "tr")
    for r in body:  # a learnable label: the sign of x1
        r[-1] = "pos" if float(r[0]) > 0 else "neg"
    flipped = [i for i in range(1500) if abs(float(body[i][0])) > 1.5][:8]
    for i in flipped:
        body[i][-1] = "neg" if body[i][-1] == "pos" else "pos"
    res = run(tmp_path, body, audits=("label-noise",), params={"label-noise": {"folds": 3, "trees": 30}})
    (f,) = by_rule(res, "BASTION-DA-007")
    # confident learning flags what the out-of-fold model confidently contradicts: most flips, few others
    assert len(set(flipped) & set(f.records)) >= 6 and len(set(f.records) - set(flipped)) <= 2
    # labels that the features do not explain: nothing flagged, and the finding says why
    for r in body:
        r[-1] = str(rng.integers(0, 2))
    res = run(tmp_path, body, audits=("label-noise",), params={"label-noise": {"folds": 3, "trees": 30}})
    (f,) = by_rule(res, "BASTION-DA-007")
    assert f.records == [] and "not assessed" in f.title


# --- the audit-data check in a policy ------------------------------------------------------------------
def test_audit_data_check_feeds_gates(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from bastion.campaign.runner import scan

    monkeypatch.chdir(tmp_path)
    train, test = rows(120, 0, "tr"), rows(40, 1, "te")
    test[0] = list(train[5])
    write(tmp_path / "train.csv", train)
    write(tmp_path / "test.csv", test)
    policy = {"version": 1, "checks": [{"name": "data", "kind": "audit-data", "train": ["train.csv"],
                                        "test": ["test.csv"], "label": "label",
                                        "audits": ["integrity", "duplicates", "sensitive-data"]}],
              "gates": ["leaked_test_records[data] <= 0", "sensitive_records[data] <= 0"],
              "output": {"dir": str(tmp_path / "out"), "formats": ["json"]}}
    result = scan(policy)
    assert result.verdict == "fail" and [g.passed for g in result.gates] == [False, True]
    assert result.checks[0].kind == "audit-data" and result.checks[0].findings[0].rule_id == "BASTION-DA-003"
    policy["checks"][0]["train"] = ["missing.csv"]
    from bastion.errors import UsageError

    with pytest.raises(UsageError, match="missing.csv"):
        scan(policy)


# --- slices and calibration ----------------------------------------------------------------------------
MODEL = '''
import numpy as np
from sklearn.linear_model import LogisticRegression


def make():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1))
    y = np.where(x[:, 0] > 0, "pos", "neg")
    return LogisticRegression().fit(x, y)
'''


def test_slices_worst_first_calibration_and_plot(tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("sklearn")
    body = rows(300, 0, "tr")
    for r in body:
        r[-1] = "pos" if float(r[0]) > 0 else "neg"
        if r[2] == "blue" and float(r[1]) < 50:   # about half of the blue records mislabelled: a weak slice
            r[-1] = "neg" if r[-1] == "pos" else "pos"
    data = write(tmp_path / "d.csv", body)
    (tmp_path / "model.py").write_text(MODEL)
    plot = tmp_path / "rel.svg"
    code, out, _ = _main(["audit-data", str(data), "--label", "label", "--audits", "integrity",
                          "--model", f"python:{tmp_path / 'model.py'}:make", "--features", "x1",
                          "--slice", "colour", "--plot", str(plot), "--format", "json"], capsys, monkeypatch)
    assert out.startswith("{"), _
    doc = json.loads(out)
    (slices,) = [f for f in doc["findings"] if f["rule_id"] == "BASTION-DA-040"]
    assert slices["severity"] == "medium" and "worst colour=blue" in slices["title"], slices["title"]
    assert slices["metrics"]["examples"][0].startswith("colour=blue")
    check = doc["checks"][0]
    assert [a["type"] for a in check["artifacts"]] == ["reliability_diagram"]
    assert any(f["rule_id"] == "BASTION-DA-041" for f in doc["findings"])
    assert plot.read_bytes().startswith(b"<?xml") and code == 0
    code, _, err = _main(["audit-data", str(data), "--slice", "colour"], capsys, monkeypatch)
    assert code == 2 and "--slice needs --model" in err


def test_reliability_ece_of_a_calibrated_and_an_overconfident_model() -> None:
    from bastion.audit.slices import reliability

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    calibrated = reliability(conf, rng.random(20000) < conf)
    overconfident = reliability(conf, rng.random(20000) < conf - 0.2)
    assert calibrated.ece < 0.02 and abs(overconfident.ece - 0.2) < 0.02


def test_parquet_reads_like_csv(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    body = rows(150, 0, "tr")
    body[4][3] += " card 4111-1111-1111-1111"
    body.append(list(body[9]))
    cols = list(zip(*body))
    table = pa.table({"x1": pa.array([float(v) for v in cols[0]]), "x2": pa.array([float(v) for v in cols[1]]),
                      "colour": pa.array(cols[2]), "notes": pa.array(cols[3]),
                      "uid": pa.array([int(v) for v in cols[4]]),      # 16-digit integers: kept as text
                      "ts": pa.array(cols[5]), "label": pa.array([int(v) for v in cols[6]])})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=64)
    res = audit_table(sources_from([tmp_path / "d.parquet"]), label="label", chunk_rows=50,
                      audits=("integrity", "duplicates", "sensitive-data"))
    assert res.check.metrics["columns"]["uid"] == "identifier" and res.profile.n == 151
    assert [f.records for f in by_rule(res, "BASTION-DA-001")] == [[9, 150]]
    assert [f.records for f in by_rule(res, "BASTION-DA-010")] == [[4]]
    assert {f.rule_id for f in res.check.findings} == {"BASTION-DA-001", "BASTION-DA-010"}


def test_huge_field_and_row_limit(tmp_path: Path) -> None:
    from bastion.audit import table

    body = rows(30, 0, "tr")
    path = write(tmp_path / "d.csv", body)
    big = tmp_path / "big.csv"
    big.write_text("a,b\n1,2\n3," + "x" * (table.MAX_FIELD_CHARS + 10) + "\n5,6\n")
    res = audit_table(sources_from([path, big]), label="label", engine="stdlib", audits=("integrity",))
    (f,) = by_rule(res, "BASTION-DA-030")
    assert "data row 2" in f.title and res.usage_problems and res.profile.n == 31   # the row before it is kept
    res = audit_table(sources_from([path]), label="label", max_rows=10, audits=("integrity",))
    assert res.profile.n == 10 and res.check.status == "incomplete" and "max_rows" in res.check.reason
