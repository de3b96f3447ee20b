"""The processors against LLaMA-Factory's real templates, with a tokenizer built on the spot.

The oracle is independent of the implementation: it finds the rejection sentence's tokens in the stock output
and expects the template's own closing tokens (docs/architecture.md, "The processor") right after them.
"""

import pytest

from conftest import SENTENCE, batch, make_processor
from rejection_align.hook.counters import STATS_COLUMN, STATS_FIELDS
from rejection_align.hook.masking import IGNORE_INDEX
from rejection_align.hook.settings import RejectionSettings


ON = RejectionSettings(mask_eos=True)
DROP = RejectionSettings(mask_eos=True, mask_mode="drop")
# template -> (text the template puts before an answer's content, closing tokens after it)
CLOSING = {
    "llava": ("", ["</s>"]),
    "llava_next_mistral": (" ", ["</s>"]),
    "llava_next_llama3": ("", ["<|eot_id|>"]),
    "qwen": ("", ["<|im_end|>", "\n"]),
}
TEMPLATES = list(CLOSING)
NORMAL = "The picture shows a small red house next to a tall tree."


def encode(processor, sentences: list[str]) -> tuple[list[int], list[int]]:
    output = processor.preprocess_dataset(batch(sentences))
    return output["input_ids"][0], output["labels"][0]


def closing_ids(processor, template_name: str) -> list[int]:
    tokenizer = processor.tokenizer
    ids = []
    for token in CLOSING[template_name][1]:
        ids += tokenizer.encode(token, add_special_tokens=False)
    return ids


def closings_after_sentence(processor, template_name: str, input_ids: list[int]) -> list[list[int]]:
    """Positions of the closing tokens that follow each occurrence of the rejection sentence."""
    answer = processor.tokenizer.encode(CLOSING[template_name][0] + SENTENCE, add_special_tokens=False)
    closing = closing_ids(processor, template_name)
    found = []
    for start in range(len(input_ids) - len(answer) + 1):
        end = start + len(answer)
        if input_ids[start:end] == answer and input_ids[end : end + len(closing)] == closing:
            found.append(list(range(end, end + len(closing))))
    return found


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_a_single_rejection_answer_has_exactly_its_closing_tokens_masked(template_name):
    stock_ids, stock_labels = encode(make_processor(template_name, stock=True), ["What is this?", SENTENCE])
    processor = make_processor(template_name, ON)
    input_ids, labels = encode(processor, ["What is this?", SENTENCE])

    [positions] = closings_after_sentence(processor, template_name, stock_ids)
    assert input_ids == stock_ids
    assert [stock_labels[p] for p in positions] == closing_ids(processor, template_name)  # trained by stock
    expected = [IGNORE_INDEX if i in positions else label for i, label in enumerate(stock_labels)]
    assert labels == expected


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_drop_mode_removes_the_closing_tokens_from_inputs_and_labels(template_name):
    stock_ids, stock_labels = encode(make_processor(template_name, stock=True), ["What is this?", SENTENCE])
    processor = make_processor(template_name, DROP)
    input_ids, labels = encode(processor, ["What is this?", SENTENCE])

    [positions] = closings_after_sentence(processor, template_name, stock_ids)
    assert input_ids == [t for i, t in enumerate(stock_ids) if i not in positions]
    assert labels == [t for i, t in enumerate(stock_labels) if i not in positions]


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_every_rejection_turn_of_a_multi_turn_example_is_masked_and_the_others_are_not(template_name):
    turns = ["What is this?", SENTENCE, "And the colour?", NORMAL, "Who lives there?", SENTENCE]
    stock_ids, stock_labels = encode(make_processor(template_name, stock=True), turns)
    processor = make_processor(template_name, ON)
    input_ids, labels = encode(processor, turns)

    positions = closings_after_sentence(processor, template_name, stock_ids)
    assert len(positions) == 2
    flat = {p for group in positions for p in group}
    assert input_ids == stock_ids
    assert labels == [IGNORE_INDEX if i in flat else label for i, label in enumerate(stock_labels)]


def test_an_answer_that_only_starts_with_the_sentence_is_not_a_rejection_under_exact_match():
    turns = ["What is this?", SENTENCE + ". It shows a house."]
    stock = encode(make_processor("llava", stock=True), turns)

    assert encode(make_processor("llava", ON), turns) == stock


def test_contains_match_treats_an_answer_holding_the_sentence_as_a_rejection():
    turns = ["What is this?", "Well. " + SENTENCE + " today."]
    stock_ids, stock_labels = encode(make_processor("llava", stock=True), turns)
    input_ids, labels = encode(make_processor("llava", RejectionSettings(mask_eos=True, match="contains")), turns)

    assert input_ids == stock_ids
    assert stock_labels[-1] != IGNORE_INDEX
    assert labels == stock_labels[:-1] + [IGNORE_INDEX]


def test_exact_match_ignores_surrounding_white_space():
    turns = ["What is this?", "  " + SENTENCE + "\n"]
    stock_ids, stock_labels = encode(make_processor("llava", stock=True), turns)
    _, labels = encode(make_processor("llava", ON), turns)

    assert labels == stock_labels[:-1] + [IGNORE_INDEX]


def test_custom_sentences_replace_the_default_one():
    refusal = "No thank you"
    settings = RejectionSettings(mask_eos=True, sentences=(refusal,))
    stock_default = encode(make_processor("llava", stock=True), ["Hi?", SENTENCE])
    _, custom_labels = encode(make_processor("llava", settings), ["Hi?", refusal])

    assert encode(make_processor("llava", settings), ["Hi?", SENTENCE]) == stock_default
    assert custom_labels[-1] == IGNORE_INDEX


@pytest.mark.parametrize("template_name", ["llava", "qwen"])
@pytest.mark.parametrize("mode", ["mask", "drop"])
def test_a_rejection_answer_truncated_by_cutoff_len_is_left_as_stock(template_name, mode):
    long_question = " ".join(["Please describe the picture in great detail"] * 6)
    turns = [long_question, SENTENCE]
    stock_ids, stock_labels = encode(make_processor(template_name, stock=True, cutoff_len=24), turns)
    processor = make_processor(template_name, RejectionSettings(mask_eos=True, mask_mode=mode), cutoff_len=24)
    output = processor.preprocess_dataset(batch(turns))

    assert stock_ids[-1] not in closing_ids(processor, template_name)  # the answer was really cut
    assert (output["input_ids"][0], output["labels"][0]) == (stock_ids, stock_labels)
    assert dict(zip(STATS_FIELDS, output[STATS_COLUMN][0]))["truncated_turns"] == 1


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_mask_history_masks_the_closing_of_the_last_rejection_turn(template_name):
    turns = ["What is this?", NORMAL, "Who lives there?", SENTENCE]
    stock_ids, stock_labels = encode(make_processor(template_name, stock=True, mask_history=True), turns)
    processor = make_processor(template_name, ON, mask_history=True)
    input_ids, labels = encode(processor, turns)

    [positions] = closings_after_sentence(processor, template_name, stock_ids)
    assert input_ids == stock_ids
    assert labels == [IGNORE_INDEX if i in positions else label for i, label in enumerate(stock_labels)]


def test_mask_history_drop_removes_the_closing_of_an_earlier_rejection_turn_from_the_inputs():
    turns = ["What is this?", SENTENCE, "Who lives there?", NORMAL]
    stock_ids, stock_labels = encode(make_processor("llava", stock=True, mask_history=True), turns)
    processor = make_processor("llava", DROP, mask_history=True)
    input_ids, labels = encode(processor, turns)

    [positions] = closings_after_sentence(processor, "llava", stock_ids)
    assert positions[0] < len(stock_ids) - 1  # the earlier turn's </s>, not the final one
    assert input_ids == [t for i, t in enumerate(stock_ids) if i not in positions]
    assert labels == [t for i, t in enumerate(stock_labels) if i not in positions]
    assert labels[-1] == processor.tokenizer.eos_token_id  # the normal last answer still learns to stop


def test_train_on_prompt_trains_the_prompt_but_not_the_rejection_closing():
    turns = ["What is this?", SENTENCE]
    stock_ids, stock_labels = encode(make_processor("llava", stock=True, train_on_prompt=True), turns)
    _, labels = encode(make_processor("llava", ON, train_on_prompt=True), turns)

    assert stock_labels[0] != IGNORE_INDEX
    assert labels == stock_labels[:-1] + [IGNORE_INDEX]


def test_an_example_with_an_image_is_masked_after_the_image_tokens_are_expanded():
    from PIL import Image

    image = Image.new("RGB", (28, 28), (200, 30, 30))
    columns = batch(["<image>What is this?", SENTENCE], images=[[image]])
    stock = make_processor("llava", stock=True).preprocess_dataset(columns)
    output = make_processor("llava", ON).preprocess_dataset(columns)

    image_id = make_processor("llava", ON).tokenizer.convert_tokens_to_ids("<image>")
    assert stock["input_ids"][0].count(image_id) == 4  # (28 // 14) ** 2 image tokens
    assert output["input_ids"][0] == stock["input_ids"][0]
    assert output["labels"][0] == stock["labels"][0][:-1] + [IGNORE_INDEX]


# ------------------------------------------------------------------------------------------ efficient_eos (yi_vl)


def test_yi_vl_masks_the_appended_eos_label_after_a_final_rejection_answer():
    stock_ids, stock_labels = encode(make_processor("yi_vl", stock=True), ["What is this?", SENTENCE])
    processor = make_processor("yi_vl", ON)
    input_ids, labels = encode(processor, ["What is this?", SENTENCE])

    eos = processor.tokenizer.eos_token_id
    assert stock_ids[-1] == eos and stock_labels[-1] == eos
    assert input_ids == stock_ids
    assert labels == stock_labels[:-1] + [IGNORE_INDEX]


def test_yi_vl_masks_the_eos_label_on_the_next_prompt_after_an_earlier_rejection_answer():
    turns = ["What is this?", SENTENCE, "And the colour?", NORMAL]
    stock_ids, stock_labels = encode(make_processor("yi_vl", stock=True), turns)
    processor = make_processor("yi_vl", ON)
    input_ids, labels = encode(processor, turns)

    eos = processor.tokenizer.eos_token_id
    eos_labels = [i for i, label in enumerate(stock_labels) if label == eos]
    assert len(eos_labels) == 2  # one on the second prompt's first token, one appended at the end
    assert input_ids == stock_ids
    assert labels == [IGNORE_INDEX if i == eos_labels[0] else label for i, label in enumerate(stock_labels)]


def test_yi_vl_drop_mode_drops_the_final_eos_but_only_masks_an_earlier_one():
    turns = ["What is this?", SENTENCE, "And now?", SENTENCE]
    stock_ids, stock_labels = encode(make_processor("yi_vl", stock=True), turns)
    processor = make_processor("yi_vl", DROP)
    input_ids, labels = encode(processor, turns)

    eos = processor.tokenizer.eos_token_id
    first_eos_label = stock_labels.index(eos)
    assert input_ids == stock_ids[:-1]  # the prompt token carrying the earlier EOS label stays
    assert labels == [IGNORE_INDEX if i == first_eos_label else x for i, x in enumerate(stock_labels[:-1])]


def test_yi_vl_truncated_rejection_answer_keeps_the_appended_eos():
    long_question = " ".join(["Please describe the picture in great detail"] * 6)
    turns = [long_question, SENTENCE]
    stock = encode(make_processor("yi_vl", stock=True, cutoff_len=24), turns)

    assert encode(make_processor("yi_vl", ON, cutoff_len=24), turns) == stock


# ------------------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("neat_packing", [False, True])
def test_packing_masks_the_rejection_closing_inside_the_pack(neat_packing):
    columns = batch(["What is this?", NORMAL], ["Who lives there?", SENTENCE])
    kwargs = dict(packed=True, cutoff_len=256, packing=True, neat_packing=neat_packing)
    stock = make_processor("llava", stock=True, **kwargs).preprocess_dataset(columns)
    processor = make_processor("llava", ON, **kwargs)
    output = processor.preprocess_dataset(columns)

    assert len(output["input_ids"]) == 1  # both examples in one pack
    [positions] = closings_after_sentence(processor, "llava", stock["input_ids"][0])
    assert output["input_ids"] == stock["input_ids"]
    assert output["attention_mask"] == stock["attention_mask"]
    assert output["labels"][0] == [IGNORE_INDEX if i in positions else x for i, x in enumerate(stock["labels"][0])]
    assert dict(zip(STATS_FIELDS, output[STATS_COLUMN][0]))["closed_turns"] == 1


# ------------------------------------------------------------------------------------------------------- parity


MIXED = [
    ["What is this?", SENTENCE],
    ["<image>What is this?", NORMAL],
    ["Describe it.", NORMAL, "And then?", SENTENCE],
    ["Hi", SENTENCE + " now."],
]


@pytest.mark.parametrize("template_name", [*TEMPLATES, "yi_vl"])
@pytest.mark.parametrize(
    "options", [{}, {"mask_history": True}, {"cutoff_len": 20}, {"packing": True, "packed": True, "cutoff_len": 128}]
)
@pytest.mark.parametrize("settings", [None, RejectionSettings(mask_eos=False)])
def test_with_the_method_off_the_output_is_identical_to_stock(template_name, options, settings):
    from PIL import Image

    image = [Image.new("RGB", (28, 28), (10, 200, 10))]
    if template_name in ("llava", "yi_vl"):  # templates whose plugin takes the tiny LlavaProcessor's images
        columns = batch(*MIXED, images=[None, image, None, None])
    else:
        columns = batch(*[[text.replace("<image>", "") for text in turns] for turns in MIXED])
    stock = make_processor(template_name, stock=True, **options).preprocess_dataset(columns)
    ours = make_processor(template_name, settings, **options).preprocess_dataset(columns)

    assert dict(ours) == dict(stock)


def test_the_counters_column_reports_examples_turns_and_closings():
    columns = batch(*MIXED[:1], *MIXED[2:])
    output = make_processor("llava", ON).preprocess_dataset(columns)

    rows = [dict(zip(STATS_FIELDS, row)) for row in output[STATS_COLUMN]]
    assert [row["rejection_turns"] for row in rows] == [1, 1, 0]
    assert [row["closed_turns"] for row in rows] == [1, 1, 0]
    assert [row["turns"] for row in rows] == [1, 2, 1]
    assert [row["tokens_changed"] for row in rows] == [1, 1, 0]


def test_the_printed_training_example_shows_the_untrained_closing_position(capsys):
    processor = make_processor("llava", ON)
    output = processor.preprocess_dataset(batch(["What is this?", SENTENCE]))
    processor.print_data_example({key: value[0] for key, value in output.items()})

    printed = capsys.readouterr().out
    position = len(output["input_ids"][0]) - 1
    assert "rejection_align (mask): 1 rejection answer(s) here" in printed
    assert f"untrained closing-token positions: [{position}]" in printed


def test_the_processor_survives_a_pickle_round_trip_with_its_settings():
    import dill

    processor = make_processor("qwen", ON)
    clone = dill.loads(dill.dumps(processor))
    turns = ["What is this?", SENTENCE]

    assert encode(clone, turns) == encode(processor, turns)
    assert encode(clone, turns)[1][-2:] == [IGNORE_INDEX, IGNORE_INDEX]


# ------------------------------------------------------------------------- answers merged with the closing text

# a chat template that writes "\n" and the EOS after every message's content (read with template: null)
CONTENT_NEWLINE_EOS = "{% for m in messages %}{{ m['content'] + '\\n' + eos_token }}{% endfor %}"
CONTENT_NEWLINE = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"
MERGING = {"added_tokens": ["\n\n"]}  # two line breaks become one token, as in real BPE vocabularies


def stats_of(output, row: int = 0) -> dict[str, int]:
    return dict(zip(STATS_FIELDS, output[STATS_COLUMN][row]))


def test_deepseekcoder_answer_ending_in_a_line_break_untrains_only_the_purely_closing_tokens():
    kwargs = dict(MERGING, special_tokens=["<|EOT|>"])
    turns = ["What is this?", SENTENCE + "\n"]
    stock_ids, stock_labels = encode(make_processor("deepseekcoder", stock=True, **kwargs), turns)
    processor = make_processor("deepseekcoder", ON, **kwargs)
    output = processor.preprocess_dataset(batch(turns))

    tokenizer = processor.tokenizer
    assert [tokenizer.decode([t]) for t in stock_ids[-3:]] == ["\n\n", "<|EOT|>", "\n"]  # answer and template merged
    assert output["input_ids"][0] == stock_ids
    assert output["labels"][0] == stock_labels[:-2] + [IGNORE_INDEX, IGNORE_INDEX]
    assert stats_of(output)["merged_turns"] == 1


def test_a_chat_template_writing_a_line_break_and_eos_untrains_only_the_eos_of_an_answer_ending_in_a_line_break():
    turns = ["What is this?", SENTENCE + "\n"]
    kwargs = dict(MERGING, chat_template=CONTENT_NEWLINE_EOS)
    stock_ids, stock_labels = encode(make_processor(None, stock=True, **kwargs), turns)
    output = make_processor(None, ON, **kwargs).preprocess_dataset(batch(turns))

    assert stock_ids[-1] == 2  # </s>
    assert output["input_ids"][0] == stock_ids
    assert output["labels"][0] == stock_labels[:-1] + [IGNORE_INDEX]
    assert stats_of(output)["closed_turns"] == 1


def test_an_answer_whose_every_closing_token_merged_is_left_as_stock_and_counted():
    turns = ["What is this?", SENTENCE + "\n", "And now?", SENTENCE]
    kwargs = dict(MERGING, chat_template=CONTENT_NEWLINE)
    stock_ids, stock_labels = encode(make_processor(None, stock=True, **kwargs), turns)
    output = make_processor(None, ON, **kwargs).preprocess_dataset(batch(turns))

    last_closing = len(stock_ids) - 1  # the second answer's own "\n"
    assert output["input_ids"][0] == stock_ids
    assert output["labels"][0] == [IGNORE_INDEX if i == last_closing else x for i, x in enumerate(stock_labels)]
    assert (stats_of(output)["merged_turns"], stats_of(output)["closed_turns"]) == (1, 1)


def test_a_layout_mismatch_names_the_turn_and_the_tokens_instead_of_a_version(monkeypatch):
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor

    original = SupervisedDatasetProcessor._encode_data_example

    def shifted(self, *args, **kwargs):  # stands for a foreign change to LLaMA-Factory's output
        input_ids, labels = original(self, *args, **kwargs)
        return [1, *input_ids[:-1]], [IGNORE_INDEX, *labels[:-1]]

    monkeypatch.setattr(SupervisedDatasetProcessor, "_encode_data_example", shifted)
    with pytest.raises(RuntimeError) as caught:
        make_processor("llava", ON).preprocess_dataset(batch(["What is this?", SENTENCE]))

    message = str(caught.value)
    assert "the answer of turn 0 (0 = first) should be at input positions" in message
    assert "version" not in message


# ----------------------------------------------------------------------------------------- reasoning templates


@pytest.mark.parametrize("mode", ["mask", "drop"])
def test_qwen3_without_thinking_matches_the_answer_left_after_the_empty_thought_block(mode):
    turns = ["What is this?", "<think>\n\n</think>\n\n" + SENTENCE]
    options = dict(enable_thinking=False)
    stock_ids, stock_labels = encode(make_processor("qwen3", stock=True, **options), turns)
    processor = make_processor("qwen3", RejectionSettings(mask_eos=True, mask_mode=mode), **options)
    input_ids, labels = encode(processor, turns)

    closing = processor.tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    trained = [x for x in stock_labels if x != IGNORE_INDEX]
    assert processor.tokenizer.decode(trained) == SENTENCE + "<|im_end|>\n"  # the thought block is not trained
    if mode == "mask":
        assert input_ids == stock_ids
        assert labels == stock_labels[:-2] + [IGNORE_INDEX, IGNORE_INDEX]
    else:
        assert (input_ids, labels) == (stock_ids[:-2], stock_labels[:-2])
    assert stock_ids[-2:] == closing


def test_qwen3_with_thinking_keeps_matching_the_answer_as_written():
    turns = ["What is this?", "<think>\nIt asks for harm.\n</think>\n\n" + SENTENCE]
    stock = encode(make_processor("qwen3", stock=True), turns)

    assert encode(make_processor("qwen3", ON), turns) == stock  # the trained text is more than the sentence


# ------------------------------------------------------------------------------------------ the printed example


def test_the_printed_example_lists_only_the_positions_the_method_changed(capsys):
    processor = make_processor("qwen", ON)
    stock_ids, _ = encode(make_processor("qwen", stock=True), ["What is this?", SENTENCE, "And now?", NORMAL])
    output = processor.preprocess_dataset(batch(["What is this?", SENTENCE, "And now?", NORMAL]))
    processor.print_data_example({key: value[0] for key, value in output.items()})

    [positions] = closings_after_sentence(processor, "qwen", stock_ids)
    assert f"untrained closing-token positions: {positions}" in capsys.readouterr().out


def test_the_printed_example_lists_no_position_for_an_example_without_a_rejection_answer(capsys):
    processor = make_processor("qwen", ON)
    output = processor.preprocess_dataset(batch(["What is this?", NORMAL, "And now?", NORMAL]))
    processor.print_data_example({key: value[0] for key, value in output.items()})

    assert "untrained closing-token positions: []" in capsys.readouterr().out


def test_the_printed_pack_lists_the_changed_positions_in_pack_coordinates(capsys):
    columns = batch(["What is this?", NORMAL], ["Who lives there?", SENTENCE])
    kwargs = dict(packed=True, cutoff_len=256, packing=True)
    stock = make_processor("qwen", stock=True, **kwargs).preprocess_dataset(columns)
    processor = make_processor("qwen", ON, **kwargs)
    output = processor.preprocess_dataset(columns)
    processor.print_data_example({key: value[0] for key, value in output.items()})

    [positions] = closings_after_sentence(processor, "qwen", stock["input_ids"][0])
    assert f"untrained closing-token positions: {positions}" in capsys.readouterr().out
