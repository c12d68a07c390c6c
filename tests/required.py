"""Skips that CI must not take.

A test that needs a tool the machine may lack (Chromium, podman, a compose front-end, checkov)
skips with its reason on a developer's machine. `.ci/run` installs those tools and sets
``EDC_TESTS_REQUIRE_TOOLS=1``: there the same test fails instead, so a broken install cannot
pass CI silently.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_TOOLS = "EDC_TESTS_REQUIRE_TOOLS"


def skip_unless_required(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail where the environment says the tool must be there."""
    if os.environ.get(REQUIRE_TOOLS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_TOOLS}=1: this machine must have it)")
    pytest.skip(reason)
