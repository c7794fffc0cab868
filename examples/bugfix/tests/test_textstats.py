from textstats import longest_word, word_count


def test_word_count_of_a_sentence() -> None:
    assert word_count("the quick brown fox") == 4


def test_longest_word() -> None:
    assert longest_word("a bb ccc dd") == "ccc"


def test_longest_word_of_nothing_is_empty() -> None:
    assert longest_word("") == ""
