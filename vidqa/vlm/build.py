"""Pieces shared by every locally built SmolVLM-shaped model (the offline stand-in, test models).

A locally built model is saved with ``save_pretrained`` next to its processor, so it is loaded
through exactly the same ``from_pretrained`` path as a hub model.
"""

from __future__ import annotations

from typing import Any

from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

# SmolVLM's extra tokens: image placeholders and the tile markers its processor writes.
IMAGE_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]

# SmolVLM-Instruct's chat template: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def add_image_tokens(tokenizer: Any) -> Any:
    """Register SmolVLM's image tokens as special tokens (idempotent) and return the tokenizer."""
    missing = [t for t in IMAGE_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing},
                                     replace_extra_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_processor(tokenizer: Any, image_size: int, image_seq_len: int) -> Idefics3Processor:
    """An Idefics3 processor for one square tile of ``image_size`` pixels per image."""
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=add_image_tokens(tokenizer),
                             image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE)


def smolvlm_config(tokenizer: Any, *, vision: dict[str, Any], text: dict[str, Any],
                   scale_factor: int) -> Idefics3Config:
    """An Idefics3 config whose token ids agree with ``tokenizer``."""
    text = {"model_type": "llama", "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, **text}
    return Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale_factor,
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          tie_word_embeddings=text.get("tie_word_embeddings", False))


def image_seq_len(config: Idefics3Config) -> int:
    """Image tokens per tile: (image_size / patch_size)^2 patches merged by scale_factor^2."""
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    return patches // config.scale_factor**2
