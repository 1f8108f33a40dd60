"""UMT5 text encoder (Wan2.1's text branch) at real and tiny sizes.

`TextEncoder.encode` reproduces what diffusers' `WanPipeline._get_t5_prompt_embeds` feeds the
DiT: tokens padded to `max_length`, the encoder run with the attention mask, and the hidden
states of padded positions set to zero (diffusers trims each row to its real length and pads
with zeros back to `max_sequence_length`; multiplying by the mask is the same thing).

Departures from diffusers, on purpose:
- a prompt longer than `max_length` is truncated *with a warning* naming how many tokens were
  dropped (diffusers truncates silently), because a silently cut subject description is a bug
  that is hard to find later;
- the mask is returned with the hidden states (diffusers throws it away), so cross-attention
  can ignore padding if it wants to; Wan itself attends to the zero vectors.
"""

from __future__ import annotations

import html
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from idcrafter.errors import MissingWeightsError
from idcrafter.utils.hooks import execution_device

if TYPE_CHECKING:  # heavy imports stay out of module import time
    from transformers import PreTrainedTokenizerBase

# Small default vocabulary for the tiny tokenizer: common English words plus the words SpriteWorld
# captions use; pass `vocab_words` to use another list (unknown words map to <unk>).
DEFAULT_WORDS: tuple[str, ...] = tuple("""
a an the and or with without of in on at to from into over under near by for is are was be
this that these those it its they them he she his her their who which while then than as
person people man woman boy girl child character subject animal dog cat bird car ball tree house
stands still walks walk left right jumps jump waves wave runs sits looks toward each other swap
places moves turns holds smiles dances talks approaches away front back behind beside between
hair head face eyes skin shirt pants hat glasses bow bun bald short long spiky round square oval
striped two tone plain dark light pale tan brown black white red orange yellow green blue purple
pink grey gray golden blond blonde silver big small tall
grassy field grass beach street night room snow forest city park sky water sea indoor outdoor
day morning evening sun rain scene video camera slowly quickly together one two three four
""".split())

T5_SPECIALS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in UMT5
_WORD_RE = re.compile(r"\w+|[^\w\s]")


def build_word_tokenizer(words: Iterable[str], specials: Iterable[str], *, unk_token: str = "<unk>",
                         pad_token: str = "<pad>", eos_token: str | None = None,
                         append_eos: bool = False, model_max_length: int = 512):
    """A `PreTrainedTokenizerFast` with a WordLevel model built in code (no files, no hub).

    Vocabulary = `specials` (in order, ids 0..), then ASCII punctuation, digits and the
    lowercased words of `words` (entries may be phrases; they are split like the text).
    Text is lowercased, split on whitespace, punctuation and single digits. With `append_eos`,
    `eos_token` ends every sequence, as T5 tokenizers do.
    """
    from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(specials)
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
    pieces = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + [str(d) for d in range(10)]
    for w in words:
        pieces += _WORD_RE.findall(w.lower())
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if append_eos and eos_token is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos_token}", pair=f"$A {eos_token} $B {eos_token}",
            special_tokens=[(eos_token, vocab[eos_token])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk_token, pad_token=pad_token,
                                   eos_token=eos_token, model_max_length=model_max_length)


def clean_prompt(text: str) -> str:
    """Wan's `prompt_clean`: ftfy (if installed), HTML unescape twice, collapse whitespace."""
    try:
        import ftfy  # optional, as in diffusers

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _resolve_folders(folder: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) of a UMT5 model folder or a diffusers Wan pipeline folder."""
    hint = ("put a UMT5 encoder there (config.json + *.safetensors + tokenizer files, e.g. "
            "google/umt5-xxl) or a diffusers Wan pipeline folder with text_encoder/ and tokenizer/")
    if not folder.is_dir():
        raise MissingWeightsError(f"text encoder folder not found: {folder}: {hint}")
    if (folder / "text_encoder" / "config.json").is_file():
        model_dir = folder / "text_encoder"
        tok_dir = folder / "tokenizer" if (folder / "tokenizer").is_dir() else model_dir
    elif (folder / "config.json").is_file():
        model_dir = tok_dir = folder
    else:
        raise MissingWeightsError(f"no config.json in {folder} or {folder / 'text_encoder'}: {hint}")
    if not any((tok_dir / f).is_file() for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
        raise MissingWeightsError(f"no tokenizer files in {tok_dir}: {hint}")
    return model_dir, tok_dir


class TextEncoder(nn.Module):
    """Frozen UMT5 encoder + tokenizer: prompts -> (hidden (B, L, D), mask (B, L)), L = max_length."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, max_length: int = 512):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_length: int = 512,
                        dtype: torch.dtype | None = None) -> "TextEncoder":
        """Load from a local folder only: a UMT5 model folder or a Wan pipeline folder."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        model_dir, tok_dir = _resolve_folders(Path(folder))
        model = UMT5EncoderModel.from_pretrained(model_dir, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        return cls(model, tokenizer, max_length=max_length)

    @classmethod
    def tiny(cls, d_model: int = 32, vocab_words: Iterable[str] | None = None, max_length: int = 128,
             seed: int = 0) -> "TextEncoder":
        """Random UMT5 encoder (2 layers, 2 heads, d_kv 16, d_ff 64) + WordLevel tokenizer."""
        from transformers import UMT5Config, UMT5EncoderModel

        tokenizer = build_word_tokenizer(DEFAULT_WORDS if vocab_words is None else vocab_words,
                                         T5_SPECIALS, eos_token="</s>", append_eos=True,
                                         model_max_length=max_length)
        config = UMT5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=16, d_ff=64, num_layers=2,
                            num_heads=2, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = UMT5EncoderModel(config)
        return cls(model, tokenizer, max_length=max_length)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the diffusers Wan layout: folder/text_encoder (model) + folder/tokenizer."""
        folder = Path(folder)
        self.model.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        return folder

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (B, L), mask (B, L) bool), L = max_length; warns when a prompt is truncated."""
        prompts = [clean_prompt(p) for p in prompts]
        full = self.tokenizer(prompts, add_special_tokens=True, verbose=False)["input_ids"]
        for i, ids in enumerate(full):
            if len(ids) > self.max_length:
                warnings.warn(f"prompt {i} has {len(ids)} tokens; truncated to max_length={self.max_length} "
                              f"({len(ids) - self.max_length} tokens dropped)", stacklevel=3)
        enc = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, L, D) float32 with padded positions zeroed, and mask (B, L) bool."""
        device = execution_device(self.model)  # the offload hook's device, if any
        ids, mask = self.tokenize(list(prompts))  # (B, L), (B, L)
        hidden = self.model(input_ids=ids.to(device), attention_mask=mask.to(device).long()).last_hidden_state
        hidden = hidden.float() * mask.to(device)[..., None]  # (B, L, D): zeros past each real length
        return hidden, mask.to(device)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(prompts)
