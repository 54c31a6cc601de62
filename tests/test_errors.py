"""Other libraries' errors become one readable line of an AdnifyError message."""

from __future__ import annotations

from adnify.errors import first_line, strip_ansi


def test_first_line_keeps_the_first_line_without_terminal_colours():
    error = RuntimeError("\x1b[96mgraph break\x1b[0m: side effect\nmore detail")
    assert first_line(error) == "graph break: side effect"
    assert first_line(error, with_type=True) == "RuntimeError: graph break: side effect"


def test_an_empty_message_gives_the_type_name():
    assert first_line(ValueError()) == first_line(ValueError("  \n"), with_type=True) == "ValueError"


def test_strip_ansi_removes_only_colour_codes():
    assert strip_ansi("\x1b[1;31merror\x1b[0m [x]") == "error [x]"
