"""GPT-4o as judge of a predicted frame: the paper's two-score prompt and a small client for it.

The judge sees the source frame and the predicted frame (as base64 PNG data URLs) with the action
and returns two scores, 0-10: editing success, and minimal editing (10 = no over-editing). An item's
score is the minimum of the two; a subset's score is the mean over items the judge scored.

The prompt is VIEScore's two-image "semantic consistency" rubric, which the paper used; its text is
kept as published so that scores stay comparable. The endpoint is any OpenAI-compatible
`POST {base_url}/chat/completions`; the API key comes from an environment variable.

Failures are never scored 0 in silence: an unparseable reply, a refusal, or an HTTP error is
retried (`max_retries`, exponential backoff), then returned as an invalid `JudgeResult` that the
caller counts. An endpoint that cannot be reached at all raises `JudgeUnavailable`.
"""

import base64
import dataclasses
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from data.images import encode_png
from jax_vlm.core.errors import UserError

JUDGE_PROMPT = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of "
    "the AI-generated image(s) based on given rules.\n"
    "All the input images are AI-generated. All human in the images are AI-generated too. so "
    "you need not worry about the privacy confidentials.\n"
    "\n"
    "You will have to give your output in this way (Keep your reasoning concise and short.):\n"
    "{\n"
    "\"score\" : [...],\n"
    "\"reasoning\" : \"...\"\n"
    "}\n"
    "\n"
    "RULES:\n"
    "\n"
    "Two images will be provided: The first being the original AI-generated image and the "
    "second being an edited version of the first.\n"
    "The objective is to evaluate how successfully the editing instruction has been executed "
    "in the second image.\n"
    "\n"
    "Note that sometimes the two images might look identical due to the failure of image edit.\n"
    "\n"
    "From scale 0 to 10:\n"
    "A score from 0 to 10 will be given based on the success of the editing. (0 indicates "
    "that the scene in the edited image does not follow the editing instruction at all. 10 "
    "indicates that the scene in the edited image follow the editing instruction text "
    "perfectly.)\n"
    "A second score from 0 to 10 will rate the degree of overediting in the second image. (0 "
    "indicates that the scene in the edited image is completely different from the original. "
    "10 indicates that the edited image can be recognized as a minimal edited yet effective "
    "version of original.)\n"
    "Put the score in a list such that output score = [score1, score2], where 'score1' "
    "evaluates the editing success and 'score2' evaluates the degree of overediting.\n"
    "\n"
    "Editing instruction: <instruction>\n"
)

MAX_SCORE = 10

# Typographic quotes some replies use instead of ASCII ones.
_QUOTES = str.maketrans({'\u201c': '"', '\u201d': '"', '\u201e': '"', '\u00ab': '"', '\u00bb': '"',
                         '\u2018': "'", '\u2019': "'", '\u201a': "'"})
_FENCE = re.compile(r'```[ \t]*[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```', re.DOTALL)
_NUM = r'["\']?\s*(\d+(?:\.\d+)?)\s*["\']?'
# `"score": [a, b]` as a JSON/Python key, or the prompt's own `score = [a, b]`.
_SCORE_PAIR = re.compile(
    r'["\']?\bscores?\b["\']?\s*[:=]\s*\[\s*' + _NUM + r'\s*,\s*' + _NUM + r'\s*\]', re.IGNORECASE)


def _number(value: Any) -> float | int | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, str):
    try:
      value = float(value.strip())
    except ValueError:
      return None
  if not isinstance(value, (int, float)) or not np.isfinite(value):
    return None
  return int(value) if float(value).is_integer() else float(value)


def _valid_pair(pair) -> tuple | None:
  if not isinstance(pair, (list, tuple)) or len(pair) != 2:
    return None
  a, b = _number(pair[0]), _number(pair[1])
  if a is None or b is None or not (0 <= a <= MAX_SCORE and 0 <= b <= MAX_SCORE):
    return None
  return a, b


def _json_objects(text: str):
  """Yields dicts decoded from each `{...}` span of text (outermost first)."""
  decoder = json.JSONDecoder()
  for start in [m.start() for m in re.finditer(r'\{', text)]:
    try:
      obj, _ = decoder.raw_decode(text[start:])
    except ValueError:
      continue
    if isinstance(obj, dict):
      yield obj


def parse_scores(text: str | None) -> tuple | None:
  """The judge's (editing_success, minimal_editing) scores from its raw reply, or None.

  Accepts `{"score": [a, b], "reasoning": ...}` with or without spaces, inside ``` fences with or
  without a language name, with prose around it, with typographic quotes, and the prompt's own
  `score = [a, b]` phrasing. Scores must be numbers in [0, 10]; anything else (a refusal, a
  malformed list, out-of-range values) gives None.
  """
  if not text or not isinstance(text, str):
    return None
  text = text.translate(_QUOTES)
  fenced = _FENCE.findall(text)
  for candidate in fenced + [text]:
    for obj in _json_objects(candidate):
      for key, value in obj.items():
        if isinstance(key, str) and key.strip().lower() in ('score', 'scores'):
          pair = _valid_pair(value)
          if pair is not None:
            return pair
  match = _SCORE_PAIR.search(text)
  if match:
    return _valid_pair([match.group(1), match.group(2)])
  return None


@dataclasses.dataclass
class JudgeResult:
  """One item's judgement. `valid` False means no usable score (it is counted, never scored 0)."""
  valid: bool
  success: float | None = None  # editing success, 0-10
  minimal: float | None = None  # minimal editing (10 = no over-editing), 0-10
  final_score: float | None = None  # min(success, minimal)
  response: str = ''  # the judge's last raw reply
  error: str = ''  # why it is invalid
  attempts: int = 0

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


class JudgeUnavailable(UserError):
  """The judge endpoint could not be reached at all (connection refused, DNS, timeouts)."""


def image_data_url(image: np.ndarray) -> str:
  """`uint8 [h, w, 3]` -> 'data:image/png;base64,...'."""
  return 'data:image/png;base64,' + base64.b64encode(encode_png(image)).decode('ascii')


def build_messages(instruction: str, src_frame: np.ndarray, pred_frame: np.ndarray) -> list:
  """Chat messages: the prompt with the instruction, then the source and the predicted frame."""
  return [{
      'role': 'user',
      'content': [
          {'type': 'text', 'text': JUDGE_PROMPT.replace('<instruction>', instruction)},
          {'type': 'image_url', 'image_url': {'url': image_data_url(src_frame)}},
          {'type': 'image_url', 'image_url': {'url': image_data_url(pred_frame)}},
      ],
  }]


class JudgeClient:
  """Scores predicted frames with a chat model behind an OpenAI-compatible endpoint."""

  def __init__(self, base_url: str, model: str, api_key: str = '', max_retries: int = 3,
               backoff_s: float = 2.0, timeout_s: float = 120.0, max_tokens: int = 512,
               temperature: float = 0.0):
    self.url = base_url.rstrip('/') + '/chat/completions'
    self.model = model
    self.api_key = api_key
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.timeout_s = timeout_s
    self.max_tokens = max_tokens
    self.temperature = temperature

  @classmethod
  def from_config(cls, judge_config) -> 'JudgeClient':
    """From `config.eval.judge` (base_url, model, api_key_env, max_retries, backoff_s, ...)."""
    api_key = ''
    if judge_config.api_key_env:
      api_key = os.environ.get(judge_config.api_key_env, '')
      if not api_key:
        raise UserError(
            f'The judge is enabled but the environment variable {judge_config.api_key_env} is not '
            'set; export the API key there, or set eval.judge.api_key_env to "" for an endpoint '
            'without a key.')
    return cls(judge_config.base_url, judge_config.model, api_key,
               max_retries=judge_config.max_retries, backoff_s=judge_config.backoff_s,
               timeout_s=judge_config.timeout_s, max_tokens=judge_config.max_tokens,
               temperature=judge_config.temperature)

  def _post(self, payload: dict) -> dict:
    request = urllib.request.Request(
        self.url, data=json.dumps(payload).encode('utf-8'), method='POST',
        headers={'Content-Type': 'application/json',
                 **({'Authorization': f'Bearer {self.api_key}'} if self.api_key else {})})
    with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
      return json.loads(reply.read().decode('utf-8'))

  def judge(self, instruction: str, src_frame: np.ndarray, pred_frame: np.ndarray) -> JudgeResult:
    """Asks the judge about one item, retrying bad replies; never raises for a bad reply.

    Raises:
      JudgeUnavailable: every attempt failed to reach the endpoint.
      UserError: the endpoint rejects the request itself (HTTP 401/403/404: key, URL or model).
    """
    payload = {'model': self.model, 'messages': build_messages(instruction, src_frame, pred_frame),
               'max_tokens': self.max_tokens, 'temperature': self.temperature}
    response, error, unreachable = '', '', 0
    attempts = self.max_retries + 1
    for attempt in range(attempts):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      try:
        body = self._post(payload)
      except urllib.error.HTTPError as e:
        detail = e.read(500).decode('utf-8', 'replace').strip() if e.fp else ''
        if e.code in (401, 403, 404):
          raise UserError(
              f'The judge endpoint {self.url} answered HTTP {e.code} ({detail[:200] or e.reason}); '
              'check eval.judge.base_url, eval.judge.model and the API key.') from e
        error = f'HTTP {e.code}: {detail[:200] or e.reason}'
        continue
      except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as e:
        unreachable += 1
        error = f'unreachable: {getattr(e, "reason", e)}'
        continue
      except ValueError as e:  # not JSON
        error = f'reply is not JSON: {e}'
        continue
      message = ((body.get('choices') or [{}])[0] or {}).get('message') or {}
      response = message.get('content') or ''
      if isinstance(response, list):  # content parts
        response = ''.join(p.get('text', '') for p in response if isinstance(p, dict))
      if message.get('refusal'):
        error = f'refusal: {str(message["refusal"])[:200]}'
        response = response or str(message['refusal'])
        continue
      scores = parse_scores(response)
      if scores is None:
        error = 'unparseable reply (no "score": [a, b] with values in 0-10)'
        continue
      success, minimal = scores
      return JudgeResult(True, success, minimal, min(success, minimal), response, '', attempt + 1)
    if unreachable == attempts:
      raise JudgeUnavailable(
          f'The judge endpoint {self.url} could not be reached '
          f'({error.removeprefix("unreachable: ")}); start it (items already scored are kept and '
          'the same command continues from them) or set eval.judge.enabled=False.')
    return JudgeResult(False, response=response, error=error, attempts=attempts)
