"""Client-side clipping for central DP: Flower's own ClientApp mods, applied to the train
messages of runs with `privacy.side=client` (the server's DP wrapper sends the norm)."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable


def client_side_clipping(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this client's update before it leaves (fixed, or adaptive, which also tells
    the server whether it clipped); other runs and other messages pass through."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    privacy = _privacy(str(msg.content["config"]["run-config"]))
    if privacy.get("side") != "client" or privacy.get("clipping", "none") == "none":
        return call_next(msg, context)
    mod = fixedclipping_mod if privacy["clipping"] == "fixed" else adaptiveclipping_mod
    return mod(msg, context, call_next)


@lru_cache(maxsize=4)
def _privacy(config_json: str) -> dict[str, Any]:
    """The run's `privacy` section, parsed once per run config (not once per message)."""
    return json.loads(config_json).get("privacy", {})
