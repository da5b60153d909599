"""Executors with real worker processes: results in submission order and equal to the serial
executor's, one query budget across workers, Ctrl-C (SIGINT to a real process) stops every unit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bastion.campaign.executors import ExecutionInterrupted, LocalExecutor, SerialExecutor, Unit, make_executor
from bastion.core.run import QueryLedger, RunContext
from bastion.errors import UsageError

UNITS = "tests.campaign.executor_units"
ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_results_come_back_in_order_and_match_the_serial_executor() -> None:
    # the first units sleep longest, so they finish last
    units = [Unit(f"{UNITS}:echo", f"unit-{i}", {"value": i, "delay": 0.3 - 0.05 * i}) for i in range(6)]
    seen: list[int] = []
    local = LocalExecutor(workers=2).map(units, RunContext(seed=4), progress=seen.append)
    serial = SerialExecutor().map(units, RunContext(seed=4))
    assert [r["value"] for r in local] == list(range(6)) and sum(seen) == 6
    assert len({r["pid"] for r in local}) == 2 and os.getpid() not in {r["pid"] for r in local}
    # random numbers depend on (seed, unit name), not on the worker or the order
    assert [r["draw"] for r in local] == [r["draw"] for r in serial]
    assert len({r["draw"] for r in local}) == 6


def test_one_budget_across_workers() -> None:
    ledger = QueryLedger(250)
    units = [Unit(f"{UNITS}:spend", f"spender-{i}", {"tries": 100}) for i in range(4)]
    accepted = LocalExecutor(workers=2).map(units, RunContext(ledger=ledger))
    assert sum(accepted) == 250 and ledger.spent == 250  # 400 asked, exactly the budget granted
    assert sorted(accepted)[-2:] == [100, 100]


def test_specs_not_live_objects_and_unit_errors_propagate() -> None:
    import threading

    with pytest.raises(UsageError, match="cannot be sent to a worker"):
        SerialExecutor().map([Unit(f"{UNITS}:echo", "u", {"value": threading.Lock(), "delay": 0})], RunContext())
    with pytest.raises(UsageError, match="module-level function"):
        SerialExecutor().map([Unit(lambda ctx: 1, "u")], RunContext())
    with pytest.raises(UsageError, match="unique"):
        SerialExecutor().map([Unit(f"{UNITS}:fail", "u"), Unit(f"{UNITS}:fail", "u")], RunContext())
    with pytest.raises(ValueError, match="on purpose"):
        LocalExecutor(workers=2).map([Unit(f"{UNITS}:fail", "u")], RunContext())
    with pytest.raises(UsageError, match="workers must be a positive integer"):
        LocalExecutor(workers=0)
    assert isinstance(make_executor(1), SerialExecutor) and make_executor(3).workers == 3
    assert make_executor().workers == (os.cpu_count() or 1)


@pytest.mark.parametrize("unit", ["wait_for_cancel", "sleep_forever"])
def test_ctrl_c_stops_every_unit(tmp_path: Path, unit: str) -> None:
    """SIGINT to a process running units in two workers: every worker ends (cooperatively, or ended
    by the executor when a unit ignores cancellation), the finished results are kept, exit 130."""
    script = textwrap.dedent(f"""
        import sys
        import bastion.campaign.executors as ex
        from bastion.core.run import RunContext
        ex.GRACE_SECONDS = 1.0
        units = [ex.Unit("{UNITS}:echo", "quick", {{"value": 7, "delay": 0.0}})]
        units += [ex.Unit("{UNITS}:{unit}", f"u{{i}}", {{"flag_dir": sys.argv[1]}}) for i in range(2)]
        try:
            ex.LocalExecutor(workers=3).map(units, RunContext())
        except ex.ExecutionInterrupted as stop:
            print("kept", stop.results[0]["value"], stop.results[1:], flush=True)
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2, proc.communicate()
    time.sleep(1.0)  # the quick unit is done by now
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 10
    assert "kept 7" in out
    time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]


def test_cancelling_the_run_context_stops_the_serial_executor_too() -> None:
    ctx = RunContext()
    units = [Unit(f"{UNITS}:echo", f"u{i}", {"value": i, "delay": 0}) for i in range(3)]
    with pytest.raises(ExecutionInterrupted) as info:
        SerialExecutor().map(units, ctx, progress=lambda n: ctx.cancel())
    assert info.value.results[0]["value"] == 0 and info.value.results[1:] == [None, None]


def test_scan_takes_workers(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nchecks: []\n")
    bad = CliRunner().invoke(app, ["scan", str(policy), "--workers", "0"])
    assert bad.exit_code == 2 and "workers" in bad.output
    assert "--workers" in CliRunner().invoke(app, ["scan", "--help"]).output
