"""Fixtures for tests that build hosts in network namespaces (they need root, as CI has)."""

import os

import pytest

from vxland.topology import TwoHosts


@pytest.fixture
def two_hosts(request):
    """The two-host topology of vxland.topology, removed after the test whatever happens."""
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs them as root)")
    with TwoHosts() as topology:
        yield topology
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            for host in topology.hosts:
                print(f"--- log of vxland on {host.ns} ---\n{topology.log_of(host)}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
