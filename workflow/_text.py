"""Text every back end can store alike."""

from __future__ import annotations

__all__ = ["check_foreign_id", "check_text", "storable"]


def check_text(value: str, what: str) -> None:
    """Refuse a string no back end can store alike: a NUL character (PostgreSQL text cannot
    hold one) or a lone surrogate (not Unicode text: it has no UTF-8 form, so no SQL driver
    can send it). Same ``ValueError`` on every back end, before anything is stored."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL (\\x00)")
    try:
        value.encode()
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} must be valid Unicode text: {value!r} has a lone surrogate "
            f"{value[err.start]!r} at index {err.start} (decode input with errors='replace', "
            "or pass the real characters)"
        ) from None


def storable(text: str) -> str:
    """``text`` with what :func:`check_text` refuses replaced by U+FFFD (reasons made from
    error messages: pausing a run must not fail on its error's text)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text


def check_foreign_id(foreign_id: object) -> None:
    """A foreign id is a non-empty str that every store can keep (see :func:`check_text`)."""
    if not isinstance(foreign_id, str) or not foreign_id:
        raise ValueError(f"foreign_id must be a non-empty str, got {foreign_id!r}")
    check_text(foreign_id, "foreign_id")
