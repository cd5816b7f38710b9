"""gridcredit.wiretypes: the one generator of wire types from the services' dataclasses — the
checked-in WSDLs are what it generates (tests/test_host.py regenerates them), and a value goes
to the wire and back unchanged."""
from __future__ import annotations

import dataclasses
import enum
from datetime import datetime, timezone
from types import SimpleNamespace

from gridcredit.wiretypes import array_items, complex_model, from_wire, text_mirror, wire_values


class Mood(enum.Enum):
    GOOD = "good"


@dataclasses.dataclass(frozen=True)
class Thing:
    name: str
    count: int
    flag: bool
    mood: Mood
    at: datetime | None
    tags: tuple[str, ...]
    note: str | None = None
    size: int | None = None


def test_the_model_follows_the_table():
    model = complex_model(Thing, "ThingInfo", "urn:test:1")
    members = dict(model._type_info)
    assert list(members) == ["name", "count", "flag", "mood", "at_us", "tags", "note", "size"]
    kinds = {name: (type_.get_type_name(), type_.Attributes.min_occurs) for name, type_ in members.items()
             if name != "tags"}
    assert kinds == {"name": ("string", 1), "count": ("long", 1), "flag": ("boolean", 1), "mood": ("string", 1),
                     "at_us": ("long", 0), "note": ("string", 0), "size": ("long", 0)}
    assert model.get_namespace() == "urn:test:1"


def test_a_value_goes_to_the_wire_and_back_unchanged():
    at = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    thing = Thing("x", 3, True, Mood.GOOD, at, ("a", "b"), None, 7)
    values = wire_values(thing)
    assert values["at_us"] == 253_402_300_799_999_999 and values["mood"] == "good" and values["tags"] == ["a", "b"]
    # zeep reads an array of strings as an object with a ``string`` list
    read = SimpleNamespace(**{**values, "tags": SimpleNamespace(string=values["tags"])})
    Mirror = text_mirror(Thing, __name__)
    assert from_wire(Mirror, read) == Mirror("x", 3, True, "good", at, ("a", "b"), None, 7)


def test_a_text_mirror_has_the_fields_and_defaults_with_enums_as_text():
    Mirror = text_mirror(Thing, __name__)
    assert [f.name for f in dataclasses.fields(Mirror)] == [f.name for f in dataclasses.fields(Thing)]
    assert Mirror.__dataclass_params__.frozen and Mirror("n", 1, False, "good", None, ()).note is None


def test_array_items_reads_every_shape_zeep_gives():
    assert array_items(None) == () and array_items(SimpleNamespace(string=None)) == ()
    assert array_items(SimpleNamespace(string=["a", "b"])) == ("a", "b")
    assert array_items(SimpleNamespace(HoldInfo="one"), "HoldInfo") == ("one",)
