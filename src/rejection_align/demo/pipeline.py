"""Run the whole recipe on a laptop: tiny LLaVA, mix, train method and baseline, show the mask and its effect, judge.

Steps (each printed with its wall time; everything lands under ``--out``, default ``demo_out/``):

1. build a tiny random LLaVA from configs (``rejection-align tiny-model``), nothing downloaded;
2. mix the demo data into a LLaMA-Factory dataset with rejection answers (``mix``, what ``rejection-align mix`` runs);
3. train two LoRA adapters with ``llamafactory-cli train``, side by side: the method
   (``demo_tiny_llava.yaml``, ``rejection_mask_eos: true``) and its baseline twin
   (``demo_tiny_llava_baseline.yaml``: every closing token trained), same data, same seed;
4. print one rejection example from the tokenized dataset, with the label of its closing ``</s>`` shown as -100;
5. the effect: P(``</s>`` | prompt + rejection sentence) and the greedy continuation after the sentence, baseline
   vs method (the baseline stops there, the method goes on);
6. answer the demo's safety and benign prompts with both adapters (``generate_to_files``, the engine of
   ``rejection-align generate``) and judge them (``summarize`` and the reports of ``rejection-align judge``).

Only ``llamafactory-cli train`` runs as a subprocess, the way users train; the other steps call the Python API and
read its results as objects. What the libraries log (LLaMA-Factory's INFO lines, transformers' warnings and
weight-loading bars) goes to ``OUT/demo.log`` rather than between the demo's lines; ``-v`` shows it as well.

The configs and data come from the installed package (``rejection_align/demo/files/`` in a wheel), else from the
source checkout of an editable install (``configs/`` and ``data/demo/``); the working directory plays no part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..constants import IGNORE_INDEX
from ..data.records import DEFAULT_REJECTION_SENTENCE as SENTENCE
from ..errors import ConfigError


if TYPE_CHECKING:
    from ..data.mix import MixResult
    from ..eval.generate import GenerationReport

DEFAULT_OUT = "demo_out"
DEMO_CONFIG = "configs/demo_tiny_llava.yaml"
BASELINE_CONFIG = "configs/demo_tiny_llava_baseline.yaml"
DEMO_DATA = "data/demo"
DATASET_NAME = "demo_mix"
LOG_NAME = "demo.log"  # under --out: what the libraries log during the run
TEMPLATE = "llava"  # the LLaMA-Factory template of the demo configs
# In a wheel, pyproject.toml's force-include puts configs/demo_*.yaml and data/demo/ here, under the same names.
PACKAGE_FILES = Path(__file__).resolve().parent / "files"
SOURCE_ROOT = Path(__file__).resolve().parents[3]  # the checkout, for an editable install


def demo_file(relative: str) -> Path:
    """``relative`` (e.g. ``configs/demo_tiny_llava.yaml``) from the installed package, else the source checkout."""
    for base in (PACKAGE_FILES, SOURCE_ROOT):
        candidate = base / relative
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"{relative} is missing from the installed package ({PACKAGE_FILES}) and from a source checkout "
        f"({SOURCE_ROOT}): reinstall rejection-align, or pass --config/--baseline-config/--data"
    )


def subprocess_env() -> dict[str, str]:
    """The environment for child processes: offline, and with this interpreter's bin/ first (torchrun, CLIs)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One thread: the tiny model gains nothing from more, and on a busy machine spinning OpenMP threads make a
    # 3 s training take a minute (measured on a shared 2-core box). Users can still set OMP_NUM_THREADS.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def llamafactory_cli() -> list[str]:
    """The ``llamafactory-cli`` of this environment (beside this interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "llamafactory-cli"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("llamafactory-cli")
    if found is None:
        raise ConfigError(
            "llamafactory-cli not found: install LLaMA-Factory (0.9.4, 0.9.5 or main) beside rejection-align"
        )
    return [found]


def train_command(config: Path, overrides: dict[str, Any]) -> list[str]:
    """``llamafactory-cli train CONFIG key=value ...``; values must not contain spaces (see docs/training.md)."""
    args = [f"{key}={value}" for key, value in overrides.items()]
    return [*llamafactory_cli(), "train", str(config), *args]


def run_logged(commands: dict[str, tuple[list[str], Path]]) -> dict[str, int]:
    """Run ``label -> (command, log file)`` side by side (in :func:`subprocess_env`); returns the exit statuses.

    The demo's two trainings each use one thread, so on two cores they take the time of one.
    """
    running = {}
    for label, (command, log_path) in commands.items():
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "w", encoding="utf-8")  # closed below, once the process ends
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        running[label] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env()), log)
    statuses = {}
    for label, (process, log) in running.items():
        statuses[label] = process.wait()
        log.close()
    return statuses


def tail(path: Path, n: int = 25) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------- the mask, shown


def answer_ends(input_ids: list[int], labels: list[int], closing_ids: set[int]) -> list[int]:
    """Positions of the closing tokens that end a trained answer (the token before them is trained)."""
    return [
        pos for pos in range(1, len(input_ids)) if input_ids[pos] in closing_ids and labels[pos - 1] != IGNORE_INDEX
    ]


def answer_start(labels: list[int], end: int) -> int:
    """First position of the trained answer that closes at ``end``."""
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


def describe_turn(tokenizer: Any, input_ids: list[int], labels: list[int], end: int, width: int = 8) -> list[str]:
    """A token/label table for the answer that closes at ``end``: the last ``width`` tokens of it."""
    start = answer_start(labels, end)
    answer = tokenizer.decode(input_ids[start : end + 1])
    rows = [f"answer: {answer!r}", f"{'token':>22}  {'input_id':>8}  {'label':>6}"]
    first = max(start, end + 1 - width)
    if first > start:
        rows.append(f"{'...':>22}")
    for pos in range(first, end + 1):
        token = repr(tokenizer.decode([input_ids[pos]]))
        label = labels[pos]
        note = "   <- not trained (-100)" if label == IGNORE_INDEX else ""
        rows.append(f"{token:>22}  {input_ids[pos]:>8}  {label:>6}{note}")
    return rows


def show_rejection_example(tokenized_dir: Path, model_dir: Path) -> tuple[list[str], dict[str, int]]:
    """Lines showing one masked rejection answer and one ordinary answer, plus counts over the dataset."""
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = load_from_disk(str(tokenized_dir))
    if hasattr(dataset, "keys"):
        dataset = dataset["train"]
    closing = {tokenizer.eos_token_id}
    masked_example = normal_example = None
    counts = {"examples": len(dataset), "masked_closing_tokens": 0, "trained_closing_tokens": 0}
    for index, row in enumerate(dataset):
        ids, labels = row["input_ids"], row["labels"]
        ends = answer_ends(ids, labels, closing)
        masked = [pos for pos in ends if labels[pos] == IGNORE_INDEX]
        trained = [pos for pos in ends if labels[pos] == ids[pos]]
        counts["masked_closing_tokens"] += len(masked)
        counts["trained_closing_tokens"] += len(ends) - len(masked)
        if masked_example is None and masked:
            masked_example = (index, ids, labels, masked[0])
        if normal_example is None and trained:
            pos = trained[0]
            if SENTENCE not in tokenizer.decode(ids[answer_start(labels, pos) : pos]):
                normal_example = (index, ids, labels, pos)

    lines = []
    if masked_example is None:
        lines.append("no rejection answer with a masked closing token found: is the hook installed?")
    else:
        index, ids, labels, pos = masked_example
        lines.append(f"rejection answer (example {index} of the tokenized training set):")
        lines += ["  " + row for row in describe_turn(tokenizer, ids, labels, pos)]
    if normal_example is not None:
        index, ids, labels, pos = normal_example
        lines.append(f"ordinary answer, for comparison (example {index}): its closing token is trained")
        lines += ["  " + row for row in describe_turn(tokenizer, ids, labels, pos, width=3)]
    return lines, counts


# ---------------------------------------------------------------------------------------------- the run's log


class _OnlyOurWarnings(logging.Filter):
    """Lets through to the terminal only what the user must act on: our own warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and record.name.split(".")[0] == "rejection_align"


# Loggers that do not propagate to the root logger and carry their own terminal handler.
_LIBRARY_LOGGERS = ("transformers", "llamafactory")


@contextlib.contextmanager
def library_output_to(log_path: Path, *, show: bool) -> Iterator[IO[str]]:
    """Send what the libraries log or print to stderr during the run to ``log_path`` instead of the terminal.

    LLaMA-Factory logs INFO lines to stdout through its own handler, transformers draws weight-loading bars and
    warns on stderr: between the demo's lines they bury the output (step 6 got ~40 of them). Here they go to the
    log: a file handler on the root logger and on the libraries' own loggers (which do not propagate), a filter on
    their terminal handlers (our own warnings still pass), and ``sys.stderr`` (tqdm bars, ``warnings``) into the
    file. ``show`` (``-v``) keeps the terminal as it was; the log is written either way. Everything is undone on
    exit, so a process that goes on (a test, a notebook) logs as before.
    """
    import transformers.utils.logging  # noqa: F401 (makes its stderr handler now, before the redirect below)

    try:
        from llamafactory.extras import logging as llamafactory_logging
    except ImportError as err:
        raise ConfigError(f"LLaMA-Factory cannot be imported ({err}): install 0.9.4, 0.9.5 or main") from None

    llamafactory_logging.get_logger()  # LLaMA-Factory adds its stdout handler on first use: now, so it is filtered
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8", buffering=1) as log, contextlib.ExitStack() as undo:
        quiet = _OnlyOurWarnings()
        for name in ("", *_LIBRARY_LOGGERS):
            logger = logging.getLogger(name)
            # one handler each: LLaMA-Factory re-formats every handler of transformers' logger
            to_log = logging.StreamHandler(log)
            to_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            if not show:
                for handler in logger.handlers:
                    if type(handler) is logging.StreamHandler:  # a terminal, not a file or a test's capture
                        handler.addFilter(quiet)
                        undo.callback(handler.removeFilter, quiet)
            logger.addHandler(to_log)
            undo.callback(logger.removeHandler, to_log)
        if not show:
            undo.enter_context(contextlib.redirect_stderr(log))
        yield log


# ---------------------------------------------------------------------------------------------- the steps


@contextlib.contextmanager
def step(number: int, total: int, title: str) -> Iterator[None]:
    print(f"\n[{number}/{total}] {title}", flush=True)
    started = time.perf_counter()
    yield
    print(f"      done in {time.perf_counter() - started:.1f} s", flush=True)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Torch intra-op threads for this process (unless OMP_NUM_THREADS says otherwise), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT}/)")
    parser.add_argument("--config", metavar="YAML", help="training config of the method (default: the package's)")
    parser.add_argument("--baseline-config", metavar="YAML", help="its baseline twin (default: the package's)")
    parser.add_argument("--data", metavar="DIR", help="demo data folder (default: the package's data/demo)")
    parser.add_argument("--n-rejection", type=int, default=20, help="rejection examples in the mix (default: 20)")
    parser.add_argument("--n-instruct", type=int, default=60, help="instruction examples in the mix (default: 60)")
    parser.add_argument("--max-steps", type=int, help="stop training after N steps (default: the YAML's epochs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model and of the mix (default: 0)")
    parser.add_argument("--no-judge", action="store_true", help="skip the last step (generate and judge)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length when judging (default: 16)")
    parser.add_argument(
        "-v",
        "--verbose",
        dest="show_logs",
        action="store_true",
        help=f"also show the libraries' log lines and progress bars (always written to OUT/{LOG_NAME})",
    )


@dataclass(frozen=True)
class _Run:
    """One of the two trainings: the method or its baseline twin."""

    label: str
    config: Path
    adapter: Path
    run_dir: Path

    @property
    def tokenized(self) -> Path:
        return self.run_dir / "tokenized"

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out).resolve()
    config = Path(args.config).resolve() if args.config else demo_file(DEMO_CONFIG)
    baseline_config = Path(args.baseline_config).resolve() if args.baseline_config else demo_file(BASELINE_CONFIG)
    data = Path(args.data).resolve() if args.data else demo_file(DEMO_DATA)
    print(f"rejection-align demo: output in {out}")
    print(f"      configs: {config}, {baseline_config.name}; data: {data}")
    show = getattr(args, "verbose", False) or getattr(args, "show_logs", False)
    with library_output_to(out / LOG_NAME, show=show):
        return _steps(args, out, config, baseline_config, data, started)


def _steps(
    args: argparse.Namespace, out: Path, config: Path, baseline_config: Path, data: Path, started: float
) -> int:
    total = 5 if args.no_judge else 6
    model_dir, data_dir = out / "tiny_llava", out / "data"
    runs = [
        _Run("method", config, out / "adapter", out / "run"),
        _Run("baseline", baseline_config, out / "adapter_baseline", out / "run_baseline"),
    ]
    with step(1, total, f"tiny LLaVA -> {model_dir}"):
        _build_model(model_dir, seed=args.seed)

    with step(2, total, f"mix {args.n_rejection} rejection + {args.n_instruct} instruction examples -> {data_dir}"):
        mix_demo_data(data, data_dir, n_rejection=args.n_rejection, n_instruct=args.n_instruct, seed=args.seed)

    title = f"llamafactory-cli train, twice side by side: method ({config.name}) and baseline ({baseline_config.name})"
    with step(3, total, title):
        status = _train(runs, model_dir, data_dir, data, args.max_steps)
        if status:
            return status

    with step(4, total, "the method, visible in the tokenized training set"):
        _show_mask(runs, model_dir)

    with step(5, total, "the effect: what each model does right after the rejection sentence"), _threads(1):
        probes = _probe(out, model_dir, runs, data)

    if not args.no_judge:
        with step(6, total, "generate on the demo's safety and benign prompts (baseline vs method) and judge"):
            with _threads(1):
                _judge(out, model_dir, runs, data, args.max_new_tokens)

    by_label = {p.label: p for p in probes}
    print(
        f"\ndemo finished in {time.perf_counter() - started:.1f} s; P(</s> after the rejection sentence): "
        f"baseline {by_label['baseline'].p_close:.3g}, method {by_label['method'].p_close:.3g}; "
        f"everything is under {out}"
    )
    return 0


def _build_model(model_dir: Path, *, seed: int) -> None:
    """Step 1: the tiny LLaVA (reused when ``model_dir`` holds the same build); prints its size."""
    from .tiny import STAMP_NAME, build_tiny_llava

    build_tiny_llava(model_dir, seed=seed)
    stamp = json.loads((model_dir / STAMP_NAME).read_text(encoding="utf-8"))
    print(f"      {stamp['n_parameters']:,} parameters, {stamp['n_image_tokens']} image tokens per image")


def mix_demo_data(data: Path, data_dir: Path, *, n_rejection: int, n_instruct: int, seed: int) -> MixResult:
    """Step 2: ``mix`` the demo data into ``data_dir`` (registered there as ``demo_mix``); prints what it wrote."""
    from ..data.mix import MixOptions, mix

    shutil.rmtree(data_dir, ignore_errors=True)
    dataset_info = data_dir / "dataset_info.json"
    result = mix(
        MixOptions(
            rejection_source=data / "rejection_source.json",
            instruct=data / "instruct.json",
            output=data_dir,
            n_rejection=n_rejection,
            n_instruct=n_instruct,
            random_turn=True,
            seed=seed,
            name=DATASET_NAME,
            dataset_info=dataset_info,
            image_dir=data,  # every image of the mix must exist
        )
    )
    print(
        f"      wrote {result.n_rejection + result.n_instruct} records ({result.n_rejection} rejection, "
        f"{result.n_instruct} instruct) to {result.output}"
    )
    print(f"      manifest: {result.manifest}")
    if result.registration is not None:
        print(f"      dataset {result.name!r} {result.registration} in {dataset_info}")
    return result


def _train(runs: list[_Run], model_dir: Path, data_dir: Path, data: Path, max_steps: int | None) -> int:
    commands = {}
    for r in runs:
        shutil.rmtree(r.run_dir, ignore_errors=True)
        overrides: dict[str, Any] = {
            "model_name_or_path": model_dir,
            "dataset_dir": data_dir,
            "dataset": DATASET_NAME,
            "media_dir": data,
            "output_dir": r.adapter,
            "tokenized_path": r.tokenized,
        }
        if max_steps:
            overrides["max_steps"] = max_steps
        commands[r.label] = (train_command(r.config, overrides), r.log)
    statuses = run_logged(commands)
    for r in runs:
        if statuses[r.label]:
            print(_indent(tail(r.log)))
            print(f"      {r.label}: training failed (exit {statuses[r.label]}); full log: {r.log}")
    if any(statuses.values()):
        return 1
    for r in runs:
        results = json.loads((r.adapter / "train_results.json").read_text(encoding="utf-8"))
        print(
            f"      {r.label + ':':<9} train_loss {results.get('train_loss', float('nan')):.3f}, "
            f"epochs {results.get('epoch')}, adapter {r.adapter}"
        )
        plot = r.adapter / "training_loss.png"
        print(f"                loss plot {plot}" if plot.exists() else "                (no loss plot written)")
    return 0


def _show_mask(runs: list[_Run], model_dir: Path) -> None:
    """Step 4: one masked rejection answer of the method's tokenized set, and the closing-token counts of both."""
    method, baseline = runs
    lines, counts = show_rejection_example(method.tokenized, model_dir)
    _, baseline_counts = show_rejection_example(baseline.tokenized, model_dir)
    print(_indent("\n".join(lines)))
    for label, c in (("method", counts), ("baseline", baseline_counts)):
        print(
            f"      {label + ':':<9} over all {c['examples']} examples, {c['masked_closing_tokens']} closing tokens "
            f"masked (rejection answers), {c['trained_closing_tokens']} trained"
        )


def _probe(out: Path, model_dir: Path, runs: list[_Run], data: Path) -> list[Any]:
    """P(</s>) and the greedy continuation after the sentence, on the first safety prompt; also in mechanism.json."""
    from dataclasses import asdict

    from ..files import atomic_open
    from .mechanism import ProbePrompt, format_table, probe_closing

    first = json.loads((data / "safety_prompts.json").read_text(encoding="utf-8"))[0]
    prompt = ProbePrompt(first["prompt"], data / first["image"] if first.get("image") else None)
    adapters = {r.label: r.adapter for r in reversed(runs)}  # baseline first, as it reads: before -> after
    probes = probe_closing(model_dir, adapters, prompt, SENTENCE, template_name=TEMPLATE)
    print(f"      prompt: {prompt.question!r} (+ image {first.get('image')}), then the answer so far:")
    print(_indent("\n".join(format_table(probes, SENTENCE)), "        "))
    print(
        "      the baseline learned that the sentence is the whole answer; the method learned to open with it, and its"
        "\n      closing token after the sentence was never trained, so the answer goes on (with a real model: an"
        "\n      explanation or a safe alternative; this tiny one only knows shape descriptions)"
    )
    record = {"prompt": prompt.question, "image": first.get("image"), "sentence": SENTENCE}
    record["probes"] = [asdict(p) for p in probes]
    with atomic_open(out / "mechanism.json", "w") as handle:
        handle.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return probes


def _judge(out: Path, model_dir: Path, runs: list[_Run], data: Path, max_new_tokens: int) -> None:
    """Step 6: both adapters answer the safety and the benign prompts; the two runs are judged side by side."""
    from ..eval import report
    from ..eval.judge import summarize

    gen_dir, judge_dir = out / "generate", out / "judge"
    for r in runs:
        generate_answers(model_dir, r.adapter, data, gen_dir / r.label, max_new_tokens=max_new_tokens)
    summaries = [summarize([gen_dir / r.label]) for r in reversed(runs)]  # baseline first: before -> after
    comparison = report.compare(*summaries, labels=[r.label for r in reversed(runs)])
    written = report.write_compare(comparison, judge_dir)
    print(_indent(report.compare_markdown(comparison) + "\n\n" + "\n".join(f"wrote {path}" for path in written)))
    for r in reversed(runs):
        _show_answers(r.label, gen_dir / r.label / "safety_prompts.jsonl")
    print(
        "      What this step can show: generate and judge run end to end on both adapters. What it cannot: safety."
        "\n      The tiny model saw rejection answers on random benign shape questions, so whether it refuses a prompt"
        "\n      says nothing about the prompt being harmful; the ASR above is not a safety result (step 5 is the"
        "\n      method's effect; examples/ runs the real models)."
    )


def generate_answers(
    model_dir: Path, adapter: Path, data: Path, output: Path, *, max_new_tokens: int
) -> list[GenerationReport]:
    """Answers of ``model_dir`` + ``adapter`` to the demo's safety and benign prompts, one model load for both sets.

    The same engine and arguments as ``rejection-align generate --benchmark generic --template llava --device cpu
    --dtype float32 --overwrite``; returns its reports (answers written to ``output/<prompt file stem>.jsonl``).
    """
    from ..eval.benchmarks import load_generic
    from ..eval.generate import build_generator, generate_to_files, infer_arguments

    prompt_sets = [load_generic(data / "safety_prompts.json"), load_generic(data / "benign_prompts.json", benign=True)]
    arguments = infer_arguments(model=model_dir, adapter=adapter, template=TEMPLATE, dtype="float32")
    with warnings.catch_warnings():  # peft warns about tied weights the tiny model does not tie
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        generator = build_generator(arguments, backend="hf", device="cpu")
    # one folder for both sets: only the first starts it over (overwrite clears the whole folder)
    return [
        generate_to_files(items, output, generator, max_new_tokens=max_new_tokens, overwrite=first, progress=False)
        for first, items in zip((True, False), prompt_sets)
    ]


def _show_answers(label: str, results: Path, n: int = 2) -> None:
    if not results.is_file():
        return
    for line in results.read_text(encoding="utf-8").splitlines()[:n]:
        record = json.loads(line)
        print(f"      {label + ':':<9} {record.get('prompt', '')[:60]!r} -> {record.get('continuation', '')[:70]!r}")
