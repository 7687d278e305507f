"""A tiny batched TorchRL env with random episode ends, for module and collector tests."""

import torch
from tensordict import TensorDict
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


class RandomEndEnv(EnvBase):
    """``batch`` envs; observation ``[batch, obs_dim]`` random; each step ends w.p. ``p_end``."""

    def __init__(self, batch=4, obs_dim=5, num_actions=3, p_end=0.15, seed=0, device="cpu"):
        super().__init__(batch_size=torch.Size([batch]), device=device)
        self.obs_dim, self.p_end = obs_dim, p_end
        self.observation_spec = Composite(observation=Unbounded((batch, obs_dim)), shape=(batch,))
        self.action_spec = Categorical(num_actions, shape=(batch,))
        self.reward_spec = Unbounded((batch, 1))
        self.done_spec = Composite(
            done=Categorical(2, (batch, 1), dtype=torch.bool),
            terminated=Categorical(2, (batch, 1), dtype=torch.bool),
            shape=(batch,),
        )
        self._set_seed(seed)

    def _set_seed(self, seed):
        self.rng = torch.Generator().manual_seed(0 if seed is None else seed)

    def _obs(self):
        return torch.randn(*self.batch_size, self.obs_dim, generator=self.rng).to(self.device)

    def _reset(self, tensordict=None):
        done = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            observation=self._obs(), done=done, terminated=done.clone(), batch_size=self.batch_size, device=self.device
        )

    def _step(self, tensordict):
        done = (torch.rand(*self.batch_size, 1, generator=self.rng) < self.p_end).to(self.device)
        reward = tensordict["action"].float().unsqueeze(-1)
        return TensorDict(
            observation=self._obs(),
            reward=reward,
            done=done,
            terminated=done.clone(),
            batch_size=self.batch_size,
            device=self.device,
        )
