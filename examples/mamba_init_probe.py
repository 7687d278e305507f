"""Two numbers per MambaModule preset, at init, that a policy gradient needs to find a first-step cue.

    python examples/mamba_init_probe.py

- first-step contrast: ``|f_0 - f_8| / |f_8|``, the features at an episode's first step against those
  8 steps later, for the same one-hot observation repeated (a Mamba layer's gates see the input
  only, so nothing else tells it that a step is the first);
- memory gain: ``|d f_10 / d x_0| / |d f_10 / d x_10|``, how much the features 10 steps after a
  one-hot cue depend on it, relative to the current input.

Means over 5 seeds of a 1-layer, width-64 module with a 4-feature input; printed as a markdown table.
"""

import torch

from mamba_rl import MambaModule


def probe(seeds: int = 5, **kwargs) -> tuple[float, float]:
    contrast, gain = [], []
    for seed in range(seeds):
        torch.manual_seed(seed)
        module = MambaModule(4, 64, in_key="observation", out_key="features", backend="torch", **kwargs)
        reset = torch.zeros(4, 12, dtype=torch.bool)
        reset[:, 0] = True
        # [4, 12, 4]: each of the 4 one-hot observations repeated from an episode start
        repeated = torch.eye(4)[:, None, :].expand(4, 12, 4)
        out, _ = module.sequence(repeated, None, reset)
        contrast.append(((out[:, 0] - out[:, 8]).norm(dim=-1) / out[:, 8].norm(dim=-1)).mean().item())
        cue = torch.zeros(4, 12, 4)
        cue[:, 0] = torch.eye(4)
        cue.requires_grad_(True)
        out, _ = module.sequence(cue, None, reset)
        (grad,) = torch.autograd.grad(out[:, 10].pow(2).sum(), cue)
        gain.append((grad[:, 0].norm() / grad[:, 10].norm()).item())
    return sum(contrast) / seeds, sum(gain) / seeds


def main() -> None:
    torch.set_num_threads(1)
    print("| preset | first-step contrast | memory gain |\n| --- | --- | --- |")
    for name, kwargs in (
        ("mamba_ssm", {"preset": "mamba_ssm"}),
        ("rl, start_marker=False", {"start_marker": False}),
        ("rl (default)", {}),
    ):
        contrast, gain = probe(**kwargs)
        print(f"| {name} | {contrast:.3f} | {gain:.2e} |")


if __name__ == "__main__":
    main()
