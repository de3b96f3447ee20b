"""Benchmark prompts rendered by LLaMA-Factory's own template and mm_plugin, as ``llamafactory-cli train`` saw them.

A model fine-tuned with LLaMA-Factory learned one prompt layout: its template's system prompt, role markers and
separators, with the image placeholder expanded by the template's mm_plugin. Evaluating it with the checkpoint's
Hugging Face chat template instead (``llava-hf/llava-1.5-7b-hf``'s has no system prompt, LLaMA-Factory's
``llava`` template has one) measures the model on prompts it never saw. ``PromptEncoder`` builds the prompt ids
the way the supervised processor builds the prompt part of a training example (``process_messages``, then
``encode_oneturn`` with an empty answer, then ``process_token_ids``), and the same ids feed transformers and vLLM.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DataError


if TYPE_CHECKING:
    from .benchmarks import Item


IMAGE_PLACEHOLDER = "<image>"  # LLaMA-Factory's default (its IMAGE_PLACEHOLDER, overridable by environment)
HF_CHAT = "hf-chat"  # --template value that keeps the checkpoint's own chat template (the old behaviour)


def image_placeholder() -> str:
    from llamafactory.extras.constants import IMAGE_PLACEHOLDER as placeholder

    return placeholder


def user_content(item: Item, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """The user turn as LLaVA-format training data writes it: ``<image>\\n`` + prompt when the item has an image."""
    if placeholder in item.prompt:
        if not item.image:
            where = item.source or f"item {item.id!r} ({item.scenario})"
            raise DataError(f"{where}: the prompt holds {placeholder!r} but no image")
        return item.prompt
    return (placeholder + "\n" if item.image else "") + item.prompt


@dataclass(frozen=True)
class EncodedPrompt:
    """Prompt ids ready for ``generate`` (image tokens expanded as the plugin does) and the auditable text."""

    input_ids: list[int]
    rendered_prompt: str
    images: list[Any]


@dataclass
class PromptEncoder:
    """LLaMA-Factory's ``template`` with its tokenizer and processor, turning items into prompt ids.

    ``expand_mm_tokens=False`` gives one image token per image (what vLLM expects: it expands them itself);
    ``system=None`` keeps the template's default system prompt.
    """

    template: Any
    tokenizer: Any
    processor: Any
    system: str | None = None
    expand_mm_tokens: bool = True

    def __post_init__(self) -> None:
        # The template (and its plugin) is LLaMA-Factory's shared module-level object: change copies only.
        self._plugin = copy.copy(self.template.mm_plugin)
        self._plugin.expand_mm_tokens = self.expand_mm_tokens
        self._collapsed = copy.copy(self.template.mm_plugin)
        self._collapsed.expand_mm_tokens = False
        self._placeholder = image_placeholder()

    def _ids(self, plugin: Any, content: str, images: list[Any]) -> list[int]:
        messages = [{"role": "user", "content": content}]
        messages = plugin.process_messages(messages, images, [], [], self.processor)
        paired = messages + [{"role": "assistant", "content": ""}]
        prompt_ids, _ = self.template.encode_oneturn(self.tokenizer, paired, self.system, None)
        prompt_ids, _ = plugin.process_token_ids(prompt_ids, None, images, [], [], self.tokenizer, self.processor)
        return list(prompt_ids)

    def encode(self, item: Item, image: Any = None) -> EncodedPrompt:
        """Prompt ids for ``item``; ``image`` is the loaded image (default: the item's path, read by the plugin)."""
        images = [] if not item.image else [image if image is not None else item.image]
        return self.encode_content(
            user_content(item, self._placeholder), images, what=f"item {item.id!r} ({item.scenario})"
        )

    def encode_content(self, content: str, images: list[Any], *, what: str = "prompt") -> EncodedPrompt:
        """Prompt ids for one user turn ``content`` holding one ``<image>`` placeholder per entry of ``images``.

        The entry point for prompts that are not benchmark items (lmms-eval tasks: several images per doc);
        ``what`` names the prompt in errors.
        """
        try:
            input_ids = self._ids(self._plugin, content, images)
            collapsed = (
                input_ids if not images and self.expand_mm_tokens else self._ids(self._collapsed, content, images)
            )
        except ValueError as err:  # the plugin's own checks (placeholders vs. images, missing processor)
            raise DataError(f"{what}: {err}") from None
        rendered = self.tokenizer.decode(collapsed, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return EncodedPrompt(input_ids, rendered, images)

    def stop_token_ids(self) -> list[int]:
        """EOS and the template's stop words (``<|im_end|>``, ``<|eot_id|>``): where an answer ends."""
        return list(self.template.get_stop_token_ids(self.tokenizer))
