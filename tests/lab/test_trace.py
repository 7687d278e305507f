"""trace(): per-layer states at every step, the module's own outputs and final state (issue 6)."""

import copy

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from mamba_rl import MambaModule
from mamba_rl.lab import trace
from mamba_rl.lab.tracing import recorded_steps
from mamba_rl.module import MambaState
from mamba_rl.policies import make_actor_critic
from tests.conftest import assert_close


def make_module(device="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    return MambaModule(
        5, 8, num_layers=2, d_state=4, in_key="obs", out_key="feat", backend="torch", device=device, dtype=dtype
    )


def random_inputs(module, batch, steps, resets, seed=0):
    g = torch.Generator().manual_seed(seed)
    dtype = module.input_proj.weight.dtype
    x = torch.randn(batch, steps, 5, generator=g, dtype=torch.float64).to(dtype)
    reset = torch.zeros(batch, steps, dtype=torch.bool)
    for t in resets:
        reset[0, t] = True
    zero = module.zero_state((batch,))
    # the SSM state is float32 for float32 (and half) parameters, float64 for float64 ones
    ssm_dtype = torch.promote_types(dtype, torch.float32)
    state = MambaState(
        torch.randn(zero.ssm.shape, generator=g, dtype=torch.float64).to(ssm_dtype),
        torch.randn(zero.conv.shape, generator=g, dtype=torch.float64).to(dtype),
    )
    return x, reset, state


@pytest.mark.parametrize("steps,resets", [(1, [0]), (13, [0, 12]), (40, [5, 6, 39])], ids=["T1", "T13", "T40"])
@pytest.mark.parametrize("path", ["sequence", "step"])
def test_trace_last_state_and_outputs_equal_the_modules(steps, resets, path):
    module = make_module()
    x, reset, state = random_inputs(module, 3, steps, resets)
    out, final = module.sequence(x, state, reset)
    tr = trace(module, x, reset=reset, state=state, path=path)
    assert tr.ssm.shape == (steps + 1, 3, 2, module.d_inner, 4)
    assert tr.conv.shape == (steps + 1, 3, 2, module.d_inner, 3)
    assert tr.steps.tolist() == list(range(steps + 1))
    assert_close(tr.final_state.ssm, final.ssm)
    assert_close(tr.final_state.conv, final.conv)
    assert_close(tr.out.transpose(0, 1), out)
    assert_close(tr.ssm[0], state.ssm)
    assert_close(tr.conv[0], state.conv)


def test_float32_sequence_trace_reproduces_the_sequence_call():
    # equal to float rounding: a matmul over a chunk may round unlike one over the whole row
    module = make_module(dtype=torch.float32)
    x, reset, state = random_inputs(module, 4, 25, [0, 9])
    out, final = module.sequence(x, state, reset)
    tr = trace(module, x, reset=reset, state=state)
    assert_close(tr.out.transpose(0, 1), out)
    assert_close(tr.final_state.ssm, final.ssm)
    assert_close(tr.final_state.conv, final.conv)


def test_trace_state_at_every_step_is_the_state_after_that_prefix():
    module = make_module()
    x, reset, state = random_inputs(module, 2, 17, [0, 8])
    tr = trace(module, x, reset=reset, state=state)
    for t in (1, 7, 8, 9, 16):
        _, prefix_final = module.sequence(x[:, :t], state, reset[:, :t])
        assert_close(tr.state_at(t).ssm, prefix_final.ssm, msg=f"ssm after {t} steps")
        assert_close(tr.state_at(t).conv, prefix_final.conv, msg=f"conv after {t} steps")


def test_trace_layer_outputs_are_the_residual_stream_of_each_block():
    module = make_module()
    x, reset, state = random_inputs(module, 2, 6, [0])
    tr = trace(module, x, reset=reset, state=state)
    assert tr.layer_out.shape == (6, 2, 2, 8)
    # the last block's stream, normed, is the module's output
    assert_close(module.norm_f(tr.layer_out[:, :, -1]), tr.out)
    layer = tr.layer(1)
    assert layer.ssm.shape == (7, 2, module.d_inner, 4) and layer.out.shape == (6, 2, 8)
    norms = tr.norms()
    assert norms["ssm"].shape == (7, 2, 2)
    assert_close(norms["ssm"][3, 1, 0], tr.ssm[3, 1, 0].float().norm())


def test_trace_of_a_tensordict_reads_it_as_recurrent_mode_does():
    module = make_module()
    x, reset, state = random_inputs(module, 3, 11, [0, 4])
    ssm = torch.zeros(3, 11, *state.ssm.shape[1:], dtype=state.ssm.dtype)
    conv = torch.zeros(3, 11, *state.conv.shape[1:], dtype=state.conv.dtype)
    ssm[:, 0], conv[:, 0] = state.ssm, state.conv
    td = TensorDict(
        obs=x, is_init=reset[..., None], recurrent_state_ssm=ssm, recurrent_state_conv=conv, batch_size=[3, 11]
    )
    with set_recurrent_mode(True):
        expected = module(td.clone())["feat"]
    tr = trace(module, td)
    assert_close(tr.out.transpose(0, 1), expected)
    # a [T] TensorDict is one row
    one = trace(module, td[1])
    assert_close(one.out[:, 0], expected[1])


@pytest.mark.parametrize("stride,window", [(4, None), (5, (3, 12)), (1, (10, 10)), (100, None)], ids=str)
def test_stride_and_window_keep_those_states_and_always_the_final_one(stride, window):
    module = make_module()
    x, reset, state = random_inputs(module, 2, 23, [0, 11])
    full = trace(module, x, reset=reset, state=state)
    part = trace(module, x, reset=reset, state=state, stride=stride, window=window, max_chunk=6)
    expected = recorded_steps(23, stride, window)
    assert part.steps.tolist() == expected and expected[-1] == 23
    assert_close(part.ssm, full.ssm[expected])
    assert_close(part.conv, full.conv[expected])
    assert_close(part.out, full.out)


def test_trace_leaves_the_module_and_its_gradients_alone():
    module = make_module()
    module.backend = "torch"
    x, reset, state = random_inputs(module, 2, 9, [0])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    tr = trace(module, x, reset=reset, state=state, storage_device="cpu")
    assert not tr.ssm.requires_grad and not tr.out.requires_grad
    assert all(p.grad is None for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert module.backend == "torch"


def test_trace_accepts_a_trainer_actor_critic():
    policy = make_actor_critic("mamba", obs_dim=5, num_actions=4, d_model=8)
    tr = trace(policy, torch.randn(2, 6, 5))
    assert tr.ssm.shape[:3] == (7, 2, 1)


def test_trace_rejects_bad_arguments():
    module = make_module()
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="stride"):
        trace(module, x, stride=0)
    with pytest.raises(ValueError, match="path"):
        trace(module, x, path="scan")
    with pytest.raises(ValueError, match="reset"):
        trace(module, x, reset=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="window"):
        trace(module, x, window=(4, 2))
    with pytest.raises(KeyError, match="not kept"):
        trace(module, x, stride=2).state_at(3)


@pytest.mark.gpu
def test_trace_on_cuda_matches_cpu():
    cpu = make_module(dtype=torch.float32)
    # the same parameters (an init on the GPU would draw from the GPU's generator)
    cuda = copy.deepcopy(cpu).to("cuda")
    cuda.backend = "auto"
    x, reset, state = random_inputs(cpu, 3, 50, [0, 20])
    expected = trace(cpu, x, reset=reset, state=state, stride=5)
    got = trace(
        cuda, x.cuda(), reset=reset.cuda(), state=MambaState(*(s.cuda() for s in state)), stride=5, storage_device="cpu"
    )
    assert got.ssm.device.type == "cpu"
    torch.testing.assert_close(got.ssm, expected.ssm, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.out, expected.out, rtol=1e-4, atol=1e-4)
