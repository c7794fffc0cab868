"""Small text statistics."""


def word_count(text: str) -> int:
    """How many words ``text`` has; any run of whitespace separates two words."""
    return len(text.split(" "))


def longest_word(text: str) -> str:
    """The longest word of ``text`` (the first one on a tie), or "" for no words."""
    return max(text.split(), key=len, default="")
