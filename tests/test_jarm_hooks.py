"""What the PrologSlurmctld writes in the Comment of a job it did not start (services/jarm/slurm/hooks.py,
``refusal_comment``): the JARM not answering is said plainly — ``JarmUnreachable``, the JARM's address,
what the connection did, and the ``scontrol release`` that starts the job once the JARM answers — not the
first 250 characters of a requests error (before: "GridcreditError: cannot reach … ConnectionError:
HTTPSConnectionPool(host=…, port=…): Max retries exceeded with url: /jarm (Caused by NewConnect", cut).
The errors are the real client's, against nothing listening and against a server that never answers;
tests/test_jarm_crash_slurm.py sees the same Comments on the real Slurm while the JARM is killed."""
from __future__ import annotations

import socket
import threading

import pytest

from gridcredit.errors import GridcreditError, RemoteFault
from gridcredit.services.jarm.client import JarmClient
from gridcredit.services.jarm.reservations import JobKey
from gridcredit.services.jarm.slurm.hooks import COMMENT_CHARS_MAX, JobUnreadable, refusal_comment
from gridcredit.services.jarm.types import JobRequest

from security_fixtures import free_port

REQUEST = JobRequest("batch", "normal", cores=1, time_limit_s=60, memory_mb=0, gpus=0, nodes=1)


def reserve_error(client: JarmClient) -> GridcreditError:
    with pytest.raises(GridcreditError) as failed:
        client.reserve(JobKey("c1", 42), user="gcuser1", account="proj1", request=REQUEST)
    return failed.value


def jarm(pki, port: int, **options) -> JarmClient:
    return JarmClient(f"https://localhost:{port}", credential=pki.user("Hook Host").credential,
                      trust_dir=pki.trust_dir, **options)


def test_the_jarm_refusing_connections_is_said_with_its_address_and_the_release(pki):
    client = jarm(pki, free_port(), timeout_s=2, retries=1, backoff_s=0.01)
    comment = refusal_comment("42", reserve_error(client), jarm_url=client.url)
    assert comment == (f"JARM: job 42 held, not started: JarmUnreachable: the JARM at {client.url} did not answer "
                       f"(connection refused); once it does, release the job: scontrol release 42")
    assert len(comment) <= COMMENT_CHARS_MAX


def test_a_jarm_that_never_answers_is_said_to_have_timed_out(pki):
    """The request may have reached it (the client's OutcomeUnknown): the same plain words."""
    listener = socket.create_server(("localhost", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    try:
        client = jarm(pki, listener.getsockname()[1], timeout_s=1, retries=0)
        comment = refusal_comment("43", reserve_error(client), jarm_url=client.url)
    finally:
        listener.close()
        for connection, _address in accepted:
            connection.close()
    assert comment == (f"JARM: job 43 held, not started: JarmUnreachable: the JARM at {client.url} did not answer "
                       f"(timed out); once it does, release the job: scontrol release 43")


def test_the_jarms_own_refusal_and_failure_and_an_unreadable_job_keep_their_words():
    url = "https://jarm.example.org:8443/jarm"
    refused = RemoteFault("soap:Client.UnknownUser", "local user gcuser9 has no grid identity here: add them to the "
                          "grid-mapfile", "UnknownUser")
    assert refusal_comment("44", refused, jarm_url=url) == (
        "JARM: job 44 held, not started: UnknownUser: local user gcuser9 has no grid identity here: add them to "
        "the grid-mapfile")
    failed = RemoteFault("soap:Server", "Internal Error")
    assert refusal_comment("45", failed, jarm_url=url) == (
        f"JARM: job 45 held, not started: JarmFailed: the JARM at {url} failed (Server); once it works, release "
        f"the job: scontrol release 45")
    unreadable = JobUnreadable("scontrol show job 46 exited 1: slurm_load_jobs error: Invalid job id specified")
    assert refusal_comment("46", unreadable, jarm_url=url) == (
        "JARM: job 46 held, not started: JobUnreadable: scontrol show job 46 exited 1: slurm_load_jobs error: "
        "Invalid job id specified")


def test_a_long_message_is_cut_at_a_word_within_slurms_comment():
    words = RemoteFault("soap:Client.InvalidJob", "the job asks for " + "very many things " * 30, "InvalidJob")
    comment = refusal_comment("47", words, jarm_url="https://x/jarm")
    assert len(comment) <= COMMENT_CHARS_MAX and comment.endswith(" many...") and "  " not in comment
