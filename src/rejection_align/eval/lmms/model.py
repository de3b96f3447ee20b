"""``LlamaFactoryLMM``: lmms-eval's model interface over the generator ``rejection-align generate`` uses.

The task owns the prompt text (``doc_to_text``), the images (``doc_to_visual``) and the metric; this class owns
rendering and decoding, and does both through ``HFGenerator`` (``eval/backends.py``): LLaMA-Factory's loader (the
adapter unmerged on disk, merged at load as ``llamafactory-cli chat`` does), its template with the template's system
prompt, its mm_plugin expanding one ``<image>`` placeholder per image, left-padded batches, and the template's stop
tokens. A doc's user turn is ``<image>`` once per image, a newline, then the task's text, as LLaVA-format training
data writes it; a text that already holds placeholders is used as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from lmms_eval.api.model import lmms

from ...errors import ConfigError, DataError
from ..backends import HFGenerator, infer_arguments
from ..prompts import IMAGE_PLACEHOLDER, EncodedPrompt, image_placeholder


logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 512  # as generate's; a task's generation_kwargs.max_new_tokens wins


def _as_batch_size(value: Any) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--batch_size {value!r}: the llamafactory model takes a number of prompts per batch"
        ) from None
    if size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {size}")
    return size


def user_turn(context: str, n_images: int, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """The user turn of a doc: one placeholder per image, a newline, the task's text (unless it places them itself)."""
    if placeholder in context or not n_images:
        return context
    return placeholder * n_images + "\n" + context


def cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    """The answer up to the first of the task's stop strings (lmms-eval's ``until``), stripped."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text.strip()


class LlamaFactoryLMM(lmms):
    """``lmms-eval --model llamafactory --model_args infer_yaml=PATH,...``: a LLaMA-Factory inference set-up.

    ``model_args``: ``infer_yaml`` (an inference YAML as ``llamafactory-cli chat`` takes it), and any of
    ``model_name_or_path``, ``adapter_name_or_path``, ``template``, ``infer_dtype``, ``image_max_pixels`` (these
    override the YAML), ``system`` (replaces the template's default system prompt; text, or a file holding it),
    ``max_new_tokens`` (used where the task's ``generation_kwargs`` set none). ``batch_size`` and ``device`` come
    from lmms-eval's own flags. One process: the model spreads over the visible GPUs by ``device_map=auto``.
    """

    def __init__(
        self,
        infer_yaml: str | None = None,
        model_name_or_path: str | None = None,
        adapter_name_or_path: str | None = None,
        template: str | None = None,
        infer_dtype: str | None = None,
        system: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        image_max_pixels: int | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        max_batch_size: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            known = "infer_yaml, model_name_or_path, adapter_name_or_path, template, infer_dtype, system, "
            known += "max_new_tokens, image_max_pixels"
            raise ConfigError(f"llamafactory model: unknown model_args {sorted(unknown)}; expected some of {known}")
        extra = {} if image_max_pixels is None else {"image_max_pixels": int(image_max_pixels)}
        args = infer_arguments(
            infer_yaml,
            model=model_name_or_path,
            adapter=adapter_name_or_path,
            template=template,
            dtype=infer_dtype,
            extra=extra,
        )
        # lmms-eval splits model_args on commas: a system prompt with commas goes in a file (system=PATH)
        system = None if system is None else self._resolve_system_prompt(str(system))
        self.generator = HFGenerator(args, device=device, system=system)
        self.batch_size_per_gpu = _as_batch_size(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.placeholder = image_placeholder()  # LLaMA-Factory's, which its environment can change

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------------------------------------------------

    def _encode(self, request: Any) -> EncodedPrompt:
        context, _, doc_to_visual, doc_id, task, split = request.args[:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        images = _images_of(visuals, task, doc_id)
        return self.generator.encoder.encode_content(
            user_turn(str(context), len(images), self.placeholder), images, what=f"task {task}, doc {doc_id}"
        )

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Answers in request order; batches of ``batch_size`` docs that share generation settings, in doc order."""
        from tqdm.auto import tqdm

        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        answers: list[str | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc="llamafactory", unit="doc", disable=self.rank != 0) as bar:
            for indices in groups.values():
                settings = dict(requests[indices[0]].args[1] or {})
                until = settings.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                max_new_tokens = int(settings.get("max_new_tokens") or self.max_new_tokens)
                temperature = float(settings.get("temperature") or 0.0) if settings.get("do_sample", True) else 0.0
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start : start + self.batch_size]
                    encoded = [self._encode(requests[i]) for i in batch]
                    texts = self.generator.generate_encoded(
                        encoded, max_new_tokens=max_new_tokens, temperature=temperature
                    )
                    for i, text, prompt in zip(batch, texts, encoded, strict=True):
                        answers[i] = cut_at_stop_strings(text, until)
                        # --log_samples writes a request's first argument as the sample's "input": make it the
                        # prompt the model was given (template, system prompt, placeholders), not the task's text alone
                        requests[i].arguments = (prompt.rendered_prompt, *requests[i].arguments[1:])
                    bar.update(len(batch))
        return [answer if answer is not None else "" for answer in answers]

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        tasks = sorted({str(request.task_name) for request in requests})
        raise ConfigError(
            f"task(s) {', '.join(tasks) or '?'} score by log-likelihood, which the llamafactory model does not "
            "compute; use generate_until tasks (scienceqa_img, pope, mme, vizwiz_vqa, textvqa, mmvet, ...)"
        )

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        tasks = sorted({str(request.task_name) for request in requests})
        raise ConfigError(f"task(s) {', '.join(tasks) or '?'} need multi-round generation; the llamafactory model "
                          "answers one user turn")  # fmt: skip


def _images_of(visuals: Any, task: str, doc_id: Any) -> list[Any]:
    """The doc's images as PIL images (RGB); videos and audio are refused with the task named."""
    from PIL import Image

    if visuals is None:
        return []
    images = []
    for visual in _flatten(visuals):
        if not isinstance(visual, Image.Image):
            kind = "a video path" if isinstance(visual, str) else type(visual).__name__
            raise DataError(f"task {task}, doc {doc_id}: the llamafactory model takes images, got {kind}")
        images.append(visual if visual.mode == "RGB" else visual.convert("RGB"))
    return images


def _flatten(visuals: Any) -> list[Any]:
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    return [leaf for visual in visuals for leaf in _flatten(visual)]
