"""After any resume every logged update appears exactly once, in progress.csv and in TensorBoard."""

import pytest

from mamba_rl.training import train

from .conftest import progress_updates, tiny_config


def _crash_at(update_to_crash):
    def callback(update, info):
        if update == update_to_crash:
            raise RuntimeError(f"simulated crash at update {update}")

    return callback


def test_crash_then_resume_logs_every_update_exactly_once_in_csv_and_tensorboard(tmp_path):
    # regression: rows were purged with global_step < purge_step, so the checkpointed update's row
    # (and its TensorBoard points) disappeared on every resume
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(
            tiny_config(num_updates=5, checkpoint_interval=2, tensorboard=True),
            run,
            callback=_crash_at(3),
            verbose=False,
        )
    assert progress_updates(run) == [1, 2, 3]
    train(tiny_config(num_updates=5, checkpoint_interval=2, tensorboard=True), run, resume=True, verbose=False)
    # a plain resume of the finished run changes nothing in the logs
    train(tiny_config(num_updates=5, checkpoint_interval=2, tensorboard=True), run, resume=True, verbose=False)
    assert progress_updates(run) == [1, 2, 3, 4, 5]
    events = EventAccumulator(str(run))
    events.Reload()
    steps = [event.step for event in events.Scalars("losses/loss")]
    assert steps == [16 * 7 * k for k in range(1, 6)], steps


def test_garbage_and_torn_lines_in_progress_csv_do_not_block_a_resume(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(num_updates=2), run, verbose=False)
    text = (run / "progress.csv").read_text()
    (run / "progress.csv").write_text(text + "this is not, a row\n\x00\x00garbage\n3,336,0.1")
    with pytest.warns(UserWarning, match="skipped 3 line"):
        result = train(tiny_config(num_updates=3), run, resume=True, verbose=False)
    assert result.status == "completed"
    assert progress_updates(run) == [1, 2, 3]


def test_a_fresh_run_drops_rows_left_by_an_attempt_without_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(num_updates=4, checkpoint_interval=10), run, callback=_crash_at(2), verbose=False)
    assert not (run / "checkpoint.pt").exists() and progress_updates(run) == [1, 2]
    train(tiny_config(num_updates=3), run, verbose=False)
    assert progress_updates(run) == [1, 2, 3]
