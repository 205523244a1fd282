"""promtool and prometheus (Debian package `prometheus`) for the monitoring tests.

Without them those tests skip with the reason, unless CI=true or HROUTE_REQUIRE_PROMETHEUS=1
(.ci/run sets it): there a missing binary is a failure, so the tests cannot silently not run.
"""

from __future__ import annotations

import os
import shutil

HOW = "install the Debian package 'prometheus' (.ci/run does)"


def require_binary(name: str) -> str:
    """The path of `name` (promtool or prometheus); skip, or fail where it is required."""
    import pytest

    path = shutil.which(name)
    if path:
        return path
    problem = f"{name} is not on PATH; {HOW}"
    if os.environ.get("HROUTE_REQUIRE_PROMETHEUS") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"HROUTE_REQUIRE_PROMETHEUS=1 or CI=true but {problem}", pytrace=False)
    pytest.skip(problem)
