"""JSON schemas as GBNF whose strings are JSON's: llama-cpp-python's converter (`json_schema_to_gbnf`) lets a
string hold raw control characters, and a `pattern`'s `.` a raw quote or backslash.

A string argument of a tool call held a raw line break often enough to show (SmolLM2 sampling at temperature
1: about one named call in 40): the call then failed to parse and the answer had neither calls nor text.
llama.cpp's own JSON grammar (`JSON_GBNF`) already keeps `"`, `\\`, DEL and the C0 controls out of a string's
characters; the converter's rules are given the same class here.
"""

from __future__ import annotations

from llama_cpp.llama_grammar import json_schema_to_gbnf

# what a JSON string may hold unescaped (RFC 8259: anything but the quote, the backslash and U+0000-U+001F;
# DEL too, as llama.cpp's JSON_GBNF)
STRING_CHAR = r'[^"\\\x7F\x00-\x1F]'
_LAX = {  # rule name -> its right-hand side as the converter writes it, and the part to replace
    "char": r'[^"\\]',
    "dot": r"[^\x0A\x0D]",
}


def schema_to_gbnf(schema_json: str, prop_order: list[str] | None = None) -> str:
    """GBNF for `schema_json` (the converter's, with strict string characters). The converter raises
    several kinds of errors for schemas it cannot handle; they pass through."""
    grammar = str(json_schema_to_gbnf(schema_json, prop_order=prop_order))
    return "\n".join(_strict(line) for line in grammar.split("\n"))


def _strict(line: str) -> str:
    name, sep, rule = line.partition(" ::= ")
    lax = _LAX.get(name)
    if not sep or lax is None or not rule.startswith(lax):
        return line
    return f"{name} ::= {STRING_CHAR}{rule[len(lax):]}"
