"""The GPU checks, run by ``bench/gpu/run.sh`` (which makes the environment): one summary table of three checks.

(a) ``rejection-align generate`` with ``--backend hf`` and ``--backend vllm`` on the same prompts (the demo's safety
    prompts), for a LLaVA-1.5-7B-shaped random model (``bench/make_random_llava7b.py``) and a tiny Qwen2-VL, each
    without and with a LoRA adapter (the one trained in (b)): examples/s of both backends, answers compared.
(b) ``llamafactory-cli train`` for a fixed number of steps with ``rejection_mask_eos`` true and false on the same data
    (the demo's mix): samples/s of both (the method changes labels only, so the target is no measurable overhead).
(c) bf16 answers at batch size 8 against batch size 1 (transformers backend): how many are the same.

``--dry-run`` runs every step on CPU with the tiny LLaVA in place of the 7B one, few prompts and steps, and vLLM
skipped, so the script is known to work before a GPU is lent. Prints each step with its time; asserts nothing
about time. Exit status 1 when a step failed (its row says how), after the table is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "data" / "demo"
BIN = Path(sys.executable).parent  # the environment run.sh made: rejection-align, llamafactory-cli, torchrun
DATASET = "gpu_mix"


@dataclass(frozen=True)
class Plan:
    """What one run does: the GPU run's sizes, or the dry run's (tiny models, CPU, few prompts and steps)."""

    dry_run: bool
    device: str
    llava: str  # the LLaVA model's label in the table
    n_prompts: int
    max_new_tokens: int
    batch_size: int
    train_steps: int
    train_batch: int
    lora_rank: int
    bf16_training: bool

    @classmethod
    def of(cls, dry_run: bool) -> Plan:
        if dry_run:
            return cls(True, "cpu", "llava-tiny", 6, 8, 8, 3, 4, 8, False)
        return cls(False, "cuda", "llava-7b-random", 24, 64, 8, 20, 8, 128, True)


@dataclass
class Row:
    """One line of the summary table."""

    check: str
    model: str
    setting: str
    figure: str = ""
    compared: str = "—"
    seconds: float = 0.0
    ok: bool = True


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        if not row.ok:
            self.failed.append(f"{row.check} {row.model} {row.setting}: {row.figure}")
        return row


def env() -> dict[str, str]:
    """Child processes: offline, this environment's bin/ first (torchrun is found on PATH only)."""
    out = dict(os.environ)
    out.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", DISABLE_VERSION_CHECK="1")
    out["PATH"] = os.pathsep.join([str(BIN), out.get("PATH", "")])
    out.setdefault("TOKENIZERS_PARALLELISM", "false")
    return out


def run(command: list[str], log: Path, *, extra_env: dict[str, str] | None = None) -> tuple[int, float, str]:
    """Run ``command`` with its output in ``log``; returns (exit status, seconds, its output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        handle.write("$ " + " ".join(command) + "\n")
        handle.flush()
        status = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**env(), **(extra_env or {})}, cwd=ROOT
        ).returncode
    seconds = time.perf_counter() - start
    return status, seconds, log.read_text(encoding="utf-8", errors="replace")


def failure(status: int, output: str, log: Path) -> str:
    """A table cell for a failed command: its last non-empty line, and where the log is."""
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    return f"failed (exit {status}): {last[:160].replace('|', '/')} (log {log.name})"


class Step:
    """Numbered, timed step headings on stdout."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.started = total, 0, time.perf_counter()

    def __call__(self, title: str) -> float:
        self.number += 1
        print(f"[gpu {self.number}/{self.total}] {title}", flush=True)
        return time.perf_counter()

    def done(self, since: float, what: str = "") -> None:
        print(f"      {what + ', ' if what else ''}{time.perf_counter() - since:.1f} s", flush=True)


# ------------------------------------------------------------------------------------------------ models and data


def build_models(plan: Plan, work: Path) -> dict[str, Path]:
    """The LLaVA (7B-shaped random on a GPU, tiny on a dry run) and the tiny Qwen2-VL, built locally."""
    models = {}
    llava = work / "models" / plan.llava
    if plan.dry_run:
        status, _, output = run([str(BIN / "rejection-align"), "tiny-model", str(llava)], work / "logs" / "llava.log")
    elif (llava / "config.json").exists():
        status, output = 0, "reused"
    else:
        command = [sys.executable, str(ROOT / "bench" / "make_random_llava7b.py"), str(llava), "--device", "cuda"]
        status, _, output = run(command, work / "logs" / "llava.log")
    if status:
        raise SystemExit(f"building {plan.llava} failed (exit {status}):\n{output[-3000:]}")
    models[plan.llava] = llava

    qwen = work / "models" / "qwen2-vl-tiny"
    # on a GPU 256 wide (head size 64, which vLLM's attention kernels take); the tiny-model command's 64 otherwise
    width = "64" if plan.dry_run else "256"
    script = f"from rejection_align.demo.tiny import build_tiny_qwen2_vl; build_tiny_qwen2_vl({str(qwen)!r}, hidden_size={width})"
    status, _, output = run([sys.executable, "-c", script], work / "logs" / "qwen.log")
    if status:
        raise SystemExit(f"building the tiny Qwen2-VL failed (exit {status}):\n{output[-3000:]}")
    models["qwen2-vl-tiny"] = qwen
    return models


def make_data(plan: Plan, work: Path) -> tuple[Path, Path]:
    """The demo's mix (training) and the demo's safety prompts (generation), as the demo makes them."""
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    command = [
        str(BIN / "rejection-align"), "mix",
        "--rejection-source", str(DEMO_DATA / "rejection_source.json"), "--instruct", str(DEMO_DATA / "instruct.json"),
        "--n-rejection", "20", "--n-instruct", "60", "--random-turn", "--seed", "0",
        "--output", str(data), "--name", DATASET, "--dataset-info", str(data / "dataset_info.json"),
        "--image-dir", str(DEMO_DATA),
    ]  # fmt: skip
    status, _, output = run(command, work / "logs" / "mix.log")
    if status:
        raise SystemExit(f"rejection-align mix failed (exit {status}):\n{output[-3000:]}")
    prompts = json.loads((DEMO_DATA / "safety_prompts.json").read_text(encoding="utf-8"))[: plan.n_prompts]
    path = data / "prompts.json"
    path.write_text(json.dumps(prompts, indent=2), encoding="utf-8")
    return data, path


# --------------------------------------------------------------------------------------------------- (b) training


def train(
    plan: Plan, work: Path, model: Path, template: str, data: Path, label: str, method: bool
) -> tuple[int, float, str, Path]:
    """``llamafactory-cli train`` for ``plan.train_steps`` steps; returns (status, seconds, output, run folder)."""
    import yaml

    run_dir = work / "train" / label
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = {
        "model_name_or_path": str(model),
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",  # the language model's linear layers: what vLLM's LoRA serves
        "lora_rank": plan.lora_rank,
        "lora_alpha": 2 * plan.lora_rank,
        "freeze_vision_tower": True,
        "rejection_mask_eos": method,
        "dataset": DATASET,
        "dataset_dir": str(data),
        "media_dir": str(DEMO_DATA),
        "template": template,
        "cutoff_len": 1024,
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "output_dir": str(run_dir / "adapter"),
        "per_device_train_batch_size": plan.train_batch,
        "gradient_accumulation_steps": 1,
        "max_steps": plan.train_steps,
        "learning_rate": 1.0e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": plan.bf16_training,
        "seed": 42,
    }
    (run_dir / "train.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    extra = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} if plan.dry_run else {}
    status, seconds, output = run(
        [str(BIN / "llamafactory-cli"), "train", str(run_dir / "train.yaml")], run_dir / "train.log", extra_env=extra
    )
    return status, seconds, output, run_dir


def check_training(plan: Plan, work: Path, models: dict[str, Path], data: Path, results: Results) -> dict[str, Path]:
    """(b): the LLaVA trained with the method on and off; the on-run's adapter (and a Qwen2-VL one) serve (a)."""
    adapters = {}
    rates = {}
    for method in (True, False):
        setting = f"rejection_mask_eos={str(method).lower()}, {plan.train_steps} steps x batch {plan.train_batch}"
        status, seconds, output, run_dir = train(
            plan, work, models[plan.llava], "llava", data, f"llava_{'on' if method else 'off'}", method
        )
        row = Row("b: train", plan.llava, setting, seconds=seconds)
        if status:
            row.figure, row.ok = failure(status, output, run_dir / "train.log"), False
        else:
            metrics = json.loads((run_dir / "adapter" / "train_results.json").read_text(encoding="utf-8"))
            rates[method] = metrics["train_samples_per_second"]
            row.figure = f"{rates[method]:.2f} samples/s"
            row.compared = f"command {seconds:.1f} s"
            if method:
                adapters[plan.llava] = run_dir / "adapter"
        results.add(row)
    if len(rates) == 2:
        overhead = (rates[False] - rates[True]) / rates[False] * 100
        results.add(
            Row("b: train", plan.llava, "method on vs off", f"{overhead:+.1f} % time per sample", "one run each")
        )

    status, seconds, output, run_dir = train(plan, work, models["qwen2-vl-tiny"], "qwen2_vl", data, "qwen_on", True)
    if status:
        results.add(
            Row(
                "b: train",
                "qwen2-vl-tiny",
                "adapter for (a)",
                failure(status, output, run_dir / "train.log"),
                ok=False,
            )
        )
    else:
        adapters["qwen2-vl-tiny"] = run_dir / "adapter"
    return adapters


# ------------------------------------------------------------------------------------------------- (a) and (c)


@dataclass
class Generated:
    status: int
    seconds: float
    rate: float | None
    answers: dict[str, str]
    cell: str


def generate(plan: Plan, work: Path, name: str, model: Path, template: str, adapter: Path | None, backend: str,
             prompts: Path, batch_size: int) -> Generated:  # fmt: skip
    """``rejection-align generate`` (bf16, greedy) through an inference YAML; answers by id and examples/s."""
    import yaml

    label = f"{name}_{'lora' if adapter else 'base'}_{backend}_b{batch_size}"
    out = work / "generate" / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    infer = {
        "model_name_or_path": str(model),
        "template": template,
        "infer_dtype": "bfloat16",
        "trust_remote_code": True,
    }
    if adapter:
        infer["adapter_name_or_path"] = str(adapter)
    if backend == "vllm":
        # no CUDA graphs or compilation: starts in seconds, which an 8-minute budget needs; slower per token
        infer.update(vllm_enforce_eager=True, vllm_maxlen=2048, vllm_gpu_util=0.6)
    (out / "infer.yaml").write_text(yaml.safe_dump(infer), encoding="utf-8")
    command = [
        str(BIN / "rejection-align"), "generate", str(out / "infer.yaml"), "--backend", backend,
        "--benchmark", "generic", "--data", str(prompts), "--image-root", str(DEMO_DATA),
        "--output", str(out / "answers"), "--batch-size", str(batch_size),
        "--max-new-tokens", str(plan.max_new_tokens), "--no-progress",
    ]  # fmt: skip
    if backend == "hf":
        command += ["--device", plan.device]
    extra = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} if plan.dry_run else {}
    status, seconds, output = run(command, out / "generate.log", extra_env=extra)
    if status:
        return Generated(status, seconds, None, {}, failure(status, output, out / "generate.log"))
    answers = {}
    for path in sorted((out / "answers").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            answers[str(record["id"])] = record["continuation"]
    found = re.search(r"([\d.]+) examples/s", output)
    rate = float(found.group(1)) if found else len(answers) / seconds
    return Generated(0, seconds, rate, answers, f"{rate:.2f} examples/s")


def compare(answers: dict[str, str], reference: dict[str, str], what: str) -> str:
    """``N/M identical, K/M same first 5 words`` against the reference answers (same ids)."""
    ids = sorted(reference)
    same = sum(answers.get(i) == reference[i] for i in ids)
    start = sum(answers.get(i, "").split()[:5] == reference[i].split()[:5] for i in ids)
    return f"{same}/{len(ids)} identical to {what}, {start}/{len(ids)} same first 5 words"


def check_generation(plan: Plan, work: Path, models: dict[str, Path], adapters: dict[str, Path], prompts: Path,
                     results: Results, use_vllm: bool) -> dict[str, str]:  # fmt: skip
    """(a): hf then vLLM, without and with the adapter, for both models; returns the LLaVA's hf batch-8 answers."""
    templates = {plan.llava: "llava", "qwen2-vl-tiny": "qwen2_vl"}
    llava_base = {}
    for name, model in models.items():
        for adapter in [None] + ([adapters[name]] if name in adapters else []):
            kind = "LoRA (b)" if adapter else "no adapter"
            hf = generate(plan, work, name, model, templates[name], adapter, "hf", prompts, plan.batch_size)
            results.add(
                Row(
                    "a: generate",
                    name,
                    f"{kind}, hf, batch {plan.batch_size}",
                    hf.cell,
                    seconds=hf.seconds,
                    ok=not hf.status,
                )
            )
            if not hf.status and adapter is None and name == plan.llava:
                llava_base = hf.answers
            setting = f"{kind}, vllm, batch {plan.batch_size}"
            if not use_vllm:
                why = "dry run: vLLM is skipped" if plan.dry_run else "vLLM is not installed"
                results.add(Row("a: generate", name, setting, f"skipped ({why})", ok=plan.dry_run))
                continue
            vllm = generate(plan, work, name, model, templates[name], adapter, "vllm", prompts, plan.batch_size)
            row = Row("a: generate", name, setting, vllm.cell, seconds=vllm.seconds, ok=not vllm.status)
            if not vllm.status and not hf.status:
                row.compared = compare(vllm.answers, hf.answers, "hf")
            results.add(row)
        if name not in adapters:
            results.add(Row("a: generate", name, "LoRA (b)", "not run: no adapter (its training failed)", ok=False))
    return llava_base


def check_batch_parity(plan: Plan, work: Path, models: dict[str, Path], prompts: Path, batch8: dict[str, str],
                       results: Results) -> None:  # fmt: skip
    """(c): the LLaVA's bf16 answers at batch size 1 against those at batch size 8 from (a)."""
    one = generate(plan, work, plan.llava, models[plan.llava], "llava", None, "hf", prompts, 1)
    row = Row("c: bf16 batch parity", plan.llava, f"no adapter, hf, batch {plan.batch_size} vs 1", seconds=one.seconds)
    if one.status or not batch8:
        row.figure, row.ok = one.cell if one.status else "not run: the batch-8 answers of (a) failed", False
    else:
        row.figure = f"{one.cell} at batch 1"
        row.compared = compare(batch8, one.answers, "batch 1")
    results.add(row)


# ------------------------------------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "llamafactory", "peft", "vllm", "rejection-align"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_name(plan: Plan) -> str:
    if plan.dry_run:
        return f"CPU ({platform.processor() or platform.machine()} x{os.cpu_count()})"
    import torch

    return torch.cuda.get_device_name(0)


def write_summary(plan: Plan, out: Path, results: Results, seconds: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    info = versions()
    lines = [
        f"# GPU checks{' (dry run: CPU, tiny models, vLLM skipped)' if plan.dry_run else ''}",
        "",
        f"`bash bench/gpu/run.sh{' --dry-run' if plan.dry_run else ''}`, {time.strftime('%Y-%m-%d')}; device: "
        f"{device_name(plan)}; " + ", ".join(f"{k} {v}" for k, v in info.items()) + f"; all checks {seconds:.0f} s.",
        f"Prompts: the first {plan.n_prompts} of data/demo/safety_prompts.json, greedy, bf16, "
        f"max_new_tokens={plan.max_new_tokens}; vLLM with enforce_eager. Training: the demo's mix (20 rejection + "
        f"60 instruction examples), LoRA rank {plan.lora_rank}, {plan.train_steps} steps of {plan.train_batch}.",
        "",
        "| check | model | setting | figure | answers compared | seconds |",
        "|---|---|---|---|---|---:|",
    ]
    rows = sorted(results.rows, key=lambda r: r.check[0])  # (a), (b), (c); they run in the order b, a, c
    lines += [
        f"| {r.check} | {r.model} | {r.setting} | {r.figure} | {r.compared} | {f'{r.seconds:.1f}' if r.seconds else '—'} |"
        for r in rows
    ]
    path = out / "gpu_summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {"dry_run": plan.dry_run, "plan": asdict(plan), "versions": info, "seconds": seconds,
               "rows": [asdict(r) for r in rows], "failed": results.failed}  # fmt: skip
    (out / "gpu_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, vLLM skipped")
    parser.add_argument("--out", type=Path, required=True, help="where gpu_summary.md/.json go")
    parser.add_argument("--work", type=Path, required=True, help="models, data, adapters, answers and logs")
    args = parser.parse_args(argv)
    plan = Plan.of(args.dry_run)
    use_vllm = not plan.dry_run and importlib.util.find_spec("vllm") is not None
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = Results()
    step = Step(5)
    started = time.perf_counter()

    since = step(f"models: {plan.llava} and qwen2-vl-tiny, built locally in {work / 'models'}")
    models = build_models(plan, work)
    step.done(since)
    since = step("data: the demo's mix (training) and safety prompts (generation)")
    data, prompts = make_data(plan, work)
    step.done(since)
    since = step("(b) llamafactory-cli train, rejection_mask_eos true vs false (and a Qwen2-VL adapter for (a))")
    adapters = check_training(plan, work, models, data, results)
    step.done(since)
    since = step("(a) rejection-align generate, hf vs vllm, without and with the LoRA adapter")
    batch8 = check_generation(plan, work, models, adapters, prompts, results, use_vllm)
    step.done(since)
    since = step(f"(c) bf16 batch {plan.batch_size} vs batch 1 answers")
    check_batch_parity(plan, work, models, prompts, batch8, results)
    step.done(since)

    path = write_summary(plan, args.out, results, time.perf_counter() - started)
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path} and {path.with_suffix('.json')}; work files in {work}")
    if results.failed:
        print("FAILED: " + "; ".join(results.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
