"""XPath 1.0 for both stores: one parser that admits only the documented subset, and its evaluation.

Callers hand the store XPath written by users (the LUTS's Query, the bank's history filter), so an
expression is parsed here before it reaches lxml or BaseX (``check_xpath``), and only what this
parser understood is evaluated — re-written from its syntax tree, never the caller's text:

* XPath 1.0 only (the W3C grammar), with the core function library — ``last position count
  local-name namespace-uri name string concat starts-with contains substring-before
  substring-after substring string-length normalize-space translate boolean not true false lang
  number sum floor ceiling round`` — and nothing else: no prefixed function (EXSLT's ``re:test``,
  lxml's extensions, BaseX's modules), no ``id()``, no ``namespace::`` axis, no XQuery/XPath 2.0
  syntax (``for``, ``if``, ``{…}``, comments, constructors). Each prefix must be bound in
  ``namespaces`` and each ``$variable`` in ``variables``.
* Static bounds (``StoreLimits``): at most ``xpath_predicate_depth_max`` predicates nested in one
  another and ``xpath_nodes_max`` syntax nodes. The time limit itself is held during evaluation by
  the store (the embedded store evaluates in a sandbox process it kills; BaseX stops
  ``xquery:eval`` at its timeout).
* lxml compiles the canonical XPath 1.0 text (``CheckedXPath.xpath1``) with EXSLT regular
  expressions and extensions off. BaseX evaluates ``CheckedXPath.xquery``: the same tree written
  as XQuery with XPath 1.0's conversions made explicit (XPath 1.0 is statically typed: node-set,
  number, string, boolean), so both stores give the same answers — e.g. ``@n > 3`` is true of a
  node whose value is not a number on neither store (XQuery alone would raise an error), and
  ``string(nodes)`` takes the first node on both.
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping

from lxml import etree

from gridcredit.errors import QueryError

from ._api import parse_untrusted, StoreLimits

NODES, NUMBER, STRING, BOOLEAN = "node-set", "number", "string", "boolean"

AXES = frozenset({"ancestor", "ancestor-or-self", "attribute", "child", "descendant", "descendant-or-self",
                  "following", "following-sibling", "parent", "preceding", "preceding-sibling", "self"})
NODE_TYPES = frozenset({"comment", "text", "processing-instruction", "node"})
OPERATOR_NAMES = frozenset({"and", "or", "mod", "div"})

# name: (fewest arguments, most (None: any), result type, conversion of each argument: "nodes" (must be
# a node-set), STRING, NUMBER, "any"; the last one repeats)
FUNCTIONS: dict[str, tuple[int, int | None, str, tuple[str, ...]]] = {
    "last": (0, 0, NUMBER, ()), "position": (0, 0, NUMBER, ()), "count": (1, 1, NUMBER, ("nodes",)),
    "local-name": (0, 1, STRING, ("nodes",)), "namespace-uri": (0, 1, STRING, ("nodes",)),
    "name": (0, 1, STRING, ("nodes",)), "string": (0, 1, STRING, ("any",)),
    "concat": (2, None, STRING, (STRING,)), "starts-with": (2, 2, BOOLEAN, (STRING,)),
    "contains": (2, 2, BOOLEAN, (STRING,)), "substring-before": (2, 2, STRING, (STRING,)),
    "substring-after": (2, 2, STRING, (STRING,)), "substring": (2, 3, STRING, (STRING, NUMBER)),
    "string-length": (0, 1, NUMBER, (STRING,)), "normalize-space": (0, 1, STRING, (STRING,)),
    "translate": (3, 3, STRING, (STRING,)), "boolean": (1, 1, BOOLEAN, ("any",)), "not": (1, 1, BOOLEAN, ("any",)),
    "true": (0, 0, BOOLEAN, ()), "false": (0, 0, BOOLEAN, ()), "lang": (1, 1, BOOLEAN, (STRING,)),
    "number": (0, 1, NUMBER, ("any",)), "sum": (1, 1, NUMBER, ("nodes",)), "floor": (1, 1, NUMBER, (NUMBER,)),
    "ceiling": (1, 1, NUMBER, (NUMBER,)), "round": (1, 1, NUMBER, (NUMBER,)),
}

_NAME_START = ("A-Z_a-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c-\u200d"
               "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff")
_NCNAME = f"[{_NAME_START}][{_NAME_START}\\-.0-9\u00b7\u0300-\u036f\u203f-\u2040]*"
_TOKEN = re.compile(rf"""\s*(?:
    (?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
  | (?P<literal>"[^"]*"|'[^']*')
  | (?P<var>\$(?:{_NCNAME}:)?{_NCNAME})
  | (?P<name>(?:{_NCNAME}:)?(?:{_NCNAME}|\*)|\*)
  | (?P<punct>\.\.|::|//|!=|<=|>=|[()\[\].@,/|+\-=<>])
)""", re.VERBOSE)
_NCNAME_ONLY = re.compile(f"^{_NCNAME}$")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str      # number literal var name op punct function nodetype axis end
    text: str
    at: int


def _tokens(text: str) -> list[_Token]:
    """XPath 1.0's lexical rules (section 3.7), including how ``*`` and operator names are told apart."""
    found: list[_Token] = []
    at = 0
    while True:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        if at >= len(text):
            found.append(_Token("end", "", at))
            return found
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            raise QueryError(f"XPath syntax error at character {at + 1}: {text[at:at + 20]!r} is not XPath 1.0 "
                             f"(only XPath 1.0 with its core functions is accepted)")
        kind = match.lastgroup
        value, start = match.group(kind), match.start(kind)
        previous = found[-1] if found else None
        # after a token that ends an operand, '*' multiplies and an NCName is an operator name
        operand_ended = previous is not None and not (
            previous.kind in ("op", "axis") or previous.text in ("@", "::", "(", "[", ","))
        if kind == "name":
            rest = text[match.end():].lstrip(" \t\r\n")
            if operand_ended and (value == "*" or value in OPERATOR_NAMES):
                kind = "op"
            elif operand_ended:
                raise QueryError(f"XPath syntax error at character {start + 1}: {value!r} where an "
                                 f"operator was expected")
            elif rest.startswith("::"):
                kind = "axis"
            elif rest.startswith("("):
                kind = "nodetype" if value in NODE_TYPES else "function"
        elif kind == "punct" and value in ("/", "//", "|", "+", "-", "=", "!=", "<", "<=", ">", ">="):
            kind = "op"
        found.append(_Token(kind, value, start))
        at = match.end()


# -- the syntax tree: tuples, first item the node kind -----------------------------------------
# ("or"|"and", a, b) ("cmp", op, a, b) ("arith", op, a, b) ("neg", a) ("union", a, b)
# ("path", absolute, start expression or None, steps) with steps [(axis, test, predicates)]
# ("filter", primary, predicates) ("var", name) ("literal", text) ("number", text) ("call", name, args)
# ("paren", expression); a test: ("name", qname) ("type", node type, literal or None)


class _Parser:
    def __init__(self, text: str, namespaces: Mapping[str, str], variables: Mapping[str, object],
                 limits: StoreLimits) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.position = 0
        self.namespaces = namespaces
        self.variables = variables
        self.limits = limits
        self.nodes = 0
        self.depth = 0            # predicates open around the current point

    # -- helpers --
    @property
    def token(self) -> _Token:
        return self.tokens[self.position]

    def take(self) -> _Token:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def error(self, what: str) -> QueryError:
        token = self.token
        shown = repr(token.text) if token.kind != "end" else "the end"
        return QueryError(f"XPath syntax error at character {token.at + 1}: {what}, found {shown}")

    def expect(self, text: str) -> None:
        if self.token.text != text or self.token.kind in ("literal", "end"):
            raise self.error(f"expected {text!r}")
        self.take()

    def node(self, item: tuple) -> tuple:
        self.nodes += 1
        if self.nodes > self.limits.xpath_nodes_max:
            raise QueryError(f"XPath expression too complex: more than {self.limits.xpath_nodes_max} parts")
        return item

    def prefixes(self) -> str:
        return ", ".join(f"{prefix} ({uri})" for prefix, uri in sorted(self.namespaces.items())) or "none"

    def check_prefix(self, qname: str, axis: str = "child") -> None:
        """A prefix must be declared; and where the documents' elements are in namespaces (some are
        declared), an element name without a prefix matches nothing (XPath 1.0 has no default
        namespace): refused, with the prefixes there are, instead of an empty answer."""
        if ":" in qname:
            prefix = qname.split(":", 1)[0]
            if prefix not in self.namespaces:
                raise QueryError(f"XPath uses the namespace prefix {prefix!r}, which is not declared; "
                                 f"the prefixes are {self.prefixes()}")
        elif qname != "*" and axis != "attribute" and self.namespaces:
            raise QueryError(f"XPath names the element {qname!r} without a prefix, so it matches nothing here "
                             f"(the elements are in namespaces): write it with one of the prefixes "
                             f"{self.prefixes()}, e.g. {sorted(self.namespaces)[0]}:{qname}")

    # -- grammar --
    def parse(self) -> tuple:
        expression = self.expr()
        if self.token.kind != "end":
            raise self.error("expected the end of the expression")
        return expression

    def expr(self) -> tuple:
        return self.binary(0)

    _LEVELS = (("or",), ("and",), ("=", "!="), ("<", "<=", ">", ">="), ("+", "-"), ("*", "div", "mod"))

    def binary(self, level: int) -> tuple:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.token.kind == "op" and self.token.text in self._LEVELS[level]:
            operator = self.take().text
            right = self.binary(level + 1)
            if operator in ("or", "and"):
                left = self.node((operator, left, right))
            elif level in (2, 3):
                left = self.node(("cmp", operator, left, right))
            else:
                left = self.node(("arith", operator, left, right))
        return left

    def unary(self) -> tuple:
        if self.token.kind == "op" and self.token.text == "-":
            self.take()
            return self.node(("neg", self.unary()))
        left = self.path()
        while self.token.kind == "op" and self.token.text == "|":
            self.take()
            left = self.node(("union", left, self.path()))
        return left

    def path(self) -> tuple:
        token = self.token
        if token.kind == "op" and token.text in ("/", "//"):
            self.take()
            steps: list = []
            if token.text == "//":
                steps.append(("descendant-or-self", ("type", "node", None), []))
                steps += self.relative()
            elif self._step_starts():
                steps += self.relative()
            return self.node(("path", True, None, steps))
        if token.kind in ("var", "literal", "number", "function") or (token.kind == "punct" and token.text == "("):
            primary = self.primary()
            predicates = self.predicates()
            start = self.node(("filter", primary, predicates)) if predicates else primary
            if self.token.kind == "op" and self.token.text in ("/", "//"):
                steps = []
                if self.take().text == "//":
                    steps.append(("descendant-or-self", ("type", "node", None), []))
                steps += self.relative()
                return self.node(("path", False, start, steps))
            return start
        if self._step_starts():
            return self.node(("path", False, None, self.relative()))
        raise self.error("expected an expression")

    def _step_starts(self) -> bool:
        token = self.token
        return token.kind in ("name", "axis", "nodetype") or (token.kind == "punct" and token.text in (".", "..", "@"))

    def relative(self) -> list:
        steps = [self.step()]
        while self.token.kind == "op" and self.token.text in ("/", "//"):
            if self.take().text == "//":
                steps.append(("descendant-or-self", ("type", "node", None), []))
            steps.append(self.step())
        return steps

    def step(self) -> tuple:
        token = self.token
        if token.kind == "punct" and token.text in (".", ".."):
            self.take()
            self.node(("step",))
            return ("self" if token.text == "." else "parent", ("type", "node", None), [])
        axis = "child"
        if token.kind == "axis":
            axis = self.take().text
            if axis == "namespace":
                raise QueryError("XPath: the namespace:: axis is not supported (BaseX has none)")
            if axis not in AXES:
                raise QueryError(f"unknown XPath axis {axis!r}")
            self.expect("::")
        elif token.kind == "punct" and token.text == "@":
            self.take()
            axis = "attribute"
        token = self.token
        if token.kind == "name":
            self.take()
            self.check_prefix(token.text, axis)
            test: tuple = ("name", token.text)
        elif token.kind == "nodetype":
            self.take()
            self.expect("(")
            literal = None
            if token.text == "processing-instruction" and self.token.kind == "literal":
                literal = self.take().text[1:-1]
                if not _NCNAME_ONLY.match(literal):
                    raise QueryError(f"processing-instruction({literal!r}): the target must be a name")
            self.expect(")")
            test = ("type", token.text, literal)
        else:
            raise self.error("expected a name test or node()/text()/comment()/processing-instruction()")
        self.node(("step",))
        return (axis, test, self.predicates())

    def predicates(self) -> list:
        found = []
        while self.token.kind == "punct" and self.token.text == "[":
            self.take()
            self.depth += 1
            if self.depth > self.limits.xpath_predicate_depth_max:
                raise QueryError(f"XPath expression nests more than {self.limits.xpath_predicate_depth_max} "
                                 f"predicates in one another")
            found.append(self.expr())
            self.depth -= 1
            self.expect("]")
        return found

    def primary(self) -> tuple:
        token = self.take()
        if token.kind == "var":
            name = token.text[1:]
            if name not in self.variables:
                raise QueryError(f"XPath uses the variable ${name}, which is not bound")
            return self.node(("var", name))
        if token.kind == "literal":
            return self.node(("literal", token.text[1:-1]))
        if token.kind == "number":
            return self.node(("number", token.text))
        if token.kind == "punct" and token.text == "(":
            inner = self.expr()
            self.expect(")")
            return self.node(("paren", inner))
        # a function call
        name = token.text
        if ":" in name:
            raise QueryError(f"XPath function {name}() is not allowed: only XPath 1.0's core functions are")
        if name not in FUNCTIONS:
            raise QueryError(f"XPath function {name}() is not allowed: only XPath 1.0's core functions are")
        self.expect("(")
        args = []
        if not (self.token.kind == "punct" and self.token.text == ")"):
            args.append(self.expr())
            while self.token.kind == "punct" and self.token.text == ",":
                self.take()
                args.append(self.expr())
        self.expect(")")
        fewest, most, _, _ = FUNCTIONS[name]
        if len(args) < fewest or (most is not None and len(args) > most):
            wanted = str(fewest) if fewest == most else f"{fewest} or more" if most is None else f"{fewest} to {most}"
            raise QueryError(f"XPath function {name}() takes {wanted} arguments, not {len(args)}")
        return self.node(("call", name, args))


def _type(node: tuple, variables: Mapping[str, object]) -> str:
    kind = node[0]
    if kind in ("or", "and", "cmp"):
        return BOOLEAN
    if kind in ("arith", "neg", "number"):
        return NUMBER
    if kind == "literal":
        return STRING
    if kind == "var":
        return NUMBER if isinstance(variables[node[1]], int) else STRING
    if kind == "call":
        return FUNCTIONS[node[1]][2]
    if kind == "paren":
        return _type(node[1], variables)
    return NODES        # path, filter, union


def _check_types(node: tuple, variables: Mapping[str, object]) -> None:
    """XPath 1.0's static rules: what must be a node-set is one (lxml and BaseX would fail later)."""
    kind = node[0]
    children: list[tuple] = []
    if kind in ("or", "and"):
        children = [node[1], node[2]]
    elif kind in ("cmp", "arith"):
        children = [node[2], node[3]]
    elif kind in ("neg", "paren"):
        children = [node[1]]
    elif kind == "union":
        children = [node[1], node[2]]
        for side in children:
            if _type(side, variables) != NODES:
                raise QueryError("XPath: both sides of '|' must be node-sets")
    elif kind == "filter":
        if _type(node[1], variables) != NODES:
            raise QueryError("XPath: a predicate [...] may follow only a node-set")
        children = [node[1], *node[2]]
    elif kind == "path":
        if node[2] is not None:
            if _type(node[2], variables) != NODES:
                raise QueryError("XPath: a path may continue '/' only from a node-set")
            children.append(node[2])
        for _, _, predicates in node[3]:
            children += predicates
    elif kind == "call":
        conversions = FUNCTIONS[node[1]][3]
        for number, arg in enumerate(node[2]):
            conversion = conversions[min(number, len(conversions) - 1)]
            if conversion == "nodes" and _type(arg, variables) != NODES:
                raise QueryError(f"XPath function {node[1]}() takes a node-set")
        children = node[2]
    for child in children:
        _check_types(child, variables)


# -- writing the tree back ---------------------------------------------------------------------

def _xpath1_literal(text: str) -> str:
    return f"'{text}'" if "'" not in text else f'"{text}"'


def _xquery_literal(text: str) -> str:
    return '"' + text.replace("&", "&amp;").replace('"', '""') + '"'


def _test(test: tuple, literal) -> str:
    if test[0] == "name":
        return test[1]
    if test[2] is None:
        return f"{test[1]}()"
    return f"{test[1]}({literal(test[2])})"


class _XPath1Writer:
    """Canonical XPath 1.0: every step with its axis, every operation in parentheses."""

    def write(self, node: tuple) -> str:
        return getattr(self, "w_" + node[0].replace("-", "_"))(node)

    def w_or(self, node):
        return f"({self.write(node[1])} or {self.write(node[2])})"

    def w_and(self, node):
        return f"({self.write(node[1])} and {self.write(node[2])})"

    def w_cmp(self, node):
        return f"({self.write(node[2])} {node[1]} {self.write(node[3])})"

    w_arith = w_cmp

    def w_neg(self, node):
        return f"(-{self.write(node[1])})"

    def w_union(self, node):
        return f"({self.write(node[1])} | {self.write(node[2])})"

    def w_paren(self, node):
        return f"({self.write(node[1])})"

    def w_var(self, node):
        return f"${node[1]}"

    def w_literal(self, node):
        return _xpath1_literal(node[1])

    def w_number(self, node):
        return node[1]

    def w_call(self, node):
        return f"{node[1]}({', '.join(self.write(a) for a in node[2])})"

    def predicates(self, predicates) -> str:
        return "".join(f"[{self.write(p)}]" for p in predicates)

    def w_filter(self, node):
        return f"({self.write(node[1])}){self.predicates(node[2])}"

    def steps(self, steps) -> str:
        return "/".join(f"{axis}::{_test(test, _xpath1_literal)}{self.predicates(predicates)}"
                        for axis, test, predicates in steps)

    def w_path(self, node):
        _, absolute, start, steps = node
        if absolute:
            return f"(/{self.steps(steps)})"
        if start is not None:
            return f"(({self.write(start)})/{self.steps(steps)})"
        return f"({self.steps(steps)})"


class _XQueryWriter(_XPath1Writer):
    """The same tree as XQuery 3.1 with XPath 1.0's conversions written out."""

    def __init__(self, variables: Mapping[str, object]) -> None:
        self.variables = variables

    def type(self, node: tuple) -> str:
        return _type(node, self.variables)

    def string(self, node: tuple) -> str:
        kind = self.type(node)
        if kind == STRING:
            return self.write(node)
        if kind == NODES:
            return f"string(({self.write(node)})[1])"
        return f"string({self.write(node)})"

    def number(self, node: tuple) -> str:
        kind = self.type(node)
        if kind == NUMBER:
            return self.write(node)
        if kind == NODES:
            return f"number(({self.write(node)})[1])"
        return f"number({self.write(node)})"

    def boolean(self, node: tuple) -> str:
        return self.write(node) if self.type(node) == BOOLEAN else f"boolean({self.write(node)})"

    def w_or(self, node):
        return f"({self.boolean(node[1])} or {self.boolean(node[2])})"

    def w_and(self, node):
        return f"({self.boolean(node[1])} and {self.boolean(node[2])})"

    def w_literal(self, node):
        return _xquery_literal(node[1])

    def w_number(self, node):
        return f"{node[1]}e0" if not node[1].endswith(".") else f"{node[1]}0e0"   # a double, as in XPath 1.0

    def w_neg(self, node):
        return f"(-{self.number(node[1])})"

    def w_arith(self, node):
        return f"({self.number(node[2])} {node[1]} {self.number(node[3])})"

    def w_cmp(self, node):
        """XPath 1.0 section 3.4: node-sets compare existentially by string value (= and !=) or by
        number (relational operators); otherwise boolean, then number, then string."""
        operator, left, right = node[1], node[2], node[3]
        types = (self.type(left), self.type(right))
        if operator in ("=", "!="):
            if types == (NODES, NODES):
                sides = (f"(({self.write(left)}) ! string(.))", f"(({self.write(right)}) ! string(.))")
            elif NODES in types:
                other = types[1] if types[0] == NODES else types[0]
                nodes, value = (left, right) if types[0] == NODES else (right, left)
                if other == BOOLEAN:
                    converted = (f"boolean({self.write(nodes)})", self.write(value))
                elif other == NUMBER:
                    converted = (f"(({self.write(nodes)}) ! number(.))", self.write(value))
                else:
                    converted = (f"(({self.write(nodes)}) ! string(.))", self.write(value))
                sides = converted if types[0] == NODES else converted[::-1]
            elif BOOLEAN in types:
                sides = (self.boolean(left), self.boolean(right))
            elif NUMBER in types:
                sides = (self.number(left), self.number(right))
            else:
                sides = (self.write(left), self.write(right))
        else:
            def numbers(side: tuple, other: str) -> str:
                kind = self.type(side)
                if kind == NODES and other == BOOLEAN:
                    return f"number(boolean({self.write(side)}))"
                if kind == NODES:
                    return f"(({self.write(side)}) ! number(.))"
                return self.number(side)
            sides = (numbers(left, types[1]), numbers(right, types[0]))
        return f"({sides[0]} {operator} {sides[1]})"

    def w_call(self, node):
        name, args = node[1], node[2]
        conversions = FUNCTIONS[name][3]
        written = []
        for number, arg in enumerate(args):
            conversion = conversions[min(number, len(conversions) - 1)]
            if name == "sum":
                return f"sum(({self.write(arg)}) ! number(.))"
            if name in ("local-name", "namespace-uri", "name"):
                written.append(f"({self.write(arg)})[1]")
            elif name in ("string", "number") and self.type(arg) == NODES:
                written.append(f"({self.write(arg)})[1]")
            elif conversion == STRING:
                written.append(self.string(arg))
            elif conversion == NUMBER:
                written.append(self.number(arg))
            else:
                written.append(self.write(arg))
        return f"{name}({', '.join(written)})"

    def steps(self, steps) -> str:
        return "/".join(f"{axis}::{_test(test, _xquery_literal)}{self.predicates(predicates)}"
                        for axis, test, predicates in steps)

    def w_path(self, node):
        _, absolute, start, steps = node
        if absolute and not steps:
            return "(/)"
        return super().w_path(node)


@dataclass(frozen=True, slots=True)
class CheckedXPath:
    """An expression ``check_xpath`` accepted: the same syntax tree written for each engine."""
    source: str
    xpath1: str        # canonical XPath 1.0, for lxml
    xquery: str        # XQuery with XPath 1.0's conversions, for BaseX (context: one document's root element)


_checked: OrderedDict[tuple, CheckedXPath] = OrderedDict()
_checked_lock = threading.Lock()


def check_xpath(xpath: str, namespaces: Mapping[str, str], variables: Mapping[str, object],
                limits: StoreLimits) -> CheckedXPath:
    """Parse ``xpath`` as XPath 1.0 under the rules in this module's docstring (QueryError if it
    breaks one); variables' Python types (int: number, str: string) type the expression."""
    key = (xpath, tuple(sorted(namespaces.items())), tuple(sorted((n, isinstance(v, int)) for n, v in variables.items())),
           limits.xpath_nodes_max, limits.xpath_predicate_depth_max)
    with _checked_lock:
        found = _checked.get(key)
        if found is not None:
            _checked.move_to_end(key)
            return found
    tree = _Parser(xpath, namespaces, variables, limits).parse()
    _check_types(tree, variables)
    checked = CheckedXPath(xpath, _XPath1Writer().write(tree), _XQueryWriter(variables).write(tree))
    with _checked_lock:
        _checked[key] = checked
        while len(_checked) > 512:
            _checked.popitem(last=False)
    return checked


def compile_xpath(checked: CheckedXPath, namespaces: Mapping[str, str]) -> etree.XPath:
    """lxml's compiled form of a checked expression: EXSLT regular expressions and extensions off."""
    try:
        return etree.XPath(checked.xpath1, namespaces=dict(namespaces), regexp=False, extensions=None,
                           smart_strings=False)
    except etree.XPathSyntaxError as error:
        raise QueryError(f"XPath syntax error in {checked.source!r}: {error}") from None


def matches(compiled: etree.XPath, tree: etree._ElementTree, variables: Mapping[str, str | int]) -> bool:
    """Effective boolean value of the expression with the document node as context."""
    try:
        value = compiled(tree, **variables)
    except etree.XPathEvalError as error:
        raise QueryError(f"XPath evaluation error: {error}") from None
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value != 0 and not math.isnan(value)
    if isinstance(value, (str, bytes, list)):
        return len(value) > 0
    return bool(value)


class TreeCache:
    """Parsed documents keyed by (collection, doc_id, version); bounded by total source bytes."""

    def __init__(self, bytes_max: int = 64_000_000) -> None:
        self._bytes_max = bytes_max
        self._bytes = 0
        self._trees: OrderedDict[tuple[str, str, int], tuple[etree._ElementTree, int]] = OrderedDict()
        self._lock = threading.Lock()

    def tree(self, key: tuple[str, str, int], xml: bytes, limits: StoreLimits) -> etree._ElementTree:
        with self._lock:
            hit = self._trees.get(key)
            if hit is not None:
                self._trees.move_to_end(key)
                return hit[0]
        tree = etree.ElementTree(parse_untrusted(xml, limits))
        with self._lock:
            if key not in self._trees:
                self._trees[key] = (tree, len(xml))
                self._bytes += len(xml)
                while self._bytes > self._bytes_max and self._trees:
                    _, (_, size) = self._trees.popitem(last=False)
                    self._bytes -= size
        return tree
