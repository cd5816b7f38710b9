"""Issue 15.3 in the services (a patch for the lead: services/bank/ledger.py, services/bank/cli.py,
xmlstore/_xpath.py): set-holder refuses text that is not a DN, --expires-in needs its unit, and an
XPath that could match nothing for want of a prefix is refused with the prefixes there are."""
from __future__ import annotations

import argparse

import pytest

from gridcredit.errors import DomainError, QueryError
from gridcredit.server.cli import main
from gridcredit.services.bank.cli import duration_s, period_s
from gridcredit.services.bank.ledger import check_dn
from gridcredit.xmlstore._api import StoreLimits
from gridcredit.xmlstore._xpath import check_xpath

T = {"t": "urn:gridcredit:bank:1"}
LUTS = {"n": "urn:gridcredit:luts:1", "urf": "http://schema.ogf.org/urf/2003/09/urf"}


@pytest.mark.parametrize("xpath, namespaces, words", [
    ("kind='charge'", T, ("'kind' without a prefix", "t (urn:gridcredit:bank:1)", "e.g. t:kind")),
    ("t:kind='charge' and amount > 1000", T, ("'amount' without a prefix",)),
    ("JobUsageRecord/Queue = 'long'", LUTS, ("'JobUsageRecord' without a prefix", "n (urn:gridcredit:luts:1)",
                                             "urf (http://schema.ogf.org/urf/2003/09/urf)")),
    ("x:kind='charge'", T, ("prefix 'x', which is not declared", "the prefixes are t (urn:gridcredit:bank:1)")),
])
def test_an_xpath_that_matches_nothing_for_want_of_a_prefix_is_refused(xpath, namespaces, words):
    with pytest.raises(QueryError) as refused:
        check_xpath(xpath, namespaces, {}, StoreLimits())
    for word in words:
        assert word in str(refused.value), (word, str(refused.value))


@pytest.mark.parametrize("xpath, namespaces", [
    ("t:kind='charge' and t:amount > 1000", T),
    ("@queue = 'long'", LUTS),                       # attributes have no namespace: no prefix needed
    ("n:Usage/*[local-name() = 'wall_us'] > 0", LUTS),
    ("count(*) > 0", T),
    ("kind = 'charge'", {}),                          # documents without namespaces
])
def test_prefixed_names_attributes_and_wildcards_pass(xpath, namespaces):
    check_xpath(xpath, namespaces, {}, StoreLimits())


@pytest.mark.parametrize("text, words", [
    ("Bob", "is not a DN in grid form"),
    ("CN=Bob,O=Development", "in grid form it is /O=Development/CN=Bob"),
    ("/Bob", "is not a DN in grid form"),
    ("/CN=", "is not a DN in grid form"),
])
def test_a_holder_that_is_not_a_dn_is_refused(text, words):
    with pytest.raises(DomainError, match="holder DN") as refused:
        check_dn(text, "holder DN")
    assert words in str(refused.value) and refused.value.code == "InvalidArgument"


@pytest.mark.parametrize("dn", ["/DC=org/DC=gridcredit/O=Development/CN=Demo User", "/CN=alice",
                                "/DC=org/DC=example/CN=host/jarm.site-x.org", "/O=Grid/CN=Bob & Carol, Jr"])
def test_grid_dns_pass(dn):
    assert check_dn(dn, "holder DN") == dn


def test_a_duration_needs_its_unit_a_period_may_be_seconds():
    with pytest.raises(argparse.ArgumentTypeError, match="has no unit"):
        duration_s("2")
    assert duration_s("2h") == 7200 and period_s("3600") == 3600 and period_s("day") == 86_400


def test_hold_expires_in_without_a_unit_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bank", "hold", "vo", "--amount", "5", "--expires-in", "2", "--url", "https://localhost:8443"])
    assert exited.value.code == 2 and "has no unit: write 2s, 2m, 2h or 2d" in capsys.readouterr().err
