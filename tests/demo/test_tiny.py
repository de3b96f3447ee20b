"""The tiny LLaVA builder: a real transformers model from configs, small, offline, and reusable."""

import hashlib
import json
import re

import pytest

from rejection_align.cli import main as cli_main
from rejection_align.data.records import DEFAULT_REJECTION_SENTENCE as REJECTION_SENTENCE
from rejection_align.demo.tiny import (
    IMAGE,
    STAMP_NAME,
    build_tiny_llava,
    build_tiny_qwen2_vl,
    build_tiny_tokenizer,
    transformers_major,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return AutoProcessor.from_pretrained(tiny_dir), LlavaForConditionalGeneration.from_pretrained(tiny_dir).eval()


def _image(color: str = "red", size: tuple[int, int] = (32, 32)):
    from PIL import Image

    return Image.new("RGB", size, color)


def test_model_has_a_few_hundred_thousand_parameters(loaded):
    _, model = loaded
    n = sum(p.numel() for p in model.parameters())
    assert 50_000 < n < 1_000_000


@pytest.mark.parametrize(
    "text",
    [REJECTION_SENTENCE, "héllo wörld, 世界 ✓\n\tnew line\r\n", "USER: <image>\nWhat? ASSISTANT:", "  spaces  "],
)
def test_tokenizer_round_trips_any_text(text):
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_tokenizer_is_the_same_on_every_call():
    first = build_tiny_tokenizer(["<|eot_id|>"]).backend_tokenizer.to_str()
    second = build_tiny_tokenizer(["<|eot_id|>"]).backend_tokenizer.to_str()
    assert first == second


def test_special_tokens_are_single_tokens_with_fixed_ids():
    extra = ["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    tokenizer = build_tiny_tokenizer(extra)
    for token in ["<unk>", "<s>", "</s>", "<pad>", IMAGE, *extra]:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    ids = [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert ids == [0, 1, 2, 3]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.encode("a<|im_end|>\n", add_special_tokens=False)[1] == im_end


def test_rejection_sentence_is_short(loaded):
    processor, _ = loaded
    assert len(processor.tokenizer.encode(REJECTION_SENTENCE, add_special_tokens=False)) <= 16


def test_processor_expands_image_placeholder_to_the_number_of_image_tokens(loaded):
    processor, model = loaded
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}],
        add_generation_prompt=True,
    )
    assert text.endswith("USER: <image>\nWhat is shown? ASSISTANT:")
    batch = processor(images=[_image()], text=[text], return_tensors="pt")
    n_image = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_image == model.config.image_seq_length == 4
    assert processor.image_processor.crop_size["height"] == model.config.vision_config.image_size


def test_forward_pass_with_an_image_gives_logits_over_the_vocabulary(loaded):
    import torch

    processor, model = loaded
    batch = processor(
        images=[_image("blue", (40, 30))], text=["USER: <image>\nDescribe it. ASSISTANT:"], return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert out.logits.shape[-1] == len(processor.tokenizer)
    assert torch.isfinite(out.loss)


def test_generate_works_on_a_left_padded_batch(loaded):
    processor, model = loaded
    processor.tokenizer.padding_side = "left"
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in ["Hi?", "Describe the picture in much more detail, please."]
    ]
    batch = processor(images=[_image(), _image("green")], text=texts, return_tensors="pt", padding=True)
    assert int(batch["attention_mask"][0, 0]) == 0  # the short prompt is padded on the left
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2
    assert batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 5
    assert out[:, : batch["input_ids"].shape[1]].equal(batch["input_ids"])  # the prompts come back unchanged


def test_second_build_with_the_same_parameters_is_a_no_op(tiny_dir):
    weights = tiny_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_llava(tiny_dir) == tiny_dir
    assert weights.stat().st_mtime_ns == before


def test_build_with_another_seed_rebuilds_with_other_weights(tmp_path):
    from safetensors.torch import load_file

    build_tiny_llava(tmp_path / "m", seed=0)
    first = load_file(tmp_path / "m" / "model.safetensors")
    build_tiny_llava(tmp_path / "m", seed=1)
    second = load_file(tmp_path / "m" / "model.safetensors")
    assert json.loads((tmp_path / "m" / STAMP_NAME).read_text())["params"]["seed"] == 1
    assert any(not first[k].equal(second[k]) for k in first)


def _file_digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("build", [build_tiny_llava, build_tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_the_same_seed_builds_byte_identical_files_in_two_folders(tmp_path, build):
    first = _file_digests(build(tmp_path / "a", seed=7, hidden_size=48))
    second = _file_digests(build(tmp_path / "b", seed=7, hidden_size=48))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", STAMP_NAME} <= set(first)
    assert first == second


def test_cli_tiny_model_builds_into_the_given_directory(tmp_path, capsys):
    assert cli_main(["tiny-model", str(tmp_path / "cli"), "--seed", "3"]) == 0
    assert (tmp_path / "cli" / "config.json").is_file()
    assert "parameters" in capsys.readouterr().out


def test_tokenizer_returns_only_the_inputs_a_llama_model_takes():
    # transformers 4.x adds token_type_ids by default, which LLaVA's generate() refuses
    assert list(build_tiny_tokenizer()("hello").keys()) == ["input_ids", "attention_mask"]


def test_stamp_records_the_transformers_major_version(tiny_dir):
    import transformers

    params = json.loads((tiny_dir / STAMP_NAME).read_text())["params"]
    assert params["transformers_major"] == int(transformers.__version__.split(".")[0])


@pytest.mark.parametrize("version, major", [("4.57.1", 4), ("5.6.0", 5), ("10.0.0.dev0", 10), ("5.0.0rc1+local", 5)])
def test_transformers_major_version_is_parsed_by_packaging(monkeypatch, version, major):
    import transformers

    monkeypatch.setattr(transformers, "__version__", version)
    assert transformers_major() == major


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("size", ["13", "0", "-14", "15", str(14 * 33)])
def test_cli_tiny_model_refuses_an_image_size_that_makes_no_model_before_writing_anything(tmp_path, capsys, size):
    assert cli_main(["tiny-model", str(tmp_path / "m"), "--image-size", size]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"rejection-align tiny-model: error: image size {size}: must be a multiple of the patch")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("extra", [[], ["--image-size", "0"], ["--family", "qwen2_vl"]])
def test_cli_tiny_model_never_builds_over_a_folder_it_did_not_make(tmp_path, capsys, extra):
    other = tmp_path / "my_model"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "mine"}\n')
    assert cli_main(["tiny-model", str(other), *extra]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{other}: not empty and not made by tiny-model" in line or "image size 0: must be" in line
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]
    assert (other / "config.json").read_text() == '{"model_type": "mine"}\n'


def test_cli_tiny_model_refuses_image_size_for_qwen2_vl(tmp_path, capsys):
    assert cli_main(["tiny-model", str(tmp_path / "q"), "--family", "qwen2_vl", "--image-size", "56"]) == 2
    assert "--image-size is for --family llava" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_build_goes_on_in_an_empty_folder_and_over_a_build_killed_half_way(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (build_tiny_llava(empty, image_size=14) / "config.json").is_file()
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / STAMP_NAME).write_text('{"params": null, "state": "building"}\n')  # what a build writes first
    (killed / "config.json").write_text("{")  # cut off
    build_tiny_llava(killed, image_size=14)
    stamp = json.loads((killed / STAMP_NAME).read_text())
    assert stamp["params"]["image_size"] == 14 and stamp["n_image_tokens"] == 1
    assert json.loads((killed / "config.json").read_text())["model_type"] == "llava"


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"seed": -1}, "seed -1: must be from 0"),
        ({"seed": 2**64}, "seed 18446744073709551616: must be from 0"),
        ({"hidden_size": 30}, "hidden size 30: must be a multiple of 8"),
        ({"hidden_size": 16}, "hidden size 16: must be a multiple of 8, at least 24"),
        ({"vocab_size": 100}, "vocab size 100: must be at least 268"),
        ({"image_size": 28, "patch_size": 0}, "patch size 0"),
    ],
)
def test_build_refuses_sizes_that_make_no_model(tmp_path, sizes, message):
    from rejection_align.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        build_tiny_llava(tmp_path / "m", **sizes)
    assert not (tmp_path / "m").exists()
