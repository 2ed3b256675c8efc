"""SmolVLM-shaped models built locally: the offline stand-in's pieces, and random-weight models
for tests and benchmarks (nothing can be downloaded where they run).

A locally built model is saved with ``save_pretrained`` next to its processor, so it is loaded
through exactly the same ``from_pretrained`` path as a hub model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)

# SmolVLM-256M: SigLIP-B/16 at 512 px; pixel shuffle by 4 gives 64 image tokens per tile.
IMAGE_SIZE = 512
SCALE_FACTOR = 4
VISION_256M = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
               "num_hidden_layers": 12, "patch_size": 16, "image_size": IMAGE_SIZE}
# SmolLM2-135M: SmolVLM-256M's text backbone.
TEXT_256M = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "intermediate_size": 1536}

# A few-layer toy of the same architecture: 64 px tiles, 4 image tokens per tile.
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 2, "image_size": 64, "patch_size": 16}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512}

_CORPUS = [
    "User: Is this person carrying a backpack? Assistant: Yes. No. yes no",
    "Is this worker wearing a hard hat? Describe the person. What colour is the shirt?",
]

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


def tiny_tokenizer(corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in a fraction of a second, with SmolLM2's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((corpus or _CORPUS) * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_random_smolvlm(directory: Path, *, vision: dict[str, Any] = TINY_VISION,
                         text: dict[str, Any] = TINY_TEXT, scale_factor: int = 2,
                         seed: int = 0) -> Path:
    """Save a random-weight Idefics3 of the given shape with a tiny tokenizer and its processor.

    The default is a toy for tests; ``vision=VISION_256M, text=TEXT_256M, scale_factor=4`` (and a
    SmolLM2-sized vocabulary in ``text``) gives SmolVLM-256M's shape for GPU benchmarks.
    """
    torch.manual_seed(seed)
    tokenizer = add_image_tokens(tiny_tokenizer())
    config = smolvlm_config(tokenizer, vision=vision, text=text, scale_factor=scale_factor)
    processor = make_processor(tokenizer, config.vision_config.image_size, image_seq_len(config))
    Idefics3ForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
