"""Shared pytest setup: in CI (CI=true), hypothesis draws the same examples on every run, so a
red build is reproducible and never a matter of luck; locally it keeps exploring."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
