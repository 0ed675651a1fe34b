"""forgetless: fine-tune open LLMs cheaply without catastrophic forgetting.

import forgetless
summary = forgetless.train("configs/quickstart.yaml", ["train.max_steps=3", "output_dir=runs/try"])
"""

from forgetless.api import load_config, train
from forgetless.errors import UserError

__all__ = ["UserError", "load_config", "train"]
__version__ = "0.1.0"
