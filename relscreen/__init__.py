"""relscreen: recurrent networks with sparse self-attention and relevancy screening.

A JAX/Flax implementation of Kerg et al., "Untangling tradeoffs between
recurrence and self-attention in neural networks" (NeurIPS 2020).
"""

from relscreen.allocator import restart_with_huge_pages, reuse_freed_memory
from relscreen.attention import additive_attention, masked_softmax
from relscreen.cells import (Cell, Phi, apply_phi, from_flax, gru_step, lstm_halves, lstm_step,
                             modrelu, rnn_step)
from relscreen.compiler import prefer_wide_vectors
from relscreen.config import PAPER_MODELS, Eviction, Relevance
from relscreen.diagnostics import GradientFlow, gradient_flow
from relscreen.initializers import InputInit, RecurrentInit
from relscreen import kernels  # noqa: F401  (relscreen.kernels: the attention step's CPU kernels)
from relscreen.memories import Memory
from relscreen.models import (REGISTRY, CellType, MemoryType, ModelConfig, State, forward,
                              gradient_path, init_state, model_config, param_shapes, step)
from relscreen.modules import (BLOCKS, LanguageModel, RecurrentCore, RelevanceCell, ResidualSequenceModel,
                               SequenceModel)
from relscreen.optim import make_optimizer, torch_rmsprop
from relscreen.rsm import RSMState, Screened
from relscreen.tasks import (AddingTask, Batch, CopyTask, RecallTask, DenoiseTask, VariableCopyTask, memoryless_loss,
                             recall_accuracy, recall_loss, sequence_loss)

__version__ = "0.1.0"

__all__ = [
    "BLOCKS", "PAPER_MODELS", "Cell", "Eviction", "Memory", "Relevance", "from_flax", "gradient_path",
    "gru_step", "param_shapes",
    "REGISTRY", "AddingTask", "Batch", "RecallTask", "CellType", "LanguageModel", "CopyTask", "DenoiseTask", "VariableCopyTask",
    "memoryless_loss", "InputInit", "MemoryType", "ModelConfig", "Phi",
    "GradientFlow", "gradient_flow", "recall_loss",
    "RSMState", "RecurrentCore", "RecurrentInit", "RelevanceCell", "ResidualSequenceModel",
    "Screened",
    "SequenceModel", "State", "additive_attention", "apply_phi", "forward", "init_state",
    "lstm_halves", "lstm_step", "make_optimizer", "prefer_wide_vectors", "reuse_freed_memory", "masked_softmax", "model_config", "modrelu",
    "recall_accuracy", "restart_with_huge_pages", "rnn_step", "sequence_loss", "step", "torch_rmsprop",
]
