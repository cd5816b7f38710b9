"""The BaseX store's queries: XQuery text with bound external variables, built by pure functions.

Nothing here talks to BaseX: ``select_query``, ``apply_query`` and the templates make query text
from validated names (databases, attributes, variables, namespace prefixes), integers and fixed
text only — every value a caller gives is bound as an external variable — and ``versions_of``
reads a verification query's answer. Database names are written into the text as literals
(``naming``, ``literal``): BaseX 9.7 decides what to lock before it binds variables, so a name
it cannot read from the text makes it lock every database. Unit tests need no server
(tests/test_xmlstore_basex_queries.py); the store (``_basex``) runs them.
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterator, Mapping, Sequence

from gridcredit.errors import invariant

from lxml import etree

from ._api import StoreLimits
from ._xpath import check_xpath

# BaseX's answers (documents, pages) are parsed with this: no entities, no network, no DTD
RESULT_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True,
                                remove_blank_text=False)

VERSION_PI = "gridcredit-version"     # a live document's version (see ops_of)
# A document of elements and attributes only (no text, comment, PI or CDATA between its tags):
# a new version of one is marked for an in-place update (see ops_of, which checks the tree itself).
# A '>' inside an attribute value only makes a document look as if it had text: replaced whole.
PATCHABLE = re.compile(r"(?:<[^<>!?][^<>]*>)+")

# These name their database literally ({db}, see naming): BaseX 9.7 read-locks just that one (a
# name bound as a variable made it lock every database: each read waited for every apply)
Q_DOCS = """declare variable $ids external;
<r>{for $id in tokenize($ids, ' ') let $doc := db:open({db}, $id) where exists($doc)
    return <d id="{$id}" v="{$doc/processing-instruction(%s)}">{$doc/*}</d>}</r>""" % VERSION_PI

# the next ``limit`` document ids after $after
Q_IDS_AFTER = """declare variable $after external; declare variable $limit external;
if (db:exists({db})) then string-join(subsequence(sort(db:list({db})[not(starts-with(., '.'))][. > $after]),
  1, xs:integer($limit)), ' ') else ''"""

Q_IDS = """declare variable $offset external; declare variable $limit external;
if (db:exists({db})) then string-join(subsequence(sort(db:list({db})[not(starts-with(., '.'))]),
  xs:integer($offset) + 1, xs:integer($limit)), ' ') else ''"""

Q_COUNT_ALL = """if (db:exists({db})) then count(db:list({db})[not(starts-with(., '.'))]) else 0"""

Q_COLLECTIONS = """declare variable $prefix external;
string-join(for $n in sort(db:list()[starts-with(., $prefix)])
            where exists(db:list($n)[not(starts-with(., '.'))]) return $n, ' ')"""

Q_DATABASES = """declare variable $prefix external; string-join(sort(db:list()[starts-with(., $prefix)]), ' ')"""

# a collection no AttributeIndex covers: no value indexes at all — nothing reads through them (its
# XPath runs inside xquery:eval), and with UPDINDEX every update kept BaseX's default text and
# attribute indexes current (the bank's hold-then-charge: ~20% more operations/s without them)
Q_ENSURE = """declare variable $names external;
for $n in tokenize($names, ' ') where not(db:exists($n))
return db:create($n, (), (), map{'chop': false(), 'updindex': true(), 'autooptimize': false(),
  'textindex': false(), 'attrindex': false(), 'tokenindex': false(), 'ftindex': false()})"""

# BaseX indexes attribute values up to MAXLEN bytes (longer values are looked up by a scan)
INDEX_MAXLEN = 1000

# a collection covered by an AttributeIndex: BaseX's attribute index on its declared names only, no text index
Q_ENSURE_INDEXED = """declare variable $names external; declare variable $include external;
for $n in tokenize($names, ' ') where not(db:exists($n))
return db:create($n, (), (), map{'chop': false(), 'updindex': true(), 'autooptimize': false(),
  'attrindex': true(), 'attrinclude': $include, 'textindex': false(), 'tokenindex': false(), 'ftindex': false(),
  'maxlen': %d})""" % INDEX_MAXLEN

Q_INDEX_OPTIONS = """declare variable $db external;
if (db:exists($db)) then let $i := db:info($db)//indexes
  return string-join(($i/attrindex, $i/textindex, $i/attrinclude, $i/maxlen) ! string(), '|')
else 'missing'"""

# the attribute index agrees with the data, on a sample (a full comparison ran a 512 MB BaseX out
# of heap at 1,000,000 documents): each <a n="name" v="value" d="doc id"/> must be found by an
# index lookup of its value, and every attribute that lookup returns must hold that value. A kill
# -9 of BaseX can leave the index behind its data (seen: "Key does not exist" on the next update);
# the sample holds the 50 most recently written documents, where a crash leaves its marks, and 25
# random ones.
# Values held by more than 100 attributes are not looked at (db:path costs ~0.5 ms a hit at
# 1,000,000 documents: checking every hit of 300 documents' values took minutes).
Q_INDEX_SAMPLE = """declare variable $db external; declare variable $checks external;
count(for $c in parse-xml($checks)/c/a
      let $v := string($c/@v)
      where sum(index:attributes($db, $v)[. = $v]/@count ! xs:integer(.)) <= 100
      let $hits := db:attribute($db, $v, string($c/@n))
      where not(some $h in $hits satisfies db:path($h) = string($c/@d)) or (some $h in $hits satisfies string($h) != $v)
      return $c)"""

Q_REINDEX = """declare variable $db external; declare variable $include external;
db:optimize($db, true(), map{'attrindex': true(), 'attrinclude': $include, 'textindex': false(),
  'tokenindex': false(), 'ftindex': false(), 'maxlen': %d})""" % INDEX_MAXLEN

# A kill -9 of BaseX can leave a database's inf.basex empty or torn. Opening such a database makes
# BaseX 9.7 fail when it closes it (NullPointerException in DiskData.write) WITHOUT releasing its
# pin and locks: the database can then not be dropped until the server restarts. db:info reads the
# metadata without opening the database: we create every database with UPDINDEX, so one whose info
# does not show it has unreadable metadata, and is dropped unopened. (A separate query: BaseX opens
# a database named by a bound variable when it compiles a query, whichever branch runs.)
Q_UNHEALTHY = """declare variable $names external;
string-join(for $n in tokenize($names, ' ') where db:exists($n) and not(db:info($n)//updindex = 'true')
            return $n, ' ')"""

# "<applied sequence number> <when the last batch was applied, ms since the epoch>"
Q_META = """declare variable $m external;
if (db:exists($m)) then (db:open($m, '.seq')/seq/(@n || ' ' || (@t, 0)[1]), '0 0')[1] else 'none'"""

Q_META_SET = """declare variable $m external; declare variable $seq external;
db:replace($m, '.seq', <seq n="{$seq}"/>)"""

# Versions. A live document carries its version in a processing instruction before its root
# element (<?gridcredit-version 7?>: BaseX holds one resource per document, and a version is read
# with the document, no path lookup); a deleted one leaves a tombstone ``.v/<id>`` (<v n="8"
# del="1"/>) so its version survives. A document written again after its deletion may keep that
# tombstone: the higher version of the two is the document's state (see ``_status``). (Until
# 2026-11-23 every document had a ``.v/`` version resource: twice the resources, and ~40% of an
# apply's time with small documents. Such a database fails verification and is rebuilt.)
#
# An op marked new="1" is added (db:add) instead of replaced: BaseX 9.7's db:replace looks the
# path up, which costs ~5-14 s per 1,000 documents in a database of 200,000 (db:add: ~0.4 s).
# Marked only where BaseX cannot hold the path: a document's first write (version 1) in a batch
# of the running applier (BaseX verified at the batch's base number), and every op of a rebuild
# into a fresh database. A crash in the middle of such a batch can leave a path twice: the
# verification (Q_STATUS) finds duplicates and rebuilds.
#
# An op marked patch="1" (a new version of a document made of elements and attributes only, e.g.
# the LUTS's summaries with a Charge element per unit: ``PATCHABLE``) changes the attribute values
# that differ in place when the stored document is the same tree — element for element (in document
# order, each with as many children) the same names, namespaces and attribute names in the same
# order, and no text, comment or processing instruction inside: with UPDINDEX, db:replace deletes
# and re-adds every indexed value of the old document (~260 ms per 1,000 small documents here; in
# place: ~95 ms). Anything else is replaced whole. (Until 2026-12-02 only a one-element document
# was patched: the summaries' Charge children, issue 11.5, made every summary update a replace.)
def ops_of(db: str) -> str:
    """The updates of one database's ops, its name written literally (see apply_query)."""
    document = f"document {{ processing-instruction {VERSION_PI} {{ string($op/@v) }}, $op/*[1] }}"
    return f"""
  for $op in $o/op[@db = {literal(db)}]
  let $id := string($op/@id)
  return if ($op/@del = '1') then (
    if ($op/@new = '1') then db:add({literal(db)}, <v n="{{$op/@v}}" del="1"/>, '.v/' || $id) else (
    if (db:exists({literal(db)}, $id)) then db:delete({literal(db)}, $id) else (),
    db:replace({literal(db)}, '.v/' || $id, <v n="{{$op/@v}}" del="1"/>)))
  else if ($op/@new = '1') then db:add({literal(db)}, {document}, $id)
  else if ($op/@patch = '1') then (
    let $stored := db:open({literal(db)}, $id)
    let $old := $stored/*
    let $olds := $old/descendant-or-self::node()
    let $news := $op/*[1]/descendant-or-self::node()
    return if (count($stored) = 1 and count($stored/processing-instruction({VERSION_PI})) = 1 and count($old) = 1
               and count($olds) = count($news)
               and (every $i in 1 to count($news) satisfies (
                 let $o := $olds[$i] let $n := $news[$i]
                 return $o instance of element() and $n instance of element() and node-name($o) = node-name($n)
                   and count($o/node()) = count($n/node())
                   and deep-equal($o/@* ! node-name(.), $n/@* ! node-name(.))
                   and deep-equal(sort(in-scope-prefixes($o) ! (. || '=' || namespace-uri-for-prefix(., $o))),
                                  sort(in-scope-prefixes($n) ! (. || '=' || namespace-uri-for-prefix(., $n)))))))
    then (for $i in 1 to count($news) for $a in $news[$i]/@*
          let $was := $olds[$i]/@*[node-name(.) = node-name($a)] where string($was) ne string($a)
          return replace value of node $was with string($a),
          replace value of node $stored/processing-instruction({VERSION_PI}) with string($op/@v))
    else db:replace({literal(db)}, $id, {document}))
  else db:replace({literal(db)}, $id, {document})"""


def apply_query(databases: Sequence[str], meta_db: str | None) -> str:
    """The update writing ops (``$ops``: ``<ops><op db=… id=… v=…>`` see ``_ops``) into ``databases``.

    Every database is named literally, so BaseX write-locks just those (and ``meta_db``); a name
    it can only know at run time made each apply lock every database, holding up all queries.
    With ``meta_db``: a batch of whole transactions and the applied number in one update, refused
    unless the applied number is still ``$base`` (the one the batch starts from); without: the
    documents' state only (repair, rebuild; the applied number is written separately)."""
    updates = ",".join(ops_of(db) for db in sorted(set(databases))) or " ()"
    if meta_db is None:
        return f"declare variable $ops external;\nlet $o := parse-xml($ops)/ops\nreturn ({updates})"
    meta = literal(meta_db)
    return (f"declare variable $ops external; declare variable $base external;\nlet $o := parse-xml($ops)/ops\n"
            f"let $now := (db:open({meta}, '.seq')/seq/@n/string(), '0')[1]\n"
            f"return if ($now != $base) then error(xs:QName('err:FOER0000'), 'gridcredit-applied ' || $now)\n"
            f"else ({updates},\n  db:replace({meta}, '.seq', <seq n=\"{{$o/@seq}}\" t=\"{{$o/@t}}\"/>))")


# readable = every live document read in full, in one pass (a path lookup per document costs
# ~1 ms per 200,000 documents in BaseX 9.7): "ok <characters>"; then, in queries of their own
# that stream their items (one string of everything made a 512 MB BaseX run out of heap at
# 1,000,000 documents, which looked like damage), the live ids and the versions as
# "id version l|d" lines
Q_STATUS = """declare variable $db external;
if (not(db:exists($db))) then 'missing' else
try {
  'ok ' || sum(for $d in db:open($db) where not(starts-with(db:path($d), '.')) return string-length(serialize($d)))
} catch * { 'damaged ' || $err:code || ' ' || $err:description }"""

Q_STATUS_LIVE = """declare option output:item-separator "&#10;"; declare variable $db external;
db:list($db)[not(starts-with(., '.'))]"""

# The background verification's chunk (see BaseXStore._verify_step): the documents and tombstones
# whose id is in ($after, $upto] ('' open), every document read in full (its serialized length
# forces it): "ok" then "<id> <version> l|d|t" lines as Q_STATUS_VERSIONS, or "damaged ..."
Q_STATUS_RANGE = """declare variable $db external; declare variable $after external; declare variable $upto external;
if (not(db:exists($db))) then 'missing' else
try {
  string-join(('ok', for $d in db:open($db)
    let $path := db:path($d)
    let $tomb := starts-with($path, '.v/')
    let $id := if ($tomb) then substring($path, 4) else $path
    where ($tomb or not(starts-with($path, '.'))) and ($after = '' or $id > $after) and ($upto = '' or $id <= $upto)
    return if ($tomb) then
      $id || ' ' || ($d/v/@n, -1)[1] || ' ' || (if ($d/v/@del = '1') then 'd' else 't')
    else
      $id || ' ' || ($d/processing-instruction(%s)[. castable as xs:integer], -1)[1] || ' l '
         || string-length(serialize($d))), '&#10;')
} catch * { 'damaged ' || $err:code || ' ' || $err:description }""" % VERSION_PI

# "<id> <version> l|d|t" lines: l a live document (version -1: it has none), d a tombstone, t a
# ``.v/`` resource that is no tombstone (the layout before versions moved into the documents)
Q_STATUS_VERSIONS = """declare option output:item-separator "&#10;"; declare variable $db external;
for $d in db:open($db)
let $path := db:path($d)
return if (starts-with($path, '.v/')) then
  substring($path, 4) || ' ' || ($d/v/@n, -1)[1] || ' ' || (if ($d/v/@del = '1') then 'd' else 't')
else if (starts-with($path, '.')) then ()
else $path || ' ' || ($d/processing-instruction(%s)[. castable as xs:integer], -1)[1] || ' l'""" % VERSION_PI

# BaseX 9.7's xquery:eval applies its 'permission' option by changing the permission of the
# session's USER (shared by every session of that user) and restoring it afterwards: meanwhile
# every other query of that user fails with "No read permission", and two evaluations at once can
# restore 'none' for good. So the option is not given (the default, admin, is what the store's
# user has: the switch is then a no-op), and an XPath query runs beside the store's other calls:
# only a checked XPath 1.0 expression (_xpath.check_xpath) reaches xquery:eval.
#
# One template answers query and count, with and without ``where`` and XPath ({...} parts are
# filled by _select with validated names, integers and fixed text only; values are bound):
# * the database names are literals: BaseX 9.7 decides what to lock before it binds variables, so
#   a name it cannot read from the query text (or a db:path call, whatever its argument) makes it
#   lock every database — a read that waits for every writer, and every writer for it;
# * $all: the collection's documents (root elements) that match the INDEXED ``where`` items.
#   One indexed name: read from the attribute index (db:attribute) when the database's own
#   properties say it holds that name's values of this length (attrindex, attrinclude, maxlen:
#   BaseX's rule for its own rewrite), checked again against the data; otherwise the query stops
#   with ``gridcredit-index-unusable`` and is asked again in the general form. General form
#   (several indexed names): predicates on db:open(db)/*, which BaseX rewrites to db:attribute
#   itself (see query_plan) — but only after it has listed every document of the database while
#   compiling (~2 ms per 600,000 resources, measured here), which the direct lookup skips;
#   no indexed item: every document;
# * the scan limit bounds $all when anything must be examined document by document;
# * $cands: $all narrowed by the other ``where`` items, in doc_id order (the id is the document's
#   URI after "/<database>/": db:path would lock every database);
# * the checked XPath runs inside xquery:eval (with a timeout) over $cands only, and what it returns
#   is checked again outside: root elements of this database that match every ``where`` item —
#   an XPath can narrow what ``where`` selected, never widen it.
Q_SELECT = """{declarations}
declare function local:id($d as node()) as xs:string {{ substring(document-uri(root($d)), {id_from}) }};
let $seq := if (db:exists({meta})) then (db:open({meta}, '.seq')/seq/@n/string(), '0')[1] else '0'
let $all := if (db:exists({db})) then {roots}[not(starts-with(local:id(.), '.'))] else ()
return if ({examine} and count($all) > {scan})
then error(xs:QName('err:FOER0000'), 'gridcredit-scan-limit ' || count($all))
else
  let $cands := for $d in $all{rest} order by local:id($d) return $d
  let $hits := {hits}
  return {result}"""

# {roots} for one indexed where item read straight from the attribute index ({guard}: S_GUARD)
S_INDEXED = """(if ({guard}) then db:attribute({db}, parse-json(${var})?*)/self::attribute({name})/parent::*[
  parent::document-node()]{check} else error(xs:QName('err:FOER0000'), 'gridcredit-index-unusable'))"""

S_GUARD = """db:property({db}, 'attrindex') and db:property({db}, 'maxlen') >= {longest} and
  (let $i := string(db:property({db}, 'attrinclude'))
   return $i = '' or tokenize($i, ',') ! normalize-space() = '{name}')"""

X_EVAL = """for $h in xquery:eval($expr, map:merge(({entries}, map{{'_docs': $cands}})),
                                  map{{'timeout': {timeout}}})
  where $h instance of element() and exists($h/parent::document-node())
    and (try {{ $h is db:open-pre({db}, db:node-pre($h)) }} catch * {{ false() }})
    and not(starts-with(local:id($h), '.')) and exists($h{every})
  return $h"""

R_PAGE = """<r seq="{{$seq}}">{{for $h in {page} let $id := local:id($h)
  return <d id="{{$id}}"{version}>{{$h}}</d>}}</r>"""

R_VERSION = ' v="{{$h/../processing-instruction(%s)}}"' % VERSION_PI


DB_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def select_query(db: str, meta_db: str, *, covered: frozenset[str] | set[str], xpath: str | None,
                 variables: Mapping[str, str | int], where: Mapping[str, Sequence[str]],
                 namespaces: Mapping[str, str], time_limit_s: float, scan_limit: int,
                 page: tuple[int, int] | None, limits: StoreLimits, versions_from_basex: bool = False,
                 index_lookup: bool = True) -> tuple[str, dict[str, tuple[str, str]]]:
    """The text and bindings of a query (``page`` = (first position, count)) or a count (``page``
    None) of database ``db`` (see Q_SELECT): its documents matching every ``where`` item (attribute
    name -> values; ``covered``: the names its attribute index holds) and, with ``xpath``, that
    checked XPath (``_xpath.check_xpath``, with ``namespaces`` and ``variables``). ``index_lookup``:
    one indexed where item is read from the attribute index directly (S_INDEXED; the query fails
    with ``gridcredit-index-unusable`` if the database cannot answer it that way)."""
    db_literal = literal(db)
    # only validated attribute names, database names, variable names, prefixes/URIs and
    # integers enter query text; every value is bound (a where item's values as one JSON array)
    names = sorted(where)
    predicate = {name: f"[@{name} = parse-json($w{i})?*]" for i, name in enumerate(names)}
    indexed_names = [n for n in names if n in covered]
    rest = "".join(predicate[n] for n in names if n not in covered)
    if index_lookup and len(indexed_names) == 1:
        name = indexed_names[0]
        longest = max((len(value.encode("utf-8")) for value in where[name]), default=0)
        guard = S_GUARD.format(db=db_literal, longest=int(longest), name=name)
        roots = S_INDEXED.format(guard=guard, db=db_literal, var=f"w{names.index(name)}", name=name,
                                 check=predicate[name])
    else:
        roots = f"db:open({db_literal})/*" + "".join(predicate[n] for n in indexed_names)
    # examined one by one (bounded by the scan limit): by an XPath or an unindexed where item
    examine = "true()" if xpath is not None or rest else "false()"
    declarations = "".join(f"declare variable $w{i} external;\n" for i in range(len(names)))
    bindings: dict[str, tuple[str, str]] = {}
    for i, name in enumerate(names):
        bindings[f"$w{i}"] = (json.dumps(list(where[name]), ensure_ascii=False), "")
    if xpath is None:
        hits = "$cands"
    else:
        prolog = "".join(f'declare namespace {p} = "{u}";\n' for p, u in namespaces.items())
        prolog += "".join(f"declare variable ${name} external;\n" for name in variables)
        prolog += "declare variable $_docs external;\n"
        # each document alone is the focus (position() and last() are 1, as in lxml)
        selected = f"$_docs[boolean(. ! {check_xpath(xpath, namespaces, variables, limits).xquery})]"
        body = f"subsequence({selected}, {int(page[0])}, {int(page[1])})" if page is not None else selected
        declarations += "declare variable $expr external;\n"
        bindings["$expr"] = (prolog + body, "")
        keys = list(variables)
        declarations += "".join(f"declare variable $n{i} external; declare variable $v{i} external;\n"
                                for i in range(len(keys)))
        entries = "(" + ", ".join(f"map{{$n{i}: $v{i}}}" for i in range(len(keys))) + ")" if keys else "()"
        hits = X_EVAL.format(entries=f"map:merge({entries})", every="".join(predicate[n] for n in names),
                             db=db_literal, timeout=max(1, math.ceil(time_limit_s)))
        for i, name in enumerate(keys):
            value = variables[name]
            bindings[f"$n{i}"] = (name, "xs:string")
            bindings[f"$v{i}"] = (str(value), "xs:integer" if isinstance(value, int) else "xs:string")
    if page is None:
        result = "count($hits)"
    else:
        listed = "$hits" if xpath is not None else f"subsequence($hits, {int(page[0])}, {int(page[1])})"
        result = R_PAGE.format(page=listed, version=R_VERSION.format(db=db_literal) if versions_from_basex else "")
    text = Q_SELECT.format(declarations=declarations, id_from=len(f"/{db}/") + 1, meta=literal(meta_db),
                           db=db_literal, roots=roots, rest=rest, examine=examine, scan=int(scan_limit),
                           hits=hits, result=result)
    return text, bindings


def db_name(name: str) -> str:
    """A database name, checked before it enters a command or query text: [A-Za-z0-9_] (a
    collection name checked by check_collection after an alphanumeric prefix)."""
    invariant(DB_NAME.match(name) is not None, "a database name is [A-Za-z0-9_]")
    return name


def naming(template: str, db: str) -> str:
    """A query template with its database name ``{db}`` written in as a literal."""
    return template.replace("{db}", literal(db))


def literal(name: str) -> str:
    """A database name as an XQuery string literal."""
    return f"'{db_name(name)}'"


def versions_of(lines: Iterator[list[str]]) -> tuple[str, dict[str, tuple[int, bool]]]:
    """("ok" or what is damaged, id -> (version, live)) from BaseX's "<id> <version> l|d|t" lines
    (Q_STATUS_VERSIONS, Q_STATUS_RANGE)."""
    documents: dict[str, int] = {}
    tombstones: dict[str, int] = {}
    for doc_id, version, kind in lines:
        if kind == "t":
            return "damaged: version resources of the old layout (.v/ for every document)", {}
        held = documents if kind == "l" else tombstones
        if doc_id in held:
            return "damaged: a document path held twice (a batch of db:add interrupted?)", {}
        held[doc_id] = int(version)
    if any(version < 1 for version in documents.values()):
        return "damaged: a document without its version", {}
    # a document written again after its deletion may still have its tombstone: the higher
    # version is its state (a tombstone above a live document shows as "holds writes")
    versions = {doc_id: (version, False) for doc_id, version in tombstones.items()}
    for doc_id, version in documents.items():
        if version > versions.get(doc_id, (0, False))[0]:
            versions[doc_id] = (version, True)
    return "ok", versions
