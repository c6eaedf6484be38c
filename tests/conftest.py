"""Fixtures shared by several test modules."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(scope="session")
def sanitized_runner(tmp_path_factory):
    """The runtime's kernel objects, built once per session with AddressSanitizer + UBSan when the
    host supports them (plain -O2 otherwise), for running many small programs on the host."""
    from qcompile.backends.host_build import HOST_CFLAGS, SANITIZE_CFLAGS
    from test_fuzz_graphs import HostRunner

    try:
        return HostRunner(tmp_path_factory.mktemp("asan"), (*HOST_CFLAGS, *SANITIZE_CFLAGS))
    except subprocess.CalledProcessError:
        return HostRunner(tmp_path_factory.mktemp("plain"))
