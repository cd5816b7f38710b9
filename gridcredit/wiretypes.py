"""Wire types generated from the services' own frozen dataclasses, in one place.

A service's SOAP types say exactly what its core holds when they are made from the core's
dataclasses; the typed client reads them back into dataclasses the same way. One set of rules,
both directions::

    field type              on the wire (spyne / WSDL)                 in the client
    int                     xs:long, required                          int
    bool                    xs:boolean, required                       bool
    str, an Enum            xs:string, required (an enum as its value) str (text_mirror) or as declared
    datetime                ``<name>_us`` xs:long µs since the epoch   aware UTC datetime
    tuple[str, ...]         an array of xs:string                      tuple of str
    X | None                the same, minOccurs=0                      None when absent

    TransactionInfo = complex_model(ledger.Transaction, "TransactionInfo", NAMESPACE)   # service
    TransactionInfo(**wire_values(transaction))                                        # service → wire
    Transaction = text_mirror(ledger.Transaction, __name__)                             # client type
    from_wire(Transaction, zeep_value)                                                  # wire → client
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import types
import typing
from datetime import datetime

from .timeunits import datetime_from_us, datetime_to_us

REQUIRED = {"min_occurs": 1, "nillable": False}


def _optional(hint) -> tuple[object, bool]:
    """(the type without ``None``, whether ``None`` was allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return (members[0] if len(members) == 1 else typing.Union[tuple(members)]), True
    return hint, False


def _is_datetime(hint) -> bool:
    return isinstance(hint, type) and issubclass(hint, datetime)


def _is_tuple(hint) -> bool:
    return typing.get_origin(hint) is tuple


def wire_name(field_name: str, hint) -> str:
    """The field's name on the wire: ``<name>_us`` for a datetime."""
    return field_name + "_us" if _is_datetime(_optional(hint)[0]) else field_name


def complex_model(cls: type, name: str, namespace: str) -> type:
    """A spyne ``ComplexModel`` named ``name`` with the fields of dataclass ``cls`` (the table above)."""
    from spyne import Array, Boolean, ComplexModel, Long, Unicode

    hints = typing.get_type_hints(cls)
    members = []
    for field in dataclasses.fields(cls):
        base, optional = _optional(hints[field.name])
        if _is_tuple(base):
            members.append((field.name, Array(Unicode)))
            continue
        if _is_datetime(base) or base is int:
            spyne_type = Long
        elif base is bool:
            spyne_type = Boolean
        else:
            spyne_type = Unicode
        members.append((wire_name(field.name, base), spyne_type(min_occurs=0) if optional else spyne_type(**REQUIRED)))
    return type(name, (ComplexModel,), {"__namespace__": namespace, "_type_info": members})


def wire_values(value) -> dict:
    """The values of dataclass instance ``value`` as its ``complex_model`` takes them."""
    values = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if isinstance(item, datetime):
            values[field.name + "_us"] = datetime_to_us(item)
        elif isinstance(item, enum.Enum):
            values[field.name] = item.value
        elif isinstance(item, tuple):
            values[field.name] = list(item)
        else:
            values[field.name] = item
    return values


def array_items(value, item_name: str = "string") -> tuple:
    """A spyne ``Array(X)`` as zeep reads it — None, or an object whose member ``X`` (``string``
    for an array of xs:string) is a list or one item — as a tuple."""
    if value is None:
        return ()
    inner = getattr(value, item_name, value)
    if inner is None:
        return ()
    return tuple(inner) if isinstance(inner, (list, tuple)) else (inner,)


@functools.cache
def _reading(cls: type) -> tuple[tuple[str, str], ...]:
    """(field name, how it is read: ``datetime``, ``tuple`` or ``plain``) for each field of ``cls``."""
    hints = typing.get_type_hints(cls)
    kinds = []
    for field in dataclasses.fields(cls):
        base, _ = _optional(hints[field.name])
        kinds.append((field.name, "datetime" if _is_datetime(base) else "tuple" if _is_tuple(base) else "plain"))
    return tuple(kinds)


def from_wire(cls: type, value):
    """An instance of dataclass ``cls`` from what zeep read for its ``complex_model`` (or a mirror's)."""
    values = {}
    for name, kind in _reading(cls):
        if kind == "datetime":
            us = getattr(value, name + "_us", None)
            values[name] = None if us is None else datetime_from_us(us)
        elif kind == "tuple":
            values[name] = array_items(getattr(value, name, None))
        else:
            values[name] = getattr(value, name, None)
    return cls(**values)


def text_mirror(cls: type, module: str) -> type:
    """A frozen dataclass with the fields (and defaults) of dataclass ``cls``, each enum-typed one
    holding the member's text, as the wire carries it (``kind="charge"``); for a typed client."""
    def plain(hint):
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return str
        if isinstance(hint, types.UnionType):
            return functools.reduce(operator.or_, (plain(member) for member in typing.get_args(hint)))
        return hint

    hints = typing.get_type_hints(cls)
    mirrored = [(field.name, plain(hints[field.name]),
                 dataclasses.field(default=field.default) if field.default is not dataclasses.MISSING else
                 dataclasses.field())
                for field in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(cls.__name__, mirrored, frozen=True, slots=True, namespace={
        "__module__": module, "__doc__": f"The client's {cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}: "
                                         "enums as their text."})
