"""forgetless: fine-tune open LLMs cheaply without catastrophic forgetting.

import forgetless
summary = forgetless.train("quickstart", ["train.max_steps=3", "output_dir=runs/try"])
"""

from importlib.metadata import version

from forgetless.api import load_config, train
from forgetless.errors import UserError

__all__ = ["UserError", "load_config", "train"]
__version__ = version("forgetless")
