"""Fixtures for tests that build hosts in network namespaces (they need root, as CI has)."""

import os

import pytest

from vxland.topology import Topology


def _topology(request, hosts, **options):
    if os.geteuid() != 0:
        pytest.fail("network-namespace tests need root (CI runs them as root)")
    with Topology(hosts, **options) as topology:
        yield topology
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for host in topology.hosts:
                print(f"--- log of vxland on {host.ns} ---\n{topology.log_of(host)}")


@pytest.fixture
def two_hosts(request):
    """The two-host topology of vxland.topology, removed after the test whatever happens."""
    yield from _topology(request, 2)


@pytest.fixture
def two_hosts_ipv6(request):
    """Two hosts on an IPv6 underlay (2001:db8::1 and ::2)."""
    yield from _topology(request, 2, ipv6=True)


@pytest.fixture
def four_hosts(request):
    """Four hosts on one underlay switch, removed after the test whatever happens."""
    yield from _topology(request, 4)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_sessionstart(session):
    """scripts/sanitize.sh runs the C-facing tests against an ASan/UBSan build: make sure
    that is the build they load, not the installed one."""
    if os.environ.get("VXLAND_EXPECT_SANITIZED"):
        import vxland.native
        assert "build/sanitize" in vxland.native.__file__, vxland.native.__file__
        with open("/proc/self/maps") as f:
            assert "libasan" in f.read(), "the sanitizer runtime is not loaded"
