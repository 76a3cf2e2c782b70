"""Loading and saving weights: the official release checkpoints, this project's checkpoints, plain state_dicts.

The official state_dict (585 entries, 15,987,814 parameters) is translated key by key: each sub-module of ours
declares ``OFFICIAL_KEY_MAP`` (official name -> ours) and ``OFFICIAL_UNUSED`` (official tensors the official forward
never reads, which we do not build). Every official key is either mapped or listed as unused; anything else is an
error, so a checkpoint can never load half-way silently.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from loguru import logger
from torch import Tensor, nn

from core.model import cost_memory, depth_decoder, encoder, flow_decoder
from core.utils.atomic import atomic_path

WEIGHTS_FORMAT = "protoformer-weights-v1"

# official prefix -> (our prefix, module defining OFFICIAL_KEY_MAP / OFFICIAL_UNUSED for the rest of the key).
# Order matters: the feature encoder lives inside the official memory_encoder.
_OFFICIAL_PARTS = (
    ("memory_encoder.feat_encoder.", "feature_encoder.", encoder),
    ("context_encoder.", "context_encoder.", encoder),
    ("memory_encoder.", "cost_memory.", cost_memory),
    ("flow_header.", "flow_decoder.", flow_decoder),
    ("depth_header.", "depth_decoder.", depth_decoder),
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message lists what is wrong."""


def is_official_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith(("memory_encoder.", "flow_header.", "depth_header.")) for k in state_dict)


def _map_key(rules: list[tuple[str, str]], key: str) -> str | None:
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(replacement)
    return None


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Translate an official ProtoFormer state_dict (no ``module.`` prefix) to this project's key names.

    Returns ``(converted, unused)``: the converted state_dict and the official keys dropped as unused by design.
    Raises :class:`CheckpointError` for keys that are neither mapped nor known to be unused.
    """
    converted: dict[str, Tensor] = {}
    unused: list[str] = []
    unknown: list[str] = []
    for key, value in state_dict.items():
        for official_prefix, our_prefix, part in _OFFICIAL_PARTS:
            if key.startswith(official_prefix):
                rest = key[len(official_prefix):]
                if any(re.fullmatch(p, rest) for p in part.OFFICIAL_UNUSED):
                    unused.append(key)
                else:
                    mapped = _map_key(part.OFFICIAL_KEY_MAP, rest)
                    if mapped is None:
                        unknown.append(key)
                    else:
                        converted[our_prefix + mapped] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} keys of the official checkpoint are not known: {_abbrev(unknown)}")
    return converted, unused


def _abbrev(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def extract_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The model weights inside any supported checkpoint layout, in this project's key names.

    Accepts a plain state_dict, ``{"model": ...}`` (our training checkpoints and weight exports),
    ``{"state_dict": ...}``, keys prefixed by ``module.`` (DataParallel/DDP, as the official releases ship) or
    ``_orig_mod.`` (torch.compile), and the official key names.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(checkpoint).__name__}")
    for wrapper in ("model", "state_dict"):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state_dict = {k: v for k, v in checkpoint.items()}
    for prefix in ("module.", "_orig_mod."):
        state_dict = _strip_prefix(state_dict, prefix)
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors: {_abbrev(bad)}")
    if is_official_state_dict(state_dict):
        state_dict, unused = convert_official_state_dict(state_dict)
        logger.debug(f"{source}: official checkpoint, {len(unused)} unused official tensors dropped")
    return state_dict


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        raise CheckpointError(f"{path}: {_load_failure(path, err)}") from None


def _load_failure(path: Path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one sentence (without torch's advice to retry with
    ``weights_only=False``, which would let the file run code)."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch's zip format, or a legacy pickle
        return "not a PyTorch checkpoint (neither a torch zip archive nor a pickle)"
    text = str(err)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        return ("holds Python objects that a weights-only load refuses" + (f" ({found[1]})" if found else "")
                + "; checkpoints are only ever loaded with weights_only=True here: save the state_dict (a dict of "
                "tensors) instead")
    first = text.split(". ")[0].strip() if text else type(err).__name__
    return f"cannot be read as a torch checkpoint, truncated or corrupt? ({first})"


# Top-level modules a model builds or not depending on model.type (flow, depth, joint); the heads among them.
TYPE_SPECIFIC_PARTS = frozenset({"flow_decoder", "depth_decoder", "feature_encoder", "cost_memory"})
HEADS = frozenset({"flow_decoder", "depth_decoder"})


def _parts(keys: Iterable[str]) -> set[str]:
    """The top-level module names of state-dict keys."""
    return {key.split(".")[0] for key in keys}


def load_weights(model: nn.Module, checkpoint: str | Path | Mapping[str, Any], *,
                 fresh_heads: bool = False) -> nn.Module:
    """Load weights from a path or an in-memory checkpoint into ``model`` (strictly) and return the model.

    Heads that the model does not build (e.g. the depth head of a flow model) are skipped with a log line; every
    other missing, unexpected or mis-shaped tensor raises :class:`CheckpointError` listing them all. With
    ``fresh_heads`` (fine-tuning, ``train.restore_ckpt``) a head the checkpoint lacks entirely keeps the model's
    initialisation instead, with a warning: a flow checkpoint can start a depth model (the official depth recipe
    starts from the Sintel flow weights), its depth head then trained from scratch.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "checkpoint"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    state_dict = extract_state_dict(raw, source)
    target = model.state_dict()
    model_parts = _parts(target)
    absent_heads = sorted(_parts(state_dict) - model_parts)
    if absent_heads and set(absent_heads) <= TYPE_SPECIFIC_PARTS:
        logger.info(f"{source}: skipping {', '.join(absent_heads)} (not part of this model type)")
        state_dict = {k: v for k, v in state_dict.items() if k.split(".")[0] not in absent_heads}
    if fresh_heads:
        new_heads = sorted((model_parts - _parts(state_dict)) & HEADS)
        if new_heads:
            logger.warning(f"{source} has no {', '.join(new_heads)}: it keeps its random initialisation")
            state_dict = {**state_dict, **{k: v for k, v in target.items() if k.split(".")[0] in new_heads}}
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    mismatched = [
        f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in target.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source} does not fit the model ({type(model).__name__})"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_abbrev(mismatched)}")
        parts.append("check that the config's model.variant and model.type match the checkpoint")
        raise CheckpointError("\n  ".join(parts))
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in state_dict.items()}, strict=True)
    return model


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
