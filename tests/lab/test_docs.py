"""The runnable examples in the state lab's docstrings stay true."""

import doctest

import pytest

from mamba_rl.lab import distractors, equivalence, fastforward, plots, steering, tracing


@pytest.mark.parametrize(
    "module", [tracing, plots, equivalence, steering, fastforward, distractors], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
