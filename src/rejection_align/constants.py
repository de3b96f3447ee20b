"""Names that several parts share: the method's default rejection sentence and the label that is not trained.

They sit above ``hook/``, ``data/``, ``eval/`` and ``demo/`` so that no part imports another for a constant
(docs/architecture.md, "The parts"). Kept import-free: the start-up hook may load modules that read them.
"""

# The paper's sentence (no final period): what `mix` writes, what the hook matches and what `judge` looks for.
DEFAULT_REJECTION_SENTENCE = "I'm sorry, but I cannot assist with your request"

# LLaMA-Factory's IGNORE_INDEX (PyTorch's cross-entropy default): a label with this value is not trained.
IGNORE_INDEX = -100
