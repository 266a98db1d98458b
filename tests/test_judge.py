"""The GPT-4o judge: reply parsing (incl. the authors' recorded replies) and the HTTP client
against a scripted OpenAI-compatible server on 127.0.0.1."""

import base64
import http.server
import io
import json
import os
import socket
import threading

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jax_vlm.core.errors import UserError
from jax_vlm.evaluation import judge
from jax_vlm.evaluation.aurora import summarize

JUDGE_OUTPUTS = '/work/shared/judge_outputs'

# --- parse_scores ---------------------------------------------------------------------------------


@pytest.mark.parametrize('reply, expected', [
    ('{"score": [8, 7], "reasoning": "ok"}', (8, 7)),
    ('{"score":[8,7],"reasoning":"ok"}', (8, 7)),
    ('{ "score" : [ 3 , 10 ] , "reasoning" : "ok" }', (3, 10)),
    ('```python\n{"score": [5, 9], "reasoning": "x"}\n```', (5, 9)),
    ('```json\n{"score": [2, 4], "reasoning": "x"}\n```', (2, 4)),
    ('```\n{"score": [1, 0], "reasoning": "x"}\n```', (1, 0)),
    ('Here is my evaluation:\n{"score": [6, 6], "reasoning": "fine"}\nHope this helps.', (6, 6)),
    ('{\u201cscore\u201d : [7, 2], \u201creasoning\u201d: \u201cthe cup\u2019s moved\u201d}',
     (7, 2)),
    ("{'score': [4, 5], 'reasoning': 'python dict'}", (4, 5)),
    ('{"score": [7.5, 8], "reasoning": "half points"}', (7.5, 8)),
    ('{"score": ["9", "3"], "reasoning": "strings"}', (9, 3)),
    ('The edit works. output score = [8, 6]', (8, 6)),
    ('{"reasoning": "no \\"score\\" here, only [1, 2]"}', None),
    ("I'm sorry, but I can't help with evaluating these images.", None),
    ('{"score": [11, 3], "reasoning": "out of range"}', None),
    ('{"score": [-1, 3], "reasoning": "negative"}', None),
    ('{"score": [5], "reasoning": "one value"}', None),
    ('', None),
    (None, None),
])
def test_parse_scores(reply, expected):
  assert judge.parse_scores(reply) == expected


@pytest.mark.skipif(not os.path.isdir(JUDGE_OUTPUTS),
                    reason=f'{JUDGE_OUTPUTS} (the authors\' recorded judge replies) is not here')
@pytest.mark.parametrize('name', ['chameleon-unsup-sft.json', 'got.json'])
def test_recorded_replies_reproduce_the_published_scores(name):
  with open(os.path.join(JUDGE_OUTPUTS, name)) as f:
    recorded = json.load(f)
  image_metrics = ('L1', 'CLIP_I', 'CLIP_T', 'DINO')
  records = []
  for task, entry in recorded.items():
    if task == 'all':
      continue
    # Each item carries its task's published image metrics, so task means equal them and `all`
    # checks our #sample weighting; items the judge did not score carry no verdict.
    task_metrics = {name: entry[name] for name in image_metrics}
    for prediction in entry['GPT4o_all_predictions']:
      scores = judge.parse_scores(prediction['response'])
      assert scores is not None, prediction['response']
      assert min(scores) == prediction['final_score'], prediction['response']
      records.append({'task': task, **task_metrics, 'judge': {
          'valid': True, 'final_score': min(scores), 'response': prediction['response']}})
    unjudged = entry['#sample'] - len(entry['GPT4o_all_predictions'])
    records += [{'task': task, **task_metrics}] * unjudged
  ours = summarize(records)
  for task, entry in recorded.items():
    assert ours[task]['GPT4o'] == pytest.approx(entry['GPT4o'], abs=1e-12), task
    assert ours[task]['#sample'] == entry['#sample']
    for name in image_metrics:
      assert ours[task][name] == pytest.approx(entry[name], abs=1e-12), (task, name)
    if task != 'all':
      assert ours[task]['#gpt4o_valid'] == entry['#gpt4o_valid']


# --- the client against a local server ------------------------------------------------------------


class FakeServer:
  """Answers POST /v1/chat/completions from a script of (status, body) pairs, recording requests;
  once the script is used up, with `default` (a 500 when None)."""

  def __init__(self, default=None):
    self.script, self.requests, self.default = [], [], default
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def do_POST(self):
        length = int(self.headers['Content-Length'])
        outer.requests.append({'path': self.path, 'headers': dict(self.headers),
                               'body': json.loads(self.rfile.read(length))})
        status, body = (outer.script.pop(0) if outer.script
                        else outer.default or (500, {'error': 'no script'}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}/v1'
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


def _reply(content, refusal=None):
  return 200, {'choices': [{'message': {'role': 'assistant', 'content': content,
                                        'refusal': refusal}}]}


@pytest.fixture
def server():
  s = FakeServer()
  yield s
  s.close()


def _client(url, **kw):
  kw = {'max_retries': 2, 'backoff_s': 0.01, 'timeout_s': 5.0, **kw}
  return judge.JudgeClient(url, 'gpt-4o', api_key='sk-test', **kw)


SRC = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
PRED = np.full((4, 5, 3), 9, dtype=np.uint8)


def test_good_reply_and_request_contents(server):
  server.script = [_reply('{"score": [9, 4], "reasoning": "ok"}')]
  result = _client(server.url).judge('Open the door', SRC, PRED)
  assert (result.valid, result.success, result.minimal, result.final_score) == (True, 9, 4, 4)
  assert result.attempts == 1
  (request,) = server.requests
  assert request['path'] == '/v1/chat/completions'
  assert request['headers']['Authorization'] == 'Bearer sk-test'
  body = request['body']
  assert body['model'] == 'gpt-4o'
  content = body['messages'][0]['content']
  assert content[0]['type'] == 'text'
  assert 'Editing instruction: Open the door' in content[0]['text']
  assert 'score1' in content[0]['text'] and 'overediting' in content[0]['text']
  images = [part['image_url']['url'] for part in content[1:]]
  decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(',', 1)[1]))))
             for u in images]
  assert all(u.startswith('data:image/png;base64,') for u in images)
  np.testing.assert_array_equal(decoded[0], SRC)  # source first, prediction second
  np.testing.assert_array_equal(decoded[1], PRED)


def test_fenced_reply_after_refusal_and_server_error_is_retried(server):
  server.script = [
      _reply("I'm sorry, I can't assist with that."),
      _reply(None, refusal='I cannot evaluate these images.'),
      (500, {'error': {'message': 'overloaded'}}),
  ]
  server.script.append(_reply('```python\n{"score": [6, 8], "reasoning": "ok"}\n```'))
  result = _client(server.url, max_retries=3).judge('x', SRC, PRED)
  assert (result.valid, result.final_score, result.attempts) == (True, 6, 4)
  assert len(server.requests) == 4


def test_persistent_failures_are_invalid_and_counted_not_zero(server):
  server.script = [(500, {'error': 'boom'})] * 3
  result = _client(server.url, max_retries=2).judge('x', SRC, PRED)
  assert not result.valid and result.final_score is None
  assert result.attempts == 3 and 'HTTP 500' in result.error
  server.script = [_reply('No scores from me.')] * 3
  result = _client(server.url, max_retries=2).judge('x', SRC, PRED)
  assert not result.valid and 'unparseable' in result.error
  assert result.response == 'No scores from me.'
  # Summaries leave invalid verdicts out of the mean and count them.
  records = [{'task': 't', 'L1': 0.1, 'judge': result.to_json()},
             {'task': 't', 'L1': 0.3, 'judge': {'valid': True, 'final_score': 6, 'response': 'r'}}]
  summary = summarize(records)
  assert summary['t']['GPT4o'] == 6 and summary['t']['#gpt4o_invalid'] == 1
  assert summary['t']['#gpt4o_valid'] == 1 and summary['all']['#gpt4o_invalid'] == 1


def test_auth_error_stops_at_once(server):
  server.script = [(401, {'error': {'message': 'bad key'}})]
  with pytest.raises(UserError, match='HTTP 401'):
    _client(server.url).judge('x', SRC, PRED)
  assert len(server.requests) == 1


def test_unreachable_endpoint_is_one_sentence():
  with socket.socket() as s:  # a port nobody listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  with pytest.raises(judge.JudgeUnavailable, match='could not be reached') as e:
    _client(f'http://127.0.0.1:{port}/v1', max_retries=1).judge('x', SRC, PRED)
  message = str(e.value)
  assert message.count('. ') == 0 and message.endswith('.')
  assert 'eval.judge.enabled=False' in message


def test_from_config_needs_the_key_variable(monkeypatch):
  config = ml_collections.ConfigDict(dict(
      base_url='http://127.0.0.1:1/v1', model='m', api_key_env='JAX_VLM_TEST_KEY', max_retries=0,
      backoff_s=0.0, timeout_s=1.0, max_tokens=16, temperature=0.0))
  monkeypatch.delenv('JAX_VLM_TEST_KEY', raising=False)
  with pytest.raises(UserError, match='JAX_VLM_TEST_KEY'):
    judge.JudgeClient.from_config(config)
  monkeypatch.setenv('JAX_VLM_TEST_KEY', 'k')
  assert judge.JudgeClient.from_config(config).api_key == 'k'
  config.api_key_env = ''
  assert judge.JudgeClient.from_config(config).api_key == ''
