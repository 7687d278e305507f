"""Step a MambaModule policy in the delayed-memory env with a TorchRL Collector, then replay the
collected batch in recurrent mode and check that it reproduces the rollout.

    python examples/demo_rollout.py [--num-envs 8] [--horizon 20] [--steps 64]
"""

import argparse
import time

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.modules import ProbabilisticActor, set_recurrent_mode

from mamba_rl import MambaModule
from mamba_rl.envs import DelayedMemoryEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--steps", type=int, default=64, help="steps per env per collected batch")
    args = parser.parse_args()
    torch.manual_seed(0)

    env = DelayedMemoryEnv(num_envs=args.num_envs, num_bits=4, horizon=(args.horizon // 2, args.horizon), seed=0)
    trunk = MambaModule(env.obs_dim, 32, num_layers=2, in_key="observation", out_key="features")
    head = TensorDictModule(nn.Linear(32, env.num_actions), in_keys=["features"], out_keys=["logits"])
    policy = ProbabilisticActor(
        TensorDictSequential(trunk, head),
        in_keys=["logits"],
        out_keys=["action"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    collector = Collector(
        env,
        policy,
        frames_per_batch=args.num_envs * args.steps,
        total_frames=2 * args.num_envs * args.steps,
        auto_register_policy_transforms=True,
    )
    start = time.perf_counter()
    for i, batch in enumerate(collector):
        with torch.no_grad(), set_recurrent_mode(True):
            replayed = trunk(batch.exclude("features").clone())["features"]
        diff = (replayed - batch["features"]).abs().max().item()
        episodes = int(batch["next", "done"].sum())
        successes = int(batch["next", "success"].sum())
        print(
            f"batch {i}: shape {list(batch.batch_size)}, resets inside rows {int(batch['is_init'][:, 1:].sum())}, "
            f"episodes ended {episodes} (random policy correct {successes}), "
            f"recurrent replay max |diff| {diff:.2e}"
        )
        assert diff <= 1e-5, "recurrent replay must reproduce the rollout"
    collector.shutdown()
    print(
        f"state per env: ssm {list(trunk.state_shapes['recurrent_state_ssm'])}, "
        f"conv {list(trunk.state_shapes['recurrent_state_conv'])}; {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
