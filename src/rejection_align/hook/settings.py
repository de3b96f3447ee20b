"""The ``rejection_*`` keys of a LLaMA-Factory YAML: parsing, validation, matching answers, and how the settings ride
on LLaMA-Factory's ``DataArguments`` (:func:`attach` / :func:`settings_of`, the one channel; docs/architecture.md).
"""

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from ..constants import DEFAULT_REJECTION_SENTENCE
from ..errors import ConfigError


DEFAULT_SENTENCE = DEFAULT_REJECTION_SENTENCE  # the name the hook has always used
KEY_PREFIX = "rejection_"
VALID_KEYS = ("rejection_mask_eos", "rejection_mask_mode", "rejection_sentences", "rejection_match")
MASK_MODES = ("mask", "drop")
MATCH_MODES = ("exact", "contains")

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


@dataclass(frozen=True)
class RejectionSettings:
    """What the processor needs to know; frozen and hashable, so it can ride on ``data_args`` into workers.

    It is part of what ``datasets`` hashes for its cache fingerprint, so a cached tokenization made with other
    settings (or without the method) is never reused by mistake.
    """

    mask_eos: bool = False
    mask_mode: Literal["mask", "drop"] = "mask"
    sentences: tuple[str, ...] = (DEFAULT_SENTENCE,)
    match: Literal["exact", "contains"] = "exact"
    _stripped: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_stripped", frozenset(sentence.strip() for sentence in self.sentences))

    def is_rejection(self, answer: str) -> bool:
        """Whether an assistant answer counts as a rejection answer under ``match``."""
        if self.match == "exact":
            return answer.strip() in self._stripped

        return any(sentence in answer for sentence in self.sentences)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rejection_mask_eos": self.mask_eos,
            "rejection_mask_mode": self.mask_mode,
            "rejection_sentences": list(self.sentences),
            "rejection_match": self.match,
        }


# the attribute of LLaMA-Factory's DataArguments that carries the settings; read and written only by the pair below
_ATTRIBUTE = "rejection_align"


def attach(data_args: Any, settings: RejectionSettings) -> None:
    """Give LLaMA-Factory's parsed ``data_args`` the settings of this run.

    ``data_args`` goes wherever the processor goes: pickled (dill) into ``datasets``' preprocessing workers and
    hashed into its cache fingerprint, so settings carried here reach every worker and key the cache. (A module
    global or an environment variable would do neither.)
    """
    if not isinstance(settings, RejectionSettings):
        raise TypeError(f"attach() takes RejectionSettings, got {type(settings).__name__}")

    setattr(data_args, _ATTRIBUTE, settings)


def settings_of(data_args: Any) -> RejectionSettings | None:
    """The settings :func:`attach` gave ``data_args`` when the method is on; None means stock LLaMA-Factory."""
    settings = getattr(data_args, _ATTRIBUTE, None)
    return settings if isinstance(settings, RejectionSettings) and settings.mask_eos else None


def _unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, VALID_KEYS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown rejection-align key '{key}'.{hint} Valid keys: {', '.join(VALID_KEYS)}.")


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value

    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE

    if isinstance(value, int) and value in (0, 1):
        return bool(value)

    raise ConfigError(f"{key} must be true or false, got {value!r}.")


def _as_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}.")

    return value.strip().lower()


def _as_sentences(key: str, value: Any) -> tuple[str, ...]:
    sentences = [value] if isinstance(value, str) else value
    if not isinstance(sentences, (list, tuple)) or not sentences:
        raise ConfigError(f"{key} must be a sentence or a non-empty list of sentences, got {value!r}.")

    for sentence in sentences:
        if not isinstance(sentence, str) or not sentence.strip():
            raise ConfigError(f"{key} holds {sentence!r}; every sentence must be a non-empty string.")

    return tuple(sentences)


def settings_from_mapping(values: dict[str, Any]) -> RejectionSettings:
    """Build settings from ``rejection_*`` keys (YAML values or command-line strings); errors name the key."""
    for key in values:
        if key not in VALID_KEYS:
            raise _unknown_key_error(key)

    kwargs: dict[str, Any] = {}
    if "rejection_mask_eos" in values:
        kwargs["mask_eos"] = _as_bool("rejection_mask_eos", values["rejection_mask_eos"])
    if "rejection_mask_mode" in values:
        kwargs["mask_mode"] = _as_choice("rejection_mask_mode", values["rejection_mask_mode"], MASK_MODES)
    if "rejection_sentences" in values:
        kwargs["sentences"] = _as_sentences("rejection_sentences", values["rejection_sentences"])
    if "rejection_match" in values:
        kwargs["match"] = _as_choice("rejection_match", values["rejection_match"], MATCH_MODES)

    return RejectionSettings(**kwargs)


def _split_dict(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    ours = {key: value for key, value in args.items() if key.startswith(KEY_PREFIX)}
    rest = {key: value for key, value in args.items() if not key.startswith(KEY_PREFIX)}
    return ours, rest


def _sentence_from_argv(values: list[str]) -> str:
    """The words after ``--rejection_sentences`` on a command line, as ONE sentence.

    LLaMA-Factory's web UI (and anyone copying its command preview) writes a list value unquoted,
    ``--rejection_sentences I'm sorry, but I cannot assist with your request``, so the shell hands over one word per
    argument; the torchrun launcher also re-splits arguments on spaces. Joining the words with single spaces gives
    the sentence back in both cases. Several quoted sentences cannot be told apart from that, so they are refused.
    """
    if not values:
        raise ConfigError("--rejection_sentences needs a sentence after it.")

    if len(values) > 1 and any(any(char.isspace() for char in value) for value in values):
        raise ConfigError(
            f"--rejection_sentences got several sentences {values!r}; on the command line it takes exactly one "
            "sentence (its words may be unquoted). Put several sentences in the YAML as a list "
            "(rejection_sentences: [...])."
        )

    return " ".join(values)


def _split_list(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Take ``--rejection_key value`` / ``--rejection_key=value`` out of an argv-style list.

    ``--rejection_sentences`` takes every word up to the next ``--option`` as one sentence (see
    :func:`_sentence_from_argv`); a bare ``--rejection_mask_eos`` means true, as for HfArgumentParser's boolean flags.
    """
    ours: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        name = _option_name(token)
        if not name.startswith(KEY_PREFIX):
            rest.append(token)
            i += 1
            continue

        j = i + 1
        if "=" not in token or name == "rejection_sentences":
            while j < len(args) and not args[j].startswith("--"):
                j += 1
        values = ([token.split("=", 1)[1]] if "=" in token else []) + args[i + 1 : j]
        i = j

        if name == "rejection_sentences":
            ours[name] = _sentence_from_argv(values)
        elif not values and name == "rejection_mask_eos":
            ours[name] = True
        elif len(values) == 1:
            ours[name] = values[0]
        else:
            raise ConfigError(f"--{name} takes one value, got {values!r}.")

    return ours, rest


def _option_name(token: str) -> str:
    return token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else ""


def rejection_keys(args: Any) -> list[str]:
    """The ``rejection_*`` keys present in a YAML dict or an argv-style list, in order (for messages)."""
    if isinstance(args, dict):
        return [key for key in args if isinstance(key, str) and key.startswith(KEY_PREFIX)]

    if isinstance(args, (list, tuple)):
        names = [_option_name(token) for token in args if isinstance(token, str)]
        return list(dict.fromkeys(name for name in names if name.startswith(KEY_PREFIX)))

    return []


def split_settings(args: dict[str, Any] | list[str]) -> tuple[RejectionSettings | None, dict[str, Any] | list[str]]:
    """Separate our keys from LLaMA-Factory's, without touching ``args`` (it may be parsed again later).

    Returns ``(None, args)`` when no ``rejection_*`` key is present, so the run is exactly stock.
    """
    if isinstance(args, dict):
        ours, rest = _split_dict(args)
    elif isinstance(args, (list, tuple)):
        ours, rest = _split_list(list(args))
    else:
        return None, args

    if not ours:
        return None, args

    return settings_from_mapping(ours), rest
