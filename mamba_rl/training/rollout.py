"""Rollout collection: any :class:`~mamba_rl.envs.adapters.BatchedEnv` stepped with the policy's tensor API.

Two collectors, one :class:`Rollout`. :class:`RolloutCollector` steps the env and the policy one
step at a time (any env). :class:`SequenceRolloutCollector` is for envs whose observations do not
depend on the actions (``action_independent_observations``; the memory task): it plays a block of
steps at once, the env's observations and flags first, then one pass of the policy's sequence
path over the block, then the env's scoring of the sampled actions; the same rollouts, carry and
checkpoints, without a policy step per env step. The trainer uses it wherever the env allows.
The rest of this docstring is about the step loop.

Why not ``torchrl.collectors.Collector``: per step it builds and copies TensorDicts, runs the
env's spec checks and ``step_mdp``, and keeps every recurrent state of every step; here a step is
the policy's ``step`` on plain tensors, the env's ``step`` (same-step autoreset) and a handful of
``index_copy_`` into preallocated buffers. For a device-resident env (``env.device_resident``,
the memory task is one) on CUDA that whole step (policy, sampling, env, storage) is captured
once in a CUDA graph and replayed, one launch per step. ``benchmarks/bench_train_collect.py``
measures both ways (numbers in docs/TRAINING.md). Host envs (Gymnasium vector envs, TorchRL
envs) run the same step eagerly.

For a device-resident env, everything after the policy and the sampling can be
``torch.compile``'d (``compile_env``; the trainer does so on CUDA): the memory task's env step's
~95 small tensor ops and the ~45 that store the step and move the carry on become a few fused
kernels, bit for bit the same (``benchmarks/bench_env.py`` checks the env step alone and times
it: at 4,096 envs on an H100 its benchmark step, the env step with hashed actions, takes ~166 us
inside a CUDA graph, compiled ~6 us). It compiles when the collector is made, and is checked there
against the eager version.

What is stored per step: observation, action, log-prob, value, reward, done, is_init, decision,
success, and the return and length of episodes that end; for envs that can truncate also
``terminated`` and the value of the final observation of truncated episodes (the GAE bootstraps
from it). The recurrent state is stored only at the start of each chunk: at H = 20,000 the
per-step SSM states of a rollout would be tens of GB.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import torch

from mamba_rl.cuda_graph import capture_cuda_graph
from mamba_rl.envs import DelayedMemoryParams
from mamba_rl.envs.adapters import BatchedEnv, DelayedMemoryTask
from mamba_rl.policies.heads import sample_actions

__all__ = [
    "Rollout",
    "RolloutCollector",
    "SequenceRolloutCollector",
    "capture_cuda_graph",
    "restore_generator",
    "sample_actions",
]

# how the env step is compiled (compile_env=True); tests swap in backend="eager" (no C++ build)
COMPILE_OPTIONS = {"fullgraph": True, "dynamic": False}


def restore_generator(generator: torch.Generator, saved: torch.Tensor) -> None:
    """Set ``generator`` to the ``saved`` state of a collector's sampling generator.

    A run may resume on another device type (``device`` is a resume-mutable key), and a generator's
    state is its device's: a CUDA generator's is its seed and offset (16 bytes), a CPU one's the
    Mersenne Twister's (5,056 bytes), and neither loads into the other. Then ``generator`` is
    seeded from a digest of ``saved``: the sampling goes on deterministically, from another stream
    than the saved device's would have drawn.
    """
    # torch.load(map_location="cuda") moves the RNG state too; generators take a CPU ByteTensor
    saved = saved.cpu()
    if saved.numel() == generator.get_state().numel():
        generator.set_state(saved)
        return
    digest = hashlib.sha256(saved.numpy().tobytes()).digest()
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass
class Rollout:
    """One update's data, env-major: every per-step tensor is ``[N, S]`` with ``S = K * T``.

    Attributes:
        obs: ``[N, S, obs_dim]`` float32, the observation the action was taken on.
        action: ``[N, S, *action_shape]`` (int64 categories, float32 for a box).
        log_prob: ``[N, S]`` log-probability of ``action`` under the collecting policy.
        value: ``[N, S]`` value estimate at collection.
        reward: ``[N, S]`` reward of the step.
        done: ``[N, S]`` bool, the step ended its episode (terminated or truncated).
        is_init: ``[N, S]`` bool, the step is the first of an episode (the state entering it is zero).
        decision: ``[N, S]`` bool, the step's action is scored (the env's ``"decision"``).
        success: ``[N, S]`` bool, the step was scored and right.
        episode_return: ``[N, S]`` the return of the episode that ended at the step (0 elsewhere).
        episode_length: ``[N, S]`` int64, the length of the episode that ended at the step (0 elsewhere).
        chunk_states: recurrent state entering each chunk, ``{name: [K, N, ...]}`` (detached).
        bootstrap_value: ``[N]`` value of the observation after the last step.
        chunk_len: ``T``.
        terminated: ``[N, S]`` bool, the episode ended in a terminal state (``done`` for envs
            that never truncate).
        final_value: ``[N, S]`` value of the final observation where the episode was truncated
            (0 elsewhere); None for envs that never truncate.
    """

    obs: torch.Tensor
    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    is_init: torch.Tensor
    decision: torch.Tensor
    success: torch.Tensor
    episode_return: torch.Tensor
    episode_length: torch.Tensor
    chunk_states: dict[str, torch.Tensor]
    bootstrap_value: torch.Tensor
    chunk_len: int
    terminated: torch.Tensor | None = None
    final_value: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.terminated is None:
            self.terminated = self.done

    @property
    def num_chunks(self) -> int:
        return self.obs.shape[1] // self.chunk_len


class RolloutCollector:
    """Runs ``env`` (``num_envs`` copies) with ``policy``, ``num_chunks`` chunks of ``chunk_len`` steps per call.

    The env state, the current observation and the recurrent state carry over from one
    :meth:`collect` to the next, so episodes run on across chunks and updates.

    Args:
        policy: an :class:`~mamba_rl.policies.ActorCritic` whose ``action_dist`` fits the env's actions.
        env: a :class:`~mamba_rl.envs.adapters.BatchedEnv` (or :class:`~mamba_rl.envs.DelayedMemoryParams`,
            the memory task with those parameters).
        num_envs: ``N`` (the env's ``num_envs``).
        chunk_len: ``T``.
        num_chunks: ``K``.
        seed: seeds the environments and the action-sampling generator.
        device: where everything runs.
        cuda_graph: capture the step in a CUDA graph (CUDA and device-resident envs only; falls
            back to eager with a warning when capture fails).
        compile_env: ``torch.compile`` the env step and the storage after it (device-resident
            envs; see the module docstring). It is compiled here and checked against the eager
            version on copies of the carry; a failure or a difference falls back to the eager
            version with a warning.
    """

    def __init__(
        self,
        policy,
        env: BatchedEnv | DelayedMemoryParams,
        num_envs: int,
        chunk_len: int,
        num_chunks: int,
        seed: int,
        device: torch.device,
        cuda_graph: bool = True,
        compile_env: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if isinstance(env, DelayedMemoryParams):
            env = DelayedMemoryTask(env, num_envs, self.device)
        if env.num_envs != num_envs:
            raise ValueError(f"num_envs must match the env's num_envs={env.num_envs}, got {num_envs}")
        self.policy = policy
        self.env = env
        self.action_dist = policy.action_dist
        self.num_envs = num_envs
        self.chunk_len = chunk_len
        self.num_chunks = num_chunks
        self.seed = seed
        steps = chunk_len * num_chunks
        env_state, obs, decision = env.reset(seed)
        self._env_state_names = list(env_state)
        n = num_envs
        # what carries from step to step; updated in place so that a CUDA graph can replay the step
        self.carry: dict[str, torch.Tensor] = {
            "obs": obs.clone(),
            "decision": decision.clone(),
            "is_init": torch.ones(n, dtype=torch.bool, device=self.device),
            "episode_return": torch.zeros(n, device=self.device),
            "episode_length": torch.zeros(n, dtype=torch.int64, device=self.device),
            **{f"env.{name}": value for name, value in env_state.items()},
            **{f"policy.{name}": value for name, value in policy.zero_state(n, self.device).items()},
        }
        if env.can_truncate:
            self.carry["final_obs"] = obs.clone()
            self.carry["truncated"] = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(seed)
        head = self.action_dist
        self.buffers = {
            "obs": torch.zeros(n, steps, env.obs_dim, device=self.device),
            "action": torch.zeros(n, steps, *head.action_shape, dtype=head.action_dtype, device=self.device),
            "log_prob": torch.zeros(n, steps, device=self.device),
            "value": torch.zeros(n, steps, device=self.device),
            "reward": torch.zeros(n, steps, device=self.device),
            "done": torch.zeros(n, steps, dtype=torch.bool, device=self.device),
            "is_init": torch.zeros(n, steps, dtype=torch.bool, device=self.device),
            "decision": torch.zeros(n, steps, dtype=torch.bool, device=self.device),
            "success": torch.zeros(n, steps, dtype=torch.bool, device=self.device),
            "episode_return": torch.zeros(n, steps, device=self.device),
            "episode_length": torch.zeros(n, steps, dtype=torch.int64, device=self.device),
        }
        if env.can_truncate:
            self.buffers["terminated"] = torch.zeros(n, steps, dtype=torch.bool, device=self.device)
            self.buffers["final_value"] = torch.zeros(n, steps, device=self.device)
        # the carry split once (the same tensors): the policy's state, and what the step after
        # the policy reads and writes
        self._policy_carry = {name[len("policy.") :]: v for name, v in self.carry.items() if name.startswith("policy.")}
        self._env_carry = {name: value for name, value in self.carry.items() if not name.startswith("policy.")}
        self.chunk_states = {
            name: torch.zeros(num_chunks, *value.shape, dtype=value.dtype, device=self.device)
            for name, value in self._policy_carry.items()
        }
        # sampling noise for a whole rollout, drawn before it
        self.noise = torch.zeros(n, steps, *head.noise_shape, device=self.device)
        # step index inside the rollout, a tensor so that the captured step reads it
        self.t = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._no_reset = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.use_cuda_graph = bool(cuda_graph) and self.device.type == "cuda" and env.device_resident
        self._graph = None
        compile_env = compile_env and env.device_resident
        self._env_and_store = self._compiled_env_and_store() if compile_env else self._eager_env_and_store
        # whether the env step (and the storage after it) runs compiled
        self.env_compiled = self._env_and_store != self._eager_env_and_store

    # --- state -------------------------------------------------------------------------------

    @property
    def policy_state(self) -> dict[str, torch.Tensor]:
        """The policy's recurrent state: views of ``carry``'s ``"policy.*"`` entries (unprefixed)."""
        return self._policy_carry

    def state_dict(self) -> dict:
        return {"carry": {k: v.clone() for k, v in self.carry.items()}, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the carry and the sampling generator. A host env's own state cannot be saved:
        its envs start new episodes (seeded from the restored generator), and the policy state
        restarts with them."""
        carry = dict(state["carry"])
        # a carry saved without episode lengths (they only feed the logged statistics)
        carry.setdefault("episode_length", torch.zeros_like(self.carry["episode_length"]))
        # a memory task's carry saved without active bits drew every bit (the env's own default)
        if "env.active_bits" in self.carry:
            carry.setdefault("env.active_bits", self.carry["env.active_bits"].clone())
        missing = set(self.carry) ^ set(carry)
        if missing:
            raise ValueError(f"collector state does not match this policy/env: keys differ in {sorted(missing)}")
        for name, value in carry.items():
            if value.shape != self.carry[name].shape:
                raise ValueError(
                    f"collector state {name!r} must have shape {list(self.carry[name].shape)}, "
                    f"got {list(value.shape)} (different num_envs or model size?)"
                )
            self.carry[name].copy_(value)
        restore_generator(self.generator, state["generator"])
        if not self.env.device_resident:
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator, device=self.device))
            _, obs, decision = self.env.reset(seed)
            self.carry["obs"].copy_(obs)
            self.carry["decision"].copy_(decision)
            self.carry["is_init"].fill_(True)
            self.carry["episode_return"].zero_()
            self.carry["episode_length"].zero_()

    # --- one step ----------------------------------------------------------------------------

    def _eager_env_and_store(
        self,
        carry: dict,
        buffers: dict,
        t: torch.Tensor,
        action: torch.Tensor,
        log_prob: torch.Tensor,
        value: torch.Tensor,
    ) -> None:
        """The step after the policy: the env step (same-step autoreset), the step's data stored
        into ``buffers`` at ``t``, and ``carry``'s observation, flags, return and env state moved
        on; ``t`` advances. Only tensors in place: compiled, it is a few fused kernels."""
        env_state, step = self.env.step({name: carry[f"env.{name}"] for name in self._env_state_names}, action)
        done = step.terminated | step.truncated if self.env.can_truncate else step.terminated
        episode_return = carry["episode_return"] + step.reward
        episode_length = carry["episode_length"] + 1
        stored = {
            "obs": carry["obs"],
            "action": action,
            "log_prob": log_prob,
            "value": value,
            "reward": step.reward,
            "done": done,
            "is_init": carry["is_init"],
            "decision": carry["decision"],
            "success": step.success,
            "episode_return": torch.where(done, episode_return, 0.0),
            "episode_length": torch.where(done, episode_length, 0),
        }
        if self.env.can_truncate:
            stored["terminated"] = step.terminated
            carry["final_obs"].copy_(step.final_obs)
            carry["truncated"].copy_(step.truncated)
        for name, tensor in stored.items():
            buffers[name].index_copy_(1, t, tensor.unsqueeze(1))
        carry["obs"].copy_(step.obs)
        carry["decision"].copy_(step.decision)
        # same-step autoreset: the next step is the first of a new episode where this one ended
        carry["is_init"].copy_(done)
        carry["episode_return"].copy_(torch.where(done, 0.0, episode_return))
        carry["episode_length"].copy_(torch.where(done, 0, episode_length))
        for name, tensor in env_state.items():
            carry[f"env.{name}"].copy_(tensor)
        t.add_(1)

    def _compiled_env_and_store(self):
        """:meth:`_eager_env_and_store` compiled, and checked now against the eager one on the
        buffers (scratch until the first rollout) and copies of the carry (with the env state the
        env's ``check_state`` gives, if it has one: episodes that end and restart); the eager one
        if that fails."""
        compiled = torch.compile(self._eager_env_and_store, **COMPILE_OPTIONS)
        # copies of what the step will be given (the same keys, so that it does not compile again)
        carry = dict(self._env_carry)
        if hasattr(self.env, "check_state"):
            env_state = self.env.check_state({name: carry[f"env.{name}"] for name in self._env_state_names})
            carry.update({f"env.{name}": value for name, value in env_state.items()})
        try:
            with torch.no_grad():
                action = self._check_action()
                log_prob, value = (
                    torch.linspace(-3, 0, self.num_envs, device=self.device),
                    -torch.arange(self.num_envs, device=self.device).float(),
                )
                expected = (
                    {k: v.clone() for k, v in carry.items()},
                    {k: v.clone() for k, v in self.buffers.items()},
                    self.t.clone(),
                )
                got = ({k: v.clone() for k, v in carry.items()}, self.buffers, self.t)
                self._eager_env_and_store(*expected, action, log_prob, value)
                compiled(*got, action, log_prob, value)
                same = (
                    all(torch.equal(got[0][k], expected[0][k]) for k in carry)
                    and all(torch.equal(got[1][k], expected[1][k]) for k in self.buffers)
                    and torch.equal(got[2], expected[2])
                )
            if not same:
                raise RuntimeError("its results differ from the eager step's")
        except Exception as err:  # a compiler missing or failing must not stop training: eager is correct
            warnings.warn(f"torch.compile of the env step failed ({err!r}); running it eagerly")
            return self._eager_env_and_store
        finally:
            self.t.zero_()
            for buffer in self.buffers.values():
                buffer.zero_()
        return compiled

    def _check_action(self) -> torch.Tensor:
        """A spread of actions to check the compiled step with: category ``i % n`` for env ``i``,
        or evenly spaced box actions."""
        head, n = self.action_dist, self.num_envs
        index = torch.arange(n, device=self.device)
        if head.action_dtype == torch.int64:
            nvec = getattr(head, "nvec", [head.num_outputs])
            action = torch.stack([index % k for k in nvec], -1)
            return action.reshape(n, *head.action_shape)
        return torch.linspace(-1, 1, n, device=self.device)[:, None].expand(n, *head.action_shape).contiguous()

    def _step(self) -> None:
        """One step of every environment: reads and writes ``carry``, stores into ``buffers`` at ``t``."""
        carry = self.carry
        # the recurrent state steps in place, in carry (fused kernels on the Triton backend)
        params, value, _ = self.policy.step(
            carry["obs"], self.policy_state, carry["is_init"], out_state=self.policy_state
        )
        action, log_prob = self.action_dist.sample(params, self.noise.index_select(1, self.t).squeeze(1))
        self._env_and_store(self._env_carry, self.buffers, self.t, action, log_prob, value.float())
        if self.env.can_truncate:
            self._store_final_value()

    def _store_final_value(self) -> None:
        """The value of each truncated episode's final observation, from the state after its last
        step (the state the episode would have gone on with), stored at the step just taken."""
        truncated = self.carry["truncated"]
        # a host env already synchronised; skip the extra policy step when nothing was truncated
        if not self.env.device_resident and not bool(truncated.any()):
            return
        _, final_value, _ = self.policy.step(self.carry["final_obs"], self.policy_state, self._no_reset)
        self.buffers["final_value"].index_copy_(
            1, self.t - 1, torch.where(truncated, final_value.float(), 0.0)[:, None]
        )

    def _run_step(self) -> None:
        if self.use_cuda_graph and self._graph is None:
            try:
                self._graph = capture_cuda_graph(self._step, [*self.carry.values(), self.t])
            except Exception as err:  # a capture failure must not stop training: eager is correct
                warnings.warn(f"CUDA graph capture of the rollout step failed ({err!r}); running eagerly")
                self.use_cuda_graph = False
                self._graph = None
        if self._graph is not None:
            self._graph.replay()
        else:
            self._step()

    # --- a rollout ---------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Run ``K * T`` steps; returns the stored rollout (buffers reused by the next call: copy to keep)."""
        self.action_dist.draw_noise(self.noise, self.generator)
        self.t.zero_()
        if "final_value" in self.buffers:
            self.buffers["final_value"].zero_()
        for chunk in range(self.num_chunks):
            for name, value in self.policy_state.items():
                self.chunk_states[name][chunk].copy_(value)
            for _ in range(self.chunk_len):
                self._run_step()
        _, bootstrap_value, _ = self.policy.step(self.carry["obs"], self.policy_state, self.carry["is_init"])
        return Rollout(
            **self.buffers,
            chunk_states=self.chunk_states,
            bootstrap_value=bootstrap_value.float(),
            chunk_len=self.chunk_len,
        )

    def close(self) -> None:
        self.env.close()


# (env, step) pairs in one block of the sequence collector: the trunk's activations (~1.5 K floats a
# pair for a d_model 64 Mamba layer) stay near 6 GB on a GPU; on the CPU a block is what the caches hold
BLOCK_PAIRS = {"cuda": 1 << 20, "cpu": 1 << 15}
# a head with more outputs than this gets proportionally fewer pairs per block: its outputs, their
# softmax and CDF are [N, block, A] each
BLOCK_HEAD_OUTPUTS = 256


def default_block_steps(num_envs: int, num_outputs: int, device) -> int:
    """Steps per block of :class:`SequenceRolloutCollector` for ``num_envs`` envs and a head of
    ``num_outputs`` outputs on ``device``: :data:`BLOCK_PAIRS` pairs (fewer for a head wider than
    :data:`BLOCK_HEAD_OUTPUTS`), at least one step."""
    pairs = BLOCK_PAIRS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    pairs = pairs * BLOCK_HEAD_OUTPUTS // max(BLOCK_HEAD_OUTPUTS, num_outputs)
    return max(1, pairs // num_envs)


class SequenceRolloutCollector(RolloutCollector):
    """:class:`RolloutCollector`'s rollouts, played by blocks of steps through the policy's sequence path.

    For an env with ``action_independent_observations`` (the memory task): its observations,
    flags and state never depend on the actions, only its rewards do. So a block of ``L`` steps
    of every env is played as (1) the env's ``plan``: the observations, ``decision`` and
    ``terminated`` of the ``L`` steps and the env state after them, before any action; (2) one
    pass of :meth:`~mamba_rl.policies.ActorCritic.sequence` over ``[N, L]`` from the state the
    block enters, resets inside (``is_init``: the step after each episode end), giving every
    step's action distribution and value and the state after the block; the actions sampled from
    the same pre-drawn noise as the step loop's, their log-probs; (3) the env's ``score``: the
    rewards and successes of the sampled actions (the rule its ``step`` applies). A step loop
    runs ``N``-wide ops ``L`` times one after the other; here each op runs once, ``[N, L]``-wide
    (the parallel scan for Mamba, the reset-aware fused recurrence for the GRU on CUDA).

    What it returns and carries is :class:`RolloutCollector`'s: the same :class:`Rollout` (every
    field, shape and dtype), the same ``carry`` (so :meth:`state_dict` checkpoints load into either
    collector), the same sampling noise. The env fields (observations, flags, rewards,
    successes, episode returns and lengths) are bit for bit the step loop's for the same actions;
    the policy's outputs are its sequence path's, equal to its step path's up to float rounding
    (the sum runs in another order), so an action whose noise falls within that rounding of a
    boundary between two actions can differ. Episode returns sum each episode's rewards in
    another order than the step loop: bit for bit the same where an episode has one non-zero
    reward (the memory task's query step).

    Memory: one block (``[N, L]`` observations, trunk activations and head outputs; no gradient
    is kept) besides the rollout's own buffers. ``block_steps`` defaults to
    :func:`default_block_steps`: on CUDA ~2 K steps of 512 envs, a few GB for a d_model 64 Mamba
    layer and 16 outputs. Blocks never cross chunks, so that the state entering each chunk is
    stored as the step loop stores it.

    Args:
        policy, env, num_envs, chunk_len, num_chunks, seed, device: as :class:`RolloutCollector`'s;
            ``env`` must have ``action_independent_observations`` and never truncate.
        block_steps: steps per block (default :func:`default_block_steps`).
    """

    def __init__(
        self,
        policy,
        env: BatchedEnv | DelayedMemoryParams,
        num_envs: int,
        chunk_len: int,
        num_chunks: int,
        seed: int,
        device: torch.device,
        block_steps: int | None = None,
    ) -> None:
        super().__init__(
            policy, env, num_envs, chunk_len, num_chunks, seed, device, cuda_graph=False, compile_env=False
        )
        if not getattr(self.env, "action_independent_observations", False):
            raise ValueError(
                f"env must declare action_independent_observations = True (and implement plan and score) for "
                f"the sequence collector, got {type(self.env).__name__}; use RolloutCollector"
            )
        if self.env.can_truncate:
            raise ValueError(f"env must never truncate for the sequence collector, got {type(self.env).__name__}")
        if block_steps is None:
            block_steps = default_block_steps(num_envs, self.action_dist.num_outputs, self.device)
        if block_steps < 1:
            raise ValueError(f"block_steps must be >= 1, got {block_steps}")
        self.block_steps = min(int(block_steps), chunk_len)

    def _play_block(self, first: int, steps: int) -> None:
        """Steps ``first .. first + steps - 1`` of the rollout: plan, policy pass, sampling,
        scoring; stores them into ``buffers`` and moves ``carry`` on."""
        carry, buffers = self.carry, self.buffers
        plan = self.env.plan({name: carry[f"env.{name}"] for name in self._env_state_names}, steps)
        # [N, L]: the step ends its episode; the next one starts from the zero state
        done = plan.terminated
        is_init = torch.cat([carry["is_init"][:, None], done[:, :-1]], 1)
        obs = plan.obs[:, :steps]
        params, value, state = self.policy.sequence(obs, self.policy_state, is_init)
        action, log_prob = self.action_dist.sample(params, self.noise[:, first : first + steps])
        reward, success = self.env.score(plan, action)
        # [N, L]: each step's episode in the block, 0 the one under way when it starts
        episode = done.cumsum(1) - done.long()
        # [N, L + 1]: the episodes' returns, the one under way from its return so far
        returns = torch.zeros(self.num_envs, steps + 1, device=self.device)
        returns[:, 0] = carry["episode_return"]
        returns = returns.scatter_add_(1, episode, reward).gather(1, episode)
        position = torch.arange(steps, device=self.device)
        # [N, L]: the block step each episode starts at (0 for the one under way)
        start = torch.where(is_init, position, 0).cummax(1).values
        length = position - start + 1 + torch.where(episode == 0, carry["episode_length"][:, None], 0)
        stored = {
            "obs": obs,
            "action": action,
            "log_prob": log_prob,
            "value": value.float(),
            "reward": reward,
            "done": done,
            "is_init": is_init,
            "decision": plan.decision[:, :steps],
            "success": success,
            "episode_return": torch.where(done, returns, 0.0),
            "episode_length": torch.where(done, length, 0),
        }
        for name, tensor in stored.items():
            buffers[name][:, first : first + steps].copy_(tensor)
        last_done = done[:, -1]
        carry["obs"].copy_(plan.obs[:, steps])
        carry["decision"].copy_(plan.decision[:, steps])
        carry["is_init"].copy_(last_done)
        carry["episode_return"].copy_(torch.where(last_done, 0.0, returns[:, -1]))
        carry["episode_length"].copy_(torch.where(last_done, 0, length[:, -1]))
        for name, tensor in plan.state.items():
            carry[f"env.{name}"].copy_(tensor)
        for name, tensor in state.items():
            self.policy_state[name].copy_(tensor)

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Play ``K * T`` steps by blocks; returns the stored rollout (buffers reused by the next call)."""
        self.action_dist.draw_noise(self.noise, self.generator)
        for chunk in range(self.num_chunks):
            for name, value in self.policy_state.items():
                self.chunk_states[name][chunk].copy_(value)
            for first in range(0, self.chunk_len, self.block_steps):
                self._play_block(chunk * self.chunk_len + first, min(self.block_steps, self.chunk_len - first))
        _, bootstrap_value, _ = self.policy.step(self.carry["obs"], self.policy_state, self.carry["is_init"])
        return Rollout(
            **self.buffers,
            chunk_states=self.chunk_states,
            bootstrap_value=bootstrap_value.float(),
            chunk_len=self.chunk_len,
        )
