"""Generators: a model loaded the way ``llamafactory-cli chat`` loads it, answering benchmark items in batches.

* ``HFGenerator``: LLaMA-Factory's ``get_infer_args`` → ``load_tokenizer`` → ``get_template_and_fix_tokenizer``
  → ``load_model`` (adapters merged by LLaMA-Factory, quantization and dtype from its ``ModelArguments``), prompts
  from ``PromptEncoder``, batched transformers generation with left padding.
* ``VLLMGenerator``: the same prompt ids (image tokens left for vLLM to expand) plus ``multi_modal_data``, LoRA
  through ``LoRARequest``, as LLaMA-Factory's ``scripts/vllm_infer.py`` does. Untested: no GPU has run it yet.
* ``HFChatGenerator``: the checkpoint's own Hugging Face chat template (``--template hf-chat``), kept for
  comparison with earlier runs; it is not what a LLaMA-Factory-trained model saw in training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError, DataError
from .adapters import check_adapter_base, check_adapter_files, load_adapter, read_adapter_config, unmatched_weights
from .prompts import HF_CHAT, EncodedPrompt, PromptEncoder, user_content


if TYPE_CHECKING:
    import torch

    from .benchmarks import Item


logger = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# the keys of LLaMA-Factory's inference YAMLs that generate's own flags replace
FLAG_KEYS = {
    "model": "model_name_or_path",
    "adapter": "adapter_name_or_path",
    "template": "template",
    "dtype": "infer_dtype",
}
LLAMAFACTORY_BACKENDS = {"hf": "huggingface", "vllm": "vllm"}


@dataclass(frozen=True)
class Answer:
    """One generated answer and the prompt text the model was given (after the template, before image tokens)."""

    text: str
    rendered_prompt: str


class Generator(Protocol):
    """A loaded model that answers a batch of items; ``HFGenerator`` and ``VLLMGenerator`` implement it.

    ``top_p``, ``top_k``, ``repetition_penalty`` and ``do_sample`` are passed only when they are set (so a generator
    that takes just ``max_new_tokens`` and ``temperature`` still serves greedy runs).
    """

    model_ref: str
    adapter_ref: str | None
    template_ref: str

    def generate(self, items: Sequence[Item], *, max_new_tokens: int, temperature: float = 0.0) -> list[Answer]: ...


DEFAULT_MAX_NEW_TOKENS = 512
# the keys of LLaMA-Factory's GeneratingArguments that generate applies (as `llamafactory-cli chat` does)
DECODING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "do_sample")


@dataclass(frozen=True)
class Decoding:
    """How answers are decoded. ``resolved()`` applies ``llamafactory-cli chat``'s rules: temperature 0 means greedy,
    and greedy decoding has no temperature, top-p or top-k. ``None`` leaves the model's generation config default.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    do_sample: bool | None = None

    def check(self, where: str = "") -> None:
        """Refuse values transformers would reject late or quietly misuse (NaN, negative temperature, ...)."""
        at = f" ({where})" if where else ""
        numbers = {"temperature": self.temperature, "top_p": self.top_p, "repetition_penalty": self.repetition_penalty}
        for name, value in numbers.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ConfigError(f"{name} must be a number{at}, got {value!r}")
        for name, value in (("max_new_tokens", self.max_new_tokens), ("top_k", self.top_k)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer{at}, got {value!r}")
        if self.do_sample is not None and not isinstance(self.do_sample, bool):
            raise ConfigError(f"do_sample must be true or false{at}, got {self.do_sample!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1{at}, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be 0 (greedy) or more{at}, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1]{at}, got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be 0 (off) or more{at}, got {self.top_k}")
        if self.repetition_penalty is not None and not (
            math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0
        ):
            raise ConfigError(f"repetition_penalty must be above 0{at}, got {self.repetition_penalty}")
        if self.do_sample and self.temperature == 0:
            raise ConfigError(f"do_sample is true but temperature is 0{at}: give a temperature above 0 to sample")

    def resolved(self) -> Decoding:
        """The settings actually used: sampling or greedy made explicit, the greedy-only values dropped."""
        sample = self.temperature > 0 if self.do_sample is None else self.do_sample and self.temperature > 0
        if not sample:
            return Decoding(self.max_new_tokens, 0.0, None, None, self.repetition_penalty, False)
        return dataclasses.replace(self, do_sample=True)

    def hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate`` (greedy also clears the model's own sampling config)."""
        used = self.resolved()
        kwargs: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if used.do_sample:
            kwargs = {"do_sample": True, "temperature": used.temperature}
            kwargs.update({key: getattr(used, key) for key in ("top_p", "top_k") if getattr(used, key) is not None})
        if used.repetition_penalty is not None:
            kwargs["repetition_penalty"] = used.repetition_penalty
        return kwargs

    def generate_kwargs(self) -> dict[str, Any]:
        """What to pass to ``Generator.generate``: ``max_new_tokens``, ``temperature`` and whatever else is used
        (after ``resolved()``: greedy passes no top-p or top-k, and ``do_sample`` always follows the temperature)."""
        used = self.resolved()
        kwargs: dict[str, Any] = {"max_new_tokens": used.max_new_tokens, "temperature": used.temperature}
        for key in ("top_p", "top_k", "repetition_penalty"):
            if getattr(used, key) is not None:
                kwargs[key] = getattr(used, key)
        return kwargs


# ----------------------------------------------------------------------------------------------------------------
# arguments


def read_infer_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """An inference YAML (``configs/inference/*.yaml``, what ``llamafactory-cli chat`` takes) as a dict."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the inference YAML ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of LLaMA-Factory arguments, got a {type(data).__name__}")
    return data


def infer_arguments(
    yaml_path: str | os.PathLike | None = None,
    *,
    model: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    template: str | None = None,
    dtype: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """LLaMA-Factory inference arguments: the YAML's keys, then ``extra``, then the flags that were given."""
    args = read_infer_yaml(yaml_path) if yaml_path is not None else {}
    args.update(extra or {})
    given = {"model": model, "adapter": adapter, "template": template, "dtype": dtype}
    for flag, value in given.items():
        if value is not None:
            args[FLAG_KEYS[flag]] = str(value)
    where = f" in {yaml_path}" if yaml_path is not None else ""
    if not args.get("model_name_or_path"):
        raise ConfigError(f"no model: pass --model or an inference YAML with model_name_or_path{where}")
    if not args.get("template"):
        raise ConfigError(
            f"no template{where}: pass --template NAME, the LLaMA-Factory template the model was trained with "
            f"(llava, llava_next_llama3, llava_next_mistral, yi_vl, qwen2_vl, ...), or --template {HF_CHAT} for the "
            "checkpoint's own chat template"
        )
    if args.get("infer_dtype", "auto") not in DTYPES:
        raise ConfigError(f"unknown dtype {args['infer_dtype']!r}; expected one of {list(DTYPES)}")
    return args


def backend_of(args: Mapping[str, Any], backend: str | None) -> str:
    """``--backend`` when given, else the YAML's ``infer_backend`` (``huggingface`` → hf, ``vllm``), else hf."""
    if backend is not None:
        return backend
    yaml_backend = args.get("infer_backend", "huggingface")
    for ours, theirs in LLAMAFACTORY_BACKENDS.items():
        if yaml_backend == theirs:
            return ours
    raise ConfigError(f"infer_backend {yaml_backend!r} is not supported by generate; expected huggingface or vllm")


def adapter_paths(args: Mapping[str, Any]) -> list[str]:
    value = args.get("adapter_name_or_path")
    if not value:
        return []
    return [part.strip() for part in str(value).split(",") if part.strip()]


@contextlib.contextmanager
def _keep_transformers_verbosity() -> Iterator[None]:
    """LLaMA-Factory's argument parser turns transformers' logging up to INFO; put it back afterwards."""
    import transformers

    level = transformers.utils.logging.get_verbosity()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(level)


def parse_infer_args(args: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """LLaMA-Factory's ``get_infer_args`` on ``args``; its refusals (unknown keys, bad values) become ``ConfigError``."""
    from llamafactory.hparams import get_infer_args

    try:
        with _keep_transformers_verbosity():
            return get_infer_args(dict(args))
    except (ValueError, TypeError, ImportError) as err:
        raise ConfigError(f"LLaMA-Factory rejects the inference arguments: {err}") from None


def _looks_local(path: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative with a dot, or more than two components."""
    return os.path.isabs(path) or path.startswith(".") or path.count("/") > 1


def check_adapters(args: Mapping[str, Any], *, force: bool) -> None:
    """Each local adapter folder: there, with config and weights, trained on this base model (before anything loads)."""
    for adapter in adapter_paths(args):
        if os.path.isdir(adapter):
            check_adapter_files(adapter)
            check_adapter_base(adapter, str(args["model_name_or_path"]), force=force)
        elif _looks_local(adapter):
            raise ConfigError(f"adapter folder {adapter} not found (train it first, or pass --adapter DIR)")
        # else a hub id: LLaMA-Factory fetches and checks it when it loads


def _load_tokenizer_and_template(model_args: Any, data_args: Any) -> tuple[Any, Any, Any]:
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    try:
        module = load_tokenizer(model_args)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the tokenizer of {model_args.model_name_or_path}: {err}") from None
    tokenizer, processor = module["tokenizer"], module["processor"]
    tokenizer.padding_side = "left"  # as LLaMA-Factory's chat engines set it for generation
    try:
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
    except ValueError as err:
        raise ConfigError(f"template {data_args.template!r}: {err}") from None
    return tokenizer, processor, template


@contextlib.contextmanager
def _missing_adapter_keys_are_errors(adapter: str | None) -> Iterator[None]:
    """PEFT only warns when the adapter lacks weights for modules it targets; here that is a ``ConfigError``."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        text = str(warning.message)
        if adapter is not None and text.startswith("Found missing adapter keys"):
            raise ConfigError(f"adapter {adapter} does not fit the base model: {text[:300]}")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


@contextlib.contextmanager
def _adapter_load_results() -> Iterator[list[Any]]:
    """PEFT's load result of each adapter LLaMA-Factory loads (its unexpected keys: weights with no module)."""
    import peft.peft_model

    original = peft.peft_model.set_peft_model_state_dict
    results: list[Any] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        results.append(result)
        return result

    peft.peft_model.set_peft_model_state_dict = recording
    try:
        yield results
    finally:
        peft.peft_model.set_peft_model_state_dict = original


def check_device(device: str | None) -> None:
    """``--device`` names a torch device this machine has (checked before the model loads)."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"--device {device!r} is not a torch device ({err}); expected cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cpu":
        return
    if parsed.type == "meta":
        raise ConfigError("--device meta holds no weights and cannot generate; expected cpu, cuda, cuda:N or mps")
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        build = " (this torch is a CPU-only build)" if parsed.type == "cuda" and torch.version.cuda is None else ""
        raise ConfigError(
            f"--device {device}: no {parsed.type.upper()} device on this machine{build}; use --device cpu"
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(f"--device {device}: this machine has {count} {parsed.type} device(s), numbered from 0")


def check_llamafactory() -> None:
    """LLaMA-Factory imports (generate loads models and templates through it), or a message saying what failed."""
    try:
        from llamafactory.data import get_template_and_fix_tokenizer  # noqa: F401
        from llamafactory.hparams import get_infer_args  # noqa: F401
        from llamafactory.model import load_model, load_tokenizer  # noqa: F401
    except Exception as err:  # a missing package, or a broken one (any error raised while importing it)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise ConfigError(
            f"LLaMA-Factory cannot be imported ({type(err).__name__}: {first}); generate loads models and templates "
            "through it: pip install 'llamafactory>=0.9.4' (or --template hf-chat, which does not need it)"
        ) from None


# transformers' and LLaMA-Factory's deprecation notices that say nothing to a user of generate
KNOWN_WARNINGS = (
    r".*`use_fast` parameter is deprecated.*",
    r".*`torch_dtype` is deprecated.*",
    r".*tie_word_embeddings.*",
)


@contextlib.contextmanager
def library_logs(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: LLaMA-Factory's and transformers' INFO lines, weight-loading bars and known deprecation
    warnings are not shown (they say nothing about the answers); warnings and errors still are."""
    if verbose:
        yield
        return
    import transformers

    lf_logger = logging.getLogger("llamafactory")
    lf_level = lf_logger.level
    level = transformers.utils.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    lf_logger.setLevel(logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            for pattern in KNOWN_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        lf_logger.setLevel(lf_level)
        transformers.utils.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def load_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from None


def _refs(args: Mapping[str, Any]) -> tuple[str, str | None, str]:
    adapter = args.get("adapter_name_or_path")
    return str(args["model_name_or_path"]), (None if not adapter else str(adapter)), str(args["template"])


# ----------------------------------------------------------------------------------------------------------------
# transformers, through LLaMA-Factory


class HFGenerator:
    """Tokenizer, processor, template, model and adapter from LLaMA-Factory's loader; batched, left-padded generation.

    ``args`` are LLaMA-Factory inference arguments (``infer_arguments``); ``device`` pins the model to one device
    (default: LLaMA-Factory's ``device_map="auto"``); ``system`` replaces the template's default system prompt.
    """

    def __init__(
        self, args: Mapping[str, Any], *, device: str | None = None, system: str | None = None, force: bool = False
    ) -> None:
        from llamafactory.model import load_model

        args = {**args, "infer_backend": "huggingface"}
        self.model_ref, self.adapter_ref, self.template_ref = _refs(args)
        check_adapters(args, force=force)
        model_args, data_args, finetuning_args, _ = parse_infer_args(args)
        if device:
            model_args.device_map = {"": device}
        self.tokenizer, self.processor, self.template = _load_tokenizer_and_template(model_args, data_args)
        try:
            with (
                _keep_transformers_verbosity(),
                _missing_adapter_keys_are_errors(self.adapter_ref),
                _adapter_load_results() as results,
            ):
                self.model = load_model(self.tokenizer, model_args, finetuning_args, is_trainable=False)
            for adapter, result in zip(adapter_paths(args), results, strict=False):
                unmatched_weights(adapter, [key for key in result.unexpected_keys if "lora_" in key])
        except (RuntimeError, KeyError, ValueError) as err:  # PEFT: size mismatch, no target module found
            if self.adapter_ref is None and not isinstance(err, ValueError):
                raise
            first = "; ".join(line.strip() for line in str(err).splitlines()[:3] if line.strip())
            if self.adapter_ref is None:
                raise ConfigError(f"cannot load {self.model_ref}: {first}") from None
            raise ConfigError(f"adapter {self.adapter_ref} does not fit the base model: {first}") from None
        except OSError as err:
            raise ConfigError(f"cannot load {self.model_ref}: {err}") from None
        self.encoder = PromptEncoder(self.template, self.tokenizer, self.processor, system=system)
        self.device = str(self.model.device)
        self.dtype_ref = str(self.model.dtype).removeprefix("torch.")

    def _mm_inputs(self, encoded: Sequence[Any]) -> dict[str, Any]:
        """Pixel values (and grids) for every image of the batch, built by the plugin as LLaMA-Factory's collator does."""
        import torch

        images = [image for prompt in encoded for image in prompt.images]
        if not images:
            return {}
        mm_inputs = self.template.mm_plugin.get_mm_inputs(
            images=images,
            videos=[],
            audios=[],
            imglens=[len(prompt.images) for prompt in encoded],
            vidlens=[0] * len(encoded),
            audlens=[0] * len(encoded),
            batch_ids=[prompt.input_ids for prompt in encoded],
            processor=self.processor,
        )
        out: dict[str, Any] = {}
        for key, value in mm_inputs.items():
            if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
                value = torch.stack(value)
            elif not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            if torch.is_floating_point(value):
                value = value.to(self.model.dtype)
            out[key] = value.tolist() if key == "second_per_grid_ts" else value.to(self.model.device)
        return out

    def generate(
        self,
        items: Sequence[Item],
        **settings: Any,
    ) -> list[Answer]:
        """Answers for ``items``, in order. Items with and without images may share a batch.

        ``settings`` are ``Decoding``'s fields by keyword (``max_new_tokens=...``, or ``Decoding.generate_kwargs()``):
        one declaration of the decoding options serves every generator.
        """
        if not items:
            return []
        encoded = [self.encoder.encode(item, load_image(item.image) if item.image else None) for item in items]
        texts = self.generate_encoded(encoded, **settings)
        return [Answer(text.strip(), prompt.rendered_prompt) for text, prompt in zip(texts, encoded, strict=True)]

    def generate_encoded(
        self,
        encoded: Sequence[EncodedPrompt],
        **settings: Any,
    ) -> list[str]:
        """Decoded answers (not stripped) for prompts already encoded by ``self.encoder``, as one batch, in order.

        The one generation path: ``generate`` and the lmms-eval model (``eval/lmms``) both end here.
        """
        import torch

        if not encoded:
            return []
        pad_id = self.tokenizer.pad_token_id
        length = max(len(prompt.input_ids) for prompt in encoded)
        # Left padding: every row's last prompt token sits at the same position, so generated tokens line up and
        # the attention mask (with position ids derived from it) makes padded rows match unpadded ones.
        input_ids = [[pad_id] * (length - len(p.input_ids)) + p.input_ids for p in encoded]
        attention = [[0] * (length - len(p.input_ids)) + [1] * len(p.input_ids) for p in encoded]
        decoding = Decoding(**settings)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=torch.tensor(input_ids, device=self.model.device),
                attention_mask=torch.tensor(attention, device=self.model.device),
                **self._mm_inputs(encoded),
                max_new_tokens=decoding.max_new_tokens,
                eos_token_id=self.encoder.stop_token_ids(),
                pad_token_id=pad_id,
                **decoding.hf_kwargs(),
            )
        return self.tokenizer.batch_decode(output[:, length:], skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------------------------
# vLLM, through LLaMA-Factory's tokenizer and template (UNTESTED: no GPU has run it yet)


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMGenerator:
    """A vLLM engine fed LLaMA-Factory's prompt token ids plus ``multi_modal_data``; LoRA through ``LoRARequest``.

    Follows LLaMA-Factory's ``scripts/vllm_infer.py`` and ``chat/vllm_engine.py``: the template's mm_plugin
    leaves one image token per image (``expand_mm_tokens=False``; vLLM expands it), images are regularized
    with the ``image_max_pixels``/``image_min_pixels`` of the inference arguments, and the engine options come
    from the same ``vllm_*`` keys. UNTESTED: it has not run on a GPU yet.
    """

    def __init__(
        self,
        args: Mapping[str, Any],
        *,
        system: str | None = None,
        force: bool = False,
        max_model_len: int | None = None,
    ) -> None:
        if not vllm_available():
            raise ConfigError("--backend vllm needs vLLM: pip install 'rejection-align[vllm]'")
        from llamafactory.model import load_config
        from vllm import LLM

        args = {**args, "infer_backend": "vllm"}
        self.model_ref, self.adapter_ref, self.template_ref = _refs(args)
        check_adapters(args, force=force)
        model_args, data_args, _, _ = parse_infer_args(args)
        self.model_args = model_args
        self.dtype_ref = str(model_args.infer_dtype)
        self.tokenizer, self.processor, self.template = _load_tokenizer_and_template(model_args, data_args)
        self.encoder = PromptEncoder(
            self.template, self.tokenizer, self.processor, system=system, expand_mm_tokens=False
        )

        engine_args: dict[str, Any] = {
            "model": model_args.model_name_or_path,
            "trust_remote_code": model_args.trust_remote_code,
            "dtype": model_args.infer_dtype,
            "max_model_len": max_model_len or model_args.vllm_maxlen,
            "tensor_parallel_size": _device_count(),
            "gpu_memory_utilization": model_args.vllm_gpu_util,
            "enforce_eager": model_args.vllm_enforce_eager,
            "disable_log_stats": True,
            "limit_mm_per_prompt": {"image": 1},
        }
        self.lora_request = None
        adapters = adapter_paths(args)
        if adapters:
            from vllm.lora.request import LoRARequest

            rank = max(int(read_adapter_config(adapters[0]).get("r", 8)), model_args.vllm_max_lora_rank)
            engine_args.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
            self.lora_request = LoRARequest("default", 1, adapters[0])
        if isinstance(model_args.vllm_config, dict):
            engine_args.update(model_args.vllm_config)
        if getattr(load_config(model_args), "is_yi_vl_derived_model", None):
            _patch_vllm_for_yi_vl()
        self.llm = LLM(**engine_args)

    def _multi_modal_data(self, images: list[Any]) -> dict[str, Any]:
        if not images:
            return {}
        regularized = self.template.mm_plugin._regularize_images(
            images,
            image_max_pixels=self.model_args.image_max_pixels,
            image_min_pixels=self.model_args.image_min_pixels,
        )["images"]
        return {"multi_modal_data": {"image": regularized[0] if len(regularized) == 1 else regularized}}

    def generate(
        self,
        items: Sequence[Item],
        **settings: Any,
    ) -> list[Answer]:
        from vllm import SamplingParams

        encoded, requests = [], []
        for item in items:
            prompt = self.encoder.encode(item, load_image(item.image) if item.image else None)
            encoded.append(prompt)
            requests.append({"prompt_token_ids": prompt.input_ids, **self._multi_modal_data(prompt.images)})
        used = Decoding(**settings).resolved()
        params = SamplingParams(
            temperature=used.temperature,
            top_p=used.top_p if used.top_p is not None else 1.0,
            top_k=used.top_k if used.top_k else -1,
            repetition_penalty=used.repetition_penalty if used.repetition_penalty is not None else 1.0,
            max_tokens=used.max_new_tokens,
            stop_token_ids=self.encoder.stop_token_ids(),
            skip_special_tokens=True,
        )
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        return [
            Answer(output.outputs[0].text.strip(), prompt.rendered_prompt)
            for output, prompt in zip(outputs, encoded, strict=True)
        ]


def _device_count() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def _patch_vllm_for_yi_vl() -> None:
    """Yi-VL's projector differs from LLaVA's; LLaMA-Factory's vLLM engine swaps it in the same way."""
    import vllm.model_executor.models.llava
    from llamafactory.model.model_utils.visual import LlavaMultiModalProjectorForYiVLForVLLM

    vllm.model_executor.models.llava.LlavaMultiModalProjector = LlavaMultiModalProjectorForYiVLForVLLM


# ----------------------------------------------------------------------------------------------------------------
# the checkpoint's own chat template (--template hf-chat)


def render_chat_prompt(processor: Any, item: Item) -> str:
    """The checkpoint's own chat template applied to the item, ending with the assistant's turn opener."""
    if getattr(processor, "chat_template", None):
        content: list[dict[str, Any]] = [{"type": "image"}] if item.image else []
        content.append({"type": "text", "text": item.prompt})
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_content(item)}], add_generation_prompt=True, tokenize=False
        )
    raise ConfigError(f"the model's processor has no chat template; --template {HF_CHAT} needs one")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 elsewhere (CPU half precision is slow and breaks batch equality)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)}") from None


class HFChatGenerator:
    """transformers' own classes and the checkpoint's chat template (``--template hf-chat``): the old behaviour.

    A model fine-tuned with LLaMA-Factory saw its LLaMA-Factory template in training, not this one: use it only
    to compare with runs made before prompts went through the template.
    """

    def __init__(
        self, args: Mapping[str, Any], *, device: str | None = None, system: str | None = None, force: bool = False
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if system is not None:
            raise ConfigError(f"--system needs a LLaMA-Factory template; --template {HF_CHAT} has none")
        self.model_ref, self.adapter_ref, self.template_ref = _refs(args)
        adapters = adapter_paths(args)
        if len(adapters) > 1:
            raise ConfigError(f"--template {HF_CHAT} takes one adapter, got {len(adapters)}")
        if adapters:
            check_adapter_base(adapters[0], self.model_ref, force=force)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = resolve_dtype(str(args.get("infer_dtype", "auto")), self.device)
        try:
            self.processor = AutoProcessor.from_pretrained(self.model_ref)
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_ref, dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load {self.model_ref} as an image-text-to-text model: {err}") from None
        if adapters:
            self.model = load_adapter(self.model, adapters[0])
        self.model.to(self.device).eval()
        self.dtype_ref = str(self.model.dtype).removeprefix("torch.")
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def generate(
        self,
        items: Sequence[Item],
        **settings: Any,
    ) -> list[Answer]:
        import torch

        if not items:
            return []
        texts = [render_chat_prompt(self.processor, item) for item in items]
        images = [load_image(item.image) for item in items if item.image]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        decoding = Decoding(**settings)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=decoding.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **decoding.hf_kwargs(),
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [Answer(text.strip(), prompt) for text, prompt in zip(decoded, texts, strict=True)]


def build_generator(
    args: Mapping[str, Any],
    *,
    backend: str = "hf",
    device: str | None = None,
    system: str | None = None,
    force_adapter: bool = False,
) -> Generator:
    """The generator for ``args`` (LLaMA-Factory inference arguments) on ``backend``."""
    if args.get("template") == HF_CHAT:
        if backend != "hf":
            raise ConfigError(f"--template {HF_CHAT} runs on the hf backend only")
        return HFChatGenerator(args, device=device, system=system, force=force_adapter)
    if backend == "vllm":
        if device:
            raise ConfigError("--device is for the hf backend; vLLM places the model itself")
        return VLLMGenerator(args, system=system, force=force_adapter)
    return HFGenerator(args, device=device, system=system, force=force_adapter)
