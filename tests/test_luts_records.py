"""The LUTS record layer: durations, date-times, splitting with original bytes, normalization of
every sample in tests/data/ur-samples (and our own UR 2.0 / Gratia records), per-record errors,
attacks, limits and the XML view."""
from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gridcredit.errors import SecurityError
from gridcredit.services.luts import durations as D
from gridcredit.services.luts import records as R
from gridcredit.services.luts.durations import DurationError
from gridcredit.services.luts.records import NormalizedRecord, RecordError

SAMPLES = Path(__file__).parent / "data" / "ur-samples"   # other projects' usage records: see its SOURCES.md
DATA = Path(__file__).parent / "data" / "luts"
UTC = timezone.utc
UR1 = R.NS_UR1


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def one(data: bytes) -> NormalizedRecord:
    result = R.parse_batch(data)
    assert result.errors == ()
    assert len(result.records) == 1
    return result.records[0]


def c14n(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True)


def ur1_record(body: str, record_id: str | None = "rec-1", extra_ns: str = "") -> bytes:
    identity = f'<ur:RecordIdentity ur:recordId="{record_id}"/>' if record_id is not None else ""
    return (f'<ur:JobUsageRecord xmlns:ur="{UR1}"{extra_ns}>{identity}{body}</ur:JobUsageRecord>').encode()


# == durations ====================================================================================

@pytest.mark.parametrize("text, us, form", [
    ("P1DT2H3M4.5S", 93_784_500_000, "xsd"),
    ("PT3600S", 3_600_000_000, "xsd"),
    ("PT0S", 0, "xsd"),
    ("P0D", 0, "xsd"),
    ("P0Y0M1D", 86_400_000_000, "xsd"),
    ("PT1H", 3_600_000_000, "xsd"),
    ("PT45M48S", 2_748_000_000, "xsd"),
    ("PT234.1S", 234_100_000, "xsd"),
    ("PT24M54.0S", 1_494_000_000, "xsd"),
    ("PT.5S", 500_000, "xsd"),
    ("PT1.S", 1_000_000, "xsd"),
    ("PT0.000001S", 1, "xsd"),
    ("-PT1S", -1_000_000, "xsd"),
    ("-P1D", -86_400_000_000, "xsd"),
    ("  PT10S\n", 10_000_000, "xsd"),
    ("3600", 3_600_000_000, "seconds"),
    ("3600.0", 3_600_000_000, "seconds"),
    ("0.25", 250_000, "seconds"),
    ("+7", 7_000_000, "seconds"),
    ("-1.5", -1_500_000, "seconds"),
    ("123456789012.123456", 123_456_789_012_123_456, "seconds"),
])
def test_durations_parse_exactly(text, us, form):
    parsed = D.parse_duration(text)
    assert (parsed.us, parsed.form, parsed.rounded) == (us, form, False)
    assert type(parsed.us) is int


@pytest.mark.parametrize("text, us", [
    ("PT0.0000005S", 0),            # half to even: 0
    ("PT0.0000015S", 2),            # half to even: 2
    ("PT0.0000025S", 2),
    ("PT0.00000251S", 3),
    ("PT1.2345674999S", 1_234_567),
    ("0.0000009", 1),
])
def test_durations_round_below_a_microsecond_half_even(text, us):
    parsed = D.parse_duration(text)
    assert parsed.us == us and parsed.rounded


def test_durations_trailing_zeros_below_a_microsecond_are_not_rounding():
    assert D.parse_duration("PT1.000000000S") == D.Duration(us=1_000_000, form="xsd", rounded=False)


@pytest.mark.parametrize("text, reason", [
    ("P1M", "years or months"),
    ("P1Y", "years or months"),
    ("P0Y1M", "years or months"),
    ("-P2Y3D", "years or months"),
    ("P", "no number"),
    ("PT", "no number"),
    ("-P", "no number"),
    ("P1DT", "'T' with no hours"),
    ("", "empty"),
    ("   ", "empty"),
    ("one hour", "neither an xsd:duration"),
    ("PT1.5H", "neither an xsd:duration"),
    ("PT1,5S", "neither an xsd:duration"),
    ("1e3", "neither an xsd:duration"),
    ("P1S", "neither an xsd:duration"),
    ("PT1S2M", "neither an xsd:duration"),
    ("pt1s", "neither an xsd:duration"),
    ("P-1D", "neither an xsd:duration"),
    ("NaN", "neither an xsd:duration"),
    ("P" + "9" * 70 + "D", "longer than 64 characters"),
    ("P99999999999999D", "longer than"),
])
def test_durations_refused_with_a_reason(text, reason):
    with pytest.raises(DurationError, match=re.escape(reason)):
        D.parse_duration(text)


def test_duration_errors_are_domain_errors_with_a_code():
    with pytest.raises(DurationError) as caught:
        D.parse_duration("P1M")
    assert caught.value.code == "InvalidUsageRecord"
    assert "'P1M'" in str(caught.value)


@pytest.mark.parametrize("us, text", [
    (0, "PT0S"), (1, "PT0.000001S"), (500_000, "PT0.5S"), (93_784_500_000, "P1DT2H3M4.5S"),
    (86_400_000_000, "P1D"), (3_600_000_000, "PT1H"), (-1_000_000, "-PT1S"), (60_000_000, "PT1M"),
])
def test_format_duration_is_canonical(us, text):
    assert D.format_duration(us) == text


@given(st.integers(min_value=-D.DURATION_US_MAX, max_value=D.DURATION_US_MAX))
def test_format_then_parse_duration_round_trips(us):
    text = D.format_duration(us)
    assert D.parse_duration(text) == D.Duration(us=us, form="xsd", rounded=False)


@given(days=st.integers(0, 10**6), hours=st.integers(0, 10**4), minutes=st.integers(0, 10**5),
       seconds=st.integers(0, 10**7), fraction=st.text("0123456789", max_size=6),
       negative=st.booleans(), zero_years=st.booleans(), use=st.sets(st.sampled_from("DHMS"), min_size=1))
def test_generated_xsd_durations_parse_to_their_exact_sum(days, hours, minutes, seconds, fraction, negative,
                                                         zero_years, use):
    date = ("0Y0M" if zero_years else "") + (f"{days}D" if "D" in use else "")
    time = (f"{hours}H" if "H" in use else "") + (f"{minutes}M" if "M" in use else "")
    if "S" in use:
        time += f"{seconds}" + (f".{fraction}" if fraction else "") + "S"
    text = ("-" if negative else "") + "P" + date + (f"T{time}" if time else "")
    expected = Decimal(0)
    if "D" in use:
        expected += days * 86_400
    if "H" in use:
        expected += hours * 3_600
    if "M" in use:
        expected += minutes * 60
    if "S" in use:
        expected += Decimal(f"{seconds}.{fraction or '0'}")
    expected_us = int(expected * 1_000_000) * (-1 if negative else 1)
    assert D.parse_duration(text).us == expected_us


@given(st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False))
def test_generated_plain_seconds_parse_exactly(seconds):
    text = format(seconds, "f")
    parsed = D.parse_duration(text)
    assert parsed.form == "seconds"
    assert parsed.us == int(seconds * 1_000_000)


# == date-times ===================================================================================

@pytest.mark.parametrize("text, value, notes", [
    ("2013-02-09T15:39:16Z", utc(2013, 2, 9, 15, 39, 16), 0),
    ("2013-02-09T15:39:16.5Z", utc(2013, 2, 9, 15, 39, 16, 500_000), 0),
    ("2013-05-01T12:00:00+02:00", utc(2013, 5, 1, 10, 0, 0), 0),
    ("2013-05-01T00:30:00-01:30", utc(2013, 5, 1, 2, 0, 0), 0),
    ("2012-12-31T23:00:00-14:00", utc(2013, 1, 1, 13, 0, 0), 0),
    ("2013-02-28T24:00:00Z", utc(2013, 3, 1), 0),
    ("2012-12-31T24:00:00Z", utc(2013, 1, 1), 0),
    ("2016-02-29T00:00:00Z", utc(2016, 2, 29), 0),
    ("2013-02-09T15:39:16", utc(2013, 2, 9, 15, 39, 16), 1),               # naive: UTC, noted
    ("2013-02-09T15:39:16.1234569Z", utc(2013, 2, 9, 15, 39, 16, 123_456), 1),   # truncated, noted
    ("9999-12-31T23:59:59.999999999Z", utc(9999, 12, 31, 23, 59, 59, 999_999), 1),
    ("0001-01-01T00:00:00Z", utc(1, 1, 1), 0),
])
def test_datetimes_parse_to_aware_utc(text, value, notes):
    instant = D.parse_datetime(text)
    assert instant.value == value and instant.value.tzinfo is UTC
    assert len(instant.notes) == notes


def test_naive_datetime_is_taken_as_utc_and_says_so():
    instant = D.parse_datetime("2020-01-02T03:04:05")
    assert instant.value == utc(2020, 1, 2, 3, 4, 5)
    assert instant.notes == ("the date-time '2020-01-02T03:04:05' has no time zone; it was taken as UTC",)


@pytest.mark.parametrize("text, reason", [
    ("2013-02-30T00:00:00Z", "not a real date"),
    ("2013-13-01T00:00:00Z", "not a real date"),
    ("2013-02-09T25:00:00Z", "not a real date"),
    ("2013-02-09T24:00:01Z", "past 24:00:00"),
    ("2013-02-09T23:59:60Z", "leap second"),
    ("0000-01-01T00:00:00Z", "year 0000"),
    ("2013-02-09T00:00:00+14:30", "beyond ±14:00"),
    ("2013-02-09T00:00:00+01:60", "beyond ±14:00"),
    ("0001-01-01T00:00:00+01:00", "outside the years"),
    ("9999-12-31T23:00:00-02:00", "outside the years"),
    ("2013-02-09 15:39:16Z", "not an xsd:dateTime"),
    ("2013-02-09", "not an xsd:dateTime"),
    ("1360424356", "not an xsd:dateTime"),
    ("2013-2-9T15:39:16Z", "not an xsd:dateTime"),
    ("12013-02-09T15:39:16Z", "not an xsd:dateTime"),
    ("", "empty"),
])
def test_bad_datetimes_are_refused(text, reason):
    with pytest.raises(DurationError, match=re.escape(reason)):
        D.parse_datetime(text)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       st.integers(-14 * 60, 14 * 60))
def test_datetimes_round_trip_through_any_offset(naive, offset_minutes):
    moment = naive.replace(tzinfo=UTC)
    zone = timezone(timedelta(minutes=offset_minutes))
    local = moment.astimezone(zone)
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = local.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    text = f"{local.year:04d}" + text[text.index("-"):] + f".{local.microsecond:06d}{sign}{hours:02d}:{minutes:02d}"
    assert D.parse_datetime(text).value == moment
    assert D.parse_datetime(D.format_datetime(moment)).value == moment
    assert D.datetime_from_us(D.datetime_to_us(moment)) == moment


def test_datetime_helpers():
    assert D.format_datetime(utc(2013, 2, 9, 15, 39, 16)) == "2013-02-09T15:39:16Z"
    assert D.format_datetime(utc(2013, 2, 9, 15, 39, 16, 500_000)) == "2013-02-09T15:39:16.5Z"
    assert D.format_datetime(utc(5, 1, 1)) == "0005-01-01T00:00:00Z"
    assert D.datetime_to_us(utc(1970, 1, 1, 0, 0, 1)) == 1_000_000
    assert D.datetime_to_us(utc(1969, 12, 31, 23, 59, 59, 999_999)) == -1
    with pytest.raises(ValueError):
        D.format_datetime(datetime(2013, 1, 1))


# == the samples from the wild ====================================================================

def test_sample_sgas_ur1_minimal():
    data = sample("sgas-luts3-UR1-minimal.xml")
    sources = R.split_records(data)
    assert len(sources) == 1 and sources[0].whole_document and sources[0].data == data
    assert one(data) == NormalizedRecord(
        format="ur1", record_id="gsiftp://example.org/jobs/1", create_time=utc(2009, 8, 9, 9, 6, 52),
        global_job_id="gsiftp://example.org/jobs/1", job_name="test job 1",
        user_dn="/O=Grid/O=NorduGrid/OU=ndgf.org/CN=Test User", machine="benedict.grid.aau.dk",
        charge="7.4", charge_micro=7_400_000, start_time=utc(2009, 8, 7, 9, 6, 37),
        end_time=utc(2009, 8, 7, 9, 6, 52), wall_us=234_100_000)


def test_sample_sgas_usagerecords_container_with_two_records():
    data = sample("sgas-luts3-CUR-usagerecords-set.xml")
    result = R.parse_batch(data)
    assert result.errors == ()
    user = "/O=Grid/O=NorduGrid/OU=ndgf.org/CN=Test User"
    assert result.records == (
        NormalizedRecord(format="ur1", record_id="gsiftp://example.org/jobs/3", create_time=utc(2009, 10, 11, 9, 6, 52),
                         global_job_id="gsiftp://example.org/jobs/3", job_name="test job 3", user_dn=user,
                         machine="benedict.grid.aau.dk", start_time=utc(2009, 10, 11, 9, 6, 37),
                         end_time=utc(2009, 10, 11, 9, 6, 52), wall_us=456_000_000),
        NormalizedRecord(format="ur1", record_id="gsiftp://example.org/jobs/4", create_time=utc(2009, 12, 13, 9, 6, 52),
                         global_job_id="gsiftp://example.org/jobs/4", job_name="test job 4", user_dn=user,
                         machine="fyrgrid.grid.aau.dk", start_time=utc(2009, 12, 13, 9, 6, 37),
                         end_time=utc(2009, 12, 13, 9, 6, 52), wall_us=678_000_000),
    )
    assert [source.record_id for source in R.split_records(data)] == [
        "gsiftp://example.org/jobs/3", "gsiftp://example.org/jobs/4"]
    assert R.record_month(result.records[1]) == "2009-12"


def test_sample_sgas_arc_logger_with_vo_and_extensions():
    record = one(sample("sgas-luts3-URT-arc-logger-vo-filetransfers.xml"))
    assert record == NormalizedRecord(
        format="ur1", record_id="zalizo.uio.no:21305", create_time=utc(2010, 10, 22, 14, 51, 18),
        global_job_id="gsiftp://test.ndgf.org:2811/jobs/1125412877590561135129704", local_job_id="21305",
        user_dn="/O=Grid/O=NorduGrid/OU=ndgf.org/CN=Test User", local_user="sgastest",
        vo="atlas", vo_group="/atlas", vo_fqans=("/atlas", "/atlas/lcg1", "/atlas/no"),   # group as a path (11.6)
        machine="zalizo.uio.no", host="zalizo.uio.no", queue="fork",
        status="completed", status_original="completed", exit_code=0,
        submit_time=utc(2010, 10, 22, 14, 50, 56),              # from the deisa:SubmitTime extension
        start_time=utc(2010, 10, 22, 14, 51, 8), end_time=utc(2010, 10, 22, 14, 51, 18),
        wall_us=10_000_000, cpu_us=0, cpu_user_us=0, cpu_system_us=0,   # sgas:UserTime / sgas:KernelTime
        processors=1, nodes=1)


def test_sample_gracc_pnnl_pbs_example():
    record = one(sample("gracc-JobUsageRecord02-pnnl-pbs-urwg-example.xml"))
    assert record == NormalizedRecord(
        format="ur1", record_id="http://www.emsl.pnl.gov/mscf/colony/PBS.1234.0",
        create_time=utc(2003, 8, 13, 18, 56, 56), local_job_id="PBS.1234.0", local_user="scottmo",
        # MachineName "Colony": a host name, lower-case in the view (issue 11.6)
        project="mscfops", machine="colony", queue="batch", status="completed", status_original="completed",
        start_time=utc(2003, 8, 13, 17, 34, 50), end_time=utc(2003, 8, 13, 18, 37, 38), wall_us=1_000_000,
        processors=4, nodes=2, memory_bytes=1234 * 1024**2, charge="2870", charge_micro=2_870_000_000)


def test_sample_gracc_nasa_pbs_example_numeric_status_and_mixed_prefixes():
    record = one(sample("gracc-JobUsageRecord03-nasa-pbs-urwg-example.xml"))
    assert record == NormalizedRecord(
        format="ur1", record_id="urn:nasa:arc:usage:82125.lomax.nas.nasa.gov:0",
        create_time=utc(2003, 8, 15, 14, 25, 56), local_job_id="82125.lomax.nas.nasa.gov", local_user="foobar",
        project="g13563", host="lomax.nas.nasa.gov", queue="lomax",
        status="completed", status_original="0", exit_code=0,
        end_time=utc(2003, 6, 16, 8, 24, 32), wall_us=2_748_000_000, cpu_us=15_000_000, processors=32,
        memory_bytes=1_060_991 * 1024, memory_type="virtual", memory_metric="max",
        warnings=("Status '0' is a number; it was read as an exit code (completed)",))


def test_sample_apel_car_from_arc():
    data = sample("apel-car2-arc-emi-computerecord.xml")
    record = one(data)
    assert record == NormalizedRecord(
        format="car", record_id="ur-pgs03-T1eKDmSEROhnyOkhppswXjgoABFKDmABFKDmzQNKDmABFKDm4BxvIn",
        create_time=utc(2013, 2, 9, 15, 39, 16),
        global_job_id="gsiftp://pgs03.grid.upjs.sk:2811/jobs/T1eKDmSEROhnyOkhppswXjgoABFKDmABFKDmzQNKDmABFKDm4BxvIn",
        local_job_id="jobid10", user_dn="/DC=eu/DC=KnowARC/O=nagios/CN=demo1", local_user="gridtest",
        site="PGS03-GRID-UPJS-SK", machine="pgs03.grid.upjs.sk", host="pgs03",
        submit_host="gsiftp://pgs03.grid.upjs.sk:2811/jobs", queue="gridlong",
        status="completed", status_original="completed", exit_code=0,
        start_time=utc(2013, 2, 9, 15, 9, 16), end_time=utc(2013, 2, 9, 15, 11, 41),
        wall_us=4_000_000, cpu_us=3_000_000, cpu_user_us=1_000_000, cpu_system_us=2_000_000, nodes=2,
        memory_bytes=2368 * 1024, memory_type="Physical", memory_metric="max")


def test_every_sample_ingests_and_round_trips_through_the_view():
    files = sorted(SAMPLES.glob("*.xml")) + sorted(DATA.glob("*-record.xml"))
    assert len(files) == 8
    for path in files:
        result = R.parse_batch(path.read_bytes())
        assert result.errors == (), path.name
        for record in result.records:
            assert R.from_bytes(R.to_bytes(record)) == record
            assert R.from_element(R.to_element(record)) == record


def test_the_urf_schema_is_not_a_record_document():
    with pytest.raises(RecordError, match="root element is schema"):
        R.parse_batch(sample("gfd98-urf.xsd"))


# == our UR 2.0 and Gratia records ================================================================

def test_ur2_compute_record():
    record = one((DATA / "ur2-compute-record.xml").read_bytes())
    assert record == NormalizedRecord(
        format="ur2", record_id="ur2.example.org/2013/record-0001", create_time=utc(2013, 5, 1, 10, 0, 0),
        global_job_id="https://ce.example.org:8443/arex/0001", local_job_id="4711.batch",
        job_name="protein fold 7",
        user_dn="/DC=org/DC=example/O=Example/CN=Alice Example",       # the opensslCompat one of two
        local_user="alice01", local_group="physics",
        vo="biomed", vo_group="/biomed/lab", vo_role="production",
        vo_fqans=("/biomed/lab/Role=production/Capability=NULL",),
        site="EXAMPLE-SITE", machine="cluster.example.org", host="node01.example.org",  # the primary Host
        submit_host="ce.example.org", queue="long", status="failed", status_original="failed", exit_code=137,
        start_time=utc(2013, 4, 30, 8, 0, 0), end_time=utc(2013, 5, 1, 10, 3, 4, 500_000),
        wall_us=93_784_500_000, cpu_us=81_000_250_000, cpu_user_us=80_000_000_000, cpu_system_us=1_000_250_000,
        processors=8, nodes=1,                                          # the unqualified (total) Processors
        memory_bytes=1_610_612_736, memory_type="Physical", memory_metric="max",   # 1.5 GB, physical max
        charge="12.3456789", charge_micro=12_345_679, charge_unit="credits",
        warnings=("Charge '12.3456789' has more than 6 decimals; charge_micro was rounded half to even",))


def test_gratia_urwg_record():
    record = one((DATA / "gratia-urwg-slurm-record.xml").read_bytes())
    assert record.format == "gratia"
    assert record.record_id == "cms.example:3444492.622"
    assert record.user_dn == "/DC=ch/DC=cern/OU=computers/CN=cmspilot01/vocms080.cern.ch"
    assert (record.vo, record.vo_fqans) == ("cms", ("/cms/uscms/Role=pilot/Capability=NULL",))
    assert (record.site, record.project, record.queue, record.local_user) == ("Example-HPC", "avery", "hpg1-compute", "cmspilot")
    assert (record.status, record.exit_code) == ("completed", 0)
    assert (record.wall_us, record.cpu_user_us, record.cpu_system_us, record.cpu_us) == (
        1_494_000_000, 34_920_000, 29_000_000, 63_920_000)
    assert (record.processors, record.memory_bytes, record.memory_metric) == (8, 20_480 * 1024, "total")
    assert (record.start_time, record.end_time) == (utc(2019, 3, 26, 19, 17, 32), utc(2019, 3, 26, 19, 42, 26))


# == original bytes ===============================================================================

def test_single_record_documents_are_kept_whole_byte_for_byte():
    for name in ("sgas-luts3-UR1-minimal.xml", "gracc-JobUsageRecord02-pnnl-pbs-urwg-example.xml",
                 "sgas-luts3-URT-arc-logger-vo-filetransfers.xml"):
        data = sample(name)
        (source,) = R.split_records(data)
        assert source.data == data and source.whole_document and not source.transcoded


def test_records_in_a_container_are_their_exact_byte_range_plus_inherited_declarations():
    data = sample("sgas-luts3-CUR-usagerecords-set.xml")
    sources = R.split_records(data)
    declaration = b' xmlns:ur="http://schema.ogf.org/urf/2003/09/urf"'
    for source in sources:
        assert not source.whole_document
        assert source.data.count(declaration) == 1
        original = source.data.replace(declaration, b"", 1)
        assert original in data                                    # every other byte as received
        assert source.data.startswith(b"<ur:JobUsageRecord" + declaration + b">")
    first_start = data.index(b"<ur:JobUsageRecord>")
    first_end = data.index(b"</ur:JobUsageRecord>") + len(b"</ur:JobUsageRecord>")
    assert sources[0].data.replace(declaration, b"", 1) == data[first_start:first_end]


def test_car_record_keeps_its_own_declarations_empty_element_form_and_gets_the_default_namespace():
    data = sample("apel-car2-arc-emi-computerecord.xml")
    (source,) = R.split_records(data)
    assert source.data.startswith(
        b'<UsageRecord xmlns:urf="http://eu-emi.eu/namespaces/2012/11/computerecord" '
        b'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xmlns="http://eu-emi.eu/namespaces/2012/11/computerecord">')
    assert b'nordugrid-arc 3.0.0rc5"></Middleware>' in source.data   # not re-serialized as <…/>
    assert source.data.endswith(b"<Host>pgs03.grid.upjs.sk</Host></UsageRecord>")


def test_split_bytes_parse_to_the_same_element_as_in_the_batch():
    for path in [SAMPLES / "apel-car2-arc-emi-computerecord.xml", SAMPLES / "sgas-luts3-CUR-usagerecords-set.xml",
                 DATA / "mixed-batch.xml"]:
        document = etree.fromstring(path.read_bytes())
        children = [child for child in document if isinstance(child.tag, str)]
        sources = R.split_records(path.read_bytes())
        assert len(sources) == len(children)
        for source, child in zip(sources, children):
            alone = etree.fromstring(source.data)
            assert c14n(alone) == c14n(child)
            from_bytes_only = dataclasses.replace(source, element=None)
            try:
                expected = R.read_source(source)
            except RecordError as error:
                with pytest.raises(RecordError, match=re.escape(str(error))):
                    R.read_source(from_bytes_only)
            else:
                assert R.read_source(from_bytes_only) == expected


TRICKY_CONTAINER = (
    '<?xml version="1.0" encoding="{encoding}"?>\n'
    '<!-- before the root: <ur:JobUsageRecord> -->\n'
    '<ur:UsageRecords xmlns:ur="{ns}" xmlns:x="urn:x" xmlns="urn:default">'
    '<?pi <ur:JobUsageRecord> ?>'
    '<ur:JobUsageRecord x:note="a > b &amp; \'c\'"><ur:RecordIdentity ur:recordId="r-1"/>'
    '<ur:UserIdentity><ur:GlobalUserName>/CN=Jöns Jäger/CN=日本</ur:GlobalUserName></ur:UserIdentity>'
    '<x:Ext><![CDATA[</ur:JobUsageRecord> <ur:JobUsageRecord>]]></x:Ext>'
    '<!-- </ur:JobUsageRecord> --><x:Ext a=\'>\'/><ur:JobUsageRecord/></ur:JobUsageRecord>\r\n'
    "<ur:JobUsageRecord xmlns:x='urn:other'><ur:RecordIdentity ur:recordId='r-2'/></ur:JobUsageRecord>"
    '<ur:JobUsageRecord\n/>'
    '</ur:UsageRecords>'
)


@pytest.mark.parametrize("encoding", ["UTF-8", "UTF-16", "ISO-8859-1"])
def test_splitting_survives_markup_in_comments_cdata_attributes_and_other_encodings(encoding):
    text = TRICKY_CONTAINER.format(encoding=encoding, ns=UR1)
    if encoding == "ISO-8859-1":
        text = text.replace("/CN=日本", "")
    data = text.encode(encoding.lower())
    sources = R.split_records(data)
    assert [source.record_id for source in sources] == ["r-1", "r-2", None]
    assert all(source.transcoded == (encoding != "UTF-8") for source in sources)
    document = etree.fromstring(data)
    for source, child in zip(sources, [c for c in document if isinstance(c.tag, str)]):
        assert c14n(etree.fromstring(source.data)) == c14n(child)
    first = sources[0].data.decode("utf-8")
    assert first.startswith('<ur:JobUsageRecord x:note="a > b &amp; \'c\'" xmlns="urn:default" '
                            f'xmlns:ur="{UR1}" xmlns:x="urn:x">')
    assert first.endswith("<ur:JobUsageRecord/></ur:JobUsageRecord>")
    assert "<![CDATA[</ur:JobUsageRecord> <ur:JobUsageRecord>]]>" in first
    second = sources[1].data.decode("utf-8")
    assert second == (f"<ur:JobUsageRecord xmlns:x='urn:other' xmlns=\"urn:default\" xmlns:ur=\"{UR1}\">"
                      "<ur:RecordIdentity ur:recordId='r-2'/></ur:JobUsageRecord>")
    assert sources[2].data.decode("utf-8") == (
        f'<ur:JobUsageRecord\n xmlns="urn:default" xmlns:ur="{UR1}" xmlns:x="urn:x"/>')
    result = R.parse_batch(data)
    expected_dn = "/CN=Jöns Jäger" + ("" if encoding == "ISO-8859-1" else "/CN=日本")
    assert result.records[0].user_dn == expected_dn
    assert result.records[1].record_id == "r-2"
    assert result.outcomes[2].error.startswith("record number 3 in the document (no readable record id): ")


def test_a_namespace_declaration_lookalike_inside_an_attribute_value_declares_nothing():
    data = (f'<ur:UsageRecords xmlns:ur="{UR1}"><ur:JobUsageRecord xmlns:x="urn:x" x:a=\' xmlns:ur="bogus\'>'
            '<ur:RecordIdentity ur:recordId="q"/></ur:JobUsageRecord></ur:UsageRecords>').encode()
    (source,) = R.split_records(data)
    assert source.data.endswith(f' xmlns:ur="{UR1}"><ur:RecordIdentity ur:recordId="q"/></ur:JobUsageRecord>'.encode())
    assert R.read_source(dataclasses.replace(source, element=None)).record_id == "q"


# == per-record errors in a batch =================================================================

def test_a_batch_with_broken_records_among_good_ones():
    result = R.parse_batch((DATA / "mixed-batch.xml").read_bytes())
    assert [outcome.ok for outcome in result.outcomes] == [True, False, False, False, True, True]
    assert [record.record_id for record in result.records] == ["good-1", "car-in-ur1-batch", "good-2"]
    assert result.errors == (
        "record number 2 in the document (no readable record id): the record has no RecordIdentity"
        " (its record id is required)",
        "record 'bad-duration' (number 3 in the document): WallDuration: the duration 'one hour' is neither"
        " an xsd:duration (e.g. PT1H2M3.5S) nor a number of seconds",
        "record 'wrong-namespace' (number 4 in the document): the element is JobUsageRecord in namespace"
        " 'urn:example:not-a-usage-record', which is not a usage-record namespace (known: "
        + ", ".join(R.FORMATS) + ")",
    )
    good_1, car, good_2 = result.records
    assert (good_1.user_dn, good_1.vo, good_1.wall_us, good_1.cpu_us) == (
        "/O=Grid/CN=Bob & Carol", "ops", 3_600_000_000, 1_800_000_000)
    assert good_1.warnings == ("WallDuration '3600' is a number of seconds, not an xsd:duration; it was read as seconds",)
    assert (car.format, car.create_time, car.wall_us) == ("car", utc(2020, 1, 2), 60_000_000)
    assert car.warnings == ("RecordIdentity/@createTime: the date-time '2020-01-02T00:00:00' has no time zone;"
                            " it was taken as UTC",)
    assert (good_2.status, good_2.status_original, good_2.charge, good_2.charge_micro) == (
        "started", "running", "150", 150_000_000)


def test_a_ten_megabyte_record_is_refused_alone():
    size = 10_485_760
    head = (f'<ur:JobUsageRecord xmlns:ur="{UR1}" xmlns:f="urn:filler">'
            '<ur:RecordIdentity ur:recordId="big"/><f:Fill>').encode()
    tail = b"</f:Fill></ur:JobUsageRecord>"
    piece = b"<f:p>" + b"x" * 1000 + b"</f:p>"
    filler_size = size - len(head) - len(tail)
    filler = piece * (filler_size // len(piece))
    filler += b"<f:q>" + b"y" * (filler_size - len(filler) - 11) + b"</f:q>"
    big = head + filler + tail
    assert len(big) == size
    good = ur1_record("<ur:Status>completed</ur:Status>", "small").replace(f' xmlns:ur="{UR1}"'.encode(), b"")
    data = f'<ur:UsageRecords xmlns:ur="{UR1}">'.encode() + good + big + good.replace(b"small", b"small-2") \
        + b"</ur:UsageRecords>"
    result = R.parse_batch(data)
    assert [record.record_id for record in result.records] == ["small", "small-2"]
    assert result.errors == ("record 'big' (number 2 in the document): the record is 10,485,760 bytes;"
                             " at most 1,048,576 are accepted",)


def test_a_single_record_document_over_the_record_limit_is_refused_as_a_record():
    data = ur1_record("<ur:Status>completed</ur:Status>" + "<x:p xmlns:x='urn:x'>aaaa</x:p>" * 100)
    result = R.parse_batch(data, R.BatchLimits(record_bytes_max=1000))
    assert result.errors == (f"record 'rec-1' (number 1 in the document): the record is {len(data):,} bytes;"
                             " at most 1,000 are accepted",)


def test_more_records_than_the_batch_limit_refuse_the_batch():
    records = "".join(f'<ur:JobUsageRecord><ur:RecordIdentity ur:recordId="r{i}"/></ur:JobUsageRecord>'
                      for i in range(11))
    data = f'<ur:UsageRecords xmlns:ur="{UR1}">{records}</ur:UsageRecords>'.encode()
    assert len(R.parse_batch(data, R.BatchLimits(records_max=11)).records) == 11
    with pytest.raises(RecordError, match="the document has 11 records; at most 10 are accepted"):
        R.parse_batch(data, R.BatchLimits(records_max=10))


def test_a_document_over_the_document_limit_is_refused_whole():
    data = sample("sgas-luts3-CUR-usagerecords-set.xml")
    with pytest.raises(SecurityError, match="at most 100 are accepted"):
        R.parse_batch(data, R.BatchLimits(document_bytes_max=100))


def test_ten_thousand_records_in_one_batch():
    record = ('<JobUsageRecord><RecordIdentity recordId="job-{i}"/><Status>completed</Status>'
              '<WallDuration>PT{i}S</WallDuration></JobUsageRecord>')
    data = (f'<UsageRecords xmlns="{R.NS_UR2}">' + "".join(record.format(i=i) for i in range(10_000))
            + "</UsageRecords>").encode()
    result = R.parse_batch(data)
    assert len(result.records) == 10_000 and result.errors == ()
    assert result.records[9_999].wall_us == 9_999_000_000
    assert result.records[9_999].warnings == ()


def test_non_record_children_of_a_container_are_per_record_errors():
    data = (f'<ur:UsageRecords xmlns:ur="{UR1}"><ur:Foo/><ur:JobUsageRecord>'
            '<ur:RecordIdentity ur:recordId="ok"/></ur:JobUsageRecord><ur:UsageRecords/></ur:UsageRecords>').encode()
    result = R.parse_batch(data)
    assert [record.record_id for record in result.records] == ["ok"]
    assert result.errors == (
        f"record number 1 in the document (no readable record id): the element Foo in namespace '{UR1}'"
        " is not a usage record",
        f"record number 3 in the document (no readable record id): the element UsageRecords in namespace '{UR1}'"
        " is not a usage record",
    )


def test_an_empty_container_is_an_empty_batch():
    assert R.parse_batch(f'<UsageRecords xmlns="{R.NS_CAR}"/>'.encode()).outcomes == ()
    assert R.parse_batch(f'<UsageRecords xmlns="{R.NS_CAR}"> <!-- none --> </UsageRecords>'.encode()).outcomes == ()


# == whole-document refusals ======================================================================

@pytest.mark.parametrize("data, error, reason", [
    (b'<JobUsageRecord xmlns="urn:example:wrong"><RecordIdentity recordId="x"/></JobUsageRecord>',
     RecordError, "root element is JobUsageRecord in namespace 'urn:example:wrong'"),
    (b'<JobUsageRecord><RecordIdentity recordId="x"/></JobUsageRecord>', RecordError,
     "root element is JobUsageRecord in no namespace"),
    (b'<UsageRecords xmlns="http://schema.ogf.org/urf/2003/09/urf-typo"/>', RecordError, "root element is UsageRecords"),
    (b"garbage, not XML", SecurityError, "not well-formed"),
    (b"\x00\x01\x02\xff\xfe binary", SecurityError, "not well-formed"),
    (b"<ur:JobUsageRecord xmlns:ur='http://schema.ogf.org/urf/2003/09/urf'>", SecurityError, "not well-formed"),
    (b"", SecurityError, "empty"),
    (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
     b'<ur:JobUsageRecord xmlns:ur="http://schema.ogf.org/urf/2003/09/urf"><ur:RecordIdentity ur:recordId="&xxe;"/>'
     b'</ur:JobUsageRecord>', SecurityError, "DTD or entities"),
    (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
     b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]><ur:UsageRecords xmlns:ur="http://schema.ogf.org/urf/2003/09/urf">'
     b'<ur:JobUsageRecord><ur:RecordIdentity ur:recordId="&lol3;"/></ur:JobUsageRecord></ur:UsageRecords>',
     SecurityError, "DTD or entities"),
    (b'<ur:JobUsageRecord xmlns:ur="http://schema.ogf.org/urf/2003/09/urf"><ur:RecordIdentity ur:recordId="&ext;"/>'
     b'</ur:JobUsageRecord>', SecurityError, "not well-formed"),
    ("<?xml version='1.0' encoding='UTF-16'?><!DOCTYPE r SYSTEM 'http://example.org/x.dtd'><r/>".encode("utf-16"),
     SecurityError, "DTD or entities"),
])
def test_unreadable_documents_are_refused_whole(data, error, reason):
    with pytest.raises(error, match=re.escape(reason)):
        R.parse_batch(data)


def test_deep_nesting_is_refused():
    deep = "<x:a xmlns:x='urn:x'>" * 70 + "</x:a>" * 70
    with pytest.raises(SecurityError, match="nested deeper than 64"):
        R.parse_batch(ur1_record(deep))


# == normalize: lenient readings and per-record refusals ========================================

def normalize(data: bytes) -> NormalizedRecord:
    return R.normalize(etree.fromstring(data))


@pytest.mark.parametrize("body, record_id, reason", [
    ("", None, "has no RecordIdentity"),
    ('<ur:RecordIdentity ur:createTime="2020-01-01T00:00:00Z"/>', None, "RecordIdentity has no recordId"),
    ('<ur:RecordIdentity ur:recordId="   "/>', None, "RecordIdentity has no recordId"),
    ("<ur:WallDuration>P1M</ur:WallDuration>", "r", "WallDuration: the duration 'P1M' counts years or months"),
    ("<ur:WallDuration>-PT5S</ur:WallDuration>", "r", "WallDuration: the duration '-PT5S' is negative"),
    ("<ur:CpuDuration ur:usageType='user'>PT1X</ur:CpuDuration>", "r", "CpuDuration (user): the duration 'PT1X'"),
    ("<ur:StartTime>yesterday</ur:StartTime>", "r", "StartTime: the date-time 'yesterday' is not an xsd:dateTime"),
    ("<ur:Processors>four</ur:Processors>", "r", "Processors 'four' is not a whole number"),
    ("<ur:Processors>-4</ur:Processors>", "r", "Processors '-4' is not a whole number"),
    ("<ur:NodeCount>2.5</ur:NodeCount>", "r", "NodeCount '2.5' is not a whole number"),
    ("<ur:NodeCount>9999999999</ur:NodeCount>", "r", "larger than 1,000,000,000"),
    ("<ur:Charge>NaN</ur:Charge>", "r", "Charge 'NaN' is not a decimal number"),
    ("<ur:Charge>INF</ur:Charge>", "r", "Charge 'INF' is not a decimal number"),
    ("<ur:Charge>1e99</ur:Charge>", "r", "Charge '1e99' is too large"),
    ("<ur:Memory ur:storageUnit='KB'>lots</ur:Memory>", "r", "Memory 'lots' is not a number"),
    ("<ur:Memory ur:storageUnit='KB'>-5</ur:Memory>", "r", "Memory '-5' is not a usable amount"),
])
def test_unreadable_values_make_the_record_unreadable(body, record_id, reason):
    if record_id is not None:
        body = f'<ur:RecordIdentity ur:recordId="{record_id}"/>' + body
    with pytest.raises(RecordError, match=re.escape(reason)):
        normalize(ur1_record(body, record_id=None))


def test_record_id_in_the_wrong_element_namespace_and_elements_of_another_namespace_are_not_read():
    data = (f'<ur:JobUsageRecord xmlns:ur="{UR1}" xmlns:o="{R.NS_CAR}">'
            '<o:RecordIdentity o:recordId="x"/></ur:JobUsageRecord>').encode()
    with pytest.raises(RecordError, match="has no RecordIdentity"):
        normalize(data)


def test_unqualified_and_foreign_qualified_attributes_are_read():
    plain = normalize(ur1_record("", record_id=None).replace(
        b"</ur:JobUsageRecord>", b'<ur:RecordIdentity recordId="plain" createTime="2020-01-01T00:00:00Z"/></ur:JobUsageRecord>'))
    assert (plain.record_id, plain.create_time, plain.warnings) == ("plain", utc(2020, 1, 1), ())
    foreign = normalize((f'<JobUsageRecord xmlns="{R.NS_GRATIA}" xmlns:u1="{UR1}">'
                         '<RecordIdentity u1:recordId="foreign"/></JobUsageRecord>').encode())
    assert foreign.record_id == "foreign"
    assert foreign.warnings == (f"attribute recordId of RecordIdentity is in namespace '{UR1}'; it was read",)


def test_empty_values_are_absent_and_text_is_trimmed():
    record = normalize(ur1_record("<ur:JobIdentity><ur:GlobalJobId>  </ur:GlobalJobId><ur:LocalJobId/>"
                                  "</ur:JobIdentity><ur:Queue>\n  short \n</ur:Queue><ur:WallDuration/>"
                                  "<ur:Status></ur:Status>"))
    assert (record.global_job_id, record.local_job_id, record.queue, record.wall_us, record.status) == (
        None, None, "short", None, None)


def test_comments_inside_values_are_not_text():
    record = normalize(ur1_record("<ur:Queue>lo<!-- x -->ng</ur:Queue><ur:WallDuration>PT<!-- c -->5S</ur:WallDuration>"))
    assert (record.queue, record.wall_us) == ("long", 5_000_000)


def test_repeated_single_values_use_the_first_with_a_warning():
    record = normalize(ur1_record("<ur:Queue>a</ur:Queue><ur:Queue>b</ur:Queue>"))
    assert record.queue == "a"
    assert record.warnings == ("Queue is given 2 times; the first is used",)


@pytest.mark.parametrize("status, normalized, warned", [
    ("completed", "completed", False), ("Completed", "completed", False), ("FAILED", "failed", False),
    ("aborted", "aborted", False), ("held", "held", False), ("queued", "queued", False),
    ("started", "started", False), ("suspended", "suspended", False), ("killed", "aborted", False),
    ("running", "started", False), ("success", "completed", False), ("weird", "unknown", True),
    ("0", "completed", True), ("1", "failed", True), ("-9", "failed", True),
])
def test_status_vocabulary(status, normalized, warned):
    record = normalize(ur1_record(f"<ur:Status>{status}</ur:Status>"))
    assert (record.status, record.status_original) == (normalized, status)
    assert bool(record.warnings) == warned
    if status.lstrip("-").isdigit():
        assert record.exit_code == int(status)


def test_cpu_times_from_usage_types():
    both = normalize(ur1_record("<ur:CpuDuration ur:usageType='user'>PT10S</ur:CpuDuration>"
                                "<ur:CpuDuration ur:usageType='system'>PT2.5S</ur:CpuDuration>"))
    assert (both.cpu_us, both.cpu_user_us, both.cpu_system_us, both.warnings) == (12_500_000, 10_000_000, 2_500_000, ())
    user_only = normalize(ur1_record("<ur:CpuDuration ur:usageType='user'>PT10S</ur:CpuDuration>"))
    assert (user_only.cpu_us, user_only.cpu_system_us) == (10_000_000, None)
    assert user_only.warnings == ("only the user CPU time is given; the total CPU time was taken as that",)
    mismatch = normalize(ur1_record("<ur:CpuDuration>PT20S</ur:CpuDuration>"
                                    "<ur:CpuDuration ur:usageType='user'>PT10S</ur:CpuDuration>"
                                    "<ur:CpuDuration ur:usageType='system'>PT1S</ur:CpuDuration>"))
    assert mismatch.cpu_us == 20_000_000
    assert mismatch.warnings == ("the total CPU time (20000000 µs) differs from user + system (11000000 µs);"
                                 " the total is used",)
    twice = normalize(ur1_record("<ur:CpuDuration>PT1S</ur:CpuDuration><ur:CpuDuration>PT2S</ur:CpuDuration>"))
    assert twice.cpu_us == 1_000_000 and twice.warnings == ("CpuDuration (all) is given more than once; the first is used",)
    odd = normalize(ur1_record("<ur:CpuDuration ur:usageType='idle'>PT1S</ur:CpuDuration>"))
    assert odd.cpu_us is None and odd.warnings == ("CpuDuration with usageType 'idle' is not understood; it was ignored",)


@pytest.mark.parametrize("memory, expected, warnings", [
    ("<ur:Memory ur:storageUnit='B'>100</ur:Memory>", 100, 0),
    ("<ur:Memory ur:storageUnit='KB'>1</ur:Memory>", 1024, 0),
    ("<ur:Memory ur:storageUnit='kB'>2</ur:Memory>", 2048, 0),
    ("<ur:Memory ur:storageUnit='MB'>1.5</ur:Memory>", 1_572_864, 0),
    ("<ur:Memory ur:storageUnit='GB'>1</ur:Memory>", 1024**3, 0),
    ("<ur:Memory ur:storageUnit='PB'>1</ur:Memory>", 1024**5, 0),
    ("<ur:Memory ur:storageUnit='EB'>1</ur:Memory>", 1024**6, 0),
    ("<ur:Memory ur:storageUnit='b'>16</ur:Memory>", 2, 0),
    ("<ur:Memory ur:storageUnit='Kb'>1</ur:Memory>", 128, 0),
    ("<ur:Memory ur:storageUnit='b'>3</ur:Memory>", 0, 1),                # 0.375 bytes: rounded, warned
    ("<ur:Memory>100</ur:Memory>", None, 1),                              # no unit: left out, warned
    ("<ur:Memory ur:storageUnit='furlongs'>1</ur:Memory>", None, 1),      # unknown unit: left out, warned
    ("<ur:Memory ur:type='virtual' ur:storageUnit='KB'>9</ur:Memory>"
     "<ur:Memory ur:storageUnit='KB' ur:metric='average'>5</ur:Memory>"
     "<ur:Memory ur:type='physical' ur:storageUnit='KB' ur:metric='min'>3</ur:Memory>", 3 * 1024, 0),
])
def test_memory_units_to_bytes(memory, expected, warnings):
    record = normalize(ur1_record(memory))
    assert record.memory_bytes == expected
    assert len(record.warnings) == warnings


@pytest.mark.parametrize("charge, plain, micro, warnings", [
    ("7.4", "7.4", 7_400_000, 0), ("2870", "2870", 2_870_000_000, 0), ("0.000001", "0.000001", 1, 0),
    ("7.40", "7.40", 7_400_000, 0), ("1.5E2", "150", 150_000_000, 0), ("2e-3", "0.002", 2_000, 0),
    (".5", "0.5", 500_000, 0), ("+3", "3", 3_000_000, 0), ("0.0000005", "0.0000005", 0, 1),
    ("0.0000015", "0.0000015", 2, 1), ("-1.25", "-1.25", -1_250_000, 1),
])
def test_charges_are_exact_decimals_and_micro_units(charge, plain, micro, warnings):
    record = normalize(ur1_record(f"<ur:Charge ur:unit='EUR'>{charge}</ur:Charge>"))
    assert (record.charge, record.charge_micro, record.charge_unit) == (plain, micro, "EUR")
    assert len(record.warnings) == warnings


def test_user_identity_forms():
    keyinfo = normalize(ur1_record(
        "<ur:UserIdentity><ds:KeyInfo xmlns:ds='http://www.w3.org/2000/09/xmldsig#'><ds:X509Data>"
        "<ds:X509SubjectName>CN=Key Info,O=Grid</ds:X509SubjectName></ds:X509Data></ds:KeyInfo>"
        "<ur:LocalUserId>kk</ur:LocalUserId></ur:UserIdentity>"))
    assert (keyinfo.user_dn, keyinfo.local_user) == ("/O=Grid/CN=Key Info", "kk")     # grid form (11.6)
    gratia = normalize((f'<JobUsageRecord xmlns="{R.NS_GRATIA}"><RecordIdentity recordId="g"/><UserIdentity>'
                        '<GlobalUsername>/DC=org/CN=Someone</GlobalUsername><VOName>/dteam/Role=NULL</VOName>'
                        '</UserIdentity></JobUsageRecord>').encode())
    assert (gratia.user_dn, gratia.vo, gratia.vo_fqans) == ("/DC=org/CN=Someone", "dteam", ("/dteam/Role=NULL",))
    assert gratia.warnings == ("the VO name is not given; it was taken from the FQAN '/dteam/Role=NULL'",)
    plain_vo = normalize((f'<JobUsageRecord xmlns="{R.NS_GRATIA}"><RecordIdentity recordId="g"/><UserIdentity>'
                          '<GlobalUsername>john ainsworth</GlobalUsername><VOName>cms</VOName>'
                          '</UserIdentity></JobUsageRecord>').encode())
    assert (plain_vo.user_dn, plain_vo.vo, plain_vo.vo_fqans) == (None, "cms", ())
    assert plain_vo.global_user == "john ainsworth"                    # not a DN, kept (11.6)


def test_sgas_vo_roles_make_fqans():
    record = normalize(ur1_record(
        f"<ur:UserIdentity><vo:VO xmlns:vo='{R.NS_SGAS_VO}'><vo:Name>atlas</vo:Name>"
        "<vo:Attribute><vo:Group>atlas/no</vo:Group><vo:Role>production</vo:Role></vo:Attribute>"
        "<vo:Attribute><vo:Group>/atlas</vo:Group><vo:Role>NULL</vo:Role></vo:Attribute>"
        "</vo:VO></ur:UserIdentity>"))
    assert (record.vo, record.vo_group, record.vo_role) == ("atlas", "/atlas/no", "production")   # a path (11.6)
    assert record.vo_fqans == ("/atlas/no/Role=production", "/atlas")


def test_a_huge_text_node_is_reported_as_too_large_not_as_a_parser_option():
    """Issue 11.7: a value longer than libxml2 reads was reported with its hint 'try XML_PARSE_HUGE'."""
    huge = "x" * 10_000_001
    for body in (f"<ur:JobName>{huge}</ur:JobName>", f"<ur:JobName ur:description='{huge}'/>"):
        document = (f'<ur:UsageRecords xmlns:ur="{UR1}">'
                    + ur1_record(body).decode().replace(f' xmlns:ur="{UR1}"', "") + "</ur:UsageRecords>").encode()
        with pytest.raises(SecurityError) as error:
            R.parse_batch(document)
        assert "too large" in str(error.value) and "10,000,000" in str(error.value)
        assert "XML_PARSE_HUGE" not in str(error.value) and "not well-formed" not in str(error.value)


# == a whole file inside a batch (issue 11.7) =========================================================

def _noted_batch(note: str, record: str = f'<ur:JobUsageRecord xmlns:ur="{UR1}"><ur:RecordIdentity ur:recordId="n"/>'
                                          "</ur:JobUsageRecord>") -> bytes:
    return (f'<?xml version="1.0"?>\n<ur:UsageRecords xmlns:ur="{UR1}">\n<?gridcredit-original {note}?>{record}\n'
            "</ur:UsageRecords>").encode()


LATIN1_DECLARATION = b'<?xml version="1.0" encoding="ISO-8859-1"?>'


def _b64(data: bytes) -> str:
    import base64
    return base64.b64encode(data).decode()


def test_a_noted_record_in_a_batch_is_the_whole_file_again():
    record = f'<ur:JobUsageRecord xmlns:ur="{UR1}"><ur:RecordIdentity ur:recordId="n"/></ur:JobUsageRecord>'
    prolog, epilog = b"\xef\xbb\xbf<?xml version='1.0' encoding='utf-8'?>\r\n<!-- c -->\n", b"\n<?after it?>\n"
    assert R.whole_document_parts(prolog + record.encode() + epilog) == (prolog, record.encode(), epilog)
    assert R.original_note(prolog, epilog) == f'<?gridcredit-original prolog="{_b64(prolog)}" epilog="{_b64(epilog)}"?>'.encode()
    [source] = R.split_records(_noted_batch(f'prolog="{_b64(prolog)}" epilog="{_b64(epilog)}"'))
    assert (source.data, source.whole_document, source.problem) == (prolog + record.encode() + epilog, True, None)
    assert R.read_source(source).record_id == "n"


@pytest.mark.parametrize("note, record, reason", [
    ("prolog=x", None, "is not prolog="),
    (f'prolog="{_b64(b"<x/>")}" epilog=""', None, "the prolog may hold only"),
    (f'prolog="" epilog="{_b64(b"text")}"', None, "the epilog may hold only"),
    (f'prolog="{_b64(LATIN1_DECLARATION)}" epilog=""', None, "'ISO-8859-1'"),
    ('prolog="" epilog=""', '<ur:JobUsageRecord><ur:RecordIdentity ur:recordId="n"/></ur:JobUsageRecord>',
     "needs namespace declarations of the container"),
])
def test_a_note_that_does_not_fit_makes_the_record_invalid(note, record, reason):
    batch = _noted_batch(note, record) if record else _noted_batch(note)
    result = R.parse_batch(batch)
    assert result.records == () and len(result.errors) == 1
    assert "gridcredit-original" in result.errors[0] and reason in result.errors[0], result.errors


# == one normalization (issue 11.6): the view, the scope attributes and the summary keys alike =======

def _gratia(user_identity: str, extra: str = "") -> bytes:
    return (f'<JobUsageRecord xmlns="{R.NS_GRATIA}"><RecordIdentity recordId="g"/>'
            f"<UserIdentity>{user_identity}</UserIdentity>{extra}</JobUsageRecord>").encode()


@pytest.mark.parametrize("written, dn", [
    ("CN=Alice Example,OU=Physics,O=Example,DC=org", "/DC=org/O=Example/OU=Physics/CN=Alice Example"),
    ("CN=Smith\\, John; O=Grid", "/O=Grid/CN=Smith, John"),
    ("/DC=org/CN=Already Grid", "/DC=org/CN=Already Grid"),
])
def test_a_dn_in_rfc2253_order_is_kept_in_grid_form_in_the_view(written, dn):
    ur1 = normalize(ur1_record(f"<ur:UserIdentity><ur:GlobalUserName>{written}</ur:GlobalUserName></ur:UserIdentity>"))
    gratia = normalize(_gratia(f"<DN>{written}</DN>"))
    keyinfo = normalize(ur1_record(
        "<ur:UserIdentity><ds:KeyInfo xmlns:ds='http://www.w3.org/2000/09/xmldsig#'><ds:X509Data>"
        f"<ds:X509SubjectName>{written}</ds:X509SubjectName></ds:X509Data></ds:KeyInfo></ur:UserIdentity>"))
    assert (ur1.user_dn, gratia.user_dn, keyinfo.user_dn) == (dn, dn, dn)
    assert (ur1.global_user, gratia.global_user, keyinfo.global_user) == (None, None, None)


def test_a_user_name_that_is_not_a_dn_is_kept_as_the_global_user():
    gratia = normalize(_gratia("<GlobalUsername>ainsworth@fnal.gov</GlobalUsername><LocalUserId>ja</LocalUserId>"))
    assert (gratia.user_dn, gratia.global_user, gratia.local_user) == (None, "ainsworth@fnal.gov", "ja")
    ur1 = normalize(ur1_record("<ur:UserIdentity><ur:GlobalUserName>alice</ur:GlobalUserName></ur:UserIdentity>"))
    assert (ur1.user_dn, ur1.global_user) == (None, "alice")
    # a DN elsewhere in the record is still the user's DN; the name is kept beside it
    both = normalize(ur1_record(
        "<ur:UserIdentity><ur:GlobalUserName>alice</ur:GlobalUserName>"
        "<ds:KeyInfo xmlns:ds='http://www.w3.org/2000/09/xmldsig#'><ds:X509Data>"
        "<ds:X509SubjectName>CN=Alice,O=Grid</ds:X509SubjectName></ds:X509Data></ds:KeyInfo></ur:UserIdentity>"))
    assert (both.user_dn, both.global_user) == ("/O=Grid/CN=Alice", "alice")


def test_a_gratia_voname_that_is_an_fqan_fills_vo_group_and_role():
    record = normalize(_gratia("<VOName>/cms/uscms/Role=pilot/Capability=NULL</VOName>"
                               "<ReportableVOName>cms</ReportableVOName>"))
    assert (record.vo, record.vo_group, record.vo_role, record.vo_fqans) == (
        "cms", "/cms/uscms", "pilot", ("/cms/uscms/Role=pilot/Capability=NULL",))
    no_role = normalize(_gratia("<VOName>/dteam/Role=NULL/Capability=NULL</VOName>"))
    assert (no_role.vo, no_role.vo_group, no_role.vo_role) == ("dteam", "/dteam", None)


@pytest.mark.parametrize("user_identity", [
    "<VOName>/atlas/Role</VOName>",
    "<VOName>/atlas/Role=</VOName>",
])
def test_a_cut_off_fqan_is_not_a_group_and_says_so(user_identity):
    record = normalize(_gratia(user_identity))
    assert (record.vo, record.vo_group, record.vo_role, record.vo_fqans) == ("atlas", "/atlas", None, ("/atlas",))
    assert any("cut off" in warning and "/atlas/Role" in warning for warning in record.warnings), record.warnings


def test_a_cut_off_group_in_sgas_vo_attributes_says_so():
    record = normalize(ur1_record(
        f"<ur:UserIdentity><vo:VO xmlns:vo='{R.NS_SGAS_VO}'><vo:Name>atlas</vo:Name>"
        "<vo:Attribute><vo:Group>/atlas/Role</vo:Group></vo:Attribute></vo:VO></ur:UserIdentity>"))
    assert (record.vo, record.vo_group, record.vo_role, record.vo_fqans) == ("atlas", "/atlas", None, ("/atlas",))
    assert any("cut off" in warning for warning in record.warnings), record.warnings


def test_vo_names_are_lower_case_like_machine_names():
    sgas = normalize(ur1_record(
        f"<ur:UserIdentity><vo:VO xmlns:vo='{R.NS_SGAS_VO}'><vo:Name>ATLAS</vo:Name>"
        "<vo:Attribute><vo:Group>/ATLAS/Higgs</vo:Group><vo:Role>Production</vo:Role></vo:Attribute>"
        "</vo:VO></ur:UserIdentity><ur:MachineName>CE1.Example.ORG</ur:MachineName>"))
    assert (sgas.vo, sgas.vo_group, sgas.vo_role, sgas.vo_fqans, sgas.machine) == (
        "atlas", "/atlas/Higgs", "Production", ("/atlas/Higgs/Role=Production",), "ce1.example.org")
    gratia = normalize(_gratia("<ReportableVOName>Atlas</ReportableVOName>"))
    car = normalize((f'<UsageRecord xmlns="{R.NS_CAR}" xmlns:urf="{R.NS_CAR}"><RecordIdentity urf:recordId="c"/>'
                     '<UserIdentity><Group>AtLaS</Group>'
                     '<GroupAttribute urf:type="FQAN">/ATLAS/Role=pilot</GroupAttribute></UserIdentity>'
                     '</UsageRecord>').encode())
    assert (gratia.vo, car.vo, car.vo_group, car.vo_role, car.vo_fqans) == (
        "atlas", "atlas", "/atlas", "pilot", ("/atlas/Role=pilot",))


@pytest.mark.parametrize("written, role", [("Role=production", "production"), ("Role=NULL", None), ("NULL", None),
                                           ("pilot", "pilot")])
def test_a_role_written_as_role_equals_is_the_roles_name(written, role):
    record = normalize((f'<UsageRecord xmlns="{R.NS_CAR}" xmlns:urf="{R.NS_CAR}"><RecordIdentity urf:recordId="c"/>'
                        '<UserIdentity><Group>dteam</Group><GroupAttribute urf:type="vo-group">/dteam</GroupAttribute>'
                        f'<GroupAttribute urf:type="vo-role">{written}</GroupAttribute></UserIdentity>'
                        '</UsageRecord>').encode())
    assert (record.vo, record.vo_group, record.vo_role) == ("dteam", "/dteam", role)


def test_car_group_attributes_in_apel_spelling():
    record = normalize((f'<UsageRecord xmlns="{R.NS_CAR}" xmlns:urf="{R.NS_CAR}"><RecordIdentity urf:recordId="c"/>'
                        '<UserIdentity><Group>lhcb</Group><GroupAttribute urf:type="group">/lhcb/prod</GroupAttribute>'
                        '<GroupAttribute urf:type="role">pilot</GroupAttribute>'
                        '<GroupAttribute urf:type="FQAN">/lhcb/prod/Role=pilot</GroupAttribute>'
                        '<GroupAttribute urf:type="FQAN">/lhcb</GroupAttribute></UserIdentity>'
                        '</UsageRecord>').encode())
    assert (record.vo, record.vo_group, record.vo_role, record.vo_fqans) == (
        "lhcb", "/lhcb/prod", "pilot", ("/lhcb/prod/Role=pilot", "/lhcb"))


def test_end_before_start_is_a_warning_and_processors_with_a_point_zero_are_read():
    record = normalize(ur1_record("<ur:StartTime>2020-01-02T00:00:00Z</ur:StartTime>"
                                  "<ur:EndTime>2020-01-01T00:00:00Z</ur:EndTime><ur:Processors>4.0</ur:Processors>"))
    assert record.processors == 4
    assert record.warnings == ("Processors '4.0' has a decimal point; it was read as 4", "EndTime is before StartTime")


def test_normalize_refuses_elements_that_are_not_records():
    with pytest.raises(RecordError, match="not a usage-record namespace"):
        normalize(b'<r:JobUsageRecord xmlns:r="urn:x"/>')
    with pytest.raises(RecordError, match="a record is a JobUsageRecord or UsageRecord"):
        normalize(f'<ur:Usage xmlns:ur="{UR1}"/>'.encode())


def test_unknown_extensions_are_ignored_in_the_view_but_kept_in_the_original():
    data = sample("sgas-luts3-URT-arc-logger-vo-filetransfers.xml")
    (source,) = R.split_records(data)
    assert b"<ns1:FileTransfers" in source.data and b"ARC0-URLogger" in source.data
    view = R.to_bytes(R.read_source(source))
    assert b"FileTransfers" not in view and b"URLogger" not in view


# == the XML view =================================================================================

def test_view_element_shape_and_xpath():
    record = one(sample("apel-car2-arc-emi-computerecord.xml"))
    usage = R.to_element(record)
    assert usage.tag == "{urn:gridcredit:luts:1}Usage"
    names = [etree.QName(child).localname for child in usage]
    assert names == ["format", "record_id", "create_time", "global_job_id", "local_job_id", "user_dn", "local_user",
                     "site", "machine", "host", "submit_host", "queue", "status", "status_original", "exit_code",
                     "start_time", "end_time", "wall_us", "cpu_us", "cpu_user_us", "cpu_system_us", "nodes",
                     "memory_bytes", "memory_type", "memory_metric"]
    ns = {"n": R.NS_VIEW}
    assert usage.xpath("string(n:start_time)", namespaces=ns) == "2013-02-09T15:09:16Z"
    assert usage.xpath("number(n:start_time/@us)", namespaces=ns) == 1_360_422_556_000_000
    assert usage.xpath("n:wall_us + n:cpu_us", namespaces=ns) == 7_000_000
    assert usage.xpath("boolean(/n:Usage[n:site='PGS03-GRID-UPJS-SK' and n:cpu_us > 2000000])", namespaces=ns)
    sgas = R.to_element(one(sample("sgas-luts3-URT-arc-logger-vo-filetransfers.xml")))
    assert sgas.xpath("n:vo_fqan/text()", namespaces=ns) == ["/atlas", "/atlas/lcg1", "/atlas/no"]


@pytest.mark.parametrize("xml, reason", [
    ('<n:Other xmlns:n="urn:gridcredit:luts:1"/>', "not a {urn:gridcredit:luts:1}Usage"),
    ('<n:Usage xmlns:n="urn:gridcredit:luts:1"><n:format>ur1</n:format></n:Usage>', "needs format and record_id"),
    ('<n:Usage xmlns:n="urn:gridcredit:luts:1"><n:format>ur9</n:format><n:record_id>x</n:record_id></n:Usage>',
     "not consistent"),
    ('<n:Usage xmlns:n="urn:gridcredit:luts:1"><n:format>ur1</n:format><n:record_id>x</n:record_id>'
     '<n:bogus/></n:Usage>', "unexpected element bogus"),
    ('<n:Usage xmlns:n="urn:gridcredit:luts:1"><n:format>ur1</n:format><n:record_id>x</n:record_id>'
     '<n:wall_us>1.5</n:wall_us></n:Usage>', "not an integer"),
    ('<n:Usage xmlns:n="urn:gridcredit:luts:1"><n:format>ur1</n:format><n:record_id>x</n:record_id>'
     '<n:start_time us="0">2020-01-01T00:00:00Z</n:start_time></n:Usage>', "disagree"),
    ('<n:Usage xmlns:n="urn:gridcredit:luts:1"><n:format>ur1</n:format><n:record_id>x</n:record_id>'
     '<n:queue>a</n:queue><n:queue>b</n:queue></n:Usage>', "queue appears twice"),
])
def test_view_reader_refuses_what_it_did_not_write(xml, reason):
    with pytest.raises(RecordError, match=re.escape(reason)):
        R.from_bytes(xml.encode())


_xml_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r"), min_size=1,
                    max_size=30)
_maybe_text = st.none() | _xml_text
_maybe_us = st.none() | st.integers(0, D.DURATION_US_MAX)
_maybe_count = st.none() | st.integers(0, R.COUNT_MAX)
_maybe_time = st.none() | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                                       timezones=st.just(UTC))


@st.composite
def normalized_records(draw):
    return NormalizedRecord(
        format=draw(st.sampled_from(sorted(R.FORMATS.values()))), record_id=draw(_xml_text),
        create_time=draw(_maybe_time), global_job_id=draw(_maybe_text), local_job_id=draw(_maybe_text),
        job_name=draw(_maybe_text), user_dn=draw(_maybe_text), global_user=draw(_maybe_text),
        local_user=draw(_maybe_text),
        local_group=draw(_maybe_text), vo=draw(_maybe_text), vo_group=draw(_maybe_text), vo_role=draw(_maybe_text),
        vo_fqans=tuple(draw(st.lists(_xml_text, max_size=3))), project=draw(_maybe_text), site=draw(_maybe_text),
        machine=draw(_maybe_text), host=draw(_maybe_text), submit_host=draw(_maybe_text), queue=draw(_maybe_text),
        status=draw(st.none() | st.sampled_from(R.STATUSES)), status_original=draw(_maybe_text),
        exit_code=draw(st.none() | st.integers(-(2**31), 2**31)), submit_time=draw(_maybe_time),
        start_time=draw(_maybe_time), end_time=draw(_maybe_time), wall_us=draw(_maybe_us), cpu_us=draw(_maybe_us),
        cpu_user_us=draw(_maybe_us), cpu_system_us=draw(_maybe_us), processors=draw(_maybe_count),
        nodes=draw(_maybe_count), memory_bytes=draw(st.none() | st.integers(0, 2**62)),
        memory_type=draw(_maybe_text), memory_metric=draw(_maybe_text), charge=draw(_maybe_text),
        charge_micro=draw(st.none() | st.integers(-(10**30), 10**30).filter(lambda n: len(str(n)) <= 19)),
        charge_unit=draw(_maybe_text), warnings=tuple(draw(st.lists(_xml_text, max_size=3))))


@pytest.mark.slow
@settings(max_examples=200)
@given(normalized_records())
def test_view_round_trips_any_record(record):
    assert R.from_bytes(R.to_bytes(record)) == record


@pytest.mark.slow
@settings(max_examples=300)
@given(normalized_records())
def test_the_direct_view_writer_writes_what_lxml_writes(record):
    assert R.to_bytes(record) == etree.tostring(R.to_element(record), encoding="utf-8")


@settings(max_examples=200, deadline=None)       # timing on a loaded machine is not what this checks
@given(normalized_records(), st.lists(_xml_text, min_size=5, max_size=5), st.integers(0, 2**62),
       st.lists(st.none() | _xml_text, max_size=4, unique=True))
@pytest.mark.slow
def test_the_luts_writes_its_id_entries_and_summaries_as_lxml_would(record, key, number, units):
    from gridcredit.services.luts import luts as L
    entry = etree.Element(f"{{{R.NS_VIEW}}}Id", nsmap={"n": R.NS_VIEW}, month="202611", digest="d" * 64,
                          machine=L.machine_of(record), rid=L.job_key(record.record_id))
    for name, value in (("job", record.global_job_id), ("ljob", record.local_job_id)):
        if value:
            entry.set(name, L.job_key(value))
    assert L._id_entry(record, "202611", "d" * 64) == etree.tostring(entry, encoding="utf-8")
    # charges per unit (issue 11.5): units as any text, and charges without a unit (None)
    counters = L._Counters(jobs=number, wall_us=-number, cpu_us=1,
                           charges={unit: [number % 7 + 1, number // 3 - n] for n, unit in enumerate(units)})
    summary = etree.Element(f"{{{R.NS_VIEW}}}Summary", nsmap={"n": R.NS_VIEW}, month="202611")
    for name, value in zip(L._SUMMARY_KEY, key):
        if value:
            summary.set(name, value)
    for name in L._COUNTER_NAMES:
        summary.set(name, str(getattr(counters, name)))
    for charge in counters.charge_totals():
        element = etree.SubElement(summary, f"{{{R.NS_VIEW}}}Charge")
        if charge.unit is not None:
            element.set("unit", charge.unit)
        element.set("jobs", str(charge.jobs))
        element.set("charge_micro", str(charge.charge_micro))
    written = L._summary_document(tuple(key), "202611", counters)
    assert written == etree.tostring(summary, encoding="utf-8")
    assert L._read_counters(written) == counters


def test_record_month_prefers_end_then_start_then_creation():
    base = NormalizedRecord(format="ur1", record_id="m", create_time=utc(2020, 1, 31, 23, 0))
    assert R.record_month(base) == "2020-01"
    assert R.record_month(NormalizedRecord(format="ur1", record_id="m", create_time=utc(2020, 1, 1),
                                           start_time=utc(2020, 2, 1), end_time=utc(2020, 3, 1))) == "2020-03"
    assert R.record_month(NormalizedRecord(format="ur1", record_id="m")) is None
