"""Prompt parity: generate's prompt ids equal the prompt part LLaMA-Factory's stock supervised processor trains on.

The oracle is ``llamafactory.data.processor.supervised.SupervisedDatasetProcessor`` on the same item with a dummy
answer: the ids before the first trained label are the prompt the model saw in training.
"""

import copy
import functools

import pytest
from PIL import Image

from rejection_align.eval.benchmarks import Item
from rejection_align.eval.prompts import PromptEncoder


IGNORE_INDEX = -100
TEMPLATES = ("llava", "llava_next_llama3", "llava_next_mistral", "yi_vl", "qwen2_vl")
QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
LLAMA3_TOKENS = ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from rejection_align.demo.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer((*LLAMA3_TOKENS, *QWEN_TOKENS, "<|endoftext|>"))


def _mm_processor(template_name: str, tokenizer):
    from transformers import (
        CLIPImageProcessor,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    from rejection_align.demo.tiny import build_qwen2_vl_processor

    if template_name == "qwen2_vl":
        return build_qwen2_vl_processor(tokenizer)
    if template_name.startswith("llava_next"):
        image_processor = LlavaNextImageProcessor(
            size={"shortest_edge": 28},
            crop_size={"height": 28, "width": 28},
            image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]],
        )
        return LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
        )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )  # fmt: skip


def _setup(template_name: str):
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    tokenizer = copy.deepcopy(_tokenizer())
    data_args = DataArguments(template=template_name, cutoff_len=4096)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    return template, tokenizer, _mm_processor(template_name, tokenizer), data_args


def _stock_prompt_ids(template, tokenizer, processor, data_args, item: Item) -> list[int]:
    from llamafactory.data.processor.supervised import SupervisedDatasetProcessor

    stock = SupervisedDatasetProcessor(
        template=template, tokenizer=tokenizer, processor=processor, data_args=data_args
    )
    content = ("<image>\n" if item.image else "") + item.prompt
    input_ids, labels = stock._encode_data_example(
        prompt=[{"role": "user", "content": content}],
        response=[{"role": "assistant", "content": "Sure, here it is."}],
        system="",
        tools="",
        images=[item.image] if item.image else [],
        videos=[],
        audios=[],
    )
    first_trained = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    return input_ids[:first_trained]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "a.jpg"
    Image.new("RGB", (50, 34), (120, 30, 200)).save(path)
    return str(path)


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_prompt_ids_of_an_image_item_equal_the_trained_prompt(template_name, image_path):
    template, tokenizer, processor, data_args = _setup(template_name)
    item = Item("0", "s", "m", "What is shown in the image?", image_path, "out")
    ours = PromptEncoder(template, tokenizer, processor).encode(item).input_ids
    assert ours == _stock_prompt_ids(template, tokenizer, processor, data_args, item)


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_prompt_ids_of_a_text_only_item_equal_the_trained_prompt(template_name):
    template, tokenizer, processor, data_args = _setup(template_name)
    item = Item("1", "s", "text", "How can I do thing 1?", None, "out")
    ours = PromptEncoder(template, tokenizer, processor).encode(item).input_ids
    assert ours == _stock_prompt_ids(template, tokenizer, processor, data_args, item)


def test_the_llava_prompt_starts_with_the_template_system_prompt_and_puts_the_image_first(image_path):
    template, tokenizer, processor, _ = _setup("llava")
    item = Item("0", "s", "m", "What is shown?", image_path, "out")
    rendered = PromptEncoder(template, tokenizer, processor).encode(item).rendered_prompt
    assert rendered == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.USER: <image>\nWhat is shown? ASSISTANT:"
    )


def test_the_rendered_qwen2_vl_prompt_keeps_one_image_pad_before_expansion(image_path):
    template, tokenizer, processor, _ = _setup("qwen2_vl")
    item = Item("0", "s", "m", "What is shown?", image_path, "out")
    encoded = PromptEncoder(template, tokenizer, processor).encode(item)
    assert "<|vision_start|><|image_pad|><|vision_end|>\nWhat is shown?<|im_end|>" in encoded.rendered_prompt
    assert encoded.input_ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) > 1  # expanded in the ids


def test_a_given_system_prompt_replaces_the_template_default():
    template, tokenizer, processor, _ = _setup("llava")
    item = Item("1", "s", "text", "Hi", None, "out")
    rendered = PromptEncoder(template, tokenizer, processor, system="Be brief.").encode(item).rendered_prompt
    assert rendered == "Be brief.USER: Hi ASSISTANT:"  # LLaMA-Factory writes no space there


def test_unexpanded_ids_hold_one_image_token_for_vllm(image_path):
    template, tokenizer, processor, _ = _setup("llava")
    item = Item("0", "s", "m", "What is shown?", image_path, "out")
    ids = PromptEncoder(template, tokenizer, processor, expand_mm_tokens=False).encode(item).input_ids
    assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1
