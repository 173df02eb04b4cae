"""The input of ``kolk smartmodule test`` (smartmodule/testinput.py), a pure parser: every
form of a JSON-lines record, every bad line refused with one line naming the file, the line
and the field, every limit crossed, and the plain-lines format kept as it was."""

from __future__ import annotations

import pytest

from kolk.smartmodule import testinput
from kolk.smartmodule.testinput import TestInputError, TestRecord


GOOD_LINES = [
    ('"just a value"', TestRecord(value=b"just a value")),
    ("null", TestRecord(value=None)),
    ("{}", TestRecord()),
    ('{"key": "k", "value": "v"}', TestRecord(key=b"k", value=b"v")),
    ('{"key": null, "value": null}', TestRecord()),
    ('{"value": {"base64": "AP8="}}', TestRecord(value=b"\x00\xff")),
    ('{"value": {"hex": "00Ff"}}', TestRecord(value=b"\x00\xff")),
    ('{"value": ""}', TestRecord(value=b"")),
    ('{"headers": {"a": "1", "b": null, "c": {"hex": "ff"}}}',
     TestRecord(headers=(("a", b"1"), ("b", None), ("c", b"\xff")))),
    ('{"headers": [["a", "1"], ["a", "2"]]}', TestRecord(headers=(("a", b"1"), ("a", b"2")))),
    ('{"timestamp": 0}', TestRecord(timestamp=0)),
    ('{"timestamp": null}', TestRecord()),
    (f'{{"timestamp": {testinput.TIMESTAMP_MAX}}}', TestRecord(timestamp=testinput.TIMESTAMP_MAX)),
    ('  {"value": "\\u00e9\\ud83d\\ude00"}  ', TestRecord(value="é😀".encode())),
]


@pytest.mark.parametrize("line, record", GOOD_LINES)
def test_a_json_line_is_one_record(line: str, record: TestRecord) -> None:
    assert testinput.parse(line.encode() + b"\r\n\n  \n", "jsonl", "in.jsonl") == [record]


BAD_LINES = [
    ("{", "in.jsonl line 1 is not JSON: Expecting property name enclosed in double quotes"),
    (b'"\xff"', "in.jsonl line 1 is not UTF-8 (byte 1): write such bytes as {\"base64\": \"...\"} or {\"hex\": \"...\"}"),
    ("[1]", "in.jsonl line 1: a record is a JSON object or a string, not an array"),
    ("5", "in.jsonl line 1: a record is a JSON object or a string, not a number"),
    ("true", "in.jsonl line 1: a record is a JSON object or a string, not true"),
    ('{"vaule": "x"}', "in.jsonl line 1: unknown field 'vaule' (a record has key, value, headers, timestamp)"),
    ('{"key": "a", "key": "b"}', "in.jsonl line 1: duplicate key 'key'"),
    ('{"headers": {"h": "1", "h": "2"}}', "in.jsonl line 1: duplicate key 'h' (for a repeated header name, give "
                                          "headers as [[name, value], ...])"),
    ('{"timestamp": NaN}', "in.jsonl line 1: NaN is not JSON"),
    ('{"value": 5}', 'in.jsonl line 1: value must be a string, null, {"base64": "..."} or {"hex": "..."}, not a number'),
    ('{"key": ["a"]}', 'in.jsonl line 1: key must be a string, null, {"base64": "..."} or {"hex": "..."}, not an array'),
    ('{"value": {"base64": "AP8"}}', "in.jsonl line 1: value is not valid base64"),
    ('{"value": {"base64": "A$=="}}', "in.jsonl line 1: value is not valid base64"),
    ('{"value": {"hex": "abc"}}', "in.jsonl line 1: value is not hex (an even number of 0-9 a-f)"),
    ('{"value": {"hex": "zz"}}', "in.jsonl line 1: value is not hex (an even number of 0-9 a-f)"),
    ('{"value": {"hex": "00", "base64": ""}}', "in.jsonl line 1: value must be a string, null"),
    ('{"value": {"utf16": "x"}}', "in.jsonl line 1: value must be a string, null"),
    ('{"value": "\\ud800"}', "in.jsonl line 1: value has a lone surrogate escape"),
    ('{"headers": "h=v"}', "in.jsonl line 1: headers must be an object of name to value, or a list of [name, value] "
                           "pairs, not a string"),
    ('{"headers": [["h"]]}', "in.jsonl line 1: headers must be an object of name to value"),
    ('{"headers": [[1, "v"]]}', "in.jsonl line 1: a header name must be a string, not a number"),
    ('{"headers": {"\\udc00": "v"}}', "in.jsonl line 1: header name '\\udc00' is not UTF-8"),
    ('{"headers": {"h": 1}}', "in.jsonl line 1: header 'h' must be a string, null"),
    ('{"headers": {' + ", ".join(f'"h{i}": ""' for i in range(testinput.HEADERS_PER_RECORD_MAX + 1)) + "}}",
     f"in.jsonl line 1: {testinput.HEADERS_PER_RECORD_MAX + 1} headers, more than {testinput.HEADERS_PER_RECORD_MAX}"),
    ('{"timestamp": 1.5}', "in.jsonl line 1: timestamp must be an integer (milliseconds since 1970), not a number"),
    ('{"timestamp": "1"}', "in.jsonl line 1: timestamp must be an integer (milliseconds since 1970), not a string"),
    ('{"timestamp": true}', "in.jsonl line 1: timestamp must be an integer (milliseconds since 1970), not true"),
    ('{"timestamp": -1}', f"in.jsonl line 1: timestamp -1 is outside 0 to {testinput.TIMESTAMP_MAX}"),
    (f'{{"timestamp": {testinput.TIMESTAMP_MAX + 1}}}',
     f"in.jsonl line 1: timestamp {testinput.TIMESTAMP_MAX + 1} is outside 0 to {testinput.TIMESTAMP_MAX}"),
    ("[" * 100_000, "in.jsonl line 1 is not JSON"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[str(m)[:60] for _, m in BAD_LINES])
def test_a_bad_json_line_is_refused_naming_its_line(line: str | bytes, message: str) -> None:
    data = line if isinstance(line, bytes) else line.encode()
    with pytest.raises(TestInputError) as e:
        testinput.parse(data, "jsonl", "in.jsonl")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(TestInputError) as e:  # the line number is the file's, blank lines counted
        testinput.parse(b'"ok"\n\n' + data, "jsonl", "in.jsonl")
    assert str(e.value).startswith(message.replace("line 1", "line 3"))


def test_limits_of_the_input_are_refused_naming_the_line() -> None:
    cases = [
        (b"x" * (testinput.LINE_BYTES_MAX + 1), "lines",
         f"in line 1 is {testinput.LINE_BYTES_MAX + 1} bytes, more than {testinput.LINE_BYTES_MAX}"),
        (b"x\n" * (testinput.RECORDS_MAX + 1), "lines",
         f"in line {testinput.RECORDS_MAX + 1}: more than {testinput.RECORDS_MAX} records: test with a smaller sample"),
        (b"\n" * testinput.LINES_MAX + b"x", "lines",
         f"in line {testinput.LINES_MAX + 1}: more than {testinput.LINES_MAX} lines: test with a smaller sample"),
        (b"x" * (testinput.INPUT_BYTES_MAX + 1), "lines",
         f"in is {testinput.INPUT_BYTES_MAX + 1} bytes, more than {testinput.INPUT_BYTES_MAX}: test with a smaller "
         "sample"),
        (b"\n \n\t\n", "jsonl", "in has no records (no non-blank lines)"),
        (b"", "lines", "in has no records (no non-blank lines)"),
    ]
    for data, fmt, message in cases:
        with pytest.raises(TestInputError) as e:
            testinput.parse(data, fmt, "in")
        assert str(e.value) == message


def test_the_largest_input_within_the_limits_is_taken() -> None:
    records = testinput.parse(b"x\n" * testinput.RECORDS_MAX, "lines", "in")
    assert len(records) == testinput.RECORDS_MAX
    assert testinput.parse(b"x" * testinput.LINE_BYTES_MAX, "lines", "in") == [TestRecord(value=b"x" * testinput.LINE_BYTES_MAX)]


def test_plain_lines_take_an_optional_key_separator() -> None:
    assert testinput.parse(b"a:1:2\r\n\nb:\n", "lines", "in", ":") == [TestRecord(key=b"a", value=b"1:2"),
                                                                      TestRecord(key=b"b", value=b"")]
    with pytest.raises(TestInputError, match=r"^in line 2 has no key separator ':'$"):
        testinput.parse(b"a:1\nb\n", "lines", "in", ":")
    with pytest.raises(TestInputError, match=r"^in: the key separator is empty$"):
        testinput.parse(b"a\n", "lines", "in", "")


def test_the_format_follows_the_suffix_unless_given() -> None:
    assert [testinput.format_for(n) for n in ("a.jsonl", "a.NDJSON", "a.json", "a.txt", "a")] == [
        "jsonl", "jsonl", "lines", "lines", "lines"]
    assert testinput.format_for("a.txt", "jsonl") == "jsonl" and testinput.format_for("a.jsonl", "lines") == "lines"
    with pytest.raises(TestInputError, match="input format 'csv' is not one of lines, jsonl"):
        testinput.format_for("a.txt", "csv")


def test_records_without_a_timestamp_get_the_time_given() -> None:
    records = testinput.parse(b'{"timestamp": 5}\n"x"\n', "jsonl", "in")
    assert testinput.timestamps(records, 99) == [5, 99]
