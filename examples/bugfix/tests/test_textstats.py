from textstats import longest_word, word_count


def test_word_count_ignores_extra_whitespace() -> None:
    assert word_count("two  words") == 2
    assert word_count("  padded\tand\nsplit  ") == 3


def test_word_count_of_nothing_is_zero() -> None:
    assert word_count("") == 0


def test_longest_word() -> None:
    assert longest_word("a bb ccc dd") == "ccc"
