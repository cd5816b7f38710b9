"""The BaseX store's query builders (xmlstore/_basex_queries.py), without a server: values are
bound, never written into query text; database names are literals (BaseX locks only those);
the verification's answers are read as the store expects."""
from __future__ import annotations

import json

import pytest

from gridcredit.errors import QueryError
from gridcredit.xmlstore import DEFAULT_LIMITS
from gridcredit.xmlstore._basex_queries import (Q_COUNT_ALL, Q_DOCS, apply_query, db_name, naming, select_query,
                                                versions_of)

HOSTILE = "x' or 1=1 or '}{db:drop('gc_acc')}\""


def select(**arguments):
    defaults = dict(covered=frozenset(), xpath=None, variables={}, where={}, namespaces={}, time_limit_s=2.5,
                    scan_limit=5000, page=None, limits=DEFAULT_LIMITS)
    return select_query("gc_acc", "gc__meta", **{**defaults, **arguments})


@pytest.mark.parametrize("name", ["gc_acc", "GC_1", "a"])
def test_a_database_name_is_letters_digits_and_underscores(name):
    assert db_name(name) == name


@pytest.mark.parametrize("name", ["", "gc acc", "gc'acc", "gc-acc", "gc_ä", "gc_acc;DROP"])
def test_any_other_database_name_never_reaches_a_query(name):
    with pytest.raises(AssertionError, match="database name"):
        naming(Q_DOCS, name)


def test_templates_name_their_database_as_a_literal():
    text = naming(Q_COUNT_ALL, "gc_acc")
    assert "{db}" not in text and "db:list('gc_acc')" in text and "db:exists('gc_acc')" in text


def test_an_apply_names_each_database_once_and_checks_the_applied_number():
    text = apply_query(["gc_b", "gc_a", "gc_b"], "gc__meta")
    assert text.count("$o/op[@db = 'gc_a']") == 1 and text.count("$o/op[@db = 'gc_b']") == 1
    assert "declare variable $base external" in text and "if ($now != $base)" in text
    assert "db:replace('gc__meta', '.seq'" in text
    repair = apply_query(["gc_a"], None)
    assert "$base" not in repair and "gc__meta" not in repair
    assert apply_query([], None).rstrip().endswith("return ( ())")


def test_where_values_are_bound_never_written_into_the_text():
    text, bindings = select(where={"owner": (HOSTILE, "bob")}, page=(1, 10))
    assert HOSTILE not in text and "bob" not in text
    assert json.loads(bindings["$w0"][0]) == [HOSTILE, "bob"]
    assert "declare variable $w0 external;" in text
    assert "[@owner = parse-json($w0)?*]" in text
    assert "subsequence($hits, 1, 10)" in text


def test_one_indexed_where_item_is_read_from_the_attribute_index_with_a_guard():
    text, _ = select(covered=frozenset({"user"}), where={"user": ("u1", "u22")}, page=(1, 10))
    assert "db:attribute('gc_acc', parse-json($w0)?*)/self::attribute(user)" in text
    assert "db:property('gc_acc', 'maxlen') >= 3" in text            # the longest value, in bytes
    assert "gridcredit-index-unusable" in text
    assert "false() and count($all) > 5000" in text                   # nothing examined one by one
    general, _ = select(covered=frozenset({"user"}), where={"user": ("u1",)}, page=(1, 10), index_lookup=False)
    assert "db:attribute" not in general and "db:open('gc_acc')/*[@user = parse-json($w0)?*]" in general


def test_an_unindexed_where_item_or_an_xpath_is_bounded_by_the_scan_limit():
    text, _ = select(where={"owner": ("a",)}, scan_limit=123)
    assert "true() and count($all) > 123" in text and text.rstrip().endswith("return count($hits)")


def test_an_xpath_runs_checked_inside_xquery_eval_with_its_variables_bound():
    text, bindings = select(xpath="/acc[@n = $n and @owner = $who]", variables={"n": 7, "who": HOSTILE},
                            page=(11, 5), time_limit_s=2.2)
    assert HOSTILE not in text and "$who" not in text
    assert "xquery:eval($expr" in text and "map{'timeout': 3}" in text        # whole seconds, rounded up
    expr = bindings["$expr"][0]
    assert "declare variable $n external;" in expr and "declare variable $who external;" in expr
    assert "subsequence(" in expr and ", 11, 5)" in expr
    assert {bindings["$n0"], bindings["$n1"]} == {("n", "xs:string"), ("who", "xs:string")}
    assert {bindings["$v0"], bindings["$v1"]} == {("7", "xs:integer"), (HOSTILE, "xs:string")}
    assert "<r seq=" in text


def test_an_xpath_the_checker_refuses_never_becomes_a_query():
    with pytest.raises(QueryError):
        select(xpath="//acc[matches(@owner, '^(a+)+$')]")


def test_versions_are_read_from_the_verifications_lines():
    status, versions = versions_of(iter([["a", "3", "l"], ["b", "2", "d"], ["c", "5", "l"], ["c", "6", "d"]]))
    assert status == "ok"
    assert versions == {"a": (3, True), "b": (2, False), "c": (6, False)}     # the higher version is the state
    assert versions_of(iter([["a", "1", "l"], ["a", "2", "l"]]))[0].startswith("damaged: a document path held twice")
    assert versions_of(iter([["a", "-1", "l"]]))[0] == "damaged: a document without its version"
    assert versions_of(iter([["a", "1", "t"]]))[0].startswith("damaged: version resources of the old layout")
