"""The closing-token probe: prompts laid out by LLaMA-Factory's template, probabilities and greedy continuations."""

from pathlib import Path

import pytest

from rejection_align.data.records import DEFAULT_REJECTION_SENTENCE as SENTENCE
from rejection_align.demo.mechanism import ProbePrompt, _encode, format_table, probe_closing
from rejection_align.demo.tiny import DEFAULT_SYSTEM, build_tiny_llava


IMAGE = Path(__file__).resolve().parents[2] / "data" / "demo" / "images" / "red_square.png"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")


def test_probe_input_is_the_llava_training_layout_up_to_the_end_of_the_sentence(tiny_dir):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_dir)
    tokenizer = processor.tokenizer
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="llava"))
    ids, start, pixel_values = _encode(template, tokenizer, processor, ProbePrompt("What is it?", IMAGE), SENTENCE)
    text = tokenizer.decode(ids)
    image_tokens = "<image>" * 4  # the tiny model's image_seq_length
    assert text == f"{DEFAULT_SYSTEM}USER: {image_tokens}\nWhat is it? ASSISTANT:{SENTENCE}"
    assert ids[start:] == tokenizer.encode(SENTENCE, add_special_tokens=False)
    assert tokenizer.eos_token_id not in ids
    assert tuple(pixel_values.shape) == (1, 3, 28, 28)


def test_probe_of_the_base_model_gives_probabilities_and_a_greedy_continuation(tiny_dir):
    (probe,) = probe_closing(tiny_dir, {"base": None}, ProbePrompt("What is it?", IMAGE), SENTENCE, max_new_tokens=3)
    assert probe.label == "base"
    assert 0.0 < probe.p_close < 1.0 and 0.0 < probe.p_sentence < 1.0
    assert probe.continuation  # random weights: something, up to 3 tokens
    assert probe.stopped == probe.continuation.startswith("</s>")


def test_probe_table_has_one_row_per_model_with_its_probability():
    from rejection_align.demo.mechanism import ClosingProbe

    probes = [
        ClosingProbe("baseline", 0.8, 0.95, "</s>", "</s>", True),
        ClosingProbe("method", 0.8, 0.01, "The", "The shape", False),
    ]
    lines = format_table(probes, SENTENCE)
    assert "0.950" in lines[2] and "(stops)" in lines[2]
    assert "0.010" in lines[3] and "(goes on)" in lines[3]
