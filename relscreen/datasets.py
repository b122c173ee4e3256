"""Loaders for the image-sequence tasks (ALGORITHM §6): MNIST from standard IDX files,
or scikit-learn's built-in 8x8 digits when no files are given. Nothing is
downloaded; a missing or malformed file raises ``DatasetError`` naming it.
"""

import gzip
import pathlib
from typing import NamedTuple

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
PERMUTATION_SEED = 100  # numpy.random.RandomState(100).permutation, as the reference


class DatasetError(ValueError):
  """A data file is missing or not what it should be."""


class Splits(NamedTuple):
  """Pixel sequences [n, steps, 1] float32 in [0, 1] and labels [n] int32."""

  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray

  @property
  def steps(self) -> int:
    return self.train_x.shape[1]


def file_variants(stem: str) -> list[str]:
  """The names a file is commonly shipped under: ``stem``, with ``.idx`` spelled
  ``-idx`` or ``.idx`` (MNIST mirrors differ), each raw or gzipped."""
  names = [stem]
  if "-idx" in stem:
    names.append(stem.replace("-idx", ".idx"))
  return [n + ext for n in names for ext in ("", ".gz")]


def find_file(data_dir, stem: str) -> pathlib.Path:
  """The first of ``file_variants(stem)`` present in ``data_dir``."""
  base = pathlib.Path(data_dir)
  names = file_variants(stem)
  for name in names:
    if (base / name).is_file():
      return base / name
  raise DatasetError(f"{base / stem} not found in --data_dir (accepted names: "
                     f"{', '.join(names)})")


def _open(path: pathlib.Path, mode: str):
  """Opens ``path``, gunzipping when its name ends in .gz."""
  if path.suffix == ".gz":
    return gzip.open(path, mode + ("t" if mode == "r" else ""))
  return open(path, mode)  # pylint: disable=unspecified-encoding


def read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
  """Reads an IDX file of unsigned bytes with ``ndim`` dimensions."""
  try:
    with _open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise DatasetError(f"{path} could not be read ({e})") from e
  header = 4 + 4 * ndim
  if len(data) < header or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
    raise DatasetError(f"{path} is not an IDX file of unsigned bytes with {ndim} "
                       f"dimensions (expected magic 0x0000080{ndim}, got "
                       f"0x{data[:4].hex() if len(data) >= 4 else 'short file'})")
  dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(data) - header != int(np.prod(dims)):
    raise DatasetError(f"{path} should hold {int(np.prod(dims))} bytes of data for shape "
                       f"{dims}, but holds {len(data) - header}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _as_sequences(images: np.ndarray, scale: float) -> np.ndarray:
  return (images.reshape(len(images), -1, 1) / scale).astype(np.float32)


def load_mnist(data_dir, n_val: int = 10_000) -> Splits:
  """MNIST: the first 50k training images train, the last 10k validate; t10k tests."""
  arrays = {k: read_idx(find_file(data_dir, stem), 3 if "images" in k else 1)
            for k, stem in MNIST_FILES.items()}
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if len(images) != len(labels):
      raise DatasetError(f"{split}: {len(images)} images but {len(labels)} labels in "
                         f"{data_dir}")
    if labels.max(initial=0) > 9:
      raise DatasetError(f"{split} labels in {data_dir} exceed 9")
  if len(arrays["train_images"]) <= n_val:
    raise DatasetError(f"the training set in {data_dir} has "
                       f"{len(arrays['train_images'])} images; need more than {n_val}")
  x = _as_sequences(arrays["train_images"], 255.0)
  y = arrays["train_labels"].astype(np.int32)
  return Splits(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:],
                _as_sequences(arrays["test_images"], 255.0),
                arrays["test_labels"].astype(np.int32))


def load_digits() -> Splits:
  """scikit-learn's 1797 8x8 digits (64 steps): 1000 train, 297 validation, 500 test.

  Read straight from the CSV that scikit-learn installs (64 pixel values in
  0..16, then the label, per row), as ``sklearn.datasets.load_digits`` reads it,
  without importing scikit-learn (3-4 s of imports for a 60 kB file)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("sklearn")
  if spec is None or not spec.submodule_search_locations:
    raise DatasetError("the 8x8 digits come with scikit-learn, which is not installed: "
                       "pip install scikit-learn")
  path = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
  try:
    with gzip.open(path, "rt") as f:
      data = np.loadtxt(f, delimiter=",")
  except OSError as e:
    raise DatasetError(f"could not read scikit-learn's digits from {path}: {e}") from e
  if data.shape != (1797, 65):
    raise DatasetError(f"{path} holds a {data.shape} table; expected 1797 rows of 65")
  images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int32)
  x, y = _as_sequences(images, 16.0), target
  return Splits(x[:1000], y[:1000], x[1000:1297], y[1000:1297], x[1297:], y[1297:])


def permute(splits: Splits, seed: int = PERMUTATION_SEED) -> Splits:
  """The same fixed permutation of the pixel order for every split."""
  order = np.random.RandomState(seed).permutation(splits.steps)
  return Splits(*(a[:, order] if a.ndim == 3 else a for a in splits))


def write_idx(path, array: np.ndarray):
  """Writes ``array`` (uint8) as an IDX file, gzipped if ``path`` ends in .gz."""
  path = pathlib.Path(path)
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


# --- Character-level Penn Treebank -------------------------------------------------

PTB_SPLITS = ("train", "valid", "test")
EOS = "<eos>"


def ptb_chars_from_words(text: str) -> list[str]:
  """Mikolov word-level PTB text -> the standard char-PTB token stream.

  Each non-empty line becomes its characters with ``_`` at word boundaries,
  followed by one end-of-line symbol.
  """
  tokens = []
  for line in text.splitlines():
    words = line.split()
    if words:
      tokens.extend("_".join(words))
      tokens.append(EOS)
  return tokens


def ptb_chars_from_char_file(path: pathlib.Path) -> list[str]:
  """A ``ptb.char.*.txt`` file (space-separated characters, raw or gzipped) ->
  token stream."""
  try:
    with _open(path, "r") as f:
      text = f.read()
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise DatasetError(f"{path} could not be read as text ({e})") from e
  tokens = []
  for line in text.splitlines():
    chars = line.split()
    if chars:
      tokens.extend(chars)
      tokens.append(EOS)
  if not tokens:
    raise DatasetError(f"{path} holds no characters")
  return tokens


def load_ptb_chars(data_dir=None) -> tuple[dict[str, np.ndarray], list[str]]:
  """Char-PTB splits as int32 arrays, and the vocabulary (built over all splits).

  With ``data_dir``: ``ptb.char.{train,valid,test}.txt`` from it. Without: derived
  from the word-level PTB that the ``treebank`` package ships.
  """
  if data_dir:
    streams = {s: ptb_chars_from_char_file(find_file(data_dir, f"ptb.char.{s}.txt"))
               for s in PTB_SPLITS}
  else:
    import treebank  # pylint: disable=g-import-not-at-top
    streams = {s: ptb_chars_from_words(treebank.penn[s]) for s in PTB_SPLITS}
  vocab = sorted(set().union(*streams.values()))
  index = {c: i for i, c in enumerate(vocab)}
  return {s: np.array([index[c] for c in v], np.int32) for s, v in streams.items()}, vocab


def batchify(stream: np.ndarray, batch: int) -> np.ndarray:
  """Cuts a token stream into ``batch`` contiguous columns: [batch, n] (rest dropped)."""
  n = len(stream) // batch
  if n < 2:
    raise DatasetError(f"a stream of {len(stream)} tokens is too short for batch {batch}")
  return stream[:n * batch].reshape(batch, n)
