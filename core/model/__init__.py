"""ProtoFormer network: encoders, prototype token mixers, cost memory, flow and depth decoders.

``build_model(cfg)`` builds the network a config describes; ``load_weights`` fills it from any supported
checkpoint (official release, this project's checkpoints, plain state_dicts).
"""

from __future__ import annotations

from core.model.variants import VARIANTS, ProtoFormerSpec


def build_model(cfg) -> "ProtoFormer":
    """Build the ProtoFormer described by ``cfg.model`` (variant, type, iters, dropout), randomly initialised."""
    from core.model.protoformer import ProtoFormer

    if cfg.model.variant not in VARIANTS:
        raise ValueError(f"model.variant '{cfg.model.variant}' is not one of {sorted(VARIANTS)}")
    return ProtoFormer(
        VARIANTS[cfg.model.variant], model_type=cfg.model.type, iters=cfg.model.iters, dropout=cfg.model.dropout
    )


def __getattr__(name: str):
    # Lazy re-exports, so that `from core.model import VARIANTS` (used by the config) stays light.
    if name == "ProtoFormer":
        from core.model.protoformer import ProtoFormer

        return ProtoFormer
    if name in ("load_weights", "CheckpointError", "atomic_save"):
        from core.model import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'core.model' has no attribute '{name}'")


__all__ = ["VARIANTS", "ProtoFormerSpec", "build_model", "ProtoFormer", "load_weights", "CheckpointError", "atomic_save"]
