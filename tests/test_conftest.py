"""The suite's own fixtures (tests/conftest.py): each test draws from its own generator."""

import numpy as np
import pytest

from tests.conftest import seed_of

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("case", ["a", "b"])
def test_each_test_draws_from_its_own_generator(request, case):
    """A test's draws depend on its node id only, not on which tests ran before it."""
    want = np.random.default_rng(seed_of(request.node.nodeid)).normal(size=4)
    np.testing.assert_array_equal(RNG.normal(size=4), want)
    other = "b" if case == "a" else "a"
    assert seed_of(request.node.nodeid) != seed_of(request.node.nodeid.replace(f"[{case}]",
                                                                               f"[{other}]"))

