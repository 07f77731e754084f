from speech.responder import HELLO, WHO_AM_I
from tests.support.replies import answered_in_order


def test_one_turn_of_two_finals_answered_once() -> None:
    assert answered_in_order(["oh you", "but you"], ["You said: oh you but you"])


def test_an_answer_split_between_two_voices_is_one_answer() -> None:
    first, rest = WHO_AM_I.split(". ", 1)
    assert answered_in_order(["hello who are you"], [f"Hello! {first}.", rest])


def test_two_turns_each_answered_in_order() -> None:
    assert answered_in_order(["hello", "who are you"], [HELLO, WHO_AM_I])
    assert not answered_in_order(["hello", "who are you"], [WHO_AM_I, HELLO])


def test_a_missing_or_repeated_answer_is_caught() -> None:
    assert not answered_in_order(["who are you"], [])
    assert not answered_in_order(["who are you"], [WHO_AM_I, WHO_AM_I])
    assert not answered_in_order(["oh you", "but you"], ["You said: oh you"])
