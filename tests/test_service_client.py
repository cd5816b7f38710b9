"""gridcredit.client.ServiceClient, the base of every typed client: the checked-in WSDL loaded once
and shared by every credential, and the one retry / OutcomeUnknown rule, tested here once against
a real host behind a proxy that loses what it is told to (the Bank and LUTS clients inherit it)."""
from __future__ import annotations

import pytest
import requests
import zeep.exceptions
from lxml import etree

import gridcredit.client as client_module
from gridcredit.client import (Effect, InvalidRequest, OutcomeUnknown, ServiceClient, forget_service_descriptions,
                               never_arrived, no_answer)
from gridcredit.errors import GridcreditError, RemoteFault, SecurityError

from lossy_proxy import lossy_proxy
from security_fixtures import free_port, host_process, self_made_ca


@pytest.fixture(scope="module")
def host(pki, tmp_path_factory):
    with host_process(tmp_path_factory.mktemp("host"), host_cert=pki.host_cert, host_key=pki.host_key,
                      trust_dir=pki.trust_dir) as running:
        yield running


@pytest.fixture
def proxy(host, pki):
    with lossy_proxy(host.url, pki) as lossy:
        yield lossy


class Sleeps:
    """The client's ``sleep``: records each backoff and does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def client(url: str, pki, who: str = "Alice", **options) -> ServiceClient:
    return ServiceClient(url, "bank", credential=pki.user(who).credential, trust_dir=pki.trust_dir, **options)


# ------------------------------------------------------------------------------------- the WSDL

def test_clients_of_several_credentials_share_one_loaded_wsdl_and_fetch_none(proxy, pki, monkeypatch):
    loads = []
    real_load = client_module.load_wsdl

    def counted_load(path):
        loads.append(path)
        return real_load(path)

    monkeypatch.setattr(client_module, "load_wsdl", counted_load)
    forget_service_descriptions()
    alice = client(proxy.url, pki, "Alice")
    bob = client(proxy.url, pki, "Bob")
    carol = alice.as_credential(pki.user("Carol").credential)
    assert [c.call("WhoAmI").dn for c in (alice, bob, carol)] == [pki.user(n).dn for n in ("Alice", "Bob", "Carol")]
    assert alice.call("WhoAmI").dn == pki.user("Alice").dn          # as_credential left alice as she was
    assert len(loads) == 1 and loads[0].name == "bank.wsdl" and loads[0].parent.name == "wsdl"
    assert alice._zeep.wsdl is bob._zeep.wsdl is carol._zeep.wsdl
    assert "wsdl" not in proxy.seen and proxy.seen.count("WhoAmI") == 4   # nothing fetched from the server
    forget_service_descriptions()


def test_a_missing_wsdl_is_an_error_that_names_the_file(pki, tmp_path):
    with pytest.raises(GridcreditError, match=r"the WSDL .*bank\.wsdl is missing"):
        client("https://localhost:1", pki, wsdl_dir=tmp_path)


def test_bad_settings_are_refused_before_anything_is_sent(pki):
    with pytest.raises(InvalidRequest, match="retries must be 0 to 10"):
        client("https://localhost:1", pki, retries=11)
    with pytest.raises(InvalidRequest, match="timeout_s must be positive"):
        client("https://localhost:1", pki, timeout_s=0)


# ------------------------------------------------------------------------------ the retry rule

def test_a_query_is_repeated_until_it_is_answered(proxy, pki):
    sleeps = Sleeps()
    proxy.plan = {"WhoAmI": ["bad-gateway", "unavailable"]}
    identity = client(proxy.url, pki, retries=2, sleep=sleeps).invoke("WhoAmI")
    assert identity.dn == pki.user("Alice").dn
    assert proxy.seen.count("WhoAmI") == 3 and proxy.forwarded.count("WhoAmI") == 2 and len(sleeps.delays) == 2


def test_a_query_never_answered_is_an_error_not_an_unknown_outcome(proxy, pki):
    proxy.plan = {"WhoAmI": ["bad-gateway"] * 3}
    with pytest.raises(GridcreditError) as failed:
        client(proxy.url, pki, retries=2, sleep=Sleeps()).invoke("WhoAmI")
    assert not isinstance(failed.value, OutcomeUnknown)
    assert str(failed.value).startswith(f"cannot reach {proxy.url}/bank after 3 attempt(s)") and "502" in str(failed.value)
    assert proxy.seen.count("WhoAmI") == 3


def test_a_keyed_change_never_answered_is_an_unknown_outcome_naming_its_request_id(proxy, pki):
    proxy.plan = {"WhoAmI": ["bad-gateway", "bad-gateway"]}
    with pytest.raises(OutcomeUnknown) as unknown:
        client(proxy.url, pki, retries=1, sleep=Sleeps()).invoke("WhoAmI", effect=Effect.ONCE_PER_KEY,
                                                                  request_id="gc-test-1")
    assert unknown.value.request_id == "gc-test-1" and "repeat it with request id gc-test-1" in str(unknown.value)
    assert proxy.forwarded.count("WhoAmI") == 2                      # sent again, identical, under the same id


def test_a_change_applied_once_per_key_without_a_request_id_is_repeated_then_unknown(proxy, pki):
    proxy.plan = {"WhoAmI": ["bad-gateway", "unavailable", "bad-gateway"]}
    with pytest.raises(OutcomeUnknown) as unknown:
        client(proxy.url, pki, retries=2, sleep=Sleeps()).invoke("WhoAmI", effect=Effect.ONCE_PER_KEY)
    assert unknown.value.request_id is None and "sending it again is safe" in str(unknown.value)
    assert proxy.seen.count("WhoAmI") == 3


def test_an_unkeyed_change_is_never_sent_again_once_it_may_have_arrived(proxy, pki):
    sleeps = Sleeps()
    proxy.plan = {"WhoAmI": ["bad-gateway"]}
    with pytest.raises(OutcomeUnknown) as unknown:
        client(proxy.url, pki, retries=3, sleep=sleeps).invoke("WhoAmI", effect=Effect.UNKEYED)
    assert unknown.value.request_id is None and "could apply it twice" in str(unknown.value)
    assert proxy.seen.count("WhoAmI") == 1 and sleeps.delays == []


def test_a_connection_never_made_is_repeated_even_for_a_change_and_is_no_unknown_outcome(pki):
    for effect in Effect:
        sleeps = Sleeps()
        with pytest.raises(GridcreditError) as failed:
            client(f"https://localhost:{free_port()}", pki, retries=2, sleep=sleeps).invoke(
                "WhoAmI", effect=effect, request_id="gc-test-2" if effect is Effect.ONCE_PER_KEY else None)
        assert not isinstance(failed.value, OutcomeUnknown), effect
        assert str(failed.value).startswith("cannot reach https://localhost:") and "after 3 attempt(s)" in str(failed.value)
        assert len(sleeps.delays) == 2


def test_a_refusal_is_an_answer_and_is_not_repeated(proxy, pki, key_pool, tmp_path):
    _, stranger = self_made_ca(tmp_path, key_pool)                  # a CA the host does not trust
    with pytest.raises(RemoteFault) as refused:
        ServiceClient(proxy.url, "bank", credential=stranger, trust_dir=pki.trust_dir, retries=3,
                      sleep=Sleeps()).invoke("WhoAmI", effect=Effect.ONCE_PER_KEY, request_id="gc-test-3")
    assert refused.value.code == "InvalidSecurityToken"
    assert proxy.seen.count("WhoAmI") == 1


def test_the_backoff_grows_and_is_bounded(pki):
    sleeps = Sleeps()
    with pytest.raises(GridcreditError):
        client(f"https://localhost:{free_port()}", pki, retries=10, backoff_s=1.0, sleep=sleeps).invoke("WhoAmI")
    assert len(sleeps.delays) == 10 and all(0.5 * min(2 ** n, 5.0) <= d <= min(2 ** n, 5.0)
                                            for n, d in enumerate(sleeps.delays))


# ------------------------------------------------------------------ what counts as no answer

def _refused_connection() -> requests.ConnectionError:
    try:
        requests.get(f"https://localhost:{free_port()}/", timeout=5)
    except requests.ConnectionError as error:
        return error
    raise AssertionError("something listens on a free port")


@pytest.mark.parametrize("error, unanswered", [
    (RemoteFault("soap:Server.StoreUnavailable", "the store is down; retry later"), True),
    (RemoteFault("soap:Client.InsufficientFunds", "not enough credits"), False),
    (SecurityError("the response is not signed by the host", "FailedAuthentication"), False),
    (requests.ReadTimeout("read timed out"), True),
    (requests.ConnectionError("connection reset by peer"), True),
    (zeep.exceptions.TransportError(status_code=502, content=b""), True),
    (zeep.exceptions.TransportError(status_code=503, content=b"<html>busy</html>"), True),
    (zeep.exceptions.TransportError(status_code=404, content=b"<html>no</html>"), False),
    (etree.XMLSyntaxError("truncated", None, 1, 1), True),
    (zeep.exceptions.ValidationError("amount: not an xs:long"), False),
    (GridcreditError("cannot reach https://x/bank: boom"), False),
])
def test_what_counts_as_no_answer(error, unanswered):
    assert no_answer(error) is unanswered


def test_only_a_connection_never_made_certainly_never_arrived():
    assert never_arrived(_refused_connection())
    assert never_arrived(requests.ConnectTimeout("connect timed out"))
    for maybe in (requests.ConnectionError("connection reset by peer"), requests.ReadTimeout("read timed out"),
                  zeep.exceptions.TransportError(status_code=502, content=b""),
                  RemoteFault("soap:Server.StoreUnavailable", "retry later")):
        assert not never_arrived(maybe), maybe


def test_whoami_is_on_every_client_and_answers_aware_utc_times(proxy, pki):
    from datetime import timezone

    from gridcredit.client import Identity
    from gridcredit.services.luts.client import LutsClient

    for service_client in (client(proxy.url, pki, "Bob"),
                           LutsClient(proxy.url, credential=pki.user("Bob").credential, trust_dir=pki.trust_dir)):
        identity = service_client.whoami()
        assert isinstance(identity, Identity) and identity.dn == pki.user("Bob").dn
        assert identity.server_time.tzinfo == timezone.utc and identity.credential_expires.tzinfo == timezone.utc
