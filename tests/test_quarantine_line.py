"""The preference export's quarantine lines built without the models are the models' bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from distill.export.quarantine import QuarantineLines, quarantine_scored, scored_quarantine_line
from distill.hashing import PrefixHash
from distill.jsonl import dumps
from distill.records import Provenance, QuarantineReason, SourceRef

_TEXT = st.text(min_size=0, max_size=30)
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**53, max_value=2**53), _TEXT)


def _model_line(stage: str, source: str, provenance: dict[str, Any], detail: dict[str, Any],
                reason: QuarantineReason | str, errors: list[str], record_id: str) -> bytes:
    p = provenance
    ref = SourceRef(source_file=p["source_file"], line_offset=p["line_offset"], line_number=p["line_number"],
                    sig_hash=p["sig_hash"])
    return dumps(quarantine_scored(stage, source, ref, detail, reason, errors, record_id).to_json_dict())


def _provenance(source_file: str, offset: int, number: int) -> dict[str, Any]:
    return Provenance(source_file=source_file, line_offset=offset, line_number=number, sig_hash="ab" * 32,
                      recorded_at="2026-01-02T03:04:05Z").model_dump(mode="json")


@hsettings(max_examples=300, deadline=None)
@given(
    source=_TEXT,
    source_file=st.text(min_size=1, max_size=40),
    offset=st.integers(min_value=0, max_value=2**40),
    number=st.integers(min_value=1, max_value=2**31),
    detail=st.dictionaries(_TEXT, _VALUES, max_size=6),
    reason=st.sampled_from(list(QuarantineReason)),
    as_value=st.booleans(),
    errors=st.lists(_TEXT, max_size=4),
    record_id=_TEXT,
)
def test_the_line_is_the_models_line(source: str, source_file: str, offset: int, number: int, detail: dict[str, Any],
                                     reason: QuarantineReason, as_value: bool, errors: list[str], record_id: str) -> None:
    provenance = _provenance(source_file, offset, number)
    why: QuarantineReason | str = reason.value if as_value else reason
    assert scored_quarantine_line("preference", source, provenance, detail, why, errors, record_id) == \
        _model_line("preference", source, provenance, detail, why, errors, record_id)


def test_what_the_models_refuse_is_refused() -> None:
    provenance = _provenance("_kb/a.jsonl", 0, 1)
    with pytest.raises(ValueError):
        scored_quarantine_line("preference", "s", provenance, {}, "not a reason", ["x"], "r")
    with pytest.raises(ValueError):
        scored_quarantine_line("", "s", provenance, {}, QuarantineReason.EMPTY_CONTENT, ["x"], "r")


@hsettings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300).filter(lambda b: b"\n" not in b), max_size=60),
       st.integers(min_value=1, max_value=700))
def test_quarantine_lines_say_where_each_line_starts_and_digest_what_was_written(lines: list[bytes],
                                                                                  held: int) -> None:
    """However the lines are held before they are written, each one's start is where it lands,
    and the digest is the written bytes' (what the next run checks the file by)."""
    import io

    out = io.BytesIO()
    sink = QuarantineLines(out, held_bytes=held)
    starts = []
    for line in lines:
        starts.append(sink.at)
        sink(line, "schema_violation")
    size, digest = sink.digest()
    data = out.getvalue()
    assert data == b"".join(line + b"\n" for line in lines) and size == len(data)
    assert [data[a:].split(b"\n", 1)[0] for a in starts] == lines
    expected = PrefixHash()
    expected.update(data)
    assert digest == expected.hexdigest()
