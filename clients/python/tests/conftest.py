"""Shared fixtures: the package from this checkout and a real cluster."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # clients/python

import atomq  # noqa: E402
from cluster import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """c1 and p1..p3 for the whole module; logs printed when a test failed."""
    c = Cluster(participants=3).start_all()
    yield c
    c.stop()


@pytest.fixture
def client(cluster):
    with atomq.Client(cluster.coordinator, cluster.participants, retry_for=10.0) as cl:
        yield cl


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(c, Cluster):
        report.sections.append(("atomq process logs", c.logs()))
