"""UnifiedVocab: Chameleon IMGIMG and offset image-token schemes, special ids, text round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

from configs.base import get_base_config
from jax_vlm.core.errors import UserError
from jax_vlm.tokens.vocab import UnifiedVocab, build_word_tokenizer, chameleon_image_token_name

NUM_CODES = 120  # includes three-digit codes such as 105 -> IMGIMGBAFZ
SPECIALS = ['<unk>', '<s>', '</s>', '<pad>', '<racm3:break>', '<eoss>']
WORDS = ['push', 'the', 'red', 'block', 'left', 'right', '.']


@pytest.fixture(scope='module')
def chameleon_dir(tmp_path_factory):
  """A Chameleon-like tokenizer: IMGIMG tokens shuffled in among the words, so that the code ->
  id map is not the identity or an offset."""
  rng = np.random.default_rng(0)
  image_names = []
  for code in range(NUM_CODES):
    # Written out here, not with the helper under test: digits 0..9 -> letters A..J, then 'Z'.
    image_names.append('IMGIMG' + ''.join('ABCDEFGHIJ'[int(d)] for d in str(code)) + 'Z')
  names = WORDS + image_names
  names = SPECIALS + [names[i] for i in rng.permutation(len(names))]
  tokenizer = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token='<unk>'))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.add_special_tokens(SPECIALS)
  directory = str(tmp_path_factory.mktemp('chameleon_tokenizer'))
  PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token='<unk>').save_pretrained(directory)
  return directory, {n: i for i, n in enumerate(names)}


def test_chameleon_scheme_matches_transformers_mapping(chameleon_dir):
  directory, vocab_map = chameleon_dir
  vocab = UnifiedVocab.load(directory, scheme='chameleon', num_image_codes=NUM_CODES)
  reference = ChameleonImageVocabularyMapping(vocab_map)

  codes = np.arange(NUM_CODES)
  ids = vocab.codes_to_ids(codes)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [reference.img2bpe[c] for c in codes])
  assert vocab.codes_to_ids(np.array([105]))[0] == vocab_map['IMGIMGBAFZ']
  assert chameleon_image_token_name(105) == 'IMGIMGBAFZ'
  np.testing.assert_array_equal(vocab.ids_to_codes(ids), codes)
  np.testing.assert_array_equal(vocab.image_token_ids(), ids)

  # Both ways, any shape, numpy or jax.
  grid = np.random.default_rng(1).integers(0, NUM_CODES, (2, 3, 4))
  as_jax = vocab.codes_to_ids(jnp.asarray(grid))
  assert isinstance(as_jax, jax.Array) and as_jax.shape == (2, 3, 4)
  np.testing.assert_array_equal(as_jax, vocab.codes_to_ids(grid))
  np.testing.assert_array_equal(vocab.ids_to_codes(as_jax), grid)

  mask = vocab.image_token_mask()
  assert mask.dtype == bool and mask.shape == (vocab.vocab_size,) == (len(vocab_map),)
  assert mask.sum() == NUM_CODES and mask[ids].all()
  text_ids = [vocab_map[w] for w in WORDS + SPECIALS]
  assert not mask[text_ids].any()
  np.testing.assert_array_equal(vocab.ids_to_codes(np.array(text_ids + [-5, 10**6])), -1)

  assert (vocab.bos_id, vocab.eos_id, vocab.pad_id, vocab.boi_id, vocab.eoi_id) == tuple(
      vocab_map[t] for t in ('<s>', '</s>', '<pad>', '<racm3:break>', '<eoss>'))


def test_text_round_trip_skips_specials_and_image_tokens(chameleon_dir):
  directory, vocab_map = chameleon_dir
  vocab = UnifiedVocab.load(directory, num_image_codes=NUM_CODES)
  ids = vocab.encode_text('push the red block left.')
  assert ids == [vocab_map[w] for w in ['push', 'the', 'red', 'block', 'left', '.']]
  assert vocab.bos_id not in ids  # sequences.py adds bos/eos, not the tokenizer
  image_ids = vocab.codes_to_ids(np.array([3, 77])).tolist()
  framed = [vocab.bos_id, vocab.boi_id] + image_ids + [vocab.eoi_id] + ids + [vocab.eos_id]
  assert vocab.decode_text(np.array(framed)) == 'push the red block left .'


def test_offset_scheme(tmp_path):
  directory = build_word_tokenizer(WORDS, str(tmp_path / 'tok'),
                                   special_tokens=['<pad>', '<eos>', '<bos>', '<boi>', '<eoi>'])
  names = dict(bos_token='<bos>', eos_token='<eos>', pad_token='<pad>', boi_token='<boi>',
               eoi_token='<eoi>')
  vocab = UnifiedVocab.load(directory, scheme='offset', num_image_codes=10, **names)
  text_size = len(vocab.tokenizer)
  assert text_size == 6 + len(WORDS)  # '<unk>' is added in front of the given specials
  assert (vocab.pad_id, vocab.eos_id, vocab.bos_id, vocab.boi_id, vocab.eoi_id) == (1, 2, 3, 4, 5)
  # Default offset: the text vocabulary size (Liquid: 256000 after Gemma's text tokens).
  np.testing.assert_array_equal(vocab.codes_to_ids(np.arange(10)), text_size + np.arange(10))
  assert vocab.vocab_size == text_size + 10
  mask = vocab.image_token_mask()
  assert mask.sum() == 10 and mask[text_size:].all()
  np.testing.assert_array_equal(vocab.ids_to_codes(np.array([text_size + 7, 3])), [7, -1])
  np.testing.assert_array_equal(vocab.codes_to_ids(jnp.array([0, 9])), [text_size, text_size + 9])

  vocab = UnifiedVocab.load(directory, scheme='offset', image_token_offset=100,
                            num_image_codes=10, **names)
  assert vocab.vocab_size == 110 and vocab.image_token_ids()[0] == 100
  assert vocab.ids_to_codes(np.array([105]))[0] == 5 and not vocab.image_token_mask()[99]
  assert vocab.decode_text([vocab.bos_id, 100, 101] + vocab.encode_text('red block')) == 'red block'


def test_word_tokenizer_with_image_tokens(tmp_path):
  directory = build_word_tokenizer(WORDS, str(tmp_path / 'tok'), num_image_codes=12)
  vocab = UnifiedVocab.load(directory, scheme='chameleon', num_image_codes=12)
  first = len(SPECIALS) + len(WORDS)
  np.testing.assert_array_equal(vocab.image_token_ids(), first + np.arange(12))
  assert vocab.tokenizer.convert_ids_to_tokens(int(vocab.codes_to_ids(np.array([11]))[0])) == (
      'IMGIMGBBZ')
  ids = vocab.encode_text('the unknownword block')
  assert vocab.tokenizer.convert_ids_to_tokens(ids[1]) == '<unk>'
  assert vocab.decode_text(ids) == 'the block'  # '<unk>' is special, so skipped


def test_from_config_and_errors(chameleon_dir, tmp_path):
  directory, vocab_map = chameleon_dir
  config = get_base_config().vocab
  config.tokenizer_dir = directory
  config.num_image_codes = NUM_CODES
  vocab = UnifiedVocab.from_config(config)
  assert vocab.boi_id == vocab_map['<racm3:break>'] and vocab.num_image_codes == NUM_CODES

  with pytest.raises(UserError, match=r"no token '<image>' \(vocab.boi_token\)"):
    UnifiedVocab.load(directory, num_image_codes=NUM_CODES, boi_token='<image>')
  with pytest.raises(UserError, match='120 IMGIMG image tokens.*8192 codes'):
    UnifiedVocab.load(directory, num_image_codes=8192)
  with pytest.raises(UserError, match="image_token_scheme='bpe'"):
    UnifiedVocab.load(directory, scheme='bpe', num_image_codes=NUM_CODES)
  with pytest.raises(UserError, match='does not exist'):
    UnifiedVocab.load(str(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match='could not be loaded'):
    UnifiedVocab.load(str(tmp_path / 'empty'))
  config.tokenizer_dir = ''
  with pytest.raises(UserError, match='vocab.tokenizer_dir is empty'):
    UnifiedVocab.from_config(config)
  # An offset that lands image tokens on special tokens is caught.
  with pytest.raises(UserError, match='special token'):
    UnifiedVocab.load(directory, scheme='offset', image_token_offset=0, num_image_codes=4)
