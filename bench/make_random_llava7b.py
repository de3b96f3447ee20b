"""Write a LLaVA-1.5-7B-shaped model with random weights (bf16), for GPU throughput figures without a download.

Same architecture as ``llava-hf/llava-1.5-7b-hf`` (CLIP ViT-L/14-336 tower, 32-layer 4096-wide Llama, 576 image
tokens); the tokenizer and processor are the tiny project ones, so the text is nonsense, but every step costs what
it costs on the real model. Random weights rarely emit EOS, so each answer runs to ``--max-new-tokens``.

    python bench/make_random_llava7b.py /tmp/llava7b && python bench/bench_generate.py --model /tmp/llava7b --device cuda
"""

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()

    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from rejection_align.demo.tiny import LLAVA_CHAT_TEMPLATE, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
    text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=576, vision_feature_select_strategy="default", vision_feature_layer=-2)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)  # fmt: skip
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters to {args.out}")


if __name__ == "__main__":
    main()
