"""``generate``'s options, declared once, and the settings record that gives an output folder one identity.

``GenerateOptions`` is the single declaration: the argparse flags, their defaults and help come from it
(:mod:`rejection_align.options`), and its recorded fields (all but those with ``record=False``) are the generation
settings written to ``<output>/.generate-settings`` (JSON), with the values actually used (the inference YAML's
keys, then the flags).
A later run in the same folder must have the same settings: resuming with another system prompt, temperature,
adapter, ... would mix two runs into one set of numbers, so it is refused, naming the setting and both values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..files import atomic_write_json
from ..options import option, recorded
from .adapters import same_ref
from .backends import BACKENDS, DECODING_KEYS, DEFAULT_MAX_NEW_TOKENS, DTYPES, FLAG_KEYS, Decoding
from .benchmarks import (
    BENCHMARKS,
    DEFAULT_MMSAFETYBENCH_MODES,
    DEFAULT_MMSAFETYBENCH_TEXT_FIELD,
    FIGSTEP_INSTRUCTION,
    MMSAFETYBENCH_MODES,
    MMSAFETYBENCH_SCENARIOS,
    MMSAFETYBENCH_TEXT_FIELDS,
)
from .prompts import HF_CHAT


SETTINGS_NAME = ".generate-settings"  # no .json suffix: `judge <output>` reads every *.json file beside it
DEFAULT_BATCH_SIZE = 8
# settings compared by what they point at (a relative and an absolute path to one model are the same model)
REFERENCES = ("model", "adapter")
# inference-YAML keys that are neither recorded on their own nor change answers
UNRECORDED_KEYS = {"infer_backend", "trust_remote_code", *FLAG_KEYS.values(), *DECODING_KEYS}

_FIRST = ", ".join(MMSAFETYBENCH_SCENARIOS[:2])


@dataclass(frozen=True, kw_only=True)
class GenerateOptions:
    """The options of ``rejection-align generate``; the recorded ones are the settings an output folder keeps."""

    config: str | None = field(
        default=None,
        metadata=option(
            "config",
            nargs="?",
            metavar="INFER_YAML",
            record=False,
            help="an inference YAML as `llamafactory-cli chat` takes it (configs/inference/*.yaml): "
            "model_name_or_path, adapter_name_or_path, template, infer_dtype, quantization, image_max_pixels, "
            "temperature, top_p, top_k, max_new_tokens, repetition_penalty, do_sample, ...; the flags below "
            "override it",
        ),
    )
    benchmark: str = field(metadata=option(choices=BENCHMARKS, help="which loader reads --data"))
    data: str = field(
        metadata=option(
            metavar="PATH",
            record=False,
            help="mmsafetybench: the folder with processed_questions/ and imgs/ (or the repository root, with "
            "data/); figstep: the folder of PNGs (SafeBench); generic: a JSON/JSONL file of {id, prompt, image?}",
        )
    )
    model: str | None = field(
        default=None,
        metadata=option(help="base model: a local folder or hub id (required unless INFER_YAML names one)"),
    )
    adapter: str | None = field(
        default=None, metadata=option(metavar="DIR", help="a LoRA adapter folder trained on --model")
    )
    template: str | None = field(
        default=None,
        metadata=option(
            metavar="NAME",
            help="the LLaMA-Factory template the model was trained with (llava, llava_next_llama3, "
            f"llava_next_mistral, yi_vl, qwen2_vl, ...; required unless INFER_YAML names one); {HF_CHAT}: the "
            "checkpoint's own chat template instead (not what a LLaMA-Factory-trained model saw)",
        ),
    )
    system: str | None = field(
        default=None, metadata=option(help="system prompt (default: the template's own default system prompt)")
    )
    output: str = field(
        metadata=option(
            metavar="DIR",
            record=False,
            help="where the JSONL answers go (resumed if there, with the same settings only)",
        )
    )
    mode: tuple[str, ...] = field(
        default=DEFAULT_MMSAFETYBENCH_MODES,
        metadata=option(
            nargs="+",
            choices=(*MMSAFETYBENCH_MODES, "all"),
            record=False,
            help="MM-SafetyBench input modes: SD_TYPO (SD+typography image, rephrased question), TYPO (typography "
            "image, rephrased question), SD (SD image, SD-rephrased question), text (original question, no image), "
            "or all (default: SD_TYPO)",
        ),
    )
    scenarios: tuple[str, ...] | None = field(
        default=None,
        metadata=option(
            nargs="+", metavar="NAME", record=False, help=f"MM-SafetyBench scenarios (default: all 13: {_FIRST}, ...)"
        ),
    )
    text_field: str = field(
        default=DEFAULT_MMSAFETYBENCH_TEXT_FIELD,
        metadata=option(
            choices=MMSAFETYBENCH_TEXT_FIELDS,
            help="MM-SafetyBench text mode: the question asked, 'Changed Question' (default, as the paper's "
            "evaluation) or 'Question' (the benchmark README's)",
        ),
    )
    image_root: str | None = field(
        default=None,
        metadata=option(metavar="DIR", record=False, help="mmsafetybench: the imgs/ folder; generic: image base dir"),
    )
    instruction: str | None = field(
        default=None, metadata=option(help="figstep: replace the fixed FigStep text prompt")
    )
    benign: bool = field(
        default=False, metadata=option(record=False, help="mark the prompts benign (judge reports over-refusal)")
    )
    limit: int | None = field(
        default=None,
        metadata=option(type=int, metavar="N", record=False, help="only the first N items (smoke tests)"),
    )
    batch_size: int = field(
        default=DEFAULT_BATCH_SIZE,
        metadata=option(
            type=int,
            record=False,
            help=f"prompts per batch (default: {DEFAULT_BATCH_SIZE}; answers equal one-at-a-time ones exactly in "
            "float32 on CPU, approximately in bfloat16 on a GPU)",
        ),
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata=option(
            type=int,
            help=f"answer length limit (default: the YAML's max_new_tokens, else {DEFAULT_MAX_NEW_TOKENS})",
        ),
    )
    temperature: float | None = field(
        default=None,
        metadata=option(
            type=float,
            help="sampling temperature; 0 means greedy decoding (default: the YAML's temperature, else 0)",
        ),
    )
    top_p: float | None = field(
        default=None,
        metadata=option(type=float, help="nucleus sampling, in (0, 1] (default: the YAML's, else the model's)"),
    )
    top_k: int | None = field(
        default=None, metadata=option(type=int, help="top-k sampling (default: the YAML's, else the model's)")
    )
    repetition_penalty: float | None = field(
        default=None,
        metadata=option(type=float, help="above 0, 1 = none (default: the YAML's, else the model's)"),
    )
    device: str | None = field(
        default=None,
        metadata=option(
            record=False,
            help="hf backend: put the whole model on this torch device, e.g. cpu, cuda, cuda:1 (default: "
            "LLaMA-Factory's device_map=auto)",
        ),
    )
    dtype: str | None = field(
        default=None,
        metadata=option(
            choices=DTYPES,
            help="LLaMA-Factory's infer_dtype (default: the YAML's, else auto: bfloat16 where the GPU has it, else "
            "float16 on a GPU, float32 on CPU)",
        ),
    )
    backend: str | None = field(
        default=None,
        metadata=option(
            choices=BACKENDS,
            help="hf (transformers, the default) or vllm (UNTESTED; default: the YAML's infer_backend)",
        ),
    )
    force_adapter: bool = field(
        default=False,
        metadata=option(record=False, help="accept an adapter whose recorded base model name differs"),
    )
    overwrite: bool = field(
        default=False,
        metadata=option(
            record=False,
            help="discard everything an earlier generate wrote in --output (every mode and file) and start over",
        ),
    )
    no_progress: bool = field(default=False, metadata=option(record=False, help="no progress bar"))

    def check(self) -> None:
        """What can be refused from the options alone, before anything is read or loaded."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        for name in ("system", "instruction", "template", "model", "adapter", "output", "data"):
            value = getattr(self, name)
            if value is not None and not _is_text(value):
                raise ConfigError(f"--{name}: {value!r} is not valid Unicode text (bytes the shell did not decode)")
        output = Path(self.output)
        if output.is_symlink() and not output.exists():
            raise ConfigError(f"--output {output}: a link to {os.readlink(output)}, which does not exist")
        if output.exists() and not output.is_dir():
            raise ConfigError(f"--output {output}: is a file, not a folder")

    def decoding(self, infer_args: Mapping[str, Any]) -> Decoding:
        """Decoding from the inference YAML's generation keys, then the flags that were given (flags win)."""
        where = "in the inference YAML" if self.config is None else f"in {self.config}"
        from_yaml = {key: infer_args[key] for key in DECODING_KEYS if infer_args.get(key) is not None}
        if infer_args.get("num_beams", 1) not in (1, None):
            raise ConfigError(f"num_beams {infer_args['num_beams']!r} {where}: generate decodes without beam search")
        Decoding(**{"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "temperature": 0.0, **from_yaml}).check(where)
        flags = {key: getattr(self, key) for key in DECODING_KEYS if getattr(self, key, None) is not None}
        if "temperature" in flags:  # --temperature decides greedy or sampling, whatever the YAML's do_sample says
            from_yaml.pop("do_sample", None)
        decoding = Decoding(**{"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "temperature": 0.0, **from_yaml, **flags})
        decoding.check("from the flags and the YAML")
        return decoding

    def settings(self, infer_args: Mapping[str, Any], decoding: Decoding, backend: str) -> dict[str, Any]:
        """The recorded settings, as used: every recorded field (YAML values filled in), then the other
        inference arguments that shape answers (quantization, image_max_pixels, ...)."""
        used = dataclasses.asdict(decoding.resolved())
        resolved = {
            "model": str(infer_args["model_name_or_path"]),
            "adapter": str(infer_args["adapter_name_or_path"]) if infer_args.get("adapter_name_or_path") else None,
            "template": str(infer_args["template"]),
            "dtype": str(infer_args.get("infer_dtype", "auto")),
            "backend": backend,
            "text_field": self.text_field if self.benchmark == "mmsafetybench" else None,
            "instruction": (self.instruction or FIGSTEP_INSTRUCTION) if self.benchmark == "figstep" else None,
            **used,
        }
        record = {name: resolved.get(name, getattr(self, name)) for name in recorded(type(self))}
        record["do_sample"] = used["do_sample"]
        extra = {key: value for key, value in infer_args.items() if key not in UNRECORDED_KEYS}
        record["inference_arguments"] = json.loads(json.dumps(extra, sort_keys=True, default=str))
        return record


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# the record in the output folder


@dataclass
class SettingsRecord:
    """``<output>/.generate-settings``: the settings of the answers in the folder and the files generate wrote."""

    settings: dict[str, Any]
    files: list[str]


def read_record(output_dir: Path) -> SettingsRecord | None:
    path = output_dir / SETTINGS_NAME
    if not path.exists():
        return None
    if not path.is_file():
        raise DataError(f"{path}: expected generate's settings record (a file), found something else")
    from . import jsonl

    data = jsonl.decode(jsonl.read_bytes(path), where=str(path))
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("settings"), dict)
        or not isinstance(data.get("files"), list)
        or not all(isinstance(name, str) for name in data["files"])
    ):
        raise DataError(f'{path}: expected {{"settings": {{...}}, "files": [...]}} as generate writes it')
    return SettingsRecord(data["settings"], data["files"])


def write_record(output_dir: Path, record: SettingsRecord) -> None:
    atomic_write_json(output_dir / SETTINGS_NAME, dataclasses.asdict(record))


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *, skip: tuple[str, ...] = ()) -> list[str]:
    """``setting: 'old' there, 'new' now`` for each setting of ``new`` that ``old`` recorded otherwise."""
    out = []
    for key, value in new.items():
        if key in skip:
            continue
        before = old.get(key)
        same = same_ref(before, value) if key in REFERENCES else before == value
        if not same:
            out.append(f"{key}: {before!r} there, {value!r} now")
    return out


def refuse_if_different(output_dir: Path, old: Mapping[str, Any], new: Mapping[str, Any], **kwargs: Any) -> None:
    found = differences(old, new, **kwargs)
    if found:
        raise ConfigError(
            f"{output_dir} holds answers made with other settings ({'; '.join(found)}); resuming would mix two "
            "runs: run with the same settings, or pass --overwrite (starts the whole folder over), or use another "
            "--output"
        )
