"""Damaged, poisoned and hostile checkpoints are refused with a message naming the file; a failed
write (a full disk) leaves the previous checkpoint whole."""

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from mamba_rl import cli
from mamba_rl.evaluate import main as eval_main
from mamba_rl.io import CheckpointError, load_checkpoint, save_checkpoint
from mamba_rl.training import train

from .conftest import tiny_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt") / "run"
    train(tiny_config(num_updates=2), run, verbose=False)
    return run / "checkpoint.pt"


def _copy(checkpoint: Path, tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(checkpoint.read_bytes())
    return path


def test_a_byte_flipped_inside_a_tensor_is_detected(checkpoint, tmp_path, capsys):
    # regression: torch.load does not check the zip's CRCs, so a changed weight loaded silently
    path = _copy(checkpoint, tmp_path)
    weight = load_checkpoint(path)["policy"]
    name = max(weight, key=lambda k: weight[k].numel())
    data = bytearray(path.read_bytes())
    at = data.find(weight[name].numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # still a readable torch file
    with pytest.raises(CheckpointError, match="damaged.*sha256"):
        load_checkpoint(path)
    assert eval_main(["--checkpoint", str(path), "--episodes", "4", "--num-envs", "4", "--device", "cpu"]) != 0
    assert "damaged" in capsys.readouterr().err


def test_a_checkpoint_with_non_finite_parameters_is_refused(checkpoint, tmp_path, capsys):
    # regression: an all-NaN policy evaluated to chance accuracy without a word
    payload = load_checkpoint(checkpoint)
    payload.pop("format"), payload.pop("version")
    name = next(iter(payload["policy"]))
    payload["policy"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in payload["policy"].items()
    }
    path = save_checkpoint(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=f"non-finite.*{name}"):
        load_checkpoint(path)
    assert eval_main(["--checkpoint", str(path), "--episodes", "4", "--num-envs", "4", "--device", "cpu"]) != 0
    assert "non-finite" in capsys.readouterr().err
    assert cli.main(["--resume", str(tmp_path)]) != 0


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "mamba_rl.checkpoint", "version": 2, "x": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset = tmp_path / "preset.yaml"
    preset.write_text("exp_name: !!python/object/apply:os.system ['touch pwned']\n")
    assert cli.main(["--config", str(preset)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(preset.read_text())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_during_a_checkpoint_names_the_path_and_keeps_the_old_one(checkpoint, tmp_path, monkeypatch):
    # regression: torch's zip writer reported "unexpected pos ..." with no path
    import mamba_rl.io as io_module

    path = _copy(checkpoint, tmp_path)
    before = path.read_bytes()
    temporary = tmp_path / ".checkpoint.pt.partial.tmp"

    def full_disk_mkstemp(prefix="", suffix="", dir=None):
        # every write to /dev/full fails with ENOSPC, as on a full disk
        temporary.touch()
        return os.open("/dev/full", os.O_WRONLY), str(temporary)

    monkeypatch.setattr(io_module.tempfile, "mkstemp", full_disk_mkstemp)
    payload = load_checkpoint(path)
    payload.pop("format"), payload.pop("version")
    with pytest.raises(CheckpointError, match=f"cannot write {path}: the disk is full.*intact"):
        save_checkpoint(payload, path)
    assert path.read_bytes() == before and not temporary.exists()
    assert load_checkpoint(path)["update"] == 2
