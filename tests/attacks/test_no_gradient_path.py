"""A model whose output is not a differentiable function of its input (a dynamically quantised
module) gets a clear error from gradient attacks, not torch's autograd RuntimeError."""
from __future__ import annotations

import numpy as np
import pytest

from bastion.core.spec import InputSpec
from bastion.errors import TargetError

torch = pytest.importorskip("torch")


def _quantised_target():  # type: ignore[no-untyped-def]
    from bastion.core.targets.torch_target import TorchTarget

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    q = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    return TorchTarget(q, InputSpec(shape=(4,), lower=0.0, upper=1.0))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "apgd-ce"])
def test_gradient_attacks_on_a_quantised_module_say_what_to_do(name: str) -> None:
    from bastion.attacks import get_attack

    target = _quantised_target()
    x = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    with pytest.raises(TargetError, match="passes no gradient to its input") as info:
        get_attack(name, eps=0.1).run(target, x, target.predict(x))
    assert "square" in (info.value.hint or "") and "target.bpda" in (info.value.hint or "")


def test_black_box_attacks_still_run_on_it() -> None:
    from bastion.attacks import get_attack

    target = _quantised_target()
    x = np.random.default_rng(0).random((8, 4)).astype(np.float32)
    res = get_attack("square", eps=0.1, max_queries=50).run(target, x, target.predict(x))
    assert res.complete
