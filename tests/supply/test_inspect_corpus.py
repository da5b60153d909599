"""The corpus targets of issue 4: every malicious file high/critical, no benign file high, no error."""

from __future__ import annotations

import pytest

from bastion.core.results import Severity
from bastion.supply import scan_paths


def test_corpus_is_large_enough(malicious_corpus, benign_corpus) -> None:
    assert len(malicious_corpus[1]) >= 40
    assert len(benign_corpus[1]) >= 20


def test_every_malicious_file_is_flagged_high_or_critical(malicious_corpus) -> None:
    root, items = malicious_corpus
    missed = []
    for item in items:
        res = scan_paths([root / item.name])
        # malicious files may be partly "not analysed" (limits, encryption), but never unread or a reader crash
        assert not [e for e in res.errors if e.kind == "error" or "reader failure" in e.message], (item.name,
                                                                                                  res.errors)
        if not res.failed(Severity.high):
            missed.append((item.name, item.technique, [(f.severity.value, f.title) for f in res.findings]))
    assert not missed, missed


def test_no_benign_file_is_flagged_high(benign_corpus) -> None:
    root, items = benign_corpus
    res = scan_paths([root])
    assert not res.errors, res.errors
    high = [(f.location, f.title) for f in res.findings if f.severity.rank >= Severity.high.rank]
    assert not high, high
    assert res.files_scanned >= len(items)


@pytest.mark.parametrize(("name", "fmt"), [
    ("state_dict.pt", "pytorch-zip"), ("legacy.pt", "pickle"), ("scripted.pt", "torchscript"),
    ("forest.joblib", "pickle"), ("forest_compressed.joblib", "zlib"), ("array.npy", "npy"),
    ("arrays.npz", "npz"), ("model.safetensors", "safetensors"), ("model.onnx", "onnx"),
    ("keras_dense.keras", "keras"), ("tensors.bin", "pytorch-zip"),
])
def test_formats_are_recognised_by_content(benign_corpus, name, fmt) -> None:
    root, _ = benign_corpus
    res = scan_paths([root / name])
    assert res.formats[str(root / name)][0] == fmt


def test_directory_scan_reports_each_malicious_file(malicious_corpus) -> None:
    root, items = malicious_corpus
    res = scan_paths([root])
    assert not [e for e in res.errors if e.kind == "error"]
    flagged = {f.location for f in res.findings if f.severity.rank >= Severity.high.rank}
    for item in items:
        if (root / item.name).is_file():
            assert str(root / item.name) in flagged, item.name
