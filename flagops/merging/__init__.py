"""LM-Cocktail model merging: weighted sums of fine-tuned models and their bases.

``merge_models`` writes a merged model directory (in memory or by layers);
``task_loss.data_weights`` chooses the weights from a few target-task examples.
"""

from flagops.merging.checkpoint import MergeError
from flagops.merging.cocktail import MERGE_FILE, check_weights, merge_models, mix_state_dicts, mix_tensor, model_kind, plan, softmax_weights
from flagops.merging.task_loss import data_weights, read_examples

__all__ = [
    "MERGE_FILE",
    "MergeError",
    "check_weights",
    "data_weights",
    "merge_models",
    "mix_state_dicts",
    "mix_tensor",
    "model_kind",
    "plan",
    "read_examples",
    "softmax_weights",
]
