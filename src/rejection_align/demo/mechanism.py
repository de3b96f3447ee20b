"""The method's effect, measured: P(closing token | prompt + rejection sentence) and what greedy decoding does next.

A model trained with every closing token (the baseline) learns that the rejection sentence is the whole answer:
after it, ``</s>`` is likely and decoding stops. With the method the closing token of rejection answers is never
trained, so the model learns to *open* with the sentence but not to end there, and decoding goes on. This module
feeds a prompt plus the sentence to a base model with a LoRA adapter and reads both, with the prompt laid out by
LLaMA-Factory's own template (so it is token for token what training saw).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosingProbe:
    """What one model does right after the rejection sentence."""

    label: str
    p_sentence: float  # per-token probability of the sentence after the prompt (geometric mean): was it learned?
    p_close: float  # P(closing token | prompt + sentence)
    top_token: str  # the most likely next token
    continuation: str  # greedy decoding after the sentence, closing token shown as text
    stopped: bool  # greedy decoding's first token is the closing token


@dataclass(frozen=True)
class ProbePrompt:
    question: str
    image: Path | None = None


def _encode(
    template: Any, tokenizer: Any, processor: Any, prompt: ProbePrompt, sentence: str
) -> tuple[list[int], int, Any]:
    """Ids of prompt + sentence (no closing token), where the sentence starts, and the image tensors.

    Laid out by LLaMA-Factory's template and mm_plugin, as ``llamafactory-cli train`` lays out a training example.
    """
    from PIL import Image

    images = []
    content = prompt.question
    if prompt.image is not None:
        with Image.open(prompt.image) as image:
            images.append(image.convert("RGB"))
        content = "<image>\n" + content
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": sentence}]
    messages = template.mm_plugin.process_messages(messages, images, [], [], processor)
    prompt_ids, answer_ids = template.encode_oneturn(tokenizer, messages)
    if answer_ids and answer_ids[-1] == tokenizer.eos_token_id:
        answer_ids = answer_ids[:-1]
    pixel_values = None
    if images:
        pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return prompt_ids + answer_ids, len(prompt_ids), pixel_values


def probe_closing(
    model_dir: Path,
    adapters: dict[str, Path | None],
    prompt: ProbePrompt,
    sentence: str,
    *,
    template_name: str = "llava",
    max_new_tokens: int = 12,
) -> list[ClosingProbe]:
    """One :class:`ClosingProbe` per adapter (``None``: the base model), all on the same prompt."""
    import torch
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))
    ids, start, pixel_values = _encode(template, tokenizer, processor, prompt, sentence)
    input_ids = torch.tensor([ids])
    inputs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    return [
        _probe_one(label, _load_model(model_dir, adapter), inputs, start, tokenizer, max_new_tokens)
        for label, adapter in adapters.items()
    ]


def _load_model(model_dir: Path, adapter: Path | None) -> Any:
    """The base model in float32, with ``adapter`` on it unless it is ``None``; in eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        with warnings.catch_warnings():  # peft warns about tied weights the tiny model does not tie
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
            model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def _probe_one(
    label: str, model: Any, inputs: dict[str, Any], start: int, tokenizer: Any, max_new_tokens: int
) -> ClosingProbe:
    """One forward pass (the sentence's probability, the next token's) and greedy decoding after the sentence."""
    import torch

    input_ids, eos = inputs["input_ids"], tokenizer.eos_token_id
    with torch.no_grad():
        log_probs = torch.log_softmax(model(**inputs).logits[0].float(), dim=-1)
        # position i predicts token i + 1: the sentence tokens are predicted from start - 1 to the one before last
        targets = input_ids[0, start:]
        sentence_lp = log_probs[start - 1 : -1].gather(1, targets[:, None]).mean()
        probs = log_probs[-1].exp()
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
    new = generated[0, input_ids.shape[1] :].tolist()
    return ClosingProbe(
        label=label,
        p_sentence=float(sentence_lp.exp()),
        p_close=float(probs[eos]),
        top_token=tokenizer.decode([int(probs.argmax())]),
        continuation=tokenizer.decode(new, skip_special_tokens=False),
        stopped=bool(new) and new[0] == eos,
    )


def format_table(probes: list[ClosingProbe], sentence: str) -> list[str]:
    """Side-by-side lines: P(closing token) and the greedy continuation after ``sentence``."""
    width = max(len(p.label) for p in probes)
    lines = [
        f"after {sentence!r}:",
        f"{'':<{width}}  {'P(sent.)/token':>15}  {'P(</s>)':>8}  greedy continuation",
    ]
    for p in probes:
        note = "stops" if p.stopped else "goes on"
        lines.append(f"{p.label:<{width}}  {p.p_sentence:>15.3f}  {_prob(p.p_close):>8}  {p.continuation!r} ({note})")
    return lines


def _prob(p: float) -> str:
    """Three decimals, or two significant digits below 0.001 (so a tiny probability does not read as zero)."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
