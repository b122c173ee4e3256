"""Model configs and the names that compose them (ALGORITHM §1-3, §11).

A model is a *cell* (RNN, LSTM, GRU, or a user's own ``cells.Cell``) inside a
*memory* (none, full, relevance-screened, or a plain window). The relevance-
screened memory has two more knobs: how a stored state earns its score (the
*relevance rule*) and what leaves the relevant set when a candidate arrives (the
*eviction rule*). ``layers`` stacks such layers.

Names compose a memory prefix and a cell: ``""`` (no memory), ``Mem`` (full),
``Rel`` (relevance-screened) or ``Win`` (window), then ``RNN``, ``LSTM`` or
``GRU``: ``model_config("RelGRU", 3)``. The six names of the paper (RNN, LSTM,
MemRNN, MemLSTM, RelRNN, RelLSTM) keep their meaning and their defaults. ``LRU``
(``cells.lru``, a linear recurrent unit) is a memory-free peer baseline.
"""

import dataclasses
import enum
from typing import Any

from relscreen.cells import LRU, Cell, Phi
from relscreen.initializers import InputInit, RecurrentInit


class CellType(enum.Enum):
  RNN = "rnn"
  LSTM = "lstm"
  GRU = "gru"
  USER = "user"  # a ``cells.Cell`` given in ``ModelConfig.user_cell``


class MemoryType(enum.Enum):
  NONE = "none"  # plain recurrence
  FULL = "full"  # MemRNN / MemLSTM: attend to every stored state
  RELEVANCE = "relevance"  # RelRNN / RelLSTM: short-term buffer + relevant set
  WINDOW = "window"  # the last nu stored states only (a relevance memory with rho = 0)


class Relevance(enum.Enum):
  """How a stored state earns its relevance score (ALGORITHM §11)."""

  SUM = "sum"  # the paper's: attention received while in S, frozen on entering R
  MEAN = "mean"  # that sum over the steps the state was attendable in S
  MAX = "max"  # the largest single weight received while in S
  DECAY = "decay"  # gamma * score + weight, in S and, unlike the others, in R too


class Eviction(enum.Enum):
  """What the state leaving S does to the relevant set R (ALGORITHM §11)."""

  TOP = "top"  # the paper's streaming top-rho: replace R's first minimum if strictly larger
  FIFO = "fifo"  # always enter, replacing the oldest state in R
  RESERVOIR = "reservoir"  # a uniform sample of every state that left S (Algorithm R)

  @property
  def reads_scores(self) -> bool:
    """Whether the rule consults the relevance scores: under ``fifo`` and
    ``reservoir`` every relevance rule gives the same model."""
    return self is Eviction.TOP


PREFIXES = {"": MemoryType.NONE, "Mem": MemoryType.FULL, "Rel": MemoryType.RELEVANCE,
            "Win": MemoryType.WINDOW}
CELL_NAMES = {"RNN": CellType.RNN, "LSTM": CellType.LSTM, "GRU": CellType.GRU}

# Every name that composes: the paper's six, and the same memories around the GRU,
# and the window memory around each cell.
REGISTRY: dict[str, tuple[CellType, MemoryType]] = {
    prefix + cell_name: (cell, memory)
    for prefix, memory in PREFIXES.items() for cell_name, cell in CELL_NAMES.items()}
# Built-in cells defined through the user-cell interface (``cells.Cell``), by name.
# The LRU's recurrence never reads the memory's mixed state, so it has no memory
# prefix: it is a memory-free peer baseline (``cells.lru``).
BUILTIN_CELLS: dict[str, Cell] = {"LRU": LRU}
REGISTRY.update({name: (CellType.USER, MemoryType.NONE) for name in BUILTIN_CELLS})
PAPER_MODELS = ("RNN", "LSTM", "MemRNN", "MemLSTM", "RelRNN", "RelLSTM")


def _as_enum(kind, value, field: str):
  if isinstance(value, kind):
    return value
  try:
    return kind(value)
  except ValueError:
    choices = ", ".join(m.value for m in kind)
    raise ValueError(f"{field}={value!r} is not one of: {choices}") from None


def compose_name(cell: CellType, memory: MemoryType, user_cell: Cell | None = None) -> str:
  """The registry-style name of a cell inside a memory, e.g. ``RelGRU``."""
  prefix = {m: p for p, m in PREFIXES.items()}[memory]
  if cell is CellType.USER:
    return prefix + (user_cell.name if user_cell is not None else "User")
  return prefix + {c: n for n, c in CELL_NAMES.items()}[cell]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static description of a model. Build one with ``model_config(...)``.

  Attributes:
    name: a composed name (RelRNN, MemGRU, WinLSTM, ...), for logs and files.
    cell: RNN, LSTM, GRU or USER (then ``user_cell`` holds the cell).
    memory: NONE, FULL, RELEVANCE or WINDOW.
    input_size: features per time step.
    hidden: hidden units H.
    phi: RNN nonlinearity (RNN cell only).
    nu: short-term buffer size (relevance and window memories).
    rho: relevant-set size (relevance memory).
    k: store every k-th state (attentive models).
    attn: weight of the attended context in the mixed state (RNN cell).
    relevance: how a stored state earns its score (``Relevance``).
    eviction: which state leaves R when a candidate arrives (``Eviction``).
    decay: gamma of the ``decay`` relevance rule, in [0, 1].
    reservoir_seed: seed of the ``reservoir`` eviction's per-row draws.
    layers: stacked layers; layer l's hidden states are layer l + 1's inputs.
    layer_memory: one memory per layer (overrides ``memory`` when given).
    user_cell: the ``cells.Cell`` of a USER cell.
    r_init: initialiser of the recurrent kernel V (RNN cell).
    i_init: initialiser of the input kernel U (RNN cell).
    remat_chunk: rematerialise the scan in chunks of this many steps (0: off).
    custom_vjp: differentiate attentive RNN/LSTM models (k = 1, fresh state, no
      probes or diagnostics) with the hand-built reverse pass (``relscreen.reverse``)
      instead of autodiff through the memory; same gradients, O(t b h) memory.
      Other cells always take autodiff (see ``gradient_path``).
    diagnostics: also return per-step attention weights, scores, slot times and
      screening decisions (off: nothing extra is computed).
    reverse_block: steps per block of the custom reverse pass whose weight
      gradients are formed together (a speed knob; gradients are the same).
    keep_projections_mib: the custom reverse pass of a relevance or window
      memory reads every step's query ``s_{t-1} Va`` and key ``h_t Ua`` from
      the forward pass, which computed them anyway, when each of the two
      [t, b, h] arrays takes at most this many MiB; above it (or at 0) it
      recomputes them, as matrix products per block of steps. Speed for memory
      (gradients are the same): the default 256 keeps them at L = 1020 up to
      batch 514 (H 128, float32), not at L = 100,000 and batch 10 (488 MiB each).
    cpu_kernel: the custom pass of a relevance or window memory runs each
      step's attention over the slots, forward and reverse, in hand-written
      kernels on the CPU, and with an RNN cell (tanh) or an LSTM cell (relevance
      memories with any rules, windows; from a fresh or a given state, rows
      restarting or not) the whole forward scan and each block of reverse
      steps in one each, and the cell's streaming step (``step``, without
      probes or diagnostics, k = 1) in one call (``relscreen.kernels``; built
      on first use, XLA's version where they cannot be built, on other
      devices, and when off). A speed knob: the results are the same up to
      float rounding.
  """

  name: str
  cell: CellType
  memory: MemoryType
  input_size: int
  hidden: int = 128
  phi: Phi = Phi.TANH
  nu: int = 10
  rho: int = 15
  k: int = 1
  attn: float = 1.0
  relevance: Relevance = Relevance.SUM
  eviction: Eviction = Eviction.TOP
  decay: float = 0.9
  reservoir_seed: int = 0
  layers: int = 1
  layer_memory: tuple = ()
  user_cell: Cell | None = None
  r_init: RecurrentInit = RecurrentInit.HENAFF
  i_init: InputInit = InputInit.XAVIER
  remat_chunk: int = 0
  diagnostics: bool = False
  custom_vjp: bool = True
  reverse_block: int = 64
  keep_projections_mib: int = 256
  cpu_kernel: bool = True

  def __post_init__(self):
    for field, kind in (("cell", CellType), ("memory", MemoryType), ("phi", Phi),
                        ("r_init", RecurrentInit), ("i_init", InputInit),
                        ("relevance", Relevance), ("eviction", Eviction)):
      object.__setattr__(self, field, _as_enum(kind, getattr(self, field), field))
    object.__setattr__(self, "layer_memory", tuple(
        _as_enum(MemoryType, m, "layer_memory") for m in self.layer_memory))
    counts = {f: 1 for f in ("input_size", "hidden", "nu", "rho", "k", "layers",
                             "reverse_block")} | {"remat_chunk": 0, "keep_projections_mib": 0}
    for field, least in counts.items():
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{field} must be an integer >= {least}, got {value!r}")
    if self.cell is not CellType.RNN and self.attn != 1.0:
      raise ValueError(f"attn={self.attn!r} is for the RNN cell; other cells use 1.0")
    if not 0.0 <= self.decay <= 1.0:
      raise ValueError(f"decay must be in [0, 1], got {self.decay!r}")
    if self.layer_memory and len(self.layer_memory) != self.layers:
      raise ValueError(f"layer_memory has {len(self.layer_memory)} entries for "
                       f"layers={self.layers}; give one memory per layer")
    if (self.cell is CellType.USER) != (self.user_cell is not None):
      raise ValueError("cell='user' needs user_cell (a cells.Cell), and user_cell needs "
                       "cell='user'")

  @property
  def attentive(self) -> bool:
    return self.memory is not MemoryType.NONE

  @property
  def screened(self) -> bool:
    """The memory is a short-term buffer plus a (possibly empty) relevant set."""
    return self.memory in (MemoryType.RELEVANCE, MemoryType.WINDOW)

  @property
  def relevant_size(self) -> int:
    """Slots of the relevant set R: rho, or 0 for the window memory."""
    return self.rho if self.memory is MemoryType.RELEVANCE else 0

  @property
  def gates(self) -> int:
    """Width of the projected input: H (RNN), 3H (GRU), 4H (LSTM)."""
    return self.hidden * {CellType.LSTM: 4, CellType.GRU: 3}.get(self.cell, 1)

  def layer(self, index: int) -> "ModelConfig":
    """The single-layer config of layer ``index`` (its input is the layer below)."""
    if self.layers == 1:
      return self
    memory = self.layer_memory[index] if self.layer_memory else self.memory
    return dataclasses.replace(
        self, name=f"{self.name}[{index}]", memory=memory, layers=1, layer_memory=(),
        input_size=self.input_size if index == 0 else self.hidden)


def model_config(name: str | None = None, input_size: int | None = None, *,
                 cell: Any = None, memory: Any = None, **options: Any) -> ModelConfig:
  """A config from a composed ``name`` or from ``cell`` and ``memory``, with ``options``.

  ``model_config("RelGRU", 3, hidden=64)`` and
  ``model_config(cell="gru", memory="relevance", input_size=3, hidden=64)`` are the
  same model. ``cell`` may also be a ``cells.Cell`` (a user's own cell).
  ``memory`` may be a tuple of memories, one per layer.
  """
  if input_size is None:
    raise ValueError("model_config needs input_size (features per time step)")
  if isinstance(memory, (tuple, list)):
    options.setdefault("layers", len(memory))
    options["layer_memory"] = tuple(memory)
    memory = memory[-1]
  if isinstance(cell, Cell):
    options["user_cell"] = cell
    cell = CellType.USER
  if name is not None:
    if name not in REGISTRY:
      prefixes = ", ".join(p or "none" for p in PREFIXES)
      raise ValueError(f"unknown model {name!r}; a memory prefix ({prefixes}) then a cell "
                       f"({', '.join(CELL_NAMES)}): {', '.join(REGISTRY)}")
    named_cell, named_memory = REGISTRY[name]
    for given, named, what in ((cell, named_cell, "cell"), (memory, named_memory, "memory")):
      if given is not None and _as_enum(type(named), given, what) is not named:
        raise ValueError(f"{what}={given!r} contradicts the name {name!r}")
    cell, memory = named_cell, named_memory
    if name in BUILTIN_CELLS:
      options["user_cell"] = BUILTIN_CELLS[name]
  if cell is None or memory is None:
    raise ValueError("model_config needs a name (e.g. 'RelGRU') or both cell and memory")
  cell = _as_enum(CellType, cell, "cell")
  memory = _as_enum(MemoryType, memory, "memory")
  if name is None:
    name = compose_name(cell, memory, options.get("user_cell"))
  return ModelConfig(name=name, cell=cell, memory=memory, input_size=input_size, **options)
