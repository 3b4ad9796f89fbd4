from tinyslm.core.textstats import find_repetition_loop, has_repetition_loop


def test_word_loop_of_four_copies_is_found():
    loop = find_repetition_loop("So the answer is 5. " * 4 + "Done")
    assert loop is not None and loop.n == 5 and loop.repeats == 4 and loop.ngram == "So the answer is 5."


def test_three_copies_are_not_a_loop():
    assert not has_repetition_loop("a b c a b c a b c end")
    assert has_repetition_loop("a b c a b c a b c a b c end")


def test_counts_every_copy_and_prefers_the_shortest_ngram():
    loop = find_repetition_loop("intro " + "x y " * 7 + "tail")
    assert (loop.ngram, loop.n, loop.repeats, loop.start_word) == ("x y", 2, 7, 1)
    assert find_repetition_loop("1 1 1 1").ngram == "1"


def test_ordinary_solutions_have_no_loop():
    text = (
        "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "#### 72"
    )
    assert find_repetition_loop(text) is None
    assert find_repetition_loop("") is None


def test_threshold_is_configurable():
    assert has_repetition_loop("go go", min_repeats=2)
    assert not has_repetition_loop("go go go", min_repeats=4)
