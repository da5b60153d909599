"""Rules of the data audits (ids ``BASTION-DA-*``), registered in the catalogue of
:mod:`bastion.core.rules`. Kept free of heavy imports: reports load it to describe findings."""

from __future__ import annotations

from bastion.core.results import Severity
from bastion.core.rules import Rule

_PII = ("Remove or pseudonymise the values before training (drop the column, or replace each value by a keyed "
        "hash or a token), and check where the data came from: a model can memorise and repeat rare strings.")

CATALOGUE: list[Rule] = [
    Rule(id="BASTION-DA-001", title="Exact duplicate records", threat="data-integrity", default_severity=Severity.low,
         help="Identical records weigh more in training and inflate evaluation when they fall in both splits.",
         remediation="Drop the extra copies (keep one of each), or check why the pipeline writes records twice."),
    Rule(id="BASTION-DA-002", title="Near-duplicate records", threat="data-integrity", default_severity=Severity.low,
         help=("Records equal after normalisation (case, spaces and punctuation of text; numbers within a tolerance "
               "of the column's spread; text 3-gram similarity above a threshold)."),
         remediation="Deduplicate on the normalised record, or group near copies in the same split."),
    Rule(id="BASTION-DA-003", title="Test records also in the training data (leakage)", threat="data-integrity",
         default_severity=Severity.high,
         help="A test record whose inputs are in the training split measures memory, not generalisation.",
         remediation=("Remove the leaked records from the test split (or the training split) and split again by a "
                      "group key (user, document, session) so that copies stay on one side.")),
    Rule(id="BASTION-DA-004", title="Near copies of training records in the test data (leakage)",
         threat="data-integrity", default_severity=Severity.medium,
         help="Near copies across splits inflate test accuracy almost as much as exact ones.",
         remediation="Split by a group key or deduplicate on the normalised record before splitting."),
    Rule(id="BASTION-DA-005", title="Conflicting labels for the same input", threat="data-integrity",
         default_severity=Severity.medium,
         help="Identical inputs labelled differently: labelling errors, or label flipping by a poisoner.",
         remediation="Review the conflicting records, fix or drop the wrong labels, and trace who labelled them."),
    Rule(id="BASTION-DA-006", title="Class imbalance", threat="data-integrity", default_severity=Severity.low,
         help="A rare class is learned poorly and hidden by overall accuracy.",
         remediation="Collect more of the rare classes, re-weight or re-sample, and gate on per-class accuracy."),
    Rule(id="BASTION-DA-007", title="Label-noise candidates (confident learning)", threat="data-integrity",
         default_severity=Severity.medium,
         help=("Records whose out-of-fold predicted probabilities confidently favour another class than their "
               "label (Northcutt, Jiang & Chuang 2021, 'Confident learning', arXiv:1911.00068)."),
         remediation="Review the candidates first; relabel or drop the wrong ones, then train again."),
    Rule(id="BASTION-DA-008", title="Outlying values", threat="data-integrity", default_severity=Severity.low,
         help="Values far from the column's median (in median absolute deviations): entry errors or injected records.",
         remediation="Check the records; fix unit or entry errors, and drop values that cannot be right."),
    Rule(id="BASTION-DA-010", title="Payment card numbers", threat="data-privacy", default_severity=Severity.critical,
         help="Numbers that pass the issuer's prefix and length rules and the Luhn checksum.",
         remediation="Card numbers must not be in training data (PCI DSS): remove them. " + _PII),
    Rule(id="BASTION-DA-011", title="E-mail addresses", threat="data-privacy", default_severity=Severity.high,
         remediation=_PII),
    Rule(id="BASTION-DA-012", title="Phone numbers", threat="data-privacy", default_severity=Severity.medium,
         remediation=_PII),
    Rule(id="BASTION-DA-013", title="Bank account numbers (IBAN)", threat="data-privacy",
         default_severity=Severity.high, help="IBANs with the country's length and a valid mod-97 check.",
         remediation=_PII),
    Rule(id="BASTION-DA-014", title="National identity numbers", threat="data-privacy", default_severity=Severity.high,
         help="US social security numbers and UK national insurance numbers.", remediation=_PII),
    Rule(id="BASTION-DA-015", title="Secrets: API keys, tokens, private keys, passwords", threat="data-privacy",
         default_severity=Severity.critical,
         remediation=("Revoke the credentials now (they have been copied with the data), remove them from the data "
                      "and from every copy of it, and keep credentials out of logs that become data.")),
    Rule(id="BASTION-DA-020", title="Data differs from its manifest", threat="data-integrity",
         default_severity=Severity.high, nist="Manage",
         help="Records added, removed or changed since the manifest was written: an unreviewed change of the data.",
         remediation=("Review the changed records; if the change is intended, write a new manifest "
                      "(bastion audit-data ... --write-manifest) and keep it under version control.")),
    Rule(id="BASTION-DA-030", title="File could not be read", threat="data-integrity", default_severity=Severity.high,
         help="An unreadable, truncated or malformed file: what it holds was not audited.",
         remediation="Write the file again from its source and check that it was copied whole."),
    Rule(id="BASTION-DA-031", title="Mixed types in a column", threat="data-integrity",
         default_severity=Severity.medium,
         help="A numeric column with values that are not numbers (treated as missing), or a column of mostly "
              "numbers with other values (audited as text or categories, not as numbers).",
         remediation="Fix the values at the source or cast the column explicitly, treating bad values as missing."),
    Rule(id="BASTION-DA-032", title="Label column missing", threat="data-integrity", default_severity=Severity.high,
         help="The audits that need labels (conflicts, imbalance, label noise, slices) did not run.",
         remediation="Name the label column with --label (or label: in the policy)."),
    Rule(id="BASTION-DA-033", title="Text that is not UTF-8", threat="data-integrity", default_severity=Severity.low,
         help="Bytes that are not UTF-8: another encoding, or binary data in a text column.",
         remediation="Re-export the data as UTF-8, or decode it with its real encoding first."),
    Rule(id="BASTION-DA-034", title="Files with different columns", threat="data-integrity",
         default_severity=Severity.medium, help="Files of one data set whose headers differ.",
         remediation="Align the schemas of the files (same columns, same order) before training."),
    Rule(id="BASTION-DA-040", title="Model accuracy differs across slices", threat="data-integrity",
         default_severity=Severity.medium,
         help="Accuracy per class and per slice of the data, worst first.",
         remediation="Collect more data for the weak slices, re-weight them, and gate on per-slice accuracy."),
    Rule(id="BASTION-DA-041", title="Model is poorly calibrated", threat="data-integrity",
         default_severity=Severity.low,
         help=("Expected calibration error: the gap between confidence and accuracy, averaged over confidence bins "
               "(Guo et al. 2017, 'On calibration of modern neural networks')."),
         remediation="Calibrate the scores (temperature scaling, isotonic regression) on held-out data."),
]
