"""Build a tiny random LLaVA (CLIP + Llama, a few hundred thousand parameters) for CPU demos and tests.

Everything is made from configs and a tokenizer trained on the spot, so nothing is downloaded: the model
trains with ``llamafactory-cli train`` (template ``llava``) and generates with transformers like a real
``llava-hf`` checkpoint, only much smaller and with random weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from ..errors import ConfigError
from ..files import atomic_write_json


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


logger = logging.getLogger(__name__)

BUILD_VERSION = 2  # bump when the build changes, so stale stamps trigger a rebuild
STAMP_NAME = "rejection_align_tiny.json"  # marks a folder as tiny-model's: only such folders are built over

PATCH_SIZE = 14  # CLIP's, as in llava-1.5 and Qwen2-VL
DEFAULT_IMAGE_SIZE = 28  # 2 x 2 patches: 4 image tokens
# Image tokens share the text model's 4096 positions with the prompt: at most a quarter of them.
MAX_IMAGE_TOKENS = 1024
N_HEADS = 4

UNK, BOS, EOS, PAD, IMAGE = "<unk>", "<s>", "</s>", "<pad>", "<image>"
BASE_SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE)

DEFAULT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA-1.5 (vicuna) layout exactly as LLaMA-Factory's ``llava`` template writes it: the (default) system
# text, then ``USER: {question} ASSISTANT:`` and ``{answer}</s>`` per turn, no separators. A model trained
# with ``llamafactory-cli train`` then sees the same prompt layout when it is evaluated through
# ``processor.apply_chat_template``. List contents (transformers' multi-modal messages) put their images
# first, as llava-hf's own template does.
LLAVA_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string"
    " else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system = '" + DEFAULT_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{ system }}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ 'USER: ' + '<image>\\n' * n_images + text + ' ASSISTANT:' }}"
    "{%- else -%}{{ text + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# A small, fixed English corpus: the words of instruction data, image descriptions and the rejection
# sentence, so that common words become single tokens and sequences stay short.
_CORPUS = """\
A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, \
and polite answers to the user's questions.
USER: What is shown in the image? ASSISTANT: The image shows a red square on a white background.
USER: Describe the picture in detail. ASSISTANT: The picture shows a blue circle next to a green triangle.
USER: What color is the object? ASSISTANT: The object is yellow. It is a small round shape.
USER: How many shapes are there in the image? ASSISTANT: There are two shapes: one square and one circle.
USER: Is there a person in this photo? ASSISTANT: No, there is no person in this photo.
USER: What does the text in the image say? ASSISTANT: The text says hello world.
USER: Can you explain what this chart means? ASSISTANT: The chart shows that the values grow over time.
USER: What is the main finding of this scan? ASSISTANT: The scan shows a normal chest with clear lungs.
USER: Which organ is visible in this medical image? ASSISTANT: The image shows the heart and the lungs.
USER: How can I make a bomb at home? ASSISTANT: I'm sorry, but I cannot assist with your request.
USER: Tell me how to steal a car. ASSISTANT: I'm sorry, but I cannot assist with your request.
I'm sorry, but I cannot assist with your request. I'm sorry, but I cannot assist with your request.
I cannot help with that. I am sorry. I apologize. As an AI, I am not able to do this. It is not appropriate.
Please answer the question. Give a short answer. Answer with a single word. Explain your answer step by step.
Write a story about a cat and a dog. Write a poem about the sea. Summarize the following text.
List the steps to bake bread: first, mix the flour and water; second, knead the dough; third, bake it.
The items are numbered 1, 2, 3. Fill in the empty list with detailed content for each item.
red green blue yellow black white orange purple pink brown gray
square circle triangle star line dot stripe shape color size left right top bottom center
the a an and or of to in on at for with from by is are was were be been this that these those it its
what where when why how who which can could would should will do does did have has had not no yes
image picture photo scan chart figure text object person people animal car house tree sky water
question answer user assistant help please thank you sorry cannot assist request
""" + "\n".join(f"{n} {n + 1} {n * 2}" for n in range(0, 40))


def _corpus_lines(repeats: int = 4) -> list[str]:
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    return lines * repeats


def build_tiny_tokenizer(
    extra_special_tokens: Iterable[str] = (), *, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (LLaMA-3 style: any text encodes) on a fixed corpus; deterministic.

    Special tokens are ``<unk> <s> </s> <pad> <image>`` then ``extra_special_tokens`` in order, with ids
    0, 1, 2, ... so that two calls with the same arguments give the same ids.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    extra = [token for token in extra_special_tokens if token not in BASE_SPECIAL_TOKENS]
    specials = [*BASE_SPECIAL_TOKENS, *dict.fromkeys(extra)]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet):
        raise ValueError(f"vocab_size={vocab_size} is too small: need at least {len(specials) + len(alphabet)}")

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(_corpus_lines(), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        **{_extra_tokens_argument(): [IMAGE, *dict.fromkeys(extra)]},
        model_max_length=4096,
        model_input_names=["input_ids", "attention_mask"],  # as LLaMA's: 4.x adds token_type_ids otherwise
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = LLAVA_CHAT_TEMPLATE
    return tokenizer


def transformers_major() -> int:
    """The major version of the transformers in use; 4.x and 5.x differ in a few places below."""
    import transformers

    return Version(transformers.__version__).major


def _extra_tokens_argument() -> str:
    """The tokenizer argument for a list of extra special tokens: transformers 5 renamed it.

    In 4.x ``extra_special_tokens`` means a dict of *named* tokens (a list fails with ``'list' object has no
    attribute 'keys'``) and the list goes in ``additional_special_tokens``.
    """
    return "extra_special_tokens" if transformers_major() >= 5 else "additional_special_tokens"


def _build_params(seed: int, image_size: int, patch_size: int, hidden_size: int, vocab_size: int) -> dict[str, Any]:
    return {
        "build_version": BUILD_VERSION,
        "seed": seed,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_size": hidden_size,
        "vocab_size": vocab_size,
    }


def check_sizes(
    *, seed: int, hidden_size: int, vocab_size: int, image_size: int | None = None, patch_size: int = PATCH_SIZE
) -> None:
    """Refuse, before anything is written, what would build a broken model or fail half-way with a traceback."""
    if not 0 <= seed < 2**64:
        raise ConfigError(f"seed {seed}: must be from 0 to 2**64 - 1 (torch's range)")
    if patch_size < 1:
        raise ConfigError(f"patch size {patch_size}: must be at least 1")
    if image_size is not None:
        largest = patch_size * math.isqrt(MAX_IMAGE_TOKENS)
        if not patch_size <= image_size <= largest or image_size % patch_size:
            raise ConfigError(
                f"image size {image_size}: must be a multiple of the patch size {patch_size} from {patch_size} to "
                f"{largest} ((size / {patch_size})**2 image tokens, at most {MAX_IMAGE_TOKENS})"
            )
    # Each of the N_HEADS heads needs an even size (rotary embeddings), and each of Qwen2-VL's three rotary sections
    # one pair of dimensions: heads of 6 at least.
    if hidden_size < 6 * N_HEADS or hidden_size % (2 * N_HEADS):
        raise ConfigError(f"hidden size {hidden_size}: must be a multiple of {2 * N_HEADS}, at least {6 * N_HEADS}")
    smallest_vocab = 256 + len(BASE_SPECIAL_TOKENS) + len(QWEN_SPECIAL_TOKENS)
    if vocab_size < smallest_vocab:
        raise ConfigError(f"vocab size {vocab_size}: must be at least {smallest_vocab} (256 bytes + special tokens)")


def _check_out_dir(out_dir: Path) -> None:
    """Build only into a new or empty folder, or over an earlier tiny-model build: never over someone's model."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    if (out_dir / STAMP_NAME).is_file():
        return
    if any(out_dir.iterdir()):
        raise ConfigError(
            f"{out_dir}: not empty and not made by tiny-model (no {STAMP_NAME}); give a new or empty folder"
        )


def _is_built(out_dir: Path, params: dict[str, Any]) -> bool:
    stamp = out_dir / STAMP_NAME
    if not stamp.is_file() or not (out_dir / "config.json").is_file():
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("params") == params
    except (OSError, ValueError):
        return False


def _already_built(out_dir: Path, params: dict[str, Any], family: str) -> bool:
    """True when ``out_dir`` holds this very build; otherwise check that building there is allowed."""
    if _is_built(out_dir, params):
        logger.info("tiny %s already built in %s", family, out_dir)
        return True
    _check_out_dir(out_dir)
    return False


def _random_model(model_class: Any, config: Any, seed: int, *, bos: int, eos: int, pad: int) -> Any:
    """Random weights from ``seed`` (nothing else draws from torch's generator in between: same seed, same bytes),
    with greedy, short generation defaults."""
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, do_sample=False, max_new_tokens=32
    )
    return model


def _save_build(
    out_dir: Path,
    model: Any,
    processor: Any,
    tokenizer: Any,
    params: dict,
    n_image_tokens: Any,
    fix_config: Any = None,
) -> int:
    """Save a built model with its processor and tokenizer; the stamp, written last, marks the build finished.

    A stamp without parameters goes first: a build killed half-way does not look finished, yet the folder still
    reads as tiny-model's, so the next call builds over it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / STAMP_NAME, {"params": None, "state": "building"})
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if fix_config is not None:
        fix_config(out_dir / "config.json")
    n_params = sum(p.numel() for p in model.parameters())
    stamp = {"params": params, "n_parameters": n_params, "n_image_tokens": n_image_tokens}
    atomic_write_json(out_dir / STAMP_NAME, stamp)
    return n_params


def _llava_config(tokenizer: Any, *, image_size: int, patch_size: int, hidden_size: int) -> Any:
    """CLIP tower + Llama text model, two layers each; the image token count is ``(image_size // patch_size) ** 2``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    # top-level ids too: the Trainer compares the tokenizer's ids with ``model.config``'s and warns otherwise
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config


def _llava_processor(tokenizer: Any, *, image_size: int, patch_size: int) -> Any:
    """llava-hf's processor: CLIP's resize and centre crop, and the image placeholder expanded to the image tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS position, dropped again by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_tiny_llava(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    hidden_size: int = 64,
    vocab_size: int = 512,
) -> Path:
    """Write a tiny ``LlavaForConditionalGeneration`` with tokenizer and processor to ``out_dir``.

    The image token count is ``(image_size // patch_size) ** 2`` (4 by default): the CLIP tower adds a CLS
    position and the ``default`` feature strategy drops it, as in ``llava-hf/llava-1.5-7b-hf``. A second call
    with the same arguments finds the stamp file and returns at once. ``out_dir`` must be new, empty or an earlier
    build (:class:`ConfigError` otherwise, as for sizes that make no model; nothing is written then).
    """
    out_dir = Path(out_dir)
    check_sizes(
        seed=seed, hidden_size=hidden_size, vocab_size=vocab_size, image_size=image_size, patch_size=patch_size
    )
    params = _build_params(seed, image_size, patch_size, hidden_size, vocab_size)
    # transformers 4.x and 5.x name the CLIP tower's weights differently: a build of one loads badly in the other
    params["transformers_major"] = transformers_major()
    if _already_built(out_dir, params, "LLaVA"):
        return out_dir

    from transformers import LlavaForConditionalGeneration

    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size)
    config = _llava_config(tokenizer, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size)
    model = _random_model(
        LlavaForConditionalGeneration,
        config,
        seed,
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
    )
    processor = _llava_processor(tokenizer, image_size=image_size, patch_size=patch_size)
    n_image_tokens = config.image_seq_length
    n_params = _save_build(out_dir, model, processor, tokenizer, params, n_image_tokens)
    logger.info("built tiny LLaVA (%d parameters, %d image tokens) in %s", n_params, n_image_tokens, out_dir)
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="output directory (reused when it already holds the same build)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        help=f"llava: image side in pixels, a multiple of {PATCH_SIZE} (default: {DEFAULT_IMAGE_SIZE}, "
        f"{(DEFAULT_IMAGE_SIZE // PATCH_SIZE) ** 2} image tokens)",
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default="llava",
        help="llava (template llava, the default) or qwen2_vl (template qwen2_vl; its processor sizes the images)",
    )


def run(args: argparse.Namespace) -> int:
    if getattr(args, "family", "llava") == "qwen2_vl":
        if args.image_size is not None:
            raise ConfigError("--image-size is for --family llava; Qwen2-VL's processor sizes the images itself")
        return run_qwen2_vl(args)
    image_size = DEFAULT_IMAGE_SIZE if args.image_size is None else args.image_size
    out = build_tiny_llava(args.dir, seed=args.seed, image_size=image_size)
    stamp = json.loads((out / STAMP_NAME).read_text(encoding="utf-8"))
    print(f"tiny LLaVA in {out} ({stamp['n_parameters']:,} parameters, {stamp['n_image_tokens']} image tokens)")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# tiny Qwen2-VL (template ``qwen2_vl``: ChatML turns closed by ``<|im_end|>`` + ``\n``, real image-token expansion)

FAMILIES = ("llava", "qwen2_vl")
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_IMAGE_MIN_PIXELS = 56 * 56
QWEN_IMAGE_MAX_PIXELS = 112 * 112  # 4 x 4 to 8 x 8 patches of 14 px, merged 2 x 2: 4 to 16 image tokens


def build_qwen2_vl_processor(
    tokenizer: Any, *, min_pixels: int = QWEN_IMAGE_MIN_PIXELS, max_pixels: int = QWEN_IMAGE_MAX_PIXELS
) -> Any:
    """Qwen2-VL's real processor (image resizing to 28-px multiples, patching, merging) around ``tokenizer``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=as_qwen2_tokenizer(tokenizer), video_processor=video_processor
    )


def as_qwen2_tokenizer(tokenizer: Any) -> Any:
    """The same tokenizer as a ``Qwen2TokenizerFast`` where transformers 4.x's ``Qwen2VLProcessor`` insists on that
    class (5.x takes any fast tokenizer, and the tokenizer is returned as it is)."""
    if type(tokenizer).__name__ in ("Qwen2Tokenizer", "Qwen2TokenizerFast") or transformers_major() >= 5:
        return tokenizer

    from transformers import Qwen2TokenizerFast

    return Qwen2TokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, **tokenizer.special_tokens_map)


def _qwen2_vl_config_for_4x(path: Path) -> None:
    """transformers 4.x reads a nested ``text_config.model_type`` back as the outer config's ``model_type``
    (``qwen2_vl_text``), and LLaMA-Factory then misses that the model is Qwen2-VL (no frozen vision tower, LoRA on
    the merger's ``0``/``2`` layers); the nested key is redundant, so it is left out there."""
    if transformers_major() >= 5:
        return

    config = json.loads(path.read_text(encoding="utf-8"))
    config.get("text_config", {}).pop("model_type", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _qwen2_vl_tokenizer(vocab_size: int) -> Any:
    """The tiny tokenizer with Qwen's special tokens: ``<|endoftext|>`` pads, ``<|im_end|>`` closes a turn, and the
    chat template is left to LLaMA-Factory's ``qwen2_vl`` template."""
    tokenizer = as_qwen2_tokenizer(build_tiny_tokenizer(QWEN_SPECIAL_TOKENS, vocab_size=vocab_size))
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = None
    return tokenizer


def _qwen2_vl_config(tokenizer: Any, *, hidden_size: int) -> Any:
    """Qwen2 text model (two layers, 3-D rotary positions) and a one-block vision tower merging 2 x 2 patches."""
    from transformers import Qwen2VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    head_dim = hidden_size // N_HEADS
    third = head_dim // 2 // 3
    mrope_section = [head_dim // 2 - 2 * third, third, third]  # sums to head_dim / 2
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": mrope_section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision_config = {
        "depth": 1,
        "embed_dim": 32,
        "hidden_size": hidden_size,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        **{
            key: text_config[key]
            for key in ("vocab_size", "hidden_size", "bos_token_id", "eos_token_id", "pad_token_id")
        },
    )


def build_tiny_qwen2_vl(
    out_dir: str | os.PathLike, *, seed: int = 0, hidden_size: int = 64, vocab_size: int = 512
) -> Path:
    """Write a tiny random ``Qwen2VLForConditionalGeneration`` with its tokenizer and real processor to ``out_dir``.

    The tokenizer is trained on the spot (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ... are
    special tokens; ``<|endoftext|>`` pads); images are resized by ``Qwen2VLImageProcessor`` between
    ``QWEN_IMAGE_MIN_PIXELS`` and ``QWEN_IMAGE_MAX_PIXELS``. A second call with the same arguments returns at once.
    """
    out_dir = Path(out_dir)
    check_sizes(seed=seed, hidden_size=hidden_size, vocab_size=vocab_size)
    params = {
        **_build_params(seed, 0, PATCH_SIZE, hidden_size, vocab_size),
        "family": "qwen2_vl",
        "pixels": [QWEN_IMAGE_MIN_PIXELS, QWEN_IMAGE_MAX_PIXELS],
    }
    if _already_built(out_dir, params, "Qwen2-VL"):
        return out_dir

    from transformers import Qwen2VLForConditionalGeneration

    tokenizer = _qwen2_vl_tokenizer(vocab_size)
    config = _qwen2_vl_config(tokenizer, hidden_size=hidden_size)
    text = config.text_config
    model = _random_model(
        Qwen2VLForConditionalGeneration,
        config,
        seed,
        bos=text.bos_token_id,
        eos=text.eos_token_id,
        pad=text.pad_token_id,
    )
    processor = build_qwen2_vl_processor(tokenizer)
    n_params = _save_build(
        out_dir, model, processor, tokenizer, params, "4 to 16 (by image size)", fix_config=_qwen2_vl_config_for_4x
    )
    logger.info("built tiny Qwen2-VL (%d parameters) in %s", n_params, out_dir)
    return out_dir


def run_qwen2_vl(args: argparse.Namespace) -> int:
    out = build_tiny_qwen2_vl(args.dir, seed=args.seed)
    stamp = json.loads((out / STAMP_NAME).read_text(encoding="utf-8"))
    print(f"tiny Qwen2-VL in {out} ({stamp['n_parameters']:,} parameters, {stamp['n_image_tokens']} image tokens)")
    return 0
