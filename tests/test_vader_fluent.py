"""The vader-fluent gold against hand-computed values: repetition, non-words, unfinished text, and its sign."""

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from bon_vs_rl.measurement import scorers, text_stats

VADER = SentimentIntensityAnalyzer()


def compound(text: str) -> float:
    return VADER.polarity_scores(text)["compound"]


def test_distinct_n_counts_distinct_ngrams_over_ngrams():
    tokens = ["big", "dog", "big", "dog", "runs"]
    assert text_stats.distinct_n(tokens, 1) == 3 / 5
    assert text_stats.distinct_n(tokens, 2) == 3 / 4  # (big dog) twice, (dog big), (dog runs)
    assert text_stats.distinct_n(["one"], 2) == 1.0  # no bigram: nothing repeated


def test_words_keep_inner_apostrophes_and_lower_case():
    assert text_stats.words("I'm proud of our family’s FOOD, 3 times!") == ["i'm", "proud", "of", "our", "family's",
                                                                          "food", "times"]


def test_a_repeated_content_word_is_penalized_by_distinct_1_of_content_words():
    # content words: sun sun rain snow -> distinct-1 3/4; bigrams all distinct; finished; all words known.
    factors = scorers.fluency_factors("Sun sun rain snow.")
    assert factors["repetition"] == pytest.approx((3 / 4 - 0.5) / 0.3)
    assert factors["nonwords"] == 1.0 and factors["finish"] == 1.0
    assert factors["fluency"] == pytest.approx((3 / 4 - 0.5) / 0.3)


def test_a_repeated_phrase_is_penalized_by_distinct_2():
    # content words big dog big dog runs fast home: 5 of 7 distinct; bigrams: 5 of 6 distinct.
    factors = scorers.fluency_factors("Big dog big dog runs fast home.")
    assert factors["repetition"] == pytest.approx((5 / 7 - 0.5) / 0.3 * (5 / 6 - 0.6) / 0.3)


def test_function_words_repeat_freely_in_fluent_text():
    factors = scorers.fluency_factors("The food was great and the service was friendly.")
    assert factors["fluency"] == 1.0


def test_non_words_lower_fluency_by_their_share():
    # i love the flurbgat zorbles: 2 of 5 words in no dictionary -> ramp(0.6, 0.5, 0.9) = 0.25.
    factors = scorers.fluency_factors("I love the flurbgat zorbles.")
    assert text_stats.nonword_share(text_stats.words("I love the flurbgat zorbles.")) == 2 / 5
    assert factors["nonwords"] == pytest.approx(0.25)
    assert factors["repetition"] == 1.0 and factors["finish"] == 1.0


@pytest.mark.parametrize("text, done", [
    ("I love the food", False), ("I love the food!", True), ('He said "I love it."', True),
    ("Is it good?\n", True), ("It was (really) good.)", True), ("It was good, and", False),
])
def test_unfinished_text_gets_the_unfinished_factor(text, done):
    assert text_stats.finished(text) is done
    assert scorers.fluency_factors(text)["finish"] == (1.0 if done else scorers.UNFINISHED)


def test_gold_is_vader_on_fluent_finished_text_and_minus_one_without_words():
    gold = scorers.load_scorer("vader-fluent")
    texts = [" The food was great and the service was friendly.", " The film was dull and far too long.", "", " ..."]
    scores = gold(["p"] * 4, texts)
    assert scores[0] == pytest.approx(compound(texts[0])) and scores[0] > 0.5
    assert scores[1] == pytest.approx(compound(texts[1])) and scores[1] < 0
    assert scores[2] == -1.0 and scores[3] == -1.0


def test_gold_formula_pulls_towards_minus_one_for_every_sentiment():
    # fluency · (1 + compound) − 1, by hand: an unfinished positive text and an unfinished negative one.
    for text in (" I love this wonderful place and", " I hate this awful place and"):
        assert scorers.load_scorer("vader-fluent")(["p"], [text])[0] == pytest.approx(0.9 * (1 + compound(text)) - 1)
    # Degenerate negative text is worse than fluent negative text (compound · fluency would rank it better).
    gold = scorers.load_scorer("vader-fluent")
    degenerate, fluent = gold(["p", "p"], [" bad bad bad bad bad bad bad bad.", " The meal was bad."])
    assert degenerate < fluent and compound(" bad bad bad bad bad bad bad bad.") < compound(" The meal was bad.")


def test_degenerate_rl_text_that_fools_vader_scores_low():
    # Samples of a long PPO run against a weak proxy (issue 28), which VADER scores 0.95 and 0.79.
    warm = "our food warm warm warm food warm warm warm warm warm warm warm warm warm warm"
    salad = "I'm proud of our family's food supply loving our family food family"
    gold = scorers.load_scorer("vader-fluent")
    scores = gold(["p", "p"], [warm, salad])
    assert compound(warm) > 0.9 and scores[0] == -1.0
    # the salad repeats 'food' and 'family' (content words 6 of 8 distinct) and is unfinished
    assert scores[1] == pytest.approx(0.9 * (6 / 8 - 0.5) / 0.3 * (1 + compound(salad)) - 1)
    assert scores[1] < compound(salad) - 0.3


def test_text_statistics_per_token_logprobs_and_empty_completions():
    stats = text_stats.text_statistics(["Good food.", ""], tokens=[4, 0], logprob=[-8.0, 0.0],
                                       ref_logprob=[-10.0, 0.0])
    assert stats["words"].tolist() == [2.0, 0.0] and stats["finished"].tolist() == [1.0, 0.0]
    assert stats["logprob_per_token"][0] == -2.0 and stats["ref_logprob_per_token"][0] == -2.5
    assert np.isnan(stats["ref_logprob_per_token"][1])


def test_vader_fluent_labels_are_cached_under_the_formula_version():
    assert scorers.spec_fingerprint("vader-fluent") == f"vader-fluent-v{scorers.VADER_FLUENT_VERSION}"
    assert scorers.spec_fingerprint("vader") is None
