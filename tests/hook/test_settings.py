"""Parsing the ``rejection_*`` keys out of YAML dicts and argv lists."""

import pytest

from rejection_align.errors import ConfigError
from rejection_align.hook.settings import (
    DEFAULT_SENTENCE,
    VALID_KEYS,
    RejectionSettings,
    rejection_keys,
    split_settings,
)


def test_a_dict_without_rejection_keys_is_returned_unchanged_with_no_settings():
    args = {"model_name_or_path": "m", "template": "llava"}

    assert split_settings(args) == (None, args)


def test_rejection_keys_are_taken_out_of_a_copy_and_the_input_dict_is_left_intact():
    args = {"template": "llava", "rejection_mask_eos": True, "rejection_mask_mode": "drop"}
    settings, rest = split_settings(args)

    assert rest == {"template": "llava"}
    assert settings == RejectionSettings(mask_eos=True, mask_mode="drop")
    assert "rejection_mask_eos" in args  # a second parse of the same dict sees the keys again


def test_defaults_follow_the_design():
    settings, _ = split_settings({"rejection_mask_eos": True})

    assert settings.mask_mode == "mask"
    assert settings.match == "exact"
    assert settings.sentences == (DEFAULT_SENTENCE,)


def test_a_misspelt_key_fails_with_a_message_naming_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        split_settings({"rejection_mask_eso": True})

    message = str(info.value)
    assert "rejection_mask_eso" in message
    assert "Did you mean 'rejection_mask_eos'" in message
    assert all(key in message for key in VALID_KEYS)


@pytest.mark.parametrize(
    "args, problem",
    [
        ({"rejection_mask_eos": "maybe"}, "rejection_mask_eos must be true or false"),
        ({"rejection_mask_mode": "zero"}, "rejection_mask_mode must be one of mask, drop"),
        ({"rejection_match": "regex"}, "rejection_match must be one of exact, contains"),
        ({"rejection_sentences": []}, "non-empty list"),
        ({"rejection_sentences": ["ok", "  "]}, "every sentence must be a non-empty string"),
    ],
)
def test_bad_values_are_errors_that_name_the_key(args, problem):
    with pytest.raises(ConfigError, match=problem):
        split_settings(args)


def test_command_line_strings_are_accepted_as_booleans():
    settings, _ = split_settings({"rejection_mask_eos": "True"})

    assert settings.mask_eos is True


def test_a_single_sentence_string_becomes_a_one_element_tuple():
    settings, _ = split_settings({"rejection_mask_eos": True, "rejection_sentences": "No."})

    assert settings.sentences == ("No.",)


def test_the_argv_form_takes_out_flags_values_and_the_sentence():
    argv = ["--template", "llava", "--rejection_mask_eos", "--rejection_sentences", "No way",
            "--rejection_match=contains", "--cutoff_len", "64"]  # fmt: skip
    settings, rest = split_settings(argv)

    assert rest == ["--template", "llava", "--cutoff_len", "64"]
    assert settings == RejectionSettings(mask_eos=True, sentences=("No way",), match="contains")


def test_an_unquoted_sentence_in_the_argv_form_is_one_sentence_not_one_per_word():
    # what LLaMA-Factory's web UI writes for a list value, and what the torchrun launcher's re-split produces
    argv = ["--rejection_mask_eos", "true", "--rejection_sentences", *DEFAULT_SENTENCE.split(), "--template", "llava"]
    settings, rest = split_settings(argv)

    assert settings.sentences == (DEFAULT_SENTENCE,)
    assert rest == ["--template", "llava"]


def test_the_equals_form_also_takes_the_following_words_of_the_sentence():
    settings, rest = split_settings(["--rejection_sentences=No", "way,", "sorry", "--cutoff_len", "64"])

    assert settings.sentences == ("No way, sorry",)
    assert rest == ["--cutoff_len", "64"]


def test_several_quoted_sentences_in_the_argv_form_are_refused_with_a_pointer_to_the_yaml():
    with pytest.raises(ConfigError, match=r"takes exactly one sentence.*in the YAML as a list"):
        split_settings(["--rejection_sentences", "No way", "Never"])


def test_an_empty_sentence_option_in_the_argv_form_is_an_error():
    with pytest.raises(ConfigError, match="--rejection_sentences needs a sentence"):
        split_settings(["--rejection_sentences", "--template", "llava"])


def test_rejection_keys_lists_the_keys_of_a_dict_or_an_argv_list_in_order():
    assert rejection_keys({"template": "llava", "rejection_match": "exact", "rejection_mask_eos": True}) == [
        "rejection_match",
        "rejection_mask_eos",
    ]
    assert rejection_keys(["--rejection_sentences=No", "--template", "llava", "--rejection-mask-eos"]) == [
        "rejection_sentences",
        "rejection_mask_eos",
    ]


def test_exact_matching_strips_white_space_and_contains_matching_finds_substrings():
    exact = RejectionSettings(mask_eos=True)
    contains = RejectionSettings(mask_eos=True, match="contains")

    assert exact.is_rejection(f"  {DEFAULT_SENTENCE}\n")
    assert not exact.is_rejection(f"{DEFAULT_SENTENCE}.")
    assert contains.is_rejection(f"Well, {DEFAULT_SENTENCE}.")
    assert not contains.is_rejection("Sure, here it is.")
