"""GPT-4o as judge of a predicted frame: the paper's two-score prompt and a small client for it.

The judge sees the source frame and the predicted frame (as base64 PNG data URLs) with the action
and returns two scores, 0-10: editing success, and minimal editing (10 = no over-editing). An item's
score is the minimum of the two; a subset's score is the mean over items the judge scored.

The prompt is VIEScore's two-image "semantic consistency" rubric, which the paper used; its text is
kept as published so that scores stay comparable. The endpoint is any OpenAI-compatible
`POST {base_url}/chat/completions`; the API key comes from an environment variable.

Failures are never scored 0 in silence: any reply body that is not a chat completion with a score
(not JSON, a JSON list or string, `choices`/`message`/`content` missing or of another type, a
refusal, an unparseable text), an HTTP error, or HTTP 429 (waiting `Retry-After` seconds, at most
`MAX_RETRY_AFTER_S`) is a failed attempt with a reason; it is retried (`max_retries`, exponential
backoff), then returned as an invalid `JudgeResult` that the caller counts. An endpoint that cannot
be reached at all raises `JudgeUnavailable`. The API key is masked ('***') in every message, error
and recorded reply (an endpoint may echo the Authorization header). `judge_many` runs several items
with bounded concurrency (`max_in_flight` requests at once).
"""

import base64
import concurrent.futures
import dataclasses
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

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
MAX_RETRY_AFTER_S = 60.0  # the longest Retry-After wait honoured per attempt
MASK = '***'

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


def reply_text(body: Any) -> tuple[str, str, str]:
  """(text, refusal, error) from a decoded chat-completion body of any shape; `error` says why
  there is no text ('' when there is)."""
  if not isinstance(body, dict):
    return '', '', f'reply is a JSON {type(body).__name__}, not an object'
  if isinstance(body.get('error'), (dict, str)):
    err = body['error']
    return '', '', f'error reply: {str(err.get("message", err) if isinstance(err, dict) else err)}'
  choices = body.get('choices')
  if not isinstance(choices, list) or not choices:
    return '', '', 'reply has no "choices" list'
  choice = choices[0]
  if not isinstance(choice, dict):
    return '', '', f'"choices"[0] is a {type(choice).__name__}, not an object'
  message = choice.get('message')
  if isinstance(message, str):  # some servers put the text there directly
    return message, '', ''
  if not isinstance(message, dict):
    return '', '', f'"message" is {type(message).__name__}, not an object'
  refusal = message.get('refusal')
  refusal = str(refusal) if refusal else ''
  content = message.get('content')
  if isinstance(content, list):  # content parts
    content = ''.join(str(p.get('text', '')) for p in content if isinstance(p, dict))
  if content is None:
    content = ''
  if not isinstance(content, str):
    return '', refusal, f'"content" is a {type(content).__name__}, not text'
  if refusal:
    return content, refusal, f'refusal: {refusal[:200]}'
  if not content:
    return '', '', 'reply has an empty "content"'
  return content, '', ''


def _retry_after(headers: Any) -> float | None:
  try:
    value = headers.get('Retry-After') if headers is not None else None
    return None if value is None else min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
  except (TypeError, ValueError):
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
               temperature: float = 0.0, max_in_flight: int = 4):
    self.url = base_url.rstrip('/') + '/chat/completions'
    self.model = model
    self.api_key = api_key
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.timeout_s = timeout_s
    self.max_tokens = max_tokens
    self.temperature = temperature
    self.max_in_flight = max(int(max_in_flight), 1)

  def mask(self, text: Any) -> str:
    """`text` with the API key replaced by '***' (what every message and record goes through)."""
    text = str(text)
    if self.api_key and len(self.api_key) >= 4:
      text = text.replace(self.api_key, MASK)
    return text

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
               temperature=judge_config.temperature,
               max_in_flight=int(judge_config.get('max_in_flight', 4)))

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
    wait = None
    for attempt in range(attempts):
      if attempt:
        time.sleep(wait if wait is not None else self.backoff_s * 2 ** (attempt - 1))
      wait = None
      try:
        body = self._post(payload)
      except urllib.error.HTTPError as e:
        try:
          detail = e.read(500).decode('utf-8', 'replace').strip() if e.fp else ''
        except Exception:  # noqa: BLE001 - a body that cannot be read is no detail
          detail = ''
        detail = self.mask(detail)
        if e.code in (401, 403, 404):
          raise UserError(
              f'The judge endpoint {self.url} answered HTTP {e.code} ({detail[:200] or e.reason}); '
              'check eval.judge.base_url, eval.judge.model and the API key.') from None
        if e.code == 429:
          wait = _retry_after(e.headers)
        error = f'HTTP {e.code}: {detail[:200] or e.reason}'
        continue
      except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError, OSError) as e:
        unreachable += 1
        error = self.mask(f'unreachable: {getattr(e, "reason", e)}')
        continue
      except ValueError as e:  # not JSON (or not UTF-8)
        error = self.mask(f'reply is not JSON: {str(e)[:200]}')
        continue
      except http.client.HTTPException as e:  # a reply cut short, a malformed status line
        error = self.mask(f'bad HTTP reply: {type(e).__name__}: {str(e)[:200]}')
        continue
      text, refusal, why = reply_text(body)
      response = self.mask(text or refusal)
      if why:
        error = self.mask(why)
        continue
      scores = parse_scores(text)
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

  def judge_many(self, items: Sequence[tuple[str, np.ndarray, np.ndarray]]
                 ) -> list[JudgeResult]:
    """`judge` over (instruction, src_frame, pred_frame) items, at most `max_in_flight` requests
    at once; results in the items' order. JudgeUnavailable / UserError from any item is raised
    after the requests in flight finish."""
    if self.max_in_flight == 1 or len(items) <= 1:
      return [self.judge(*item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(self.max_in_flight) as pool:
      futures = [pool.submit(self.judge, *item) for item in items]
      return [f.result() for f in futures]
