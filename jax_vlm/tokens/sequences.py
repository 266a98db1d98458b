"""Token layout of training examples: the one place that knows where images, actions and loss go.

Two objectives share one decoder-only model (see docs/interfaces.md):
  IDP (inverse dynamics): <bos> <boi> src <eoi> <boi> tgt <eoi> action <eos>
                          loss on `action <eos>`
  FDP (forward dynamics): <bos> action <boi> src <eoi> <boi> tgt <eoi>
                          loss on `tgt <eoi>`, each target image token weighted by its
                          recognition weight.
The action comes first in FDP so that, as in IDP, the two frames are adjacent: a target code's
source code is always n + 2 tokens back, whatever the action's length (a fixed relative offset
under RoPE; with the action between the frames a small model trained from scratch did not learn
to copy unchanged cells in 1,000 steps).
`src`/`tgt` are the frames' VQ codes mapped to token ids by the vocabulary; `action` is the
action text's token ids (no special tokens), truncated to `max_action_tokens`.

Loss weights are aligned with the TARGET token: `loss_weights[t]` weights predicting
`token_ids[t]` from `token_ids[:t]`, so position 0 never carries loss.

An example is a dict (what data/records.py yields) with
  'src_codes', 'tgt_codes'   int [n] or [h, w]: VQ code indices of the two frames (not token ids)
  'action'                   str/bytes: the action text, or 'action_ids' int [a] already tokenized
  'recognition_weights'      float32 [n] (optional): precomputed with `recognition_weights`; without
                             it FDP computes them from 'src_features'/'tgt_features' [h, w, c].
An empty action is rejected (`EmptyActionError`): such a pair is unlabelled and belongs to the
bootstrap labeller, not to training.

Pretraining documents (action-free; see data/action_world/pretrain.py) share the layout's pieces:
  text output:  <bos> <boi> img_1 <eoi> ... <boi> img_k <eoi> text <eos>   loss on `text <eos>`
  image output: <bos> [text | <boi> img <eoi>] <boi> img_out <eoi>        loss on `img_out <eoi>`
They train the same two output kinds as the objectives (text like IDP, image like FDP) and carry
those task ids, so the train step reports them as `idp_*` (text) and `fdp_*` (image) metrics.

Batching (pure numpy): `pad_batch` puts one sequence per row; `pack_sequences` packs several into a
row first-fit (segment_ids 1, 2, ..., positions restarting at 0 per segment, padding segment 0).
"""

import dataclasses
from typing import Any, Iterable, Mapping, Protocol
from typing import Sequence as SequenceT

import numpy as np

from jax_vlm.core.errors import UserError, require

IDP = 0
FDP = 1
TASK_NAMES = {IDP: 'idp', FDP: 'fdp'}
# `task_ids` of padding tokens (0 and 1 are IDP and FDP).
NO_TASK = -1

SRC_CODES = 'src_codes'
TGT_CODES = 'tgt_codes'
ACTION = 'action'
ACTION_IDS = 'action_ids'
RECOGNITION_WEIGHTS = 'recognition_weights'
SRC_FEATURES = 'src_features'
TGT_FEATURES = 'tgt_features'

BATCH_KEYS = ('token_ids', 'positions', 'segment_ids', 'loss_weights', 'task', 'task_ids')


class VocabLike(Protocol):
  """What this module needs from `jax_vlm.tokens.vocab.UnifiedVocab`."""
  bos_id: int
  eos_id: int
  boi_id: int
  eoi_id: int
  pad_id: int

  def encode_text(self, text: str) -> list[int]:
    ...

  def codes_to_ids(self, codes: Any) -> Any:
    ...


class EmptyActionError(UserError):
  """An example has no action text, so it cannot be an IDP or FDP training example."""


@dataclasses.dataclass(frozen=True)
class Sequence:
  """One training example laid out as tokens.

  token_ids: [length] int32.
  loss_weights: [length] float32, aligned with the target token (see module docstring).
  prompt_len: number of leading tokens that are conditioning only (the first loss position).
  task: IDP or FDP.
  action_truncated: the action had more than `max_action_tokens` tokens and was cut.
  """
  token_ids: np.ndarray
  loss_weights: np.ndarray
  prompt_len: int
  task: int
  action_truncated: bool = False

  def __len__(self) -> int:
    return int(self.token_ids.shape[0])


# ----------------------------------------------------------------------------------------------
# Pieces of the layout.


def image_tokens(codes, vocab: VocabLike) -> np.ndarray:
  """`<boi> codes <eoi>` as token ids: codes [n] or [h, w] VQ indices -> [n + 2] int32."""
  ids = np.asarray(vocab.codes_to_ids(np.asarray(codes).reshape(-1)), np.int32)
  return np.concatenate([[vocab.boi_id], ids, [vocab.eoi_id]]).astype(np.int32)


def action_ids_of(example: Mapping[str, Any], vocab: VocabLike,
                  max_action_tokens: int) -> tuple[np.ndarray, bool]:
  """The example's action as token ids [a] (1 <= a <= max_action_tokens) and whether it was cut.

  Raises EmptyActionError when the action is missing or tokenizes to nothing.
  """
  if ACTION_IDS in example and example[ACTION_IDS] is not None:
    ids = np.asarray(example[ACTION_IDS], np.int64).reshape(-1)
  else:
    text = example.get(ACTION)
    if isinstance(text, np.ndarray):  # grain/array_record may hand back a 0-d bytes array
      text = text.item()
    if isinstance(text, bytes):
      text = text.decode('utf-8')
    ids = np.asarray(vocab.encode_text(text or '') if (text or '').strip() else [], np.int64)
  # Tokenizers that add special tokens on encode: the layout adds its own.
  if ids.size and ids[0] == vocab.bos_id:
    ids = ids[1:]
  if ids.size and ids[-1] == vocab.eos_id:
    ids = ids[:-1]
  if ids.size == 0:
    raise EmptyActionError(
        'An example has an empty action; drop unlabelled pairs from the training data '
        '(label them with the bootstrap labeller first).')
  truncated = ids.size > max_action_tokens
  return ids[:max_action_tokens].astype(np.int32), bool(truncated)


def idp_prompt(src_codes, tgt_codes, vocab: VocabLike) -> np.ndarray:
  """`<bos> <boi> src <eoi> <boi> tgt <eoi>` [2n + 5] int32: the IDP prompt, up to the action."""
  return np.concatenate([[vocab.bos_id], image_tokens(src_codes, vocab),
                         image_tokens(tgt_codes, vocab)]).astype(np.int32)


def fdp_prompt(src_codes, action_ids, vocab: VocabLike) -> np.ndarray:
  """`<bos> action <boi> src <eoi> <boi>` [n + a + 4] int32: ends with the <boi> opening the target.

  The sampler decodes exactly n image tokens after it (then <eoi>).
  """
  action_ids = np.asarray(action_ids, np.int32).reshape(-1)
  return np.concatenate([[vocab.bos_id], action_ids, image_tokens(src_codes, vocab),
                         [vocab.boi_id]]).astype(np.int32)


def fdp_guidance_prompts(src_codes, action_ids, vocab: VocabLike) -> list[np.ndarray]:
  """The three prompt rows of classifier-free guidance (Chameleon's in-batch form).

  full `<bos> action <boi> src <eoi> <boi>`, image-only `<bos> <boi> src <eoi> <boi>` (no action),
  unconditional `<bos> <boi>` (neither): each ends with the <boi> that opens the target image.
  """
  return [fdp_prompt(src_codes, action_ids, vocab),
          fdp_prompt(src_codes, np.zeros((0,), np.int32), vocab),
          np.asarray([vocab.bos_id, vocab.boi_id], np.int32)]


def idp_scoring_sequence(src_codes, cand_codes, action_ids,
                         vocab: VocabLike) -> tuple[np.ndarray, np.ndarray]:
  """Teacher-forced IDP sequence for the verifier's log p(action | src, candidate).

  Returns token_ids [L] int32 and action_mask [L] float32 (1 on the action tokens and <eos>,
  aligned with the target token like loss_weights). Sum of the masked token log-probs is the score.
  """
  prompt = idp_prompt(src_codes, cand_codes, vocab)
  action_ids = np.asarray(action_ids, np.int32).reshape(-1)
  token_ids = np.concatenate([prompt, action_ids, [vocab.eos_id]]).astype(np.int32)
  mask = np.zeros(token_ids.shape, np.float32)
  mask[prompt.size:] = 1.0
  return token_ids, mask


def idp_scoring_batch(src_codes, cand_codes, action_ids,
                      vocab: VocabLike) -> tuple[np.ndarray, np.ndarray]:
  """`idp_scoring_sequence` for K candidates of one source frame.

  cand_codes [k, n] (or [k, h, w]) -> token_ids [k, L] int32, action_mask [k, L] float32. All rows
  have the same length (same frame size, same action), so no padding is needed.
  """
  cand_codes = np.asarray(cand_codes)
  rows = [idp_scoring_sequence(src_codes, c, action_ids, vocab) for c in cand_codes]
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def image_spans(token_ids, vocab: VocabLike) -> list[tuple[int, int]]:
  """[(start, end)] of the image codes between each <boi> and the next <eoi> (end exclusive).

  An image left open (no <eoi> yet, as in an FDP prompt) ends at len(token_ids).
  """
  token_ids = np.asarray(token_ids).reshape(-1)
  spans, start = [], None
  for i, t in enumerate(token_ids.tolist()):
    if t == vocab.boi_id and start is None:
      start = i + 1
    elif t == vocab.eoi_id and start is not None:
      spans.append((start, i))
      start = None
  if start is not None:
    spans.append((start, int(token_ids.size)))
  return spans


# ----------------------------------------------------------------------------------------------
# Recognition weights.


def recognition_weights(src_features, tgt_features) -> np.ndarray:
  """Per-position weights of the target image tokens for the FDP loss.

  src_features, tgt_features: [n, c] (or [h, w, c]) pre-quantisation VQ encoder features of the two
  frames. Returns [n] float32: squared L2 distance per position, scaled so the example's mean
  weight is 1, so tokens where the frame changes dominate the loss and unchanged ones get 0.
  When nothing changes (all distances 0) every weight is 1.
  """
  src = np.asarray(src_features, np.float64)
  tgt = np.asarray(tgt_features, np.float64)
  if src.shape != tgt.shape:
    raise ValueError(f'source features {src.shape} and target features {tgt.shape} differ')
  src = src.reshape(-1, src.shape[-1])
  tgt = tgt.reshape(-1, tgt.shape[-1])
  dist = np.sum(np.square(src - tgt), axis=-1)
  mean = dist.mean() if dist.size else 0.0
  if not mean > 0:
    return np.ones(dist.shape, np.float32)
  return (dist / mean).astype(np.float32)


def example_recognition_weights(example: Mapping[str, Any]) -> np.ndarray:
  """The example's stored 'recognition_weights' [n], else computed from its
  'src_features'/'tgt_features' (what data/records.py stores), else a UserError."""
  rw = example.get(RECOGNITION_WEIGHTS)
  if rw is not None:
    return np.asarray(rw, np.float32).reshape(-1)
  if example.get(SRC_FEATURES) is not None and example.get(TGT_FEATURES) is not None:
    return recognition_weights(example[SRC_FEATURES], example[TGT_FEATURES])
  raise UserError('An FDP example has neither recognition_weights nor src/tgt_features; prepare '
                  'the data set again with VQ features or set data.recognition_weights=False.')


# ----------------------------------------------------------------------------------------------
# Building examples.


def build_idp(example: Mapping[str, Any], vocab: VocabLike, max_action_tokens: int) -> Sequence:
  """IDP sequence `<bos> <boi> src <eoi> <boi> tgt <eoi> action <eos>`; loss on `action <eos>`.

  A truncated action still ends with <eos> (the model learns to stop at the cap).
  """
  action, truncated = action_ids_of(example, vocab, max_action_tokens)
  token_ids, weights = idp_scoring_sequence(example[SRC_CODES], example[TGT_CODES], action, vocab)
  prompt_len = token_ids.size - action.size - 1
  return Sequence(token_ids, weights, prompt_len, IDP, truncated)


def build_fdp(example: Mapping[str, Any], vocab: VocabLike, max_action_tokens: int,
              use_recognition_weights: bool, recognition_floor: float = 0.0) -> Sequence:
  """FDP sequence `<bos> action <boi> src <eoi> <boi> tgt <eoi>`; loss on `tgt <eoi>`.

  Target code i is weighted by `floor + (1 - floor) * example['recognition_weights'][i]` when
  `use_recognition_weights` (the mean stays 1; floor 0 is the pure weighting, under which a code
  whose features do not change is not trained at all), else 1; the closing <eoi> always has
  weight 1.
  """
  require(0.0 <= recognition_floor <= 1.0,
          f'data.recognition_floor={recognition_floor} must lie in [0, 1].')
  action, truncated = action_ids_of(example, vocab, max_action_tokens)
  prompt = fdp_prompt(example[SRC_CODES], action, vocab)
  tgt = np.asarray(vocab.codes_to_ids(np.asarray(example[TGT_CODES]).reshape(-1)), np.int32)
  token_ids = np.concatenate([prompt, tgt, [vocab.eoi_id]]).astype(np.int32)
  weights = np.zeros(token_ids.shape, np.float32)
  if use_recognition_weights:
    rw = example_recognition_weights(example)
    if rw.size != tgt.size:
      raise UserError(f'An FDP example has {rw.size} recognition_weights for {tgt.size} target '
                      'codes; prepare the data set again with the same image tokenizer.')
    weights[prompt.size:prompt.size + tgt.size] = recognition_floor + (1 - recognition_floor) * rw
  else:
    weights[prompt.size:prompt.size + tgt.size] = 1.0
  weights[-1] = 1.0  # the closing <eoi>
  return Sequence(token_ids, weights, int(prompt.size), FDP, truncated)


def build(example: Mapping[str, Any], task: int, vocab: VocabLike, max_action_tokens: int,
          use_recognition_weights: bool = True, recognition_floor: float = 0.0) -> Sequence:
  """`build_idp` or `build_fdp` by task id."""
  if task == IDP:
    return build_idp(example, vocab, max_action_tokens)
  if task == FDP:
    return build_fdp(example, vocab, max_action_tokens, use_recognition_weights,
                     recognition_floor)
  raise ValueError(f'unknown task {task}')


def build_document(images, text_ids, vocab: VocabLike, image_output: bool) -> Sequence:
  """A pretraining document: `images` is a list of code arrays ([n] or [h, w]) in order.

  Text output (`image_output=False`): `<bos> <boi> img_1 <eoi> ... text <eos>`, loss on
  `text <eos>`. Image output: `<bos> text <boi> img_1 <eoi> ... <boi> img_k <eoi>` with the last
  image as the output, loss on its codes and `<eoi>` (text may be empty: an image after images).
  """
  text_ids = np.asarray(text_ids, np.int32).reshape(-1)
  frames = [image_tokens(c, vocab) for c in images]
  require(len(frames) > 0, 'A pretraining document needs at least one image.')
  if image_output:
    parts = [np.asarray([vocab.bos_id], np.int32), text_ids] + frames
    token_ids = np.concatenate(parts).astype(np.int32)
    weights = np.zeros(token_ids.shape, np.float32)
    weights[token_ids.size - frames[-1].size + 1:] = 1.0  # the output codes and <eoi>
    return Sequence(token_ids, weights, int(token_ids.size - frames[-1].size + 1), FDP)
  require(text_ids.size > 0, 'A text-output pretraining document needs text.')
  prompt = np.concatenate([np.asarray([vocab.bos_id], np.int32)] + frames).astype(np.int32)
  token_ids = np.concatenate([prompt, text_ids, [vocab.eos_id]]).astype(np.int32)
  weights = np.zeros(token_ids.shape, np.float32)
  weights[prompt.size:] = 1.0
  return Sequence(token_ids, weights, int(prompt.size), IDP)


# ----------------------------------------------------------------------------------------------
# Batching.


def choose_seq_len(lengths: Iterable[int], max_seq_len: int,
                   buckets: SequenceT[int] = ()) -> int:
  """Smallest bucket >= max(lengths) (fewer distinct shapes to compile), else max_seq_len."""
  longest = max(lengths, default=0)
  for b in sorted(buckets):
    if longest <= b <= max_seq_len:
      return int(b)
  return int(max_seq_len)


def _check_fits(seq: Sequence, seq_len: int) -> None:
  if len(seq) > seq_len:
    raise UserError(f'A {TASK_NAMES[seq.task].upper()} example has {len(seq)} tokens, more than '
                    f'data.max_seq_len={seq_len}; raise data.max_seq_len or lower '
                    'data.action_max_tokens.')


def _empty_batch(num_rows: int, seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  return {
      'token_ids': np.full((num_rows, seq_len), pad_id, np.int32),
      'positions': np.zeros((num_rows, seq_len), np.int32),
      'segment_ids': np.zeros((num_rows, seq_len), np.int32),
      'loss_weights': np.zeros((num_rows, seq_len), np.float32),
      'task': np.full((num_rows,), NO_TASK, np.int32),
      'task_ids': np.full((num_rows, seq_len), NO_TASK, np.int32),
  }


def _place(batch, row: int, start: int, segment: int, seq: Sequence) -> None:
  end = start + len(seq)
  batch['token_ids'][row, start:end] = seq.token_ids
  batch['positions'][row, start:end] = np.arange(len(seq), dtype=np.int32)
  batch['segment_ids'][row, start:end] = segment
  batch['loss_weights'][row, start:end] = seq.loss_weights
  batch['task_ids'][row, start:end] = seq.task
  if segment == 1:
    batch['task'][row] = seq.task


def pad_batch(sequences: SequenceT[Sequence], seq_len: int, pad_id: int,
              num_rows: int | None = None) -> dict[str, np.ndarray]:
  """One sequence per row, right-padded to seq_len.

  Returns the batch dict (see BATCH_KEYS) with [num_rows, seq_len] arrays and task [num_rows];
  num_rows defaults to len(sequences), extra rows are all padding (segment 0, task -1).
  """
  num_rows = len(sequences) if num_rows is None else num_rows
  if len(sequences) > num_rows:
    raise ValueError(f'{len(sequences)} sequences do not fit in {num_rows} rows')
  batch = _empty_batch(num_rows, seq_len, pad_id)
  for row, seq in enumerate(sequences):
    _check_fits(seq, seq_len)
    _place(batch, row, 0, 1, seq)
  return batch


def pack_sequences(sequences: SequenceT[Sequence], seq_len: int, pad_id: int,
                   num_rows: int | None = None) -> tuple[dict[str, np.ndarray], list[int]]:
  """First-fit packing: each sequence, in order, goes into the first row with room for it.

  Row r holds segments 1, 2, ... (positions restart at 0 in each, so attention and RoPE see each
  example alone); the tail of a row is padding (segment 0). With num_rows=None as many rows as
  needed are used; with a fixed num_rows the sequences that fit nowhere are left out.

  Returns (batch, leftover) where leftover lists the indices of the sequences left out, in order.
  `task [b]` is the task of a row's first segment (-1 for an empty row); `task_ids [b, s]` is per
  token, so mixed rows can still split their losses per objective.
  """
  used: list[int] = []  # tokens used per row
  rows: list[list[int]] = []
  leftover = []
  for i, seq in enumerate(sequences):
    _check_fits(seq, seq_len)
    for r, n in enumerate(used):
      if n + len(seq) <= seq_len:
        used[r] += len(seq)
        rows[r].append(i)
        break
    else:
      if num_rows is None or len(used) < num_rows:
        used.append(len(seq))
        rows.append([i])
      else:
        leftover.append(i)
  batch = _empty_batch(len(rows) if num_rows is None else num_rows, seq_len, pad_id)
  for r, members in enumerate(rows):
    start = 0
    for segment, i in enumerate(members, start=1):
      _place(batch, r, start, segment, sequences[i])
      start += len(sequences[i])
  return batch, leftover


def padding_fraction(batch: Mapping[str, np.ndarray]) -> float:
  """Fraction of the batch's token slots that are padding (segment 0)."""
  seg = np.asarray(batch['segment_ids'])
  return float(np.mean(seg == 0)) if seg.size else 0.0


def concat_batches(batches: SequenceT[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks batch dicts with the same seq_len along the batch axis."""
  return {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}
