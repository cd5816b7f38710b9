"""XPath 1.0 evaluation with lxml for the embedded backend (one compiled expression, many documents)."""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Mapping

from lxml import etree

from gridcredit.errors import QueryError

from ._api import parse_untrusted, StoreLimits


def compile_xpath(xpath: str, namespaces: Mapping[str, str]) -> etree.XPath:
    try:
        return etree.XPath(xpath, namespaces=dict(namespaces), smart_strings=False)
    except etree.XPathSyntaxError as error:
        raise QueryError(f"XPath syntax error in {xpath!r}: {error}") from None


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
