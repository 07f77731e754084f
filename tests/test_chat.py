"""What a typed message must be for the agent to answer it (chat.py)."""

from __future__ import annotations

import pytest

from chat import CONTROL_CHARACTERS, EMPTY, MAX_MESSAGE_CHARS, problem_with


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "x" * MAX_MESSAGE_CHARS,
        "é" * MAX_MESSAGE_CHARS,  # characters, not bytes (2000 bytes in UTF-8)
        "a line\nand another\ttabbed\r\n",
        "grüße, 你好, 👋",
    ],
)
def test_text_within_the_limit_is_answered(text: str) -> None:
    assert problem_with(text) is None


def test_a_message_over_the_limit_is_told_the_limit_and_its_length() -> None:
    problem = problem_with("x" * (MAX_MESSAGE_CHARS + 1))
    assert problem is not None
    assert f"{MAX_MESSAGE_CHARS + 1} characters" in problem
    assert f"up to {MAX_MESSAGE_CHARS} characters" in problem


@pytest.mark.parametrize("text", ["", " ", "\n\t "])
def test_an_empty_message_is_told_so(text: str) -> None:
    assert problem_with(text) == EMPTY


@pytest.mark.parametrize("text", ["hi\x00", "\x1b[31mred", "bell\x07", "\ud800"])
def test_control_codes_are_not_text(text: str) -> None:
    assert problem_with(text) == CONTROL_CHARACTERS
