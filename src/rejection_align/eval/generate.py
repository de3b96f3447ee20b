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
it stopped, and only with the same settings: the folder records them (``.generate-settings``, ``eval/settings.py``)
and a run with any other setting is refused, naming it. Greedy decoding by default; the inference YAML's
``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, ``repetition_penalty`` and ``do_sample`` apply as in
``llamafactory-cli chat``, and the flags override them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..files import Terminated, atomic_write_text, file_lock
from ..options import add_arguments as add_option_arguments
from ..options import from_args
from . import jsonl
from .adapters import check_adapter_base, load_adapter, read_adapter_config
from .backends import (
    Answer,
    Decoding,
    Generator,
    HFChatGenerator,
    HFGenerator,
    VLLMGenerator,
    backend_of,
    build_generator,
    check_adapters,
    check_device,
    check_llamafactory,
    infer_arguments,
    library_logs,
)
from .benchmarks import FIGSTEP_INSTRUCTION, MMSAFETYBENCH_MODES, Item, decode_images, load_benchmark
from .prompts import HF_CHAT, user_content
from .records import ANSWER_KEY
from .settings import (
    DEFAULT_BATCH_SIZE,
    SETTINGS_NAME,
    GenerateOptions,
    SettingsRecord,
    read_record,
    refuse_if_different,
    write_record,
)


logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = Decoding.max_new_tokens
LOCK_NAME = ".generate"

__all__ = [
    "Answer",
    "Decoding",
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


def read_done(path: Path, *, repair: bool = True) -> set[tuple[str, str, str]]:
    """Keys (id, scenario, mode) already answered in ``path``.

    A cut-off last line (a killed run, ``eval/jsonl.py``'s rule) is dropped, and with ``repair`` removed from the
    file, which is then rewritten atomically; any other damage is an error naming the line.
    """
    if not path.is_file():
        return set()
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        from ..errors import DataError

        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); the file is damaged") from None
    read = jsonl.read_jsonl(path, ANSWER_KEY, data=data)
    if repair and (read.cut_off or read.needs_newline):
        kept = data[: read.good_size].decode("utf-8")
        atomic_write_text(path, kept + ("\n" if kept and not kept.endswith("\n") else ""))
    return {(str(line.value.id), line.value.scenario, line.value.mode) for line in read.lines}


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


def _settings_of(generator: Generator, decoding: Decoding, settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings to record: the caller's, or (library callers) what the generator and decoding say."""
    if settings is None:
        settings = {
            "model": generator.model_ref,
            "adapter": generator.adapter_ref,
            "template": getattr(generator, "template_ref", None),
            **dataclasses.asdict(decoding.resolved()),
        }
    loaded = getattr(generator, "dtype_ref", None)
    return {**settings, **({"loaded_dtype": loaded} if loaded is not None else {})}


def _inside(output_dir: Path, name: str) -> Path | None:
    """``output_dir / name`` when ``name`` is a plain relative path inside it (a record is not trusted further)."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts or not name.endswith(".jsonl"):
        return None
    return output_dir / name


def _start_over(output_dir: Path, record: SettingsRecord | None, paths: Sequence[Path]) -> None:
    """``--overwrite``: remove every file an earlier generate wrote here (all modes), and the settings record."""
    targets = set(paths)
    if record is not None:
        targets |= {path for name in record.files if (path := _inside(output_dir, name)) is not None}
    for path in sorted(targets):
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a mode folder emptied by the above goes too (not if it holds more)
            if path.parent != output_dir:
                path.parent.rmdir()
    (output_dir / SETTINGS_NAME).unlink(missing_ok=True)


def check_resumable(
    output_dir: Path,
    paths: Sequence[Path],
    settings: Mapping[str, Any],
    *,
    repair: bool,
    skip: tuple[str, ...] = (),
) -> tuple[dict[Path, set[tuple[str, str, str]]], SettingsRecord | None]:
    """The answers already in ``output_dir`` per result file, after checking they were made with ``settings``.

    Answers in a folder without a settings record (an older release, or files put there by hand) are refused:
    nothing says how they were made.
    """
    record = read_record(output_dir) if output_dir.is_dir() else None
    done = {path: read_done(path, repair=repair) for path in paths}
    others = [] if record is None else [p for n in record.files if (p := _inside(output_dir, n)) and p not in done]
    has_answers = any(done.values()) or any(path.is_file() and path.stat().st_size for path in others)
    if has_answers and record is None:
        found = next(path for path, keys in done.items() if keys)
        raise ConfigError(
            f"{found} holds answers but {output_dir} has no record of the settings they were made with "
            f"({SETTINGS_NAME}; written by generate since settings are recorded): pass --overwrite to start over, "
            "or use another --output"
        )
    if has_answers and record is not None:
        refuse_if_different(output_dir, record.settings, settings, skip=skip)
    return done, record


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
    decoding: Decoding | None = None,
    settings: Mapping[str, Any] | None = None,
    images_checked: bool = False,
) -> GenerationReport:
    """Answer ``items`` not yet in ``output_dir`` and append the records, one JSONL line each, batch by batch.

    The Python entry point behind ``rejection-align generate`` (demos and benchmarks call it directly). Records:
    ``{"id", "scenario", "mode", "prompt", "image", "continuation", "model", "adapter", "template",
    "rendered_prompt", "benign"}``; a generator may return plain strings (no rendered prompt: ``null``).
    ``decoding`` (default: greedy, ``max_new_tokens``, ``temperature``) says how answers are decoded; ``settings``
    (default: the generator's model, adapter and template and the decoding) are recorded in the folder and must
    match those of answers already there; ``overwrite`` starts the whole folder over. Every image is decoded
    before the first answer (unless ``images_checked``). A lock keeps two runs from writing to one folder at once.
    """
    from tqdm.auto import tqdm

    decoding = decoding or Decoding(max_new_tokens=max_new_tokens, temperature=temperature)
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    decoding.check()
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"{output_dir}: is a file, not a folder for the answers")
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {item.output: output_dir / f"{item.output}.jsonl" for item in items}
    report = GenerationReport(n_items=len(items), n_skipped=0, files=sorted(set(paths.values())))
    recorded = _settings_of(generator, decoding, settings)

    with file_lock(output_dir / LOCK_NAME):
        record = read_record(output_dir)
        if overwrite:
            _start_over(output_dir, record, list(paths.values()))
        done, record = check_resumable(output_dir, list(paths.values()), recorded, repair=True)
        todo, seen = [], set()
        for item in items:
            if item.key in done[paths[item.output]] or (item.output, item.key) in seen:
                continue
            seen.add((item.output, item.key))
            todo.append(item)
        report.n_skipped = len(items) - len(todo)
        if report.n_skipped:
            logger.info("resuming: %d of %d answers already in %s", report.n_skipped, len(items), output_dir)
        if not images_checked:
            decode_images(todo, progress=progress)
        files = sorted(
            {*(record.files if record else []), *(p.relative_to(output_dir).as_posix() for p in paths.values())}
        )
        write_record(output_dir, SettingsRecord(dict(recorded), files))
        _answer(todo, paths, generator, decoding, batch_size, progress, report, tqdm)
    return report


def _answer(
    todo: list[Item],
    paths: Mapping[str, Path],
    generator: Generator,
    decoding: Decoding,
    batch_size: int,
    progress: bool,
    report: GenerationReport,
    tqdm: Any,
) -> None:
    """Generate batch by batch; each batch is on disk (flushed and synced) before the next one starts."""
    handles: dict[str, IO[str]] = {}
    start = time.perf_counter()
    try:
        with tqdm(total=len(todo), desc="generate", unit="ex", disable=not progress) as bar:
            for batch in _batches(todo, batch_size):
                answers = generator.generate(batch, **decoding.generate_kwargs())
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
                    line = json.dumps(record, ensure_ascii=False) + "\n"
                    _write(handles[item.output], paths[item.output], line)
                    touched.add(item.output)
                for output in touched:
                    _write(handles[output], paths[output], None)
                report.n_generated += len(batch)
                bar.update(len(batch))
    finally:
        for handle in handles.values():
            with contextlib.suppress(OSError):  # a full disk: the error that matters was raised already
                handle.close()
        report.seconds = time.perf_counter() - start


def _write(handle: IO[str], path: Path, text: str | None) -> None:
    """Write ``text`` (None: flush and sync); a full disk or any other OSError names the file."""
    try:
        if text is None:
            handle.flush()
            os.fsync(handle.fileno())
        else:
            handle.write(text)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


# ----------------------------------------------------------------------------------------------------------------
# command line


def load_items(args: argparse.Namespace | GenerateOptions) -> list[Item]:
    """Benchmark items from the command-line options (layout and images checked here, before any model loads)."""
    if isinstance(args, argparse.Namespace):  # list options absent from the command line: the fields' defaults
        args = from_args(GenerateOptions, args)
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
    add_option_arguments(parser, GenerateOptions)


def generator_from_args(args: argparse.Namespace | GenerateOptions) -> Generator:
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


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt) while the block runs: ``kill`` stops like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    opts = from_args(GenerateOptions, args)
    opts.check()  # options alone: sizes, temperature, top-p, an --output that is a file
    infer_args = infer_arguments(
        opts.config, model=opts.model, adapter=opts.adapter, template=opts.template, dtype=opts.dtype
    )
    decoding = opts.decoding(infer_args)
    backend = backend_of(infer_args, opts.backend)
    settings = opts.settings(infer_args, decoding, backend)
    hf_chat = infer_args["template"] == HF_CHAT
    check_adapters(infer_args, force=opts.force_adapter)  # adapter files and base model name
    items = load_items(opts)  # layout, then whether every image is there
    output = Path(opts.output)
    todo = items
    if not opts.overwrite:  # answers made with other settings: refused before anything loads
        paths = sorted({output / f"{item.output}.jsonl" for item in items})
        done, _ = check_resumable(output, paths, settings, repair=False)
        todo = [item for item in items if item.key not in done[output / f"{item.output}.jsonl"]]
    for item in todo:  # a prompt that holds the image placeholder but has no image: refused now, not mid-run
        user_content(item)
    decode_images(todo, progress=not opts.no_progress)  # a corrupt image stops the run before the first answer
    if backend == "hf":
        check_device(opts.device)
    if not hf_chat:
        check_llamafactory()
    verbose = bool(getattr(args, "verbose", False))
    try:
        with _sigterm_interrupts(), library_logs(verbose):
            generator = generator_from_args(opts)  # the model, then the adapter's shapes
            report = generate_to_files(
                items,
                output,
                generator,
                batch_size=opts.batch_size,
                decoding=decoding,
                overwrite=opts.overwrite,
                progress=not opts.no_progress,
                settings=settings,
                images_checked=True,
            )
    except KeyboardInterrupt as err:
        how = "terminated" if isinstance(err, Terminated) else "interrupted"
        kept = f"; the answers finished so far are kept in {output}: run the same command to resume"
        print(f"rejection-align generate: {how}{kept if output.is_dir() else ''}", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    rate = f", {report.n_generated / report.seconds:.2f} examples/s" if report.n_generated and report.seconds else ""
    print(
        f"{_plural(report.n_generated, 'answer')} generated, {report.n_skipped} already there{rate}; "
        f"{_plural(len(report.files), 'result file')} in {output}"
    )
    dirs = sorted({str(path.parent) for path in report.files})
    print("judge them with: rejection-align judge " + " ".join(dirs) + " --out <DIR>")
    return 0
