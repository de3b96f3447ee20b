"""Generate answers on a safety benchmark with a base model and an optional LoRA adapter, resumable.

Prompts go through LLaMA-Factory's own template and mm_plugin (``--template NAME``, or the ``template`` of an
inference YAML), so a fine-tuned model is asked in the layout it was trained on: the template's system prompt,
``<image>\n`` + prompt for an item with an image, image tokens expanded as in training (``eval/prompts.py``).
Models, adapters, dtype and quantization load through LLaMA-Factory's loader, as ``llamafactory-cli chat`` does
(``eval/backends.py``): any model LLaMA-Factory fine-tunes can be evaluated. ``--template hf-chat`` keeps the
checkpoint's own chat template (the old behaviour, for comparisons only).

Answers are appended to JSONL files under ``--output`` as each batch finishes (MM-SafetyBench:
``<mode>/<scenario>.jsonl``, one per scenario, ready for ``rejection-align judge <output>/<mode>``; FigStep:
``figstep.jsonl``; a generic file: ``<stem>.jsonl``). Every record keeps ``rendered_prompt``, the prompt text the
model was given. Running the same command again skips the answers already there, so a killed run resumes where
it stopped. Greedy decoding by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError, DataError
from ..files import atomic_write_text, file_lock
from .adapters import check_adapter_base, load_adapter, read_adapter_config, same_ref
from .backends import (
    BACKENDS,
    DTYPES,
    Answer,
    Generator,
    HFChatGenerator,
    HFGenerator,
    VLLMGenerator,
    backend_of,
    build_generator,
    infer_arguments,
)
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
from .prompts import HF_CHAT


logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_BATCH_SIZE = 8
LOCK_NAME = ".generate"

__all__ = [
    "Answer",
    "Generator",
    "HFChatGenerator",
    "HFGenerator",
    "VLLMGenerator",
    "build_generator",
    "check_adapter_base",
    "generate_to_files",
    "infer_arguments",
    "load_adapter",
    "read_adapter_config",
]


# ----------------------------------------------------------------------------------------------------------------
# resumable output


def read_done(
    path: Path, *, model: str, adapter: str | None, template: str | None = None
) -> set[tuple[str, str, str]]:
    """Keys (id, scenario, mode) already answered in ``path``; repairs a cut-off last line from a killed run.

    The repair rewrites the file atomically without that line. Answers from another model or adapter in the
    same file are an error, as are answers made with another template (records from before templates were
    recorded carry none and pass): resuming would mix two runs into one set of numbers.
    """
    if not path.is_file():
        return set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); the file is damaged") from None
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
        except (ValueError, RecursionError) as err:  # RecursionError: a line nested ~1,000 deep
            if i == len(lines) - 1:
                logger.warning("%s: dropping the cut-off last line (an interrupted run)", path)
                break
            raise DataError(f"{path}: line {i + 1} is not a JSON record ({err}); the file is damaged") from None
        records.append(record)
        good_lines.append(line if line.endswith("\n") else line + "\n")
    if "".join(good_lines) != text:
        atomic_write_text(path, "".join(good_lines))
    for record in records:
        if not same_ref(record.get("model"), model) or not same_ref(record.get("adapter"), adapter):
            raise ConfigError(
                f"{path} already holds answers of model {record.get('model')!r} with adapter "
                f"{record.get('adapter')!r}, not {model!r} with {adapter!r}; use another --output or --overwrite"
            )
        if template is not None and record.get("template", template) != template:
            raise ConfigError(
                f"{path} already holds answers prompted with template {record.get('template')!r}, not "
                f"{template!r}; use another --output or --overwrite"
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
    ``{"id", "scenario", "mode", "prompt", "image", "continuation", "model", "adapter", "template",
    "rendered_prompt", "benign"}``; a generator may return plain strings (no rendered prompt: ``null``).
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
            done[output] = read_done(
                path,
                model=generator.model_ref,
                adapter=generator.adapter_ref,
                template=getattr(generator, "template_ref", None),
            )
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
                        text, rendered = (
                            (answer, None) if isinstance(answer, str) else (answer.text, answer.rendered_prompt)
                        )
                        if item.output not in handles:
                            paths[item.output].parent.mkdir(parents=True, exist_ok=True)
                            handles[item.output] = open(paths[item.output], "a", encoding="utf-8")
                        record = {
                            "id": item.id,
                            "scenario": item.scenario,
                            "mode": item.mode,
                            "prompt": item.prompt,
                            "image": item.image,
                            "continuation": text,
                            "model": generator.model_ref,
                            "adapter": generator.adapter_ref,
                            "template": getattr(generator, "template_ref", None),
                            "rendered_prompt": rendered,
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
    parser.add_argument(
        "config",
        nargs="?",
        metavar="INFER_YAML",
        help="an inference YAML as `llamafactory-cli chat` takes it (configs/inference/*.yaml): model_name_or_path, "
        "adapter_name_or_path, template, infer_dtype, quantization, image_max_pixels, ...; the flags below override it",
    )
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS, help="which loader reads --data")
    parser.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="mmsafetybench: the folder with processed_questions/ and imgs/ (or the repository root, with data/); "
        "figstep: the folder of PNGs (SafeBench); generic: a JSON/JSONL file of {id, prompt, image?}",
    )
    parser.add_argument("--model", help="base model: a local folder or hub id (required unless INFER_YAML names one)")
    parser.add_argument("--adapter", metavar="DIR", help="a LoRA adapter folder trained on --model")
    parser.add_argument(
        "--template",
        metavar="NAME",
        help="the LLaMA-Factory template the model was trained with (llava, llava_next_llama3, llava_next_mistral, "
        f"yi_vl, qwen2_vl, ...; required unless INFER_YAML names one); {HF_CHAT}: the checkpoint's own chat "
        "template instead (not what a LLaMA-Factory-trained model saw)",
    )
    parser.add_argument("--system", help="system prompt (default: the template's own default system prompt)")
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
    parser.add_argument("--device", help="hf backend: put the whole model on this torch device (default: LLaMA-Factory's "
                        "device_map=auto)")  # fmt: skip
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="LLaMA-Factory's infer_dtype (default: the YAML's, else auto: bfloat16 where the GPU has it, else "
        "float16 on a GPU, float32 on CPU)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="hf (transformers, the default) or vllm (UNTESTED; default: the YAML's infer_backend)",
    )
    parser.add_argument(
        "--force-adapter", action="store_true", help="accept an adapter whose recorded base model name differs"
    )
    parser.add_argument("--overwrite", action="store_true", help="discard earlier answers in --output and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def generator_from_args(args: argparse.Namespace) -> Generator:
    """The generator the command line asks for: YAML (if any), then the flags, through LLaMA-Factory's loader."""
    infer_args = infer_arguments(
        args.config, model=args.model, adapter=args.adapter, template=args.template, dtype=args.dtype
    )
    return build_generator(
        infer_args,
        backend=backend_of(infer_args, args.backend),
        device=args.device,
        system=args.system,
        force_adapter=args.force_adapter,
    )


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    # model, adapter and template named (YAML or flags) before anything heavy happens
    infer_arguments(args.config, model=args.model, adapter=args.adapter, template=args.template, dtype=args.dtype)
    items = load_items(args)  # layout and images next: errors come before any model loads
    generator = generator_from_args(args)  # adapter name check, then the model, then the adapter's shapes
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
