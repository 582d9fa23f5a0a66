"""Parsing ``image_url.url``: data URLs (strict base64), http(s), stepfile, everything else."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlmserve.errors import MediaError, UnsupportedContentError
from vlmserve.media.sources import (
    DataSource,
    HttpSource,
    StepFileSource,
    decode_data,
    parse_data_url,
    parse_source,
)

WHERE = "image 1 (messages[0].content[0].image_url.url)"
MIMES = st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp", "IMAGE/PNG"])


@given(data=st.binary(min_size=1, max_size=2048), mime=MIMES)
def test_data_url_round_trips_any_bytes(data: bytes, mime: str) -> None:
    source = parse_source(f"data:{mime};base64,{base64.b64encode(data).decode()}", WHERE)
    assert isinstance(source, DataSource)
    assert source.mime == mime.lower()
    assert source.num_bytes == len(data)
    assert decode_data(source, WHERE) == data


@given(text=st.text(max_size=300))
def test_any_text_after_a_data_header_parses_or_raises_a_400(text: str) -> None:
    """Never an exception outside the error tree, whatever the client sends."""
    try:
        source = parse_source("data:image/png;base64," + text, WHERE)
        assert isinstance(source, DataSource)
        decode_data(source, WHERE)
    except MediaError as exc:
        assert exc.status == 400 and WHERE in exc.message


@given(url=st.text(max_size=200))
def test_any_url_is_classified_or_refused_with_a_400(url: str) -> None:
    try:
        parse_source(url, WHERE)
    except (MediaError, UnsupportedContentError) as exc:
        assert exc.status == 400


@given(data=st.binary(min_size=1, max_size=300), cut=st.integers(1, 3))
def test_truncated_padding_is_refused(data: bytes, cut: int) -> None:
    encoded = base64.b64encode(data).decode()
    if len(encoded) % 4 == 0 and encoded.endswith("="):
        source = parse_data_url("data:image/png;base64," + encoded[:-cut], WHERE)
        with pytest.raises(MediaError):
            decode_data(source, WHERE)


def test_mime_parameters_are_allowed() -> None:
    source = parse_source("data:image/png;name=cat.png;base64,aGk=", WHERE)
    assert isinstance(source, DataSource) and decode_data(source, WHERE) == b"hi"


def test_image_jpg_is_read_as_jpeg() -> None:
    source = parse_source("data:image/jpg;base64,aGk=", WHERE)
    assert isinstance(source, DataSource) and source.mime == "image/jpeg"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png,rawbytes", "not base64-encoded"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png;base64,", "empty"),
        ("data:image/png;base64,aGk", "malformed"),
        ("data:image/png;base64,aG k=", "whitespace"),
        ("data:image/png;base64,aGk=\n", "whitespace"),
        ("data:image/png;base64,-_-_", "URL-safe"),
        ("data:image/png;base64,aGk%3D", "percent-encoded"),
        ("data:image/png;base64,a*k=", "outside the base64 alphabet"),
    ],
)
def test_malformed_data_urls_say_what_to_change(url: str, message: str) -> None:
    with pytest.raises(MediaError, match=message) as info:
        source = parse_source(url, WHERE)
        decode_data(source, WHERE) if isinstance(source, DataSource) else None
    assert info.value.code == "invalid_image_url"


@pytest.mark.parametrize("mime", ["image/bmp", "image/svg+xml", "text/plain", "image/heic", ""])
def test_data_url_with_an_unsupported_mime_type_is_unsupported_content(mime: str) -> None:
    with pytest.raises(UnsupportedContentError, match="JPEG, PNG, GIF or WebP"):
        parse_source(f"data:{mime};base64,aGk=", WHERE)


def test_http_and_https_urls_are_http_sources() -> None:
    assert parse_source("https://example.com/a.png", WHERE) == HttpSource(
        "https://example.com/a.png"
    )
    assert isinstance(parse_source("HTTP://example.com/a.png", WHERE), HttpSource)


def test_stepfile_urls_carry_the_file_id() -> None:
    assert parse_source("stepfile://file-abc_123", WHERE) == StepFileSource("file-abc_123")
    with pytest.raises(MediaError, match="stepfile://FILE_ID"):
        parse_source("stepfile://../../etc/passwd", WHERE)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://x/a.png", "/tmp/a.png", "cat.png"])
def test_other_schemes_and_paths_are_refused(url: str) -> None:
    with pytest.raises(MediaError, match="https://"):
        parse_source(url, WHERE)
