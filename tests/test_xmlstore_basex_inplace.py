"""BaseX store: a new version of a document made of elements and attributes only (a LUTS summary
with its Charge elements) has just its changed attribute values written in BaseX, in place.

BaseX's db:replace with UPDINDEX deletes and re-adds every indexed value of the old document
(~2.7 times the CPU of an in-place update here); the LUTS rewrites one summary per record stored.
A value changed in place keeps its node (``db:node-id``); a replaced document gets new nodes.
"""
from __future__ import annotations

import itertools
import os

import pytest
from lxml import etree

from gridcredit.xmlstore import AttributeIndex
from gridcredit.xmlstore._basex import BaseXStore
from gridcredit.xmlstore._basex_wire import Session
from store_fixtures import basex_server  # noqa: F401 — fixture

pytestmark = pytest.mark.basex

NS = "urn:test:summary"
_prefixes = itertools.count()


def summary(user: str, jobs: int, *charges: str) -> str:
    return (f'<s:Sum xmlns:s="{NS}" user="{user}" jobs="{jobs}">' + "".join(charges) + "</s:Sum>"
            if charges else f'<s:Sum xmlns:s="{NS}" user="{user}" jobs="{jobs}"/>')


def test_a_document_of_elements_and_attributes_changes_in_place_when_its_tree_is_the_same(basex_server, tmp_path):
    prefix = f"ip{os.getpid()}x{next(_prefixes)}_"
    eur = '<s:Charge unit="EUR" jobs="{}" micro="{}"/>'
    versions = [   # (document, changed in place?)
        (summary("u1", 1, eur.format(1, 5)), False),                            # first version
        (summary("u1", 2, eur.format(2, 9)), True),                             # values of root and child
        (summary("u2", 3, eur.format(3, 12)), True),                            # an indexed value too
        (summary("u2", 4, eur.format(4, 20), '<s:Charge jobs="1" micro="3"/>'), False),   # a child more
        (summary("u2", 5, eur.format(4, 20), '<s:Charge jobs="2" micro="7"/>'), True),
        (summary("u2", 6, '<s:Charge jobs="2" micro="7"/>', eur.format(4, 20)), False),   # children swapped
        (summary("u2", 7, '<s:Charge jobs="2" micro="7"><s:Charge jobs="1" micro="1"/></s:Charge>'), False),
        (summary("u2", 8, '<s:Charge jobs="3" micro="8"><s:Charge jobs="1" micro="2"/></s:Charge>'), True),  # nested
        (summary("u2", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge jobs="1" micro="2"/>'), False),  # same order
        # of names, other shape
        (summary("u2", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge xmlns:x="urn:x" jobs="1" micro="2"/>'), False),
        (summary("u3", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge xmlns:x="urn:x" jobs="1" micro="4"/>'), True),
        (summary("u3", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge xmlns:x="urn:x" micro="4" jobs="1"/>'), False),
        (summary("u3", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge xmlns:x="urn:x" micro="4" jobs="2"/>'), True),
        (summary("u3", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge micro="4" jobs="2">1</s:Charge>'), False),  # text
        (summary("u3", 9, '<s:Charge jobs="3" micro="8"/>', '<s:Charge micro="4" jobs="2">2</s:Charge>'), False),
        (summary("u4", 10), False),                                             # one element again
        (summary("u5", 11), True),
    ]
    session = Session("127.0.0.1", basex_server.port, "admin", "admin", timeout_s=5)
    store = BaseXStore(tmp_path / "journal", port=basex_server.port, db_prefix=prefix, timeout_s=10,
                       indexes=[AttributeIndex("ur_", ("user",), True)])
    try:
        store.put("ur_sum", "other", b"<s user='u9'/>")
        previous = None
        for number, (xml, in_place) in enumerate(versions, start=1):
            assert store.put("ur_sum", "k", xml.encode()) == number
            store.flush()
            nodes = session.query(f"string-join(db:open('{prefix}ur_sum', 'k')/descendant::* ! db:node-id(.), ' ')")
            assert (nodes == previous) is in_place, (number, nodes, previous)
            previous = nodes
            held = session.query(f"serialize(db:open('{prefix}ur_sum', 'k')/*, map {{ 'indent': 'no' }})")
            assert etree.tostring(etree.fromstring(held), method="c14n") == \
                etree.tostring(etree.fromstring(xml), method="c14n"), number
            user = etree.fromstring(xml).get("user")
            assert [d.doc_id for d in store.query("ur_sum", None, where={"user": user}).documents] == ["k"]
            assert store.count("ur_sum", where={"user": "u1"}) == (1 if user == "u1" else 0)
            assert session.query(f"string(db:open('{prefix}ur_sum', 'k')/processing-instruction("
                                 "gridcredit-version))") == str(number)
        assert all(entry["ok"] for entry in store.check().values())
    finally:
        store.close()
        session.close()
