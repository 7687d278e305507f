"""Bad input to the module and its state helpers: one clear error naming the argument, what was
expected and what came (instead of tensordict assertions, torch's mat1/mat2 error or Triton's
"0 active drivers")."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from mamba_rl import MambaModule
from mamba_rl import state as st


@pytest.fixture
def module():
    return MambaModule(3, 8, in_key="obs", out_key="feat")


def _rows(batch, steps, dtype=torch.float32):
    return TensorDict(
        {"obs": torch.zeros(batch, steps, 3, dtype=dtype), "is_init": torch.zeros(batch, steps, 1, dtype=torch.bool)},
        batch_size=[batch, steps],
    )


@pytest.mark.parametrize("batch, steps", [(2, 0), (0, 4)], ids=["T0", "B0"])
def test_empty_recurrent_tensordict_names_the_batch_size(module, batch, steps):
    with (
        set_recurrent_mode(True),
        pytest.raises(
            ValueError,
            match=rf"at least one row and one step, got "
            rf"batch_size=\[{batch}, {steps}\]",
        ),
    ):
        module(_rows(batch, steps))


def test_float64_observation_into_float32_module_names_key_and_dtypes(module):
    with (
        set_recurrent_mode(True),
        pytest.raises(TypeError, match="'obs' must have the module's dtype torch.float32, got torch.float64"),
    ):
        module(_rows(2, 4, torch.float64))
    step = TensorDict(
        {"obs": torch.zeros(2, 3, dtype=torch.float64), "is_init": torch.ones(2, 1, dtype=torch.bool)}, batch_size=[2]
    )
    with pytest.raises(TypeError, match="'obs' must have the module's dtype"):
        module(step)


def test_from_tensors_with_a_wrong_batch_size_names_the_shapes(module):
    state = st.to_tensors(module, st.zero_state(module, (4,)))
    with pytest.raises(ValueError, match=r"state.ssm must have shape \[B=5 .*got \[4, "):
        st.from_tensors(module, state, batch_size=[5])


def test_set_state_with_a_key_missing_names_it(module):
    state = st.zero_state(module, (4,))
    td = TensorDict({"obs": torch.zeros(4, 3)}, batch_size=[4])
    with pytest.raises(KeyError, match="missing \\['recurrent_state_conv'\\]"):
        st.set_state(module, td, state.exclude("recurrent_state_conv"))
    assert "recurrent_state_ssm" not in td.keys()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_triton_backend_on_cpu_tensors_says_what_to_use(monkeypatch):
    # the kernel tests turn the interpreter on for the whole process
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    module = MambaModule(3, 8, in_key="obs", out_key="feat", backend="triton")
    step = TensorDict({"obs": torch.zeros(2, 3), "is_init": torch.ones(2, 1, dtype=torch.bool)}, batch_size=[2])
    with pytest.raises(
        RuntimeError, match="backend='triton' needs CUDA tensors, got tensors on cpu; use backend='auto'"
    ):
        module(step)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"dt_max": float("inf")}, "dt_max must be a finite float >= dt_min"),
        ({"dt_scale": 0.0}, "dt_scale must be a finite float > 0, got 0.0"),
        ({"dt_scale": float("nan")}, "dt_scale must be a finite float > 0, got nan"),
    ],
    ids=["dt_max-inf", "dt_scale-0", "dt_scale-nan"],
)
def test_step_size_init_that_would_be_non_finite_is_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MambaModule(3, 8, in_key="obs", out_key="feat", **kwargs)


def test_tiny_dt_min_still_gives_finite_parameters():
    module = MambaModule(3, 8, in_key="obs", out_key="feat", dt_min=1e-6, dt_init_floor=1e-6)
    assert all(torch.isfinite(p).all() for p in module.parameters())
