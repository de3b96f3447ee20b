"""Generate answers on a safety benchmark with a base model and an optional LoRA adapter, resumable.

Answers are appended to JSONL files under ``--output`` as each batch finishes (MM-SafetyBench:
``<mode>/<scenario>.jsonl``, one per scenario, ready for ``rejection-align judge <output>/<mode>``; FigStep:
``figstep.jsonl``; a generic file: ``<stem>.jsonl``). Running the same command again skips the answers already
there, so a killed run resumes where it stopped. Greedy decoding by default.

Models: LLaVA-1.5, LLaVA-NeXT (Llama-3, Mistral) and Yi-VL in their ``-hf`` form, through transformers' own
classes and the processor's chat template; the answer is decoded from the generated tokens only (no splitting
of the decoded prompt on template markers). ``--backend vllm`` uses vLLM where it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from .benchmarks import (
    BENCHMARKS,
    DEFAULT_MMSAFETYBENCH_MODES,
    DEFAULT_MMSAFETYBENCH_TEXT_FIELD,
    FIGSTEP_INSTRUCTION,
    MMSAFETYBENCH_MODES,
    MMSAFETYBENCH_SCENARIOS,
    MMSAFETYBENCH_TEXT_FIELDS,
    Item,
    load_benchmark,
)
from ..errors import ConfigError, DataError
from ..files import atomic_write_text, file_lock


if TYPE_CHECKING:
    import torch


logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 8
LOCK_NAME = ".generate"
SUPPORTED_MODEL_TYPES = ("llava", "llava_next")  # Yi-VL-6B-hf is a "llava" checkpoint


class Generator(Protocol):
    """A loaded model that answers a batch of items; ``HFGenerator`` and ``VLLMGenerator`` implement it."""

    model_ref: str
    adapter_ref: str | None

    def generate(self, items: Sequence[Item], *, max_new_tokens: int, temperature: float = 0.0) -> list[str]: ...


# ----------------------------------------------------------------------------------------------------------------
# adapters


def read_adapter_config(adapter: str | os.PathLike) -> dict[str, Any]:
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise ConfigError(f"{adapter}: not a PEFT adapter (no adapter_config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None


def _same_model_name(a: str, b: str) -> bool:
    """Same model under two spellings: equal paths, or equal last components (hub id vs. a local copy of it)."""
    return _same_ref(a, b) or Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def check_adapter_base(adapter: str | os.PathLike, model: str | os.PathLike, *, force: bool = False) -> None:
    """Fail early when the adapter says it was trained on another model (checked before any weights load).

    Only the names are compared here (``base_model_name_or_path`` against ``model``, by last path component, so
    ``llava-hf/llava-1.5-7b-hf`` matches ``/models/llava-1.5-7b-hf``); ``force`` accepts a renamed copy. Shapes
    and module names are checked when the adapter is loaded (``load_adapter``), and that check cannot be forced.
    """
    base = read_adapter_config(adapter).get("base_model_name_or_path")
    if not base or _same_model_name(str(base), str(model)):
        return
    message = (
        f"adapter {adapter} was trained on {base!r}, but the base model given is {str(model)!r}; "
        "pass the matching base model (or --force-adapter if this is a renamed copy of it)"
    )
    if not force:
        raise ConfigError(message)
    logger.warning("%s (going on: --force-adapter)", message)


def _adapter_tensor_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    file = adapter / "adapter_model.safetensors"
    if file.is_file():
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    file = adapter / "adapter_model.bin"
    if file.is_file():
        import torch

        state = torch.load(file, map_location="cpu", weights_only=True)
        return {key: tuple(value.shape) for key, value in state.items()}
    raise ConfigError(f"{adapter}: no adapter_model.safetensors or adapter_model.bin")


def load_adapter(model: Any, adapter: str | os.PathLike, *, merge: bool = True) -> Any:
    """Apply a LoRA adapter with PEFT, turning "does not fit this model" into a ``ConfigError`` that says why.

    PEFT raises on shape mismatches but only warns about adapter weights it found no module for; both mean the
    adapter belongs to another model, so both are errors here. The adapter is merged into the weights by default
    (plain matmuls at generation time: faster, same answers up to rounding).
    """
    from peft import PeftModel, get_peft_model_state_dict

    adapter = Path(adapter)
    shapes = _adapter_tensor_shapes(adapter)
    try:
        with _quiet_loggers("peft"):
            peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        first = "; ".join(line.strip() for line in str(err).splitlines()[:3] if line.strip())
        raise ConfigError(f"adapter {adapter} does not fit the base model: {first}") from None
    loaded = get_peft_model_state_dict(peft_model)
    unmatched = sorted(set(shapes) - set(loaded))
    if unmatched:
        raise ConfigError(
            f"adapter {adapter} does not fit the base model: {len(unmatched)} of its {len(shapes)} weights have "
            f"no module in the model, e.g. {unmatched[0]}"
        )
    return peft_model.merge_and_unload() if merge else peft_model


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# ----------------------------------------------------------------------------------------------------------------
# prompts and images


def build_messages(item: Item) -> list[dict[str, Any]]:
    """One user turn in transformers' multi-modal message format, the image first (as LLaVA was trained)."""
    content: list[dict[str, Any]] = [{"type": "image"}] if item.image else []
    content.append({"type": "text", "text": item.prompt})
    return [{"role": "user", "content": content}]


def render_prompt(processor: Any, item: Item) -> str:
    """The model's own chat template applied to the item, ending with the assistant's turn opener."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(build_messages(item), add_generation_prompt=True, tokenize=False)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(tokenizer, "chat_template", None):
        text = ("<image>\n" if item.image else "") + item.prompt
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
    raise ConfigError("the model's processor has no chat template; generate needs one to format prompts")


def load_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"{path}: cannot read the image ({err})") from None


# ----------------------------------------------------------------------------------------------------------------
# transformers backend


def resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on a GPU, float32 elsewhere (CPU half precision is slow and breaks batch equality)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16") from None


class HFGenerator:
    """A transformers model (+ PEFT adapter) and its processor, set up for batched left-padded generation."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        adapter: str | os.PathLike | None = None,
        device: str | None = None,
        dtype: str = "auto",
        force_adapter: bool = False,
        merge_adapter: bool = True,
    ) -> None:
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        self.model_ref = str(model)
        self.adapter_ref = None if adapter is None else str(adapter)
        if adapter is not None:
            check_adapter_base(adapter, model, force=force_adapter)
        self.device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, self.device)

        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load a model config from {model}: {err}") from None
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            logger.warning(
                "model type %r is not one of the tested %s; trying AutoModelForImageTextToText",
                config.model_type,
                SUPPORTED_MODEL_TYPES,
            )
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load {model} as an image-text-to-text model: {err}") from None

        if adapter is not None:
            self.model = load_adapter(self.model, adapter, merge=merge_adapter)
        self.model.to(self.device).eval()

        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        # Left padding: every row's last prompt token sits at the same position, so generated tokens line up
        # and the attention mask (with position ids derived from it) makes padded rows match unpadded ones.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def generate(self, items: Sequence[Item], *, max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        """Answers for ``items``, in order. Items with and without images may share a batch."""
        import torch

        if not items:
            return []
        texts = [render_prompt(self.processor, item) for item in items]
        images = [load_image(item.image) for item in items if item.image]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


# ----------------------------------------------------------------------------------------------------------------
# vLLM backend


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMGenerator:
    """vLLM engine with the same prompts as ``HFGenerator`` (the HF processor's chat template); LoRA via ``LoRARequest``."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        adapter: str | os.PathLike | None = None,
        dtype: str = "auto",
        force_adapter: bool = False,
        max_model_len: int | None = None,
    ) -> None:
        if not vllm_available():
            raise ConfigError("--backend vllm needs vLLM: pip install 'rejection-align[vllm]'")
        from transformers import AutoProcessor
        from vllm import LLM

        self.model_ref = str(model)
        self.adapter_ref = None if adapter is None else str(adapter)
        self.lora_request = None
        options: dict[str, Any] = {"limit_mm_per_prompt": {"image": 1}}
        if adapter is not None:
            check_adapter_base(adapter, model, force=force_adapter)
            from vllm.lora.request import LoRARequest

            rank = int(read_adapter_config(adapter).get("r", 16))
            options.update(enable_lora=True, max_lora_rank=max(rank, 8), max_loras=1)
            self.lora_request = LoRARequest("adapter", 1, str(adapter))
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        self.processor = AutoProcessor.from_pretrained(model)
        self.llm = LLM(model=str(model), dtype=dtype, **options)

    def generate(self, items: Sequence[Item], *, max_new_tokens: int, temperature: float = 0.0) -> list[str]:
        from vllm import SamplingParams

        requests = []
        for item in items:
            request: dict[str, Any] = {"prompt": render_prompt(self.processor, item)}
            if item.image:
                request["multi_modal_data"] = {"image": load_image(item.image)}
            requests.append(request)
        params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens)
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        return [output.outputs[0].text.strip() for output in outputs]


# ----------------------------------------------------------------------------------------------------------------
# resumable output


def _same_ref(a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    if a is None or b is None:
        return False
    return os.path.exists(a) and os.path.exists(b) and os.path.realpath(a) == os.path.realpath(b)


def read_done(path: Path, *, model: str, adapter: str | None) -> set[tuple[str, str, str]]:
    """Keys (id, scenario, mode) already answered in ``path``; repairs a cut-off last line from a killed run.

    The repair rewrites the file atomically without that line. Answers from another model or adapter in the
    same file are an error: resuming would mix two runs into one set of numbers.
    """
    if not path.is_file():
        return set()
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    records: list[dict[str, Any]] = []
    good_lines: list[str] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as err:
            if i == len(lines) - 1:
                logger.warning("%s: dropping the cut-off last line (an interrupted run)", path)
                break
            raise DataError(f"{path}: line {i + 1} is not a JSON record ({err}); the file is damaged") from None
        records.append(record)
        good_lines.append(line if line.endswith("\n") else line + "\n")
    if "".join(good_lines) != text:
        atomic_write_text(path, "".join(good_lines))
    for record in records:
        if not _same_ref(record.get("model"), model) or not _same_ref(record.get("adapter"), adapter):
            raise ConfigError(
                f"{path} already holds answers of model {record.get('model')!r} with adapter "
                f"{record.get('adapter')!r}, not {model!r} with {adapter!r}; use another --output or --overwrite"
            )
    return {(str(r.get("id")), str(r.get("scenario")), str(r.get("mode"))) for r in records}


@dataclass
class GenerationReport:
    """What a run did: how many items there were, how many were already done, and the files written."""

    n_items: int
    n_skipped: int
    n_generated: int = 0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)


def _batches(items: Sequence[Item], batch_size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), batch_size):
        yield list(items[start : start + batch_size])


def generate_to_files(
    items: Sequence[Item],
    output_dir: str | os.PathLike,
    generator: Generator,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
) -> GenerationReport:
    """Answer ``items`` not yet in ``output_dir`` and append the records, one JSONL line each, batch by batch.

    The Python entry point behind ``rejection-align generate`` (demos and benchmarks call it directly). Records:
    ``{"id", "scenario", "mode", "prompt", "image", "continuation", "model", "adapter", "benign"}``.
    A lock file keeps two runs from writing to the same ``output_dir`` at once.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {item.output: output_dir / f"{item.output}.jsonl" for item in items}
    report = GenerationReport(n_items=len(items), n_skipped=0, files=sorted(set(paths.values())))

    with file_lock(output_dir / LOCK_NAME):
        done: dict[str, set[tuple[str, str, str]]] = {}
        for output, path in paths.items():
            if overwrite:
                path.unlink(missing_ok=True)
            done[output] = read_done(path, model=generator.model_ref, adapter=generator.adapter_ref)
        todo, seen = [], set()
        for item in items:
            if item.key in done[item.output] or (item.output, item.key) in seen:
                continue
            seen.add((item.output, item.key))
            todo.append(item)
        report.n_skipped = len(items) - len(todo)
        if report.n_skipped:
            logger.info("resuming: %d of %d answers already in %s", report.n_skipped, len(items), output_dir)

        handles: dict[str, IO[str]] = {}
        start = time.perf_counter()
        try:
            with tqdm(total=len(todo), desc="generate", unit="ex", disable=not progress) as bar:
                for batch in _batches(todo, batch_size):
                    answers = generator.generate(batch, max_new_tokens=max_new_tokens, temperature=temperature)
                    if len(answers) != len(batch):
                        raise RuntimeError(f"the generator returned {len(answers)} answers for {len(batch)} prompts")
                    touched = set()
                    for item, answer in zip(batch, answers, strict=True):
                        if item.output not in handles:
                            paths[item.output].parent.mkdir(parents=True, exist_ok=True)
                            handles[item.output] = open(paths[item.output], "a", encoding="utf-8")
                        record = {
                            "id": item.id,
                            "scenario": item.scenario,
                            "mode": item.mode,
                            "prompt": item.prompt,
                            "image": item.image,
                            "continuation": answer,
                            "model": generator.model_ref,
                            "adapter": generator.adapter_ref,
                            "benign": item.benign,
                        }
                        handles[item.output].write(json.dumps(record, ensure_ascii=False) + "\n")
                        touched.add(item.output)
                    for output in touched:  # a batch is on disk before the next one starts
                        handles[output].flush()
                        os.fsync(handles[output].fileno())
                    report.n_generated += len(batch)
                    bar.update(len(batch))
        finally:
            for handle in handles.values():
                handle.close()
            report.seconds = time.perf_counter() - start
    return report


# ----------------------------------------------------------------------------------------------------------------
# command line


def load_items(args: argparse.Namespace) -> list[Item]:
    """Benchmark items from the command-line options (layout and images checked here, before any model loads)."""
    if args.benchmark == "mmsafetybench":
        modes = list(MMSAFETYBENCH_MODES) if "all" in args.mode else args.mode
        items = load_benchmark(
            "mmsafetybench",
            args.data,
            modes=modes,
            scenarios=args.scenarios,
            image_root=args.image_root,
            text_field=args.text_field,
        )
    elif args.benchmark == "figstep":
        items = load_benchmark("figstep", args.data, instruction=args.instruction or FIGSTEP_INSTRUCTION)
    else:
        items = load_benchmark("generic", args.data, image_dir=args.image_root, benign=args.benign)
    if args.benign and args.benchmark != "generic":
        items = [dataclasses.replace(item, benign=True) for item in items]
    if args.limit is not None:
        items = items[: args.limit]
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="which loader reads --data")
    parser.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="mmsafetybench: the folder with processed_questions/ and imgs/ (or the repository root, with data/); "
        "figstep: the folder of PNGs (SafeBench); generic: a JSON/JSONL file of {id, prompt, image?}",
    )
    parser.add_argument("--model", required=True, help="base model: a local folder (or hub id) of an -hf checkpoint")
    parser.add_argument("--adapter", metavar="DIR", help="a PEFT LoRA adapter folder trained on --model")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the JSONL answers go (resumed if there)")
    parser.add_argument(
        "--mode",
        nargs="+",
        default=list(DEFAULT_MMSAFETYBENCH_MODES),
        choices=[*MMSAFETYBENCH_MODES, "all"],
        help="MM-SafetyBench input modes: SD_TYPO (SD+typography image, rephrased question), TYPO (typography "
        "image, rephrased question), SD (SD image, SD-rephrased question), text (original question, no image), "
        "or all (default: SD_TYPO)",
    )
    first = ", ".join(MMSAFETYBENCH_SCENARIOS[:2])
    parser.add_argument(
        "--scenarios", nargs="+", metavar="NAME", help=f"MM-SafetyBench scenarios (default: all 13: {first}, ...)"
    )
    parser.add_argument(
        "--text-field",
        default=DEFAULT_MMSAFETYBENCH_TEXT_FIELD,
        choices=MMSAFETYBENCH_TEXT_FIELDS,
        help="MM-SafetyBench text mode: the question asked, 'Changed Question' (default, as the paper's evaluation) "
        "or 'Question' (the benchmark README's)",
    )
    parser.add_argument("--image-root", metavar="DIR", help="mmsafetybench: the imgs/ folder; generic: image base dir")
    parser.add_argument("--instruction", help="figstep: replace the fixed FigStep text prompt")
    parser.add_argument("--benign", action="store_true", help="mark the prompts benign (judge reports over-refusal)")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N items (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="prompts per batch (default: 8)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="answer length limit (default: 512)"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) means greedy decoding")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on a GPU, float32 on CPU",
    )
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="hf (transformers) or vllm")
    parser.add_argument(
        "--force-adapter", action="store_true", help="accept an adapter whose recorded base model name differs"
    )
    parser.add_argument("--overwrite", action="store_true", help="discard earlier answers in --output and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_generator(args: argparse.Namespace) -> Generator:
    if args.backend == "vllm":
        return VLLMGenerator(args.model, adapter=args.adapter, dtype=args.dtype, force_adapter=args.force_adapter)
    return HFGenerator(
        args.model, adapter=args.adapter, device=args.device, dtype=args.dtype, force_adapter=args.force_adapter
    )


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    items = load_items(args)  # layout and images first: errors come before any model loads
    generator = build_generator(args)  # adapter name check, then the model, then the adapter's shapes
    report = generate_to_files(
        items,
        args.output,
        generator,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    rate = f", {report.n_generated / report.seconds:.2f} examples/s" if report.n_generated and report.seconds else ""
    print(
        f"{report.n_generated} answers generated, {report.n_skipped} already there{rate}; "
        f"{len(report.files)} result file(s) in {args.output}"
    )
    dirs = sorted({str(path.parent) for path in report.files})
    print("judge them with: rejection-align judge " + " ".join(dirs) + " --out <DIR>")
    return 0
