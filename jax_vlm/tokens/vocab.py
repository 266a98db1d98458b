"""One vocabulary for text and image tokens.

Unified models predict text and image codes from one softmax. This module owns the mapping:
text goes through the model's own tokenizer (transformers, from a local directory), and VQGAN
code `i` becomes a token id by one of two schemes:
  'chameleon'  Chameleon/Anole: 8192 tokens named IMGIMG<digits as letters A..J><one char> inside
               the BPE vocabulary (as transformers' ChameleonImageVocabularyMapping reads them);
  'offset'     Liquid: code i -> offset + i, the image tokens appended after the text vocabulary.
Special token ids are looked up by name in the tokenizer when it is loaded, never hard-coded.
"""

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_vlm.core.errors import UserError

IMAGE_TOKEN_PREFIX = 'IMGIMG'
SPECIAL_TOKEN_FIELDS = ('bos_token', 'eos_token', 'pad_token', 'boi_token', 'eoi_token')
DEFAULT_SPECIAL_TOKENS = ('<unk>', '<pad>', '<s>', '</s>', '<racm3:break>', '<eoss>')


def chameleon_image_token_name(code: int) -> str:
  """The Chameleon-style token name of image code `code`, e.g. 105 -> 'IMGIMGBAFZ'."""
  return IMAGE_TOKEN_PREFIX + ''.join(chr(ord('A') + int(d)) for d in str(int(code))) + 'Z'


def _code_of_image_token(name: str) -> int:
  """'IMGIMGBAFZ' -> 105: the letters after IMGIMG (all but the last char) are digits A..J."""
  body = name[len(IMAGE_TOKEN_PREFIX):-1]
  digits = ''.join(str(ord(c) - ord('A')) if 'A' <= c <= 'J' else c for c in body)
  if not digits.isdigit():
    raise UserError(f'tokenizer token {name!r} starts with {IMAGE_TOKEN_PREFIX} but does not name '
                    "an image code; use image_token_scheme='offset' for this tokenizer.")
  return int(digits)


def _lookup(table: np.ndarray, keys, fill: int):
  """table[keys], `fill` for keys outside the table; numpy in -> numpy out, jax in -> jax out."""
  if isinstance(keys, jax.Array):
    table_j = jnp.asarray(table)
    inside = (keys >= 0) & (keys < table.shape[0])
    return jnp.where(inside, table_j[jnp.clip(keys, 0, table.shape[0] - 1)], fill)
  keys = np.asarray(keys)
  inside = (keys >= 0) & (keys < table.shape[0])
  return np.where(inside, table[np.clip(keys, 0, table.shape[0] - 1)], fill).astype(np.int32)


class UnifiedVocab:
  """Text tokenizer + image code <-> token id mapping + special token ids.

  Attributes: `tokenizer` (transformers), `scheme`, `bos_id`, `eos_id`, `pad_id`, `boi_id`,
  `eoi_id`, `num_image_codes`, `vocab_size` (text and image tokens; the model's embedding table
  may be larger, never smaller).
  """

  def __init__(self, tokenizer, code_to_id: np.ndarray, special_ids: dict[str, int],
               scheme: str):
    self.tokenizer = tokenizer
    self.scheme = scheme
    self._code_to_id = np.asarray(code_to_id, np.int32)
    self.num_image_codes = int(self._code_to_id.shape[0])
    self.vocab_size = int(max(len(tokenizer), self._code_to_id.max(initial=-1) + 1))
    self._id_to_code = np.full((self.vocab_size,), -1, np.int32)
    self._id_to_code[self._code_to_id] = np.arange(self.num_image_codes, dtype=np.int32)
    self._mask = self._id_to_code >= 0
    self.bos_id = special_ids['bos_token']
    self.eos_id = special_ids['eos_token']
    self.pad_id = special_ids['pad_token']
    self.boi_id = special_ids['boi_token']
    self.eoi_id = special_ids['eoi_token']
    if self._mask[[self.bos_id, self.eos_id, self.pad_id, self.boi_id, self.eoi_id]].any():
      raise UserError('a special token (bos/eos/pad/boi/eoi) has the id of an image token; check '
                      'vocab.image_token_offset and the special token names.')

  # --- construction ---------------------------------------------------------------------------

  @classmethod
  def from_config(cls, vocab_cfg) -> 'UnifiedVocab':
    """From the `config.vocab` section of configs/base.py."""
    if not vocab_cfg.tokenizer_dir:
      raise UserError('vocab.tokenizer_dir is empty; set it to a local directory with the '
                      "model's tokenizer (tokenizer.json / tokenizer_config.json).")
    return cls.load(
        vocab_cfg.tokenizer_dir, scheme=vocab_cfg.image_token_scheme,
        image_token_offset=vocab_cfg.image_token_offset,
        num_image_codes=vocab_cfg.num_image_codes,
        **{field: vocab_cfg[field] for field in SPECIAL_TOKEN_FIELDS})

  @classmethod
  def load(cls, tokenizer_dir: str, scheme: str = 'chameleon', image_token_offset: int = -1,
           num_image_codes: int = 8192, bos_token: str = '<s>', eos_token: str = '</s>',
           pad_token: str = '<pad>', boi_token: str = '<racm3:break>',
           eoi_token: str = '<eoss>') -> 'UnifiedVocab':
    """Loads the tokenizer in `tokenizer_dir` (local files only) and builds the mapping."""
    tokenizer = load_tokenizer(tokenizer_dir)
    vocab = tokenizer.get_vocab()
    special_ids = {}
    for field, token in zip(SPECIAL_TOKEN_FIELDS,
                            (bos_token, eos_token, pad_token, boi_token, eoi_token)):
      if token not in vocab:
        raise UserError(f'the tokenizer in {tokenizer_dir} has no token {token!r} '
                        f'(vocab.{field}); set vocab.{field} to a token it has.')
      special_ids[field] = int(vocab[token])

    if scheme == 'chameleon':
      image_tokens = {_code_of_image_token(name): int(i) for name, i in vocab.items()
                      if name.startswith(IMAGE_TOKEN_PREFIX)}
      if sorted(image_tokens) != list(range(num_image_codes)):
        raise UserError(f'the tokenizer in {tokenizer_dir} has {len(image_tokens)} '
                        f'{IMAGE_TOKEN_PREFIX} image tokens, not one for each of the '
                        f'{num_image_codes} codes (vocab.num_image_codes); check both.')
      code_to_id = np.array([image_tokens[c] for c in range(num_image_codes)], np.int32)
    elif scheme == 'offset':
      offset = len(tokenizer) if image_token_offset < 0 else int(image_token_offset)
      code_to_id = np.arange(offset, offset + num_image_codes, dtype=np.int32)
    else:
      raise UserError(f"vocab.image_token_scheme={scheme!r} is unknown; use 'chameleon' or "
                      "'offset'.")
    return cls(tokenizer, code_to_id, special_ids, scheme)

  # --- text -----------------------------------------------------------------------------------

  def encode_text(self, text: str) -> list[int]:
    """Text -> token ids, without bos/eos (jax_vlm/tokens/sequences.py adds those)."""
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def decode_text(self, ids) -> str:
    """Token ids -> text, dropping special and image tokens."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    text_ids = [i for i in ids if 0 <= i < len(self.tokenizer) and not self._mask[i]]
    return self.tokenizer.decode(text_ids, skip_special_tokens=True)

  # --- images ---------------------------------------------------------------------------------

  def codes_to_ids(self, codes):
    """Image codes (any shape, numpy or jax) -> token ids of the same shape, int32."""
    if self.scheme == 'offset':
      # Out-of-range codes are a bug upstream; map them to -1 like the table lookup does.
      offset = int(self._code_to_id[0]) if self.num_image_codes else 0
      if isinstance(codes, jax.Array):
        return jnp.where((codes >= 0) & (codes < self.num_image_codes), codes + offset, -1)
      codes = np.asarray(codes)
      return np.where((codes >= 0) & (codes < self.num_image_codes), codes + offset,
                      -1).astype(np.int32)
    return _lookup(self._code_to_id, codes, -1)

  def ids_to_codes(self, ids):
    """Token ids (any shape, numpy or jax) -> image codes, -1 where the id is no image token."""
    return _lookup(self._id_to_code, ids, -1)

  def image_token_mask(self) -> np.ndarray:
    """bool `[vocab_size]`: True at the ids of image tokens."""
    return self._mask.copy()

  def image_token_ids(self) -> np.ndarray:
    """int32 `[num_image_codes]`: the token id of code 0, 1, ..."""
    return self._code_to_id.copy()


def load_tokenizer(tokenizer_dir: str):
  """A transformers tokenizer from a local directory (never the network)."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(tokenizer_dir):
    raise UserError(f'tokenizer directory {tokenizer_dir} does not exist; set vocab.tokenizer_dir '
                    'to a local directory with tokenizer.json / tokenizer_config.json.')
  try:
    return AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f'the tokenizer in {tokenizer_dir} could not be loaded ({e}); point '
                    'vocab.tokenizer_dir to a transformers tokenizer directory.') from None


def build_word_tokenizer(words: Sequence[str], directory: str,
                         special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
                         num_image_codes: int = 0) -> str:
  """Writes a small word-level PreTrainedTokenizerFast to `directory` and returns the directory.

  Ids: `special_tokens` first (in order; '<unk>' is added if missing), then `words` (deduplicated,
  in order), then, with `num_image_codes > 0`, Chameleon-style IMGIMG tokens for codes
  0..num_image_codes-1 so the 'chameleon' scheme works. Text splits on whitespace and
  punctuation; decoding joins words with spaces.
  """
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top

  special_tokens = list(dict.fromkeys(special_tokens))
  if '<unk>' not in special_tokens:
    special_tokens.insert(0, '<unk>')
  names = special_tokens + [w for w in dict.fromkeys(words) if w not in special_tokens]
  names += [chameleon_image_token_name(c) for c in range(num_image_codes)]
  vocab = {name: i for i, name in enumerate(dict.fromkeys(names))}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(special_tokens)  # skipped by decode(skip_special_tokens=True)
  fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token='<unk>')
  os.makedirs(directory, exist_ok=True)
  fast.save_pretrained(directory)
  return directory
