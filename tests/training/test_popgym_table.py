"""``scripts/popgym_table.py``: env-steps to a return mark, read from the runs' ``progress.csv``."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("popgym_table", ROOT / "scripts" / "popgym_table.py")
popgym_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(popgym_table)


def _cell(root: Path, env_dir: str, env: str, cell: str, returns: list) -> None:
    run = root / env_dir / cell / "run"
    run.mkdir(parents=True)
    lines = ["update,global_step,train/episode_return"]
    lines += [f"{i + 1},{(i + 1) * 100},{'' if r is None else r}" for i, r in enumerate(returns)]
    (run / "progress.csv").write_text("\n".join(lines) + "\n")
    (root / env_dir / cell / "results.csv").write_text(f"env,controller,seed,run_dir\n{env},x,0,{run}\n")


def test_steps_to_is_the_first_update_at_or_above_the_mark(tmp_path):
    _cell(tmp_path, "rf", "popgym-RepeatFirstEasy-v0", "mamba_0", [-0.5, None, 0.95, 0.5, 1.0])
    progress = tmp_path / "rf" / "mamba_0" / "run" / "progress.csv"
    assert popgym_table.steps_to(progress, 0.9) == 300
    assert popgym_table.steps_to(progress, 0.99) == 500
    assert popgym_table.steps_to(progress, 1.5) is None


def test_learning_table_uses_each_envs_mark_and_lists_every_seed(tmp_path):
    _cell(tmp_path, "cr", "popgym-CountRecallEasy-v0", "gru_0", [-0.9, -0.45])
    _cell(tmp_path, "cr", "popgym-CountRecallEasy-v0", "gru_1", [-0.9, -0.8])
    _cell(tmp_path, "rf", "popgym-RepeatFirstEasy-v0", "mamba_0", [0.1, 0.92])
    table = popgym_table.learning_table(tmp_path)
    assert "| popgym-CountRecallEasy-v0 | gru | -0.5 | 200 / never |" in table
    assert "| popgym-RepeatFirstEasy-v0 | mamba | 0.9 | 200 |" in table
