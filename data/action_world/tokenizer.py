"""The action world's word-level text tokenizer, written as a local transformers directory.

One token per word of every phrasing the world can produce (`actions.vocabulary_words`), after
the special tokens, whose ids are fixed by their order:
  <pad> 0, <unk> 1, <bos> 2, <eos> 3, <boi> 4 (begin of image), <eoi> 5 (end of image).
Words are split on whitespace; phrasings are lower-case words and digits, so decoding the ids
of a phrasing gives the phrasing back. The directory holds `tokenizer.json` (the `tokenizers`
library's format), `tokenizer_config.json` and `special_tokens_map.json`, so both
`tokenizers.Tokenizer.from_file` and transformers' `AutoTokenizer.from_pretrained(dir)` load it.
Image codes are not in it: the unified vocabulary appends them after the text ids.
"""

from __future__ import annotations

import json
import os

from data.action_world.actions import vocabulary_words
from data.action_world.world import DEFAULT_CONFIG, WorldConfig

SPECIAL_TOKENS = ('<pad>', '<unk>', '<bos>', '<eos>', '<boi>', '<eoi>')
# The config.vocab token names for this tokenizer (configs set these for the action world).
TOKEN_NAMES = dict(pad_token='<pad>', unk_token='<unk>', bos_token='<bos>', eos_token='<eos>',
                   boi_token='<boi>', eoi_token='<eoi>')


def build_tokenizer(words):
  """A `tokenizers.Tokenizer`: WordLevel over SPECIAL_TOKENS + sorted(words), whitespace split."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers

  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  for w in sorted(set(words) - set(SPECIAL_TOKENS)):
    vocab[w] = len(vocab)
  tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  # WordPiece's decoder with an unused prefix joins words with single spaces.
  tok.decoder = decoders.WordPiece(prefix='##', cleanup=False)
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  return tok


def write_tokenizer(out_dir: str, config: WorldConfig = DEFAULT_CONFIG) -> str:
  """Writes the world's tokenizer directory; returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  tok = build_tokenizer(vocabulary_words(config))
  tok.save(os.path.join(out_dir, 'tokenizer.json'))
  specials = dict(pad_token='<pad>', unk_token='<unk>', bos_token='<bos>', eos_token='<eos>',
                  additional_special_tokens=['<boi>', '<eoi>'])
  with open(os.path.join(out_dir, 'special_tokens_map.json'), 'w') as f:
    json.dump(specials, f, indent=1)
  with open(os.path.join(out_dir, 'tokenizer_config.json'), 'w') as f:
    json.dump(dict(tokenizer_class='PreTrainedTokenizerFast', model_max_length=512,
                   clean_up_tokenization_spaces=False, **specials), f, indent=1)
  return out_dir
