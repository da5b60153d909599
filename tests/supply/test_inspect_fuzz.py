"""Mutation fuzzing, bounded in time: mutated files of every supported format never raise, never lose a
reader failure as "clean", and never take more than the per-file time limit (issue 7).

The seeds are the generated corpus (pickle protocols 0-5, PyTorch zip/legacy/TorchScript, joblib and its
compressors, npy/npz, safetensors, ONNX, Keras zip/HDF5/JSON, zip/tar/7z) plus compressed tarballs; the
larger run is ``benchmarks/supply_fuzz.py``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
from bastion.supply import InspectConfig
from bastion.supply.inspect import scan_file
from corpus import RCE_P0

_CFG = InspectConfig(max_file_seconds=1.0)


@pytest.fixture(scope="module")
def seeds(malicious_corpus, benign_corpus) -> dict[str, bytes]:
    out = fuzzing.seed_files([malicious_corpus[0], benign_corpus[0]])
    out.update(fuzzing.extra_seeds(RCE_P0))
    return out


def test_seeds_cover_every_format(seeds) -> None:
    from bastion.supply.formats import detect

    kinds = {detect(d[:4096], len(d)) for d in seeds.values()}
    assert {"zip", "npy", "tar", "gzip", "zlib", "safetensors", "pickle", "json", "maybe-onnx"} <= kinds
    assert not {"hdf5", "7z"} - kinds or not fuzzing.optional_formats_installed()


@settings(max_examples=700, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_files_never_crash_the_scanner(seeds, tmp_path_factory, data) -> None:
    name = data.draw(st.sampled_from(sorted(seeds)), label="seed")
    rng = random.Random(data.draw(st.integers(0, 2**32), label="rng"))
    mutated = fuzzing.mutate(seeds[name], rng)
    path: Path = tmp_path_factory.mktemp("fuzz") / "m"
    path.write_bytes(mutated)
    res = scan_file(path, _CFG)            # raises only if a reader lets an exception escape
    crashes = [w for w in res.not_analysed if "reader failure" in w]
    assert not crashes, (name, crashes)
