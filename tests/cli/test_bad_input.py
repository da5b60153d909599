"""Command-line mistakes get exit 2 and a message naming the option (issue 7), run in-process
through the real entry point (``bastion.cli.main.main``) so they stay fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bastion.cli.main import main

MODELS = '''
import torch


class Bright(torch.nn.Module):
    """Two classes, logits in the order [dark, bright]: the data names them by folder."""

    input_shape = (1, 4, 4)

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-20 * m, 20 * m], dim=1)


def model():
    return Bright()
'''


def _main(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
          ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.mark.parametrize("args, words", [
    (["--eps", "1e308"], "--eps 1e+308 is far beyond"),
    (["--label", "y"], "--label names the label column of a CSV"),
    (["--limit", "0"], "--limit"),
    (["--seed", "-1"], "--seed"),
])
def test_attack_option_errors(capsys, monkeypatch, tmp_path: Path, args: list[str], words: str) -> None:
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((4, 3)), y=np.array([0, 1, 0, 1]))
    code, _, err = _main(["attack", "--target", "demo:breast-cancer", "--data", f"npz:{tmp_path / 'd.npz'}", *args],
                         capsys, monkeypatch)
    assert code == 2 and words in err and "Traceback" not in err and "internal error" not in err


def test_attack_with_folder_name_labels_needs_classes(capsys, monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("cat", 40), ("dog", 215)):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(3):
            px = np.clip(rng.normal(level, 10, (4, 4)), 0, 255).astype(np.uint8)
            Image.fromarray(px, "L").save(tmp_path / "pets" / cls / f"{i}.png")
    (tmp_path / "m.py").write_text(MODELS)
    base = ["attack", "--target", f"python:{tmp_path / 'm.py'}:model", "--data", f"images:{tmp_path / 'pets'}?mode=L",
            "--attack", "square", "--eps", "0.05", "--param", "max_queries=5", "--json"]
    code, _, err = _main(base, capsys, monkeypatch)
    assert code == 2 and "--classes" in err
    code, out, err = _main([*base, "--classes", "cat,dog"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["results"][0]["clean_accuracy"] == 1.0
