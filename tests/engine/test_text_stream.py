from __future__ import annotations

from server.engine.text_stream import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.push(p) for p in pieces) + stream.finish()


def test_no_stops_passes_text_through() -> None:
    assert feed(TextStream([]), [b"Hel", b"lo", b" world"]) == "Hello world"


def test_stop_sequence_split_across_tokens_never_leaks() -> None:
    stream = TextStream(["END"])
    out = [stream.push(p) for p in [b"abc E", b"N", b"D more"]]
    assert out == ["abc ", "", ""]
    assert stream.stopped
    assert stream.finish() == ""


def test_held_prefix_is_released_when_it_is_not_a_stop() -> None:
    stream = TextStream(["END"])
    assert stream.push(b"x E") == "x "
    assert stream.push(b"ND") == ""  # now a full stop
    other = TextStream(["END"])
    assert other.push(b"x E") == "x "
    assert other.push(b"nd") == "End"


def test_multibyte_characters_split_across_tokens() -> None:
    data = "héllo €".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]
    assert feed(TextStream([]), pieces) == "héllo €"


def test_held_text_is_flushed_at_the_end() -> None:
    stream = TextStream(["STOP"])
    assert stream.push(b"go ST") == "go "
    assert stream.finish() == "ST"


def test_the_stop_sequence_that_ended_the_text_is_named() -> None:
    stream = TextStream(["world", "lo w", "o"])
    assert stream.push(b"hello world") == "hel"  # "o" and "lo w" are both there; "lo w" starts first
    assert stream.matched == "lo w"
    longest = TextStream(["ab", "abc"])
    assert longest.push(b"xabcd") == "x" and longest.matched == "abc"  # at one place, the longest
    never = TextStream(["zz"])
    assert feed(never, [b"abc"]) == "abc" and never.matched is None
