"""Shared fixtures: tokenizers and templates built on the spot, and the real LLaMA-Factory processors."""

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SENTENCE = "I'm sorry, but I cannot assist with your request"
VENV_BIN = Path(sys.executable).parent
TEMPLATE_SPECIAL_TOKENS = ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|im_end|>")


@functools.lru_cache(maxsize=1)
def _base_tokenizer():
    from rejection_align.demo.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer(TEMPLATE_SPECIAL_TOKENS)


def make_processor(
    template_name: str | None, settings=None, *, packed: bool = False, stock: bool = False, added_tokens=(),
    special_tokens=(), chat_template: str | None = None, **data_kwargs,
):  # fmt: skip
    """A real LLaMA-Factory supervised processor for ``template_name`` with a fresh tiny tokenizer.

    ``stock=True`` gives LLaMA-Factory's own class; otherwise ours, with ``settings`` attached to ``data_args``
    the way the parser hook attaches them. ``added_tokens`` / ``special_tokens`` extend the tokenizer (an added
    ``"\n\n"`` merges two line breaks as real BPE vocabularies do); ``chat_template`` is used with
    ``template_name=None``.
    """
    from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor, SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import CLIPImageProcessor, LlavaProcessor

    from rejection_align.hook.processor import (
        RejectionPackedSupervisedDatasetProcessor,
        RejectionSupervisedDatasetProcessor,
    )
    from rejection_align.hook.settings import attach

    tokenizer = copy.deepcopy(_base_tokenizer())
    if added_tokens:
        tokenizer.add_tokens(list(added_tokens))
    if special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special_tokens)})
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    data_args = DataArguments(template=template_name, **{"cutoff_len": 512, **data_kwargs})
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    if settings is not None:
        attach(data_args, settings)

    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    mm_processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )  # fmt: skip
    if stock:
        cls = PackedSupervisedDatasetProcessor if packed else SupervisedDatasetProcessor
    else:
        cls = RejectionPackedSupervisedDatasetProcessor if packed else RejectionSupervisedDatasetProcessor
    return cls(template=template, tokenizer=tokenizer, processor=mm_processor, data_args=data_args)


def batch(*conversations: list[str], images=None) -> dict[str, list]:
    """The seven columns LLaMA-Factory's converter hands to a processor, from alternating user/assistant texts."""
    columns = {key: [] for key in ("_prompt", "_response", "_system", "_tools", "_images", "_videos", "_audios")}
    for index, texts in enumerate(conversations):
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(texts)]
        columns["_prompt"].append(messages[:-1])
        columns["_response"].append(messages[-1:])
        columns["_system"].append("")
        columns["_tools"].append("")
        columns["_images"].append(images[index] if images else None)
        columns["_videos"].append(None)
        columns["_audios"].append(None)

    return columns


def llava_record(rid, *pairs, image=None, **extra):
    """A LLaVA-format record with one human/gpt turn per (question, answer) pair."""
    conversations = []
    for question, answer in pairs:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    out = {"id": rid}
    if image is not None:
        out["image"] = image
    out["conversations"] = conversations
    out.update(extra)
    return out


def stop_other_threads() -> None:
    """Forked helpers only run in a process with no other thread: stop the tqdm monitor that progress bars of
    earlier tests leave behind, and wait for short-lived threads (the sha256 of a file read by a mix that failed)."""
    import threading

    for thread in threading.enumerate():
        if type(thread).__name__ == "TMonitor":  # (tqdm starts a new one when a later bar needs it)
            thread.exit()
        elif thread is not threading.current_thread():
            thread.join(timeout=60)
    assert threading.active_count() == 1, threading.enumerate()


def no_child_left() -> bool:
    """Whether this process has no child process left (running, or exited and not reaped)."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.fixture
def patched():
    """The hook installed for the test, and the process left as the start-up hook had it afterwards."""
    import rejection_align
    from rejection_align.hook import patches

    was_installed = patches.is_installed()
    rejection_align.install()
    yield
    if not was_installed:
        rejection_align.uninstall()
    else:
        rejection_align.install()


@pytest.fixture
def processor_factory():
    return make_processor


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    from rejection_align.demo.tiny import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def run_llamafactory_cli(
    cwd: Path, *args: str, stdin: str = "", env: dict | None = None
) -> subprocess.CompletedProcess:
    """``llamafactory-cli ARGS`` of this environment as a real subprocess: offline, on CPU, with a private HF home."""
    full_env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # torchrun is found on PATH only
        "HF_HOME": str(cwd / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "DISABLE_VERSION_CHECK": "1",
        **(env or {}),
    }
    return subprocess.run(
        [str(VENV_BIN / "llamafactory-cli"), *args], input=stdin, env=full_env, cwd=cwd, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
