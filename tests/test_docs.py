"""The runnable examples in public docstrings stay true."""

import doctest

import pytest

import mamba_rl.module


@pytest.mark.parametrize("module", [mamba_rl.module], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
