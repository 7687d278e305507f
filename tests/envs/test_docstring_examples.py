"""The runnable examples in the env docstrings stay runnable and right."""

import doctest

import pytest

from mamba_rl.envs import delayed_memory, torchrl_env


@pytest.mark.parametrize("module", [delayed_memory, torchrl_env], ids=lambda m: m.__name__)
def test_docstring_examples_run_and_print_what_they_show(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
