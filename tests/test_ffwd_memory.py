"""benchmarks/ffwd_memory.py: the margin and the sampled probability of an answer, for both heads.

The margin is the target's log-probability over the most likely other answer's; it is checked
against that definition by listing every answer of a few bits.
"""

import importlib.util
import pathlib

import pytest
import torch

from mamba_rl.policies.heads import BitsHead, CategoricalHead

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "ffwd_memory.py"
_spec = importlib.util.spec_from_file_location("ffwd_memory", _PATH)
ffwd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ffwd)

BITS = 3


@pytest.mark.parametrize("head", [BitsHead(BITS), CategoricalHead(2**BITS)], ids=["bits", "categorical"])
def test_margin_is_the_target_log_prob_over_the_best_other_answers(head):
    torch.manual_seed(0)
    answers = 2**BITS
    targets = torch.arange(answers)
    logits = torch.randn(answers, head.num_outputs, dtype=torch.float64) * 3
    # every other pattern answered right by a margin of about 2
    right = targets % 2 == 0
    if isinstance(head, BitsHead):
        bits = (targets[:, None] >> torch.arange(BITS)) & 1
        logits[right] = (torch.where(bits == 1, 1.0, -1.0) * (2 + logits.abs()))[right].double()
    else:
        logits[right, targets[right]] = logits[right].amax(1) + 2
    # [P, A]: the log-probability of every answer, listed
    every = torch.stack(
        [head.log_prob_entropy(logits, torch.full_like(targets, a))[0] for a in range(answers)], 1
    ).double()
    others = every.scatter(1, targets[:, None], -torch.inf)
    expected = every.gather(1, targets[:, None]).squeeze(1) - others.amax(1)
    margin = ffwd.margins(logits, targets, head)
    # the heads compute log-probabilities in float32
    torch.testing.assert_close(margin, expected, rtol=0, atol=1e-5)
    # positive exactly where the greedy answer is the target
    assert torch.equal(margin > 0, head.mode(logits) == targets)
    assert (margin[right] > 0).all() and (margin[~right] < 0).any()


def test_failing_pairs_list_the_first_wrong_answers_only():
    targets = torch.arange(1000)
    answers = torch.where(targets % 2 == 0, targets, 0)
    pairs = ffwd.failing_pairs(targets, answers)
    assert len(pairs) == ffwd.LISTED and pairs[:2] == [[1, 0], [3, 0]]
