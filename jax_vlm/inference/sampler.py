"""The jit-compiled sampler: text for IDP (until <eos>), exactly N image tokens for FDP.

One compiled program per (prompt bucket, number of rows, settings) does the whole generation: the
prompt is prefilled ONCE, its KV cache is tiled K times (`repeat_cache`) and all K candidates of
every prompt decode together inside a `lax.while_loop` whose state is a `SamplerState` dataclass;
no Python runs per token.

Modes
  text   (IDP labels)  greedy or sampled tokens until <eos> or `max_new_tokens`; after <eos> a
                       row emits <pad> and stops counting.
  image  (FDP frames)  exactly `num_image_tokens` tokens after the prompt's closing <boi>; the LM
                       head computes only the image tokens' logits (the vocabulary's image token
                       mask), so each one is an image code; the caller closes the frame with <eoi>.

Sampling: logits / temperature, then top-k, then top-p (nucleus), then a categorical draw. The
paper samples frames at temperature 1: low temperatures tend to copy the source frame.

Classifier-free guidance (image mode, Chameleon's in-batch form): each prompt comes as three rows,
  full      <bos> action <boi> src <eoi> <boi>     (source image and action)
  image     <bos> <boi> src <eoi> <boi>            (source image only)
  uncond    <bos> <boi>                            (neither)
which decode in lockstep (all three are fed the token sampled for the prompt) and whose logits
combine, before masking and temperature, as

    guided = uncond + s_img * (image - uncond) + s_txt * (full - image)

(s_img = cfg_image_scale, s_txt = cfg_text_scale; s_img = s_txt = 1 gives back `full`).

Randomness: candidate j of prompt i draws from `candidate_key = fold_in(fold_in(key, i), j)` and
step t of it from `fold_in(candidate_key, t)` (`candidate_keys`). So the K candidates sampled from
one repeated cache are exactly K single-candidate runs given `row_keys` = those candidate keys.

Prompts are left-padded (segment 0, never attended; RoPE positions count real tokens only) to the
smallest of `prompt_buckets` that fits, so a few compiled programs serve all prompt lengths.

Precision (`config.sampler.dtype / param_dtype / cache_dtype`, '' = unchanged): decoding reads every
weight and the whole KV cache once per token, so it is bound by memory bandwidth; bfloat16 weights
and cache halve the bytes of an fp32 checkpoint. `dtype` is the decode compute dtype (default the
model's), `param_dtype` casts the floating params once per call inside the compiled program (the
loop then reads the cast copy), `cache_dtype` is the KV cache's element type (default the decode
compute dtype). tests/test_sampler.py checks that bfloat16 decoding picks fp32's greedy tokens on a
tiny model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jax_vlm.core.compile_options import compiler_options
from jax_vlm.core.errors import UserError, require
from jax_vlm.models.config import to_dtype
from jax_vlm.models.transformer import DecoderLM, KVCache, init_cache, repeat_cache
from jax_vlm.tokens import sequences

Array = jax.Array
NEG_INF = -1e30  # finite, so a filtered-out logit never turns a softmax into NaN


# ------------------------------------------------------------------------------------------------
# Settings.


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is chosen (static: one compiled program per distinct value).

  greedy: argmax (temperature, top_k, top_p ignored). temperature > 0 divides the logits;
  top_k > 0 keeps the k most likely tokens; top_p < 1 keeps the smallest set of most likely
  tokens whose probability reaches top_p.
  """
  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if not self.greedy:
      require(self.temperature > 0,
              f'sampler.temperature must be > 0 when sampling, got {self.temperature}; use greedy '
              'decoding instead of temperature 0.')
    require(self.top_k >= 0, f'sampler.top_k must be >= 0 (0 = off), got {self.top_k}.')
    require(0.0 < self.top_p <= 1.0, f'sampler.top_p must be in (0, 1], got {self.top_p}.')

  @classmethod
  def from_config(cls, sampler_cfg, greedy: bool = False) -> 'SamplingParams':
    """From `config.sampler` (temperature, top_k, top_p)."""
    return cls(greedy=greedy, temperature=float(sampler_cfg.temperature),
               top_k=int(sampler_cfg.top_k), top_p=float(sampler_cfg.top_p))


@dataclasses.dataclass(frozen=True)
class Guidance:
  """Classifier-free guidance scales; see the module docstring for the formula."""
  image_scale: float = 1.0
  text_scale: float = 1.0


# ------------------------------------------------------------------------------------------------
# Pure pieces.


@functools.partial(jax.jit, static_argnums=(1, 2))
def candidate_keys(key: Array, batch: int, num_candidates: int) -> Array:
  """[batch * num_candidates] keys; row i*K+j = fold_in(fold_in(key, i), j). Jitted: run op by op,
  the nested vmaps cost ~10 ms a call on CPU, a tenth of a whole K = 8 world-size frame."""
  prompt_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch))
  keys = jax.vmap(lambda k: jax.vmap(lambda j: jax.random.fold_in(k, j))(
      jnp.arange(num_candidates)))(prompt_keys)
  return keys.reshape((batch * num_candidates,) + keys.shape[2:])


def filter_logits(logits: Array, sampling: SamplingParams) -> Array:
  """logits [rows, vocab] -> tempered logits with everything outside top-k / top-p at NEG_INF."""
  logits = logits / sampling.temperature
  if sampling.top_k > 0:
    k = min(sampling.top_k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if sampling.top_p < 1.0:
    sorted_desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Mass strictly before each sorted token: keep a token while that is < top_p (keeps >= 1).
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < sampling.top_p, sorted_desc, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def choose_tokens(logits: Array, keys: Array, sampling: SamplingParams) -> Array:
  """logits [rows, vocab], keys [rows] -> token ids [rows] int32."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits, sampling)
  draw = jax.vmap(jax.random.categorical)
  return draw(keys, filtered).astype(jnp.int32)


def guide(logits: Array, guidance: Guidance | None) -> Array:
  """[batch, conditions, K, vocab] -> [batch, K, vocab]: CFG over (full, image, uncond) rows."""
  if guidance is None:
    return logits[:, 0]
  full, image, uncond = logits[:, 0], logits[:, 1], logits[:, 2]
  return uncond + guidance.image_scale * (image - uncond) + guidance.text_scale * (full - image)


@flax.struct.dataclass
class SamplerState:
  """The while-loop state; `rows` = batch * conditions * K model rows, `out` = batch * K."""
  step: Array  # [] int32, tokens generated so far
  logits: Array  # [rows, vocab] float32, next-token logits
  cache: KVCache
  tokens: Array  # [out, max_new] int32, pad after a row is done
  logprob: Array  # [out] float32, summed log p of the generated tokens (see `sample_loop`)
  lengths: Array  # [out] int32, tokens generated per row (<eos> included)
  done: Array  # [out] bool


def cast_params(params: Any, dtype) -> Any:
  """Floating leaves of `params` as `dtype` (None: unchanged); integer leaves are kept."""
  if dtype is None:
    return params
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def prefill(module: DecoderLM, params: Any, prompt_ids: Array, prompt_segments: Array,
            cache_len: int, cache_dtype=None, head: Array | None = None) -> tuple[Array, KVCache]:
  """Writes left-padded prompts [rows, L] into a fresh cache (of `cache_dtype`, default the model's
  compute dtype); returns (last logits [rows, vocab], cache). Only the last position goes through
  the LM head (`head`: an [embed, n] kernel from `DecoderLM.head_kernel`, giving [rows, n])."""
  rows = prompt_ids.shape[0]
  cache = init_cache(module.config, rows, cache_len, dtype=cache_dtype)
  _, hidden, cache = module.apply({'params': params}, prompt_ids, segment_ids=prompt_segments,
                                  cache=cache, return_hidden=True)
  logits = module.apply({'params': params}, hidden[:, -1:], head,
                        method=DecoderLM.logits_from_hidden)
  return logits[:, 0].astype(jnp.float32), cache


def sample_loop(params: Any, prompt_ids: Array, prompt_segments: Array, row_keys: Array,
                emit_ids: Array | None, eos_id: Array, pad_id: Array, *, module: DecoderLM,
                cache_len: int, num_candidates: int, num_conditions: int, max_new_tokens: int,
                sampling: SamplingParams, guidance: Guidance | None,
                stop_at_eos: bool, param_dtype=None, cache_dtype=None) -> dict[str, Array]:
  """Prefill once, repeat the cache K times, decode all rows together (pure; jit it).

  prompt_ids, prompt_segments: [batch * num_conditions, L] left-padded, rows ordered
  (prompt, condition). row_keys: [batch * K] (see `candidate_keys`). emit_ids: int32 [n], the only
  tokens that may be emitted (image mode: the image tokens), or None for all; the LM head then
  computes just their columns (`DecoderLM.head_kernel`, gathered once before the loop) and the
  draws run over those n, which at Chameleon's size skips 7/8 of the head's weights.
  eos_id, pad_id: [] int32 (traced: one program per model).
  Returns tokens [batch * K, max_new_tokens] int32, lengths
  [batch * K] int32 and logprob [batch * K] float32: the summed log-probabilities of the emitted
  tokens under the (guided, masked) model distribution at temperature 1, before top-k/top-p, so in
  text mode it equals the teacher-forced log-likelihood of the output.
  """
  k, c = num_candidates, num_conditions
  batch = prompt_ids.shape[0] // c
  out = batch * k
  params = cast_params(params, param_dtype)
  head = None
  if emit_ids is not None:
    head = module.apply({'params': params}, emit_ids, method=DecoderLM.head_kernel)
  logits, cache = prefill(module, params, prompt_ids, prompt_segments, cache_len, cache_dtype,
                          head)
  # Row (prompt i, condition m) -> rows ((i * c + m) * k + j) for candidates j.
  cache = repeat_cache(cache, k)
  logits = jnp.repeat(logits, k, axis=0)

  state = SamplerState(
      step=jnp.zeros((), jnp.int32), logits=logits, cache=cache,
      tokens=jnp.full((out, max_new_tokens), pad_id, jnp.int32),
      logprob=jnp.zeros((out,), jnp.float32), lengths=jnp.zeros((out,), jnp.int32),
      done=jnp.zeros((out,), bool))

  def cond(s: SamplerState):
    return (s.step < max_new_tokens) & ~jnp.all(s.done)

  def body(s: SamplerState) -> SamplerState:
    vocab = s.logits.shape[-1]
    guided = guide(s.logits.reshape(batch, c, k, vocab), guidance).reshape(out, vocab)
    keys = jax.vmap(lambda key: jax.random.fold_in(key, s.step))(row_keys)
    tokens = choose_tokens(guided, keys, sampling)  # column indices: ids unless emit_ids
    token_logprob = jnp.take_along_axis(jax.nn.log_softmax(guided, axis=-1), tokens[:, None],
                                        axis=-1)[:, 0]
    if emit_ids is not None:
      tokens = emit_ids[tokens]
    active = ~s.done
    tokens = jnp.where(active, tokens, pad_id)
    done = s.done | (active & (tokens == eos_id)) if stop_at_eos else s.done
    # Every condition row of a prompt is fed the token sampled for it.
    feed = jnp.broadcast_to(tokens.reshape(batch, 1, k), (batch, c, k)).reshape(-1, 1)
    if head is None:
      next_logits, cache = module.apply({'params': params}, feed, cache=s.cache)
    else:  # the whole head's logits are not used, so XLA drops them
      _, hidden, cache = module.apply({'params': params}, feed, cache=s.cache, return_hidden=True)
      next_logits = module.apply({'params': params}, hidden, head,
                                 method=DecoderLM.logits_from_hidden)
    return SamplerState(
        step=s.step + 1, logits=next_logits[:, -1].astype(jnp.float32), cache=cache,
        tokens=jax.lax.dynamic_update_slice(s.tokens, tokens[:, None], (0, s.step)),
        logprob=s.logprob + jnp.where(active, token_logprob, 0.0),
        lengths=s.lengths + active.astype(jnp.int32), done=done)

  state = jax.lax.while_loop(cond, body, state)
  return {'tokens': state.tokens, 'lengths': state.lengths, 'logprob': state.logprob}


@functools.lru_cache(maxsize=None)
def compiled_loop(platform: str):
  """`sample_loop` jitted for `platform` with the project's compiler options (core.compile_options:
  on CPU, no YNNPACK fusions, ~27% faster decoding). One per platform for every Sampler: equal
  modules hash equal, so compiled programs are shared."""
  return jax.jit(sample_loop, static_argnames=(
      'module', 'cache_len', 'num_candidates', 'num_conditions', 'max_new_tokens', 'sampling',
      'guidance', 'stop_at_eos', 'param_dtype', 'cache_dtype'),
      compiler_options=compiler_options(platform))


# ------------------------------------------------------------------------------------------------
# Prompt batching (numpy).


def left_pad(prompts: Sequence[np.ndarray], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  """Prompts -> token_ids, segment_ids [n, length] int32, left-padded (padding: segment 0)."""
  ids = np.full((len(prompts), length), pad_id, np.int32)
  seg = np.zeros((len(prompts), length), np.int32)
  for r, p in enumerate(prompts):
    p = np.asarray(p, np.int32).reshape(-1)
    ids[r, length - p.size:] = p
    seg[r, length - p.size:] = 1
  return ids, seg


def fdp_prompts(src_codes, action_ids, vocab, guidance: bool = False) -> list[np.ndarray]:
  """The FDP prompt rows of one (source, action): [full], or [full, image-only, unconditional]
  for classifier-free guidance (see the module docstring)."""
  if guidance:
    return sequences.fdp_guidance_prompts(src_codes, action_ids, vocab)
  return [sequences.fdp_prompt(src_codes, action_ids, vocab)]


@dataclasses.dataclass
class TextSamples:
  """tokens [batch, K, max_new] (pad after <eos>), lengths [batch, K] (with <eos>), logprob
  [batch, K] summed, texts [batch][K] (decoded without <eos>), finished [batch, K] (ended with
  <eos>)."""
  tokens: np.ndarray
  lengths: np.ndarray
  logprob: np.ndarray
  texts: list[list[str]]
  finished: np.ndarray


@dataclasses.dataclass
class ImageSamples:
  """tokens [batch, K, n] image token ids, codes [batch, K, n] VQ codes, logprob [batch, K]."""
  tokens: np.ndarray
  codes: np.ndarray
  logprob: np.ndarray


class Sampler:
  """Generation with one DecoderLM and one vocabulary; params are passed per call.

  cache_len: KV cache slots (prompt bucket + new tokens must fit). prompt_buckets: lengths prompts
  are left-padded to (the smallest that fits; with none, the longest prompt's length).
  dtype / param_dtype / cache_dtype: decode precision (None = the module's compute dtype / params
  as passed / the decode compute dtype); see the module docstring.
  """

  def __init__(self, module: DecoderLM, vocab, cache_len: int, prompt_buckets: Sequence[int] = (),
               dtype=None, param_dtype=None, cache_dtype=None):
    require(cache_len > 0, f'sampler.cache_len must be > 0, got {cache_len}.')
    if dtype:
      dtype = to_dtype(dtype)
      if dtype != module.config.dtype:
        module = module.clone(config=module.config.replace(dtype=dtype))
    self.module = module
    self.param_dtype = to_dtype(param_dtype) if param_dtype else None
    self.cache_dtype = to_dtype(cache_dtype) if cache_dtype else None
    self.vocab = vocab
    self.cache_len = int(cache_len)
    self.prompt_buckets = tuple(sorted(int(b) for b in prompt_buckets))
    model_vocab = module.config.vocab_size
    require(vocab.vocab_size <= model_vocab,
            f'the vocabulary has {vocab.vocab_size} tokens but model.vocab_size is {model_vocab}; '
            'set model.vocab_size to at least the vocabulary size.')
    self.image_ids = np.flatnonzero(vocab.image_token_mask()).astype(np.int32)
    self._loop = compiled_loop(jax.default_backend())

  @classmethod
  def from_config(cls, module: DecoderLM, vocab, config) -> 'Sampler':
    """From the whole config: sampler.cache_len (0 = data.max_seq_len), sampler.prompt_buckets,
    sampler.dtype / param_dtype / cache_dtype ('' = unchanged)."""
    s = config.sampler
    cache_len = int(s.get('cache_len', 0)) or int(config.data.max_seq_len)
    return cls(module, vocab, cache_len, tuple(s.get('prompt_buckets', ()) or ()),
               dtype=s.get('dtype', '') or None, param_dtype=s.get('param_dtype', '') or None,
               cache_dtype=s.get('cache_dtype', '') or None)

  # --- helpers -------------------------------------------------------------------------------
  def bucket(self, longest: int) -> int:
    """The smallest prompt bucket that holds `longest` tokens, else `longest` itself."""
    return sequences.choose_seq_len([longest], max_seq_len=max((longest,) + self.prompt_buckets),
                                    buckets=self.prompt_buckets)

  def _batch(self, rows: Sequence[np.ndarray], new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    longest = max(int(np.asarray(r).size) for r in rows)
    length = self.bucket(longest)
    if length + new_tokens > self.cache_len:
      raise UserError(
          f'A prompt of {longest} tokens (padded to {length}) plus {new_tokens} new tokens does '
          f'not fit the sampler cache of {self.cache_len} slots; raise sampler.cache_len or '
          'shorten the prompt.')
    return left_pad(rows, length, self.vocab.pad_id)

  @staticmethod
  def _id(token_id: int) -> Array:
    return jnp.asarray(int(token_id), jnp.int32)

  @staticmethod
  def _check_k(num_candidates: int) -> None:
    require(int(num_candidates) >= 1,
            f'sampler.num_candidates must be at least 1, got {num_candidates}.')

  def _keys(self, key, row_keys, batch: int, k: int) -> Array:
    if row_keys is not None:
      row_keys = jnp.asarray(row_keys)
      require(row_keys.shape[0] == batch * k,
              f'row_keys has {row_keys.shape[0]} keys for {batch} prompts x {k} candidates; pass '
              'one key per candidate row.')
      return row_keys
    require(key is not None, 'The sampler needs a PRNG key (or row_keys); pass one.')
    return candidate_keys(key, batch, k)

  # --- text (IDP) ----------------------------------------------------------------------------
  def generate_text(self, params, prompts: Sequence[np.ndarray], key=None, num_candidates: int = 1,
                    max_new_tokens: int = 48,
                    sampling: SamplingParams = SamplingParams(greedy=True),
                    row_keys=None) -> TextSamples:
    """Decodes each prompt [L_i] until <eos> or max_new_tokens, K candidates each."""
    self._check_k(num_candidates)
    require(len(prompts) > 0, 'The sampler got no prompts; pass at least one.')
    k = int(num_candidates)
    ids, seg = self._batch(prompts, max_new_tokens)
    keys = self._keys(key, row_keys, len(prompts), k)
    out = self._loop(params, ids, seg, keys, None, self._id(self.vocab.eos_id),
                     self._id(self.vocab.pad_id), module=self.module, cache_len=self.cache_len,
                     num_candidates=k, num_conditions=1, max_new_tokens=int(max_new_tokens),
                     sampling=sampling, guidance=None, stop_at_eos=True,
                     param_dtype=self.param_dtype, cache_dtype=self.cache_dtype)
    b = len(prompts)
    tokens = np.asarray(out['tokens']).reshape(b, k, -1)
    lengths = np.asarray(out['lengths']).reshape(b, k)
    finished = np.zeros((b, k), bool)
    texts = []
    for i in range(b):
      row = []
      for j in range(k):
        n = int(lengths[i, j])
        ended = n > 0 and tokens[i, j, n - 1] == self.vocab.eos_id
        finished[i, j] = ended
        row.append(self.vocab.decode_text(tokens[i, j, :n - 1 if ended else n]))
      texts.append(row)
    return TextSamples(tokens, lengths, np.asarray(out['logprob']).reshape(b, k), texts, finished)

  # --- images (FDP) --------------------------------------------------------------------------
  def generate_images(self, params, prompts: Sequence[Any], key=None, num_candidates: int = 1,
                      num_image_tokens: int = 1024, sampling: SamplingParams = SamplingParams(),
                      guidance: Guidance | None = None, row_keys=None) -> ImageSamples:
    """Samples exactly `num_image_tokens` image tokens after each prompt (which ends with <boi>).

    prompts: B arrays, or with `guidance` B triples (full, image-only, unconditional), e.g. from
    `fdp_prompts(..., guidance=True)`.
    """
    self._check_k(num_candidates)
    require(len(prompts) > 0, 'The sampler got no prompts; pass at least one.')
    require(num_image_tokens >= 1, f'num_image_tokens must be >= 1, got {num_image_tokens}.')
    k, b = int(num_candidates), len(prompts)
    if guidance is None:
      rows = [np.asarray(p) if not isinstance(p, (list, tuple)) else np.asarray(p[0])
              for p in prompts]
      c = 1
    else:
      require(all(isinstance(p, (list, tuple)) and len(p) == 3 for p in prompts),
              'With classifier-free guidance every prompt must be a (full, image-only, '
              'unconditional) triple; build them with sampler.fdp_prompts(..., guidance=True).')
      rows = [np.asarray(r) for p in prompts for r in p]
      c = 3
    ids, seg = self._batch(rows, num_image_tokens)
    keys = self._keys(key, row_keys, b, k)
    out = self._loop(params, ids, seg, keys, jnp.asarray(self.image_ids), self._id(-1),
                     self._id(self.vocab.pad_id), module=self.module, cache_len=self.cache_len,
                     num_candidates=k, num_conditions=c, max_new_tokens=int(num_image_tokens),
                     sampling=sampling, guidance=guidance, stop_at_eos=False,
                     param_dtype=self.param_dtype, cache_dtype=self.cache_dtype)
    tokens = np.asarray(out['tokens']).reshape(b, k, -1)
    codes = np.asarray(self.vocab.ids_to_codes(tokens))
    return ImageSamples(tokens, codes, np.asarray(out['logprob']).reshape(b, k))

  def sample_frames(self, params, src_codes: Sequence[np.ndarray],
                    action_ids: Sequence[np.ndarray], key=None, num_candidates: int = 1,
                    sampling: SamplingParams = SamplingParams(), guidance: Guidance | None = None,
                    row_keys=None) -> ImageSamples:
    """K candidate next frames for each (source codes [n], action ids): frames as big as the
    source."""
    require(len(src_codes) == len(action_ids),
            f'{len(src_codes)} source frames but {len(action_ids)} actions; pass one action each.')
    n = int(np.asarray(src_codes[0]).size)
    prompts = [fdp_prompts(s, a, self.vocab, guidance is not None)
               for s, a in zip(src_codes, action_ids)]
    if guidance is None:
      prompts = [p[0] for p in prompts]
    return self.generate_images(params, prompts, key, num_candidates, n, sampling, guidance,
                                row_keys)


def guidance_from_config(sampler_cfg) -> Guidance | None:
  """Guidance from config.sampler.cfg_text_scale / cfg_image_scale (both 0 = no guidance)."""
  text_scale, image_scale = float(sampler_cfg.cfg_text_scale), float(sampler_cfg.cfg_image_scale)
  return None if text_scale == 0.0 and image_scale == 0.0 else Guidance(image_scale, text_scale)
