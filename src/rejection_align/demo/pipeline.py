"""Run the whole recipe on a laptop: tiny LLaVA, mix, train with llamafactory-cli, show the mask, judge.

Steps (each printed with its wall time; everything lands under ``--out``, default ``demo_out/``):

1. build a tiny random LLaVA from configs (``rejection-align tiny-model``), nothing downloaded;
2. mix the shipped demo data (``data/demo/``) into a LLaMA-Factory dataset with rejection answers
   (``rejection-align mix``);
3. train a LoRA with ``llamafactory-cli train configs/demo_tiny_llava.yaml`` (method on), saving the tokenized
   dataset and the loss plot;
4. print one rejection example from the tokenized dataset, with the label of its closing ``</s>`` shown as -100;
5. answer the shipped safety prompts with the base model and with the trained adapter
   (``rejection-align generate``) and judge both (``rejection-align judge``).

The tiny model has random weights, so its safety numbers only show that the pipeline runs end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..data.llava_format import DEFAULT_REJECTION_SENTENCE as SENTENCE
from ..hook.masking import IGNORE_INDEX


DEFAULT_OUT = "demo_out"
DEMO_CONFIG = "configs/demo_tiny_llava.yaml"
DEMO_DATA = "data/demo"
DATASET_NAME = "demo_mix"


def find_project_file(relative: str) -> Path:
    """``relative`` under the working directory, else under the checkout this package was installed from.

    The demo is meant to run from the repository root; the fallback covers an editable install run elsewhere.
    """
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = base / relative
        if candidate.exists():
            return candidate.resolve()
    raise ConfigError(
        f"{relative} not found in {Path.cwd()} nor next to the installed package; run the demo from the "
        "rejection-align repository root (it ships configs/ and data/demo/)"
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
        raise ConfigError("llamafactory-cli not found: install rejection-align (it depends on llamafactory==0.9.5)")
    return [found]


def train_command(config: Path, overrides: dict[str, Any]) -> list[str]:
    """``llamafactory-cli train CONFIG key=value ...``; values must not contain spaces (see docs/training.md)."""
    args = [f"{key}={value}" for key, value in overrides.items()]
    return [*llamafactory_cli(), "train", str(config), *args]


def run_logged(command: list[str], log_path: Path) -> int:
    """Run ``command`` (in :func:`subprocess_env`) with its output in ``log_path``; returns the exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env()).returncode


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


def call_cli(argv: list[str]) -> tuple[int, str]:
    """Run a ``rejection-align`` sub-command in this process; returns (status, what it printed)."""
    from ..cli import main as cli_main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli_main(argv)
    return status, buffer.getvalue()


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT}/)")
    parser.add_argument("--config", metavar="YAML", help=f"training config (default: {DEMO_CONFIG})")
    parser.add_argument("--data", metavar="DIR", help=f"demo data folder (default: {DEMO_DATA})")
    parser.add_argument("--n-rejection", type=int, default=20, help="rejection examples in the mix (default: 20)")
    parser.add_argument("--n-instruct", type=int, default=60, help="instruction examples in the mix (default: 60)")
    parser.add_argument("--max-steps", type=int, help="stop training after N steps (default: the YAML's epochs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model and of the mix (default: 0)")
    parser.add_argument("--no-judge", action="store_true", help="skip step 5 (generate and judge)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length when judging (default: 16)")


def run(args: argparse.Namespace) -> int:
    from .tiny import STAMP_NAME, build_tiny_llava

    started = time.perf_counter()
    out = Path(args.out).resolve()
    config = Path(args.config).resolve() if args.config else find_project_file(DEMO_CONFIG)
    data = Path(args.data).resolve() if args.data else find_project_file(DEMO_DATA)
    total = 4 if args.no_judge else 5
    model_dir, data_dir, run_dir = out / "tiny_llava", out / "data", out / "run"
    adapter_dir, tokenized_dir = out / "adapter", run_dir / "tokenized"
    print(f"rejection-align demo: output in {out}")

    with step(1, total, f"tiny LLaVA -> {model_dir}"):
        build_tiny_llava(model_dir, seed=args.seed)
        stamp = json.loads((model_dir / STAMP_NAME).read_text(encoding="utf-8"))
        print(f"      {stamp['n_parameters']:,} parameters, {stamp['n_image_tokens']} image tokens per image")

    with step(2, total, f"mix {args.n_rejection} rejection + {args.n_instruct} instruction examples -> {data_dir}"):
        shutil.rmtree(data_dir, ignore_errors=True)
        status, printed = call_cli(
            [
                "mix",
                "--rejection-source", str(data / "rejection_source.json"),
                "--instruct", str(data / "instruct.json"),
                "--n-rejection", str(args.n_rejection),
                "--n-instruct", str(args.n_instruct),
                "--random-turn",
                "--seed", str(args.seed),
                "--output", str(data_dir),
                "--name", DATASET_NAME,
                "--dataset-info", str(data_dir / "dataset_info.json"),
                "--image-dir", str(data),  # every image of the mix must exist
                "--no-cache",  # small files: no index cache in the user's home
            ]
        )  # fmt: skip
        print(_indent(printed))
        if status:
            return status

    with step(3, total, f"llamafactory-cli train {_relative(config)} (LoRA, rejection_mask_eos: true)"):
        shutil.rmtree(run_dir, ignore_errors=True)
        overrides: dict[str, Any] = {
            "model_name_or_path": model_dir,
            "dataset_dir": data_dir,
            "dataset": DATASET_NAME,
            "media_dir": data,
            "output_dir": adapter_dir,
            "tokenized_path": tokenized_dir,
        }
        if args.max_steps:
            overrides["max_steps"] = args.max_steps
        log = run_dir / "train.log"
        status = run_logged(train_command(config, overrides), log)
        if status:
            print(_indent(tail(log)))
            print(f"      training failed (exit {status}); full log: {log}")
            return 1
        results = json.loads((adapter_dir / "train_results.json").read_text(encoding="utf-8"))
        print(
            f"      train_loss {results.get('train_loss', float('nan')):.3f}, epochs {results.get('epoch')}; log: {log}"
        )
        plot = adapter_dir / "training_loss.png"
        print(f"      adapter: {adapter_dir}")
        print(f"      loss plot: {plot}" if plot.exists() else "      (no loss plot written)")

    with step(4, total, "the method, visible in the tokenized training set"):
        lines, counts = show_rejection_example(tokenized_dir, model_dir)
        print(_indent("\n".join(lines)))
        print(
            f"      over all {counts['examples']} examples: {counts['masked_closing_tokens']} closing tokens masked "
            f"(rejection answers), {counts['trained_closing_tokens']} trained"
        )

    if not args.no_judge:
        with step(5, total, "generate on the shipped safety prompts (base vs trained) and judge"), _threads(1):
            status = _judge(out, model_dir, adapter_dir, data, args.max_new_tokens)
            if status:
                return status

    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s; everything is under {out}")
    return 0


def _judge(out: Path, model_dir: Path, adapter_dir: Path, data: Path, max_new_tokens: int) -> int:
    gen_dir, judge_dir = out / "generate", out / "judge"
    runs = {"base": None, "trained": adapter_dir}
    for label, adapter in runs.items():
        for prompts, extra in (("safety_prompts.json", []), ("benign_prompts.json", ["--benign"])):
            argv = [
                "generate",
                "--benchmark", "generic",
                "--data", str(data / prompts),
                "--model", str(model_dir),
                "--template", "llava",
                "--output", str(gen_dir / label),
                "--max-new-tokens", str(max_new_tokens),
                "--device", "cpu",
                "--dtype", "float32",
                "--no-progress",
                "--overwrite",
                *extra,
            ]  # fmt: skip
            if adapter is not None:
                argv += ["--adapter", str(adapter)]
            status, printed = call_cli(argv)
            if status:
                print(_indent(printed))
                return status

    status, printed = call_cli(
        ["judge", "--compare", str(gen_dir / "base"), str(gen_dir / "trained"), "--labels", "base", "trained",
         "--out", str(judge_dir)]
    )  # fmt: skip
    print(_indent(printed))
    _show_answers(gen_dir / "trained" / "safety_prompts.jsonl")
    print("      (random weights: these numbers only show that the pipeline runs; see examples/ for real models)")
    return status


def _show_answers(results: Path, n: int = 2) -> None:
    if not results.is_file():
        return
    for line in results.read_text(encoding="utf-8").splitlines()[:n]:
        record = json.loads(line)
        print(f"      prompt: {record.get('prompt', '')[:70]!r}")
        print(f"      answer: {record.get('continuation', '')[:70]!r}")


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


if __name__ == "__main__":
    from ..cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
