"""Image metrics of AURORA-BENCH as the paper reports them: L1, CLIP-I, CLIP-T and DINO.

- L1: mean absolute difference of RGB values scaled to [0, 1], computed at the source frame's
  resolution; a target or prediction of another size is resized (bicubic, as PIL's default) to it.
- CLIP-I: cosine similarity of the CLIP image embeddings of the prediction and the target.
- CLIP-T: cosine similarity of the prediction's CLIP image embedding and the instruction's CLIP
  text embedding (the benchmark has an instruction for every item, captions only for some).
- DINO: cosine similarity of the DINO [CLS] features of the prediction and the target.

The embedding models are transformers models loaded from LOCAL directories (no hub access); each
directory must hold the model and its processor (image processor, plus tokenizer for CLIP).
Images everywhere are `uint8 [h, w, 3]` numpy arrays, as `data.images.load_rgb` returns them.
"""

import os
from typing import Sequence

import numpy as np
from PIL import Image

from jax_vlm.core.errors import UserError


def resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes `uint8 [h, w, 3]` to `(width, height)`, bicubic; a no-op when it already fits."""
  image = np.asarray(image, dtype=np.uint8)
  width, height = size
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC), dtype=np.uint8)


def l1_distance(prediction: np.ndarray, target: np.ndarray,
                size: tuple[int, int] | None = None) -> float:
  """Mean |prediction - target| over pixels and channels, values in [0, 1].

  Args:
    prediction: `uint8 [h, w, 3]`.
    target: `uint8 [h', w', 3]`.
    size: `(width, height)` both are brought to before comparing: the source frame's size on
      AURORA-BENCH. Default: the prediction's size.
  """
  prediction = np.asarray(prediction, dtype=np.uint8)
  if size is None:
    size = (prediction.shape[1], prediction.shape[0])
  a = resize_rgb(prediction, size).astype(np.float64) / 255.0
  b = resize_rgb(target, size).astype(np.float64) / 255.0
  return float(np.mean(np.abs(a - b)))


def _require_dir(model_dir: str, what: str, config_key: str) -> None:
  if not os.path.isdir(model_dir):
    raise UserError(
        f'The {what} model directory {model_dir} does not exist; set {config_key} to a local '
        'transformers directory (model + processor) or leave it empty to skip the metric.')


def _normalize(features) -> np.ndarray:
  features = np.asarray(features, dtype=np.float64)
  return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def _pooled(output):
  """transformers < 5 returns the projected features as a tensor, >= 5 inside `pooler_output`."""
  return output if hasattr(output, 'shape') else output.pooler_output


class ClipScorer:
  """CLIP image and text embeddings from a local directory (CLIPModel + its processor)."""

  def __init__(self, model_dir: str, batch_size: int = 16):
    _require_dir(model_dir, 'CLIP', 'eval.clip_dir')
    import torch  # imported here: torch is only needed when a metric model is used
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
    self._torch = torch
    try:
      self.model = CLIPModel.from_pretrained(model_dir).eval()
      self.image_processor = AutoImageProcessor.from_pretrained(model_dir)
      self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
      raise UserError(
          f'The CLIP model directory {model_dir} could not be loaded ({type(e).__name__}); it must '
          'hold a CLIPModel with its image processor and tokenizer (save_pretrained).') from e
    self.batch_size = batch_size
    self.max_text_len = self.model.config.text_config.max_position_embeddings

  def image_embeddings(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """`n x uint8 [h, w, 3]` -> unit-norm `[n, d]`."""
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = [np.asarray(im, dtype=np.uint8) for im in images[start:start + self.batch_size]]
      pixels = self.image_processor(images=chunk, return_tensors='pt')['pixel_values']
      with self._torch.inference_mode():
        out.append(_pooled(self.model.get_image_features(pixel_values=pixels)).float().numpy())
    return _normalize(np.concatenate(out, axis=0))

  def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
    """`n` strings -> unit-norm `[n, d]` (truncated to CLIP's 77-token context)."""
    out = []
    for start in range(0, len(texts), self.batch_size):
      tokens = self.tokenizer(
          list(texts[start:start + self.batch_size]), padding=True, truncation=True,
          max_length=self.max_text_len, return_tensors='pt')
      with self._torch.inference_mode():
        features = self.model.get_text_features(
            input_ids=tokens['input_ids'], attention_mask=tokens['attention_mask'])
      out.append(_pooled(features).float().numpy())
    return _normalize(np.concatenate(out, axis=0))

  def scores(self, prediction: np.ndarray, target: np.ndarray, instruction: str) -> dict:
    """{'CLIP_I': cos(pred, target), 'CLIP_T': cos(pred, instruction)} for one item."""
    pred_emb, tgt_emb = self.image_embeddings([prediction, target])
    text_emb = self.text_embeddings([instruction])[0]
    return {'CLIP_I': float(pred_emb @ tgt_emb), 'CLIP_T': float(pred_emb @ text_emb)}


class DinoScorer:
  """DINO [CLS] features (ViTModel or Dinov2Model + image processor) from a local directory."""

  def __init__(self, model_dir: str, batch_size: int = 16):
    _require_dir(model_dir, 'DINO', 'eval.dino_dir')
    import torch
    from transformers import AutoImageProcessor, AutoModel
    self._torch = torch
    try:
      # DINO's feature is the final-layernormed [CLS] token (not ViT's tanh pooler output).
      self.model = AutoModel.from_pretrained(model_dir).eval()
      self.image_processor = AutoImageProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
      raise UserError(
          f'The DINO model directory {model_dir} could not be loaded ({type(e).__name__}); it must '
          'hold a ViT or Dinov2 model with its image processor (save_pretrained).') from e
    self.batch_size = batch_size

  def image_embeddings(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """`n x uint8 [h, w, 3]` -> unit-norm [CLS] features `[n, d]`."""
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = [np.asarray(im, dtype=np.uint8) for im in images[start:start + self.batch_size]]
      pixels = self.image_processor(images=chunk, return_tensors='pt')['pixel_values']
      with self._torch.inference_mode():
        hidden = self.model(pixel_values=pixels).last_hidden_state
      out.append(hidden[:, 0].float().numpy())
    return _normalize(np.concatenate(out, axis=0))

  def scores(self, prediction: np.ndarray, target: np.ndarray) -> dict:
    """{'DINO': cos(pred, target)} for one item."""
    pred_emb, tgt_emb = self.image_embeddings([prediction, target])
    return {'DINO': float(pred_emb @ tgt_emb)}
