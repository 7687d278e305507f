"""check_equivalence: small differences for a healthy module, large ones for broken paths (issue 6)."""

import json

import pytest
import torch

from mamba_rl import MambaModule
from mamba_rl.lab import check_equivalence
from mamba_rl.lab.equivalence import PATHS
from mamba_rl.lab.equivalence import main as equivalence_main
from mamba_rl.mixer import MambaMixer


def make_module(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    return MambaModule(
        5, 16, num_layers=2, d_state=8, in_key="obs", out_key="feat", backend="torch", dtype=dtype, device=device
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_healthy_module_agrees_on_every_path(dtype):
    report = check_equivalence(make_module(dtype), steps=37, chunk_size=5, backends=["torch"])
    assert report.ok, str(report)
    assert [row.path for row in report.rows] == list(PATHS)
    assert report.max_relative_diff < report.tolerance
    assert report.setup["resets"] >= 2
    text = str(report)
    assert "all paths agree" in text and "td-recurrent" in text


def test_step_that_ignores_resets_is_caught(monkeypatch):
    """A broken step path: the state is carried across episode boundaries."""
    module = make_module()
    original = MambaMixer.step
    monkeypatch.setattr(MambaMixer, "step", lambda self, x, state, reset=None: original(self, x, state, None))
    report = check_equivalence(module, steps=30, backends=["torch"])
    assert not report.ok
    rows = {row.path: row for row in report.rows}
    assert not report.row_ok(rows["step"]) and not report.row_ok(rows["td-step"])
    assert report.row_ok(rows["sequence"]) and report.row_ok(rows["chunked"])
    assert rows["step"].diffs["out"] > 100 * report.limit("out")
    assert "PATHS DISAGREE" in str(report)


def test_step_that_works_on_a_stand_in_cache_is_caught(monkeypatch):
    """Regression (the project's origin): an optimiser worked on a stand-in cache object and not on
    the real state. Here the step reads a fresh zero conv cache instead of the state it is given."""
    module = make_module()
    original = MambaMixer.step

    def stand_in(self, x, state, reset=None):
        return original(self, x, state._replace(conv=torch.zeros_like(state.conv)), reset)

    monkeypatch.setattr(MambaMixer, "step", stand_in)
    report = check_equivalence(module, steps=20, backends=["torch"])
    assert not report.ok
    step = next(row for row in report.rows if row.path == "step")
    assert step.diffs["out"] > 100 * report.limit("out")
    assert step.diffs["grad"] > 100 * report.limit("grad")


def test_sequence_that_drops_the_initial_state_is_caught(monkeypatch):
    module = make_module()
    original = MambaMixer.forward
    monkeypatch.setattr(
        MambaMixer,
        "forward",
        lambda self, x, state=None, reset=None, reset_state=None: original(self, x, None, reset, reset_state),
    )
    report = check_equivalence(module, steps=30, chunk_size=7, backends=["torch"])
    rows = {row.path: row for row in report.rows}
    # the reference itself is now wrong: stepping (which reads the state) disagrees with it
    assert not report.ok
    assert not report.row_ok(rows["step"])
    assert not report.row_ok(rows["chunked"])


def test_a_failing_path_is_reported_and_the_backend_restored(monkeypatch):
    module = make_module()
    module.backend = "auto"

    def boom(self, x, state, reset=None):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(MambaMixer, "step", boom)
    report = check_equivalence(module, steps=8, backends=["torch"])
    step = next(row for row in report.rows if row.path == "step")
    assert step.error == "RuntimeError: kernel exploded"
    assert not report.ok and report.max_diff["out"] == float("inf")
    assert module.backend == "auto"


def test_equivalence_command_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "eq.json"
    code = equivalence_main(
        ["--d-model", "8", "--num-layers", "1", "--steps", "12", "--backends", "torch", "--json", str(path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| step" in out and "all paths agree" in out
    data = json.loads(path.read_text())
    assert data["ok"] and len(data["rows"]) == len(PATHS)


def test_equivalence_command_on_a_checkpoint(capsys):
    from tests.lab.conftest import FIXTURE

    assert (
        equivalence_main(["--checkpoint", str(FIXTURE), "--steps", "30", "--dtype", "float64", "--backends", "torch"])
        == 0
    )
    assert "trunk with 1 layer(s)" in capsys.readouterr().out


def test_rejects_bad_arguments():
    module = make_module()
    with pytest.raises(ValueError, match="chunk_size"):
        check_equivalence(module, chunk_size=0)
    with pytest.raises(ValueError, match="backends"):
        check_equivalence(module, backends=["cuda"])
    with pytest.raises(ValueError, match="paths"):
        check_equivalence(module, paths=["scan"])


@pytest.mark.gpu
def test_every_backend_agrees_on_cuda():
    module = make_module(device="cuda")
    report = check_equivalence(module, batch=8, steps=300, chunk_size=64, backends=["torch", "triton"])
    assert report.ok, str(report)
