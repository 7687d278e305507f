"""The state API: get/set/zero/clone/save/load/move, and bit-identical continuation in a new process."""

import subprocess
import sys
import textwrap

import pytest
import torch
from tensordict import TensorDict

from mamba_rl import MambaModule
from mamba_rl import state as st


def make_module():
    torch.manual_seed(0)
    return MambaModule(3, 8, num_layers=2, d_state=4, in_key="obs", out_key="feat", backend="torch")


def step_td(module, obs, is_init, state=None):
    td = TensorDict(obs=obs, is_init=is_init, batch_size=obs.shape[:-1])
    if state is not None:
        st.set_state(module, td, state)
    module(td)
    return td["feat"], st.get_state(module, td, next_=True)


def test_zero_get_set_and_masked_zero():
    module = make_module()
    zero = st.zero_state(module, [2, 3])
    assert zero["recurrent_state_ssm"].shape == (2, 3, 2, 16, 4)
    assert zero["recurrent_state_conv"].shape == (2, 3, 2, 16, 3)
    noisy = zero.apply(torch.randn_like)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    partly = st.zero_where(noisy, mask)
    assert (partly[mask] == 0).all()
    assert (partly[~mask] == noisy[~mask]).all()
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \[2, 3\], got torch.int64 \[2, 3\]"):
        st.zero_where(noisy, mask.long())
    assert st.layer_state(module, noisy, 1)["ssm"].shape == (2, 3, 16, 4)
    assert torch.equal(st.layer_state(module, noisy, 1)["ssm"], noisy["recurrent_state_ssm"][:, :, 1])
    with pytest.raises(ValueError, match="layer must be in 0..1, got 2"):
        st.layer_state(module, noisy, 2)


def test_tensor_round_trip_and_move():
    module = make_module()
    state = st.zero_state(module, [4]).apply(torch.randn_like)
    tensors = st.to_tensors(module, state)
    back = st.from_tensors(module, tensors)
    assert (back == state).all()
    moved = state.to(torch.float64)
    assert moved["recurrent_state_ssm"].dtype == torch.float64
    assert (moved.clone().to(torch.float32) == state).all()


def test_stepping_with_a_restored_state_continues_identically(tmp_path):
    module = make_module()
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(6, 4, 3, generator=g)
    is_init = torch.zeros(6, 4, 1, dtype=torch.bool)
    is_init[0] = True
    state = None
    for t in range(3):
        _, state = step_td(module, obs[t], is_init[t], state)
    st.save_state(state, tmp_path / "state.pt")
    expected, carried = [], state.clone()
    for t in range(3, 6):
        out, carried = step_td(module, obs[t], is_init[t], carried)
        expected.append(out)
    loaded = st.load_state(tmp_path / "state.pt")
    carried = loaded
    for t, want in zip(range(3, 6), expected):
        got, carried = step_td(module, obs[t], is_init[t], carried)
        assert torch.equal(got, want)


def test_load_state_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no state file at"):
        st.load_state(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is not a state file"):
        st.load_state(tmp_path / "bad.pt")


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    st.atomic_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        st.atomic_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from tensordict import TensorDict
    from mamba_rl import MambaModule, state as st
    mode, folder = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(8, 5, 3, generator=g)
    is_init = torch.zeros(8, 5, 1, dtype=torch.bool); is_init[0] = True; is_init[5, 2] = True

    def step(module, t, state):
        td = TensorDict(obs=obs[t], is_init=is_init[t], batch_size=[5])
        if state is not None:
            st.set_state(module, td, state)
        module(td)
        return td["feat"], st.get_state(module, td, next_=True)

    if mode == "first":
        torch.manual_seed(0)
        module = MambaModule(3, 8, num_layers=2, d_state=4, in_key="obs", out_key="feat", backend="torch")
        state = None
        for t in range(4):
            _, state = step(module, t, state)
        st.atomic_save(module.state_dict(), folder + "/module.pt")
        st.save_state(state, folder + "/state.pt")
        outs = []
        for t in range(4, 8):
            out, state = step(module, t, state)
            outs.append(out)
        torch.save(torch.stack(outs), folder + "/expected.pt")
    else:
        torch.manual_seed(123)
        module = MambaModule(3, 8, num_layers=2, d_state=4, in_key="obs", out_key="feat", backend="torch")
        module.load_state_dict(torch.load(folder + "/module.pt"))
        state = st.load_state(folder + "/state.pt")
        outs = []
        for t in range(4, 8):
            out, state = step(module, t, state)
            outs.append(out)
        expected = torch.load(folder + "/expected.pt")
        assert torch.equal(torch.stack(outs), expected), (torch.stack(outs) - expected).abs().max()
        print("identical")
    """
)


def test_saved_module_and_state_continue_bit_identically_in_a_fresh_process(tmp_path):
    script = tmp_path / "roundtrip.py"
    script.write_text(SCRIPT)
    for mode in ("first", "second"):
        result = subprocess.run(
            [sys.executable, str(script), mode, str(tmp_path)], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
    assert "identical" in result.stdout
