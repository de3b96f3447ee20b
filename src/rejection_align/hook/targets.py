"""The LLaMA-Factory modules the hook acts on, by name: the start-up finder waits for them, the patches and the
internals check use them. Defined once, here; this module imports nothing, so the start-up hook may load it.
"""

PARSER_MODULE = "llamafactory.hparams.parser"
LOADER_MODULE = "llamafactory.data.loader"
V1_PARSER_MODULE = "llamafactory.v1.config.arg_parser"  # patched only to refuse the rejection_* keys (USE_V1=1)
SUPERVISED_MODULE = "llamafactory.data.processor.supervised"
TEMPLATE_MODULE = "llamafactory.data.template"

# what the start-up finder patches when it is imported
PATCHED_ON_IMPORT = frozenset((PARSER_MODULE, LOADER_MODULE, V1_PARSER_MODULE))

DISABLE_ENV = "REJECTION_ALIGN_DISABLE"  # set (to anything but 0/false/no) to keep LLaMA-Factory stock
