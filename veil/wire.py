"""Names shared by the Triton adapters and the clients (no Triton import here)."""

import unicodedata

CLIENT_ID_KEY = "veil-client-id"
"""Request parameter (or forwarded HTTP/gRPC header) naming the caller for adaptive intensity."""
PEER_ID_PREFIX = "peer:"
"""Ids the gateway assigns from the peer address (``peer:127.0.0.1``); callers may not send one."""
_INVISIBLE = {"Cf", "Zs", "Zl", "Zp", "Mn", "Me"}
"""Unicode categories that show nothing by themselves (format, zero-width, spaces, combining marks)."""


def canonical_client_id(raw: object, *, max_bytes: int, allow_peer: bool = False) -> str:
    """A caller's client id in one spelling: Unicode NFKC (so ``ａｌｉｃｅ`` and ``alice`` are one
    caller), with something visible in it. ``ValueError`` names what is wrong: not a string, a lone
    surrogate, control characters, nothing visible (e.g. only zero-width characters), over
    ``max_bytes`` UTF-8 bytes after normalisation, or a ``peer:`` id that only the gateway assigns
    (``allow_peer``: the defense step behind the gateway, which receives the gateway's ids)."""
    if not isinstance(raw, str):
        raise ValueError(f"client id must be a string, got {type(raw).__name__}")
    if len(raw) > 4 * max_bytes:  # normalisation is linear, but do not spend it on junk
        raise ValueError(f"client id is longer than {max_bytes} bytes")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("client id is not valid Unicode (lone surrogate)") from None
    text = unicodedata.normalize("NFKC", raw)
    if len(text.encode("utf-8")) > max_bytes:
        raise ValueError(f"client id is longer than {max_bytes} bytes")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise ValueError("client id contains control characters")
    if all(unicodedata.category(ch) in _INVISIBLE for ch in text):
        raise ValueError("client id has no visible characters (empty, spaces or zero-width characters only)")
    if not allow_peer and text.lower().startswith(PEER_ID_PREFIX):
        raise ValueError(f"client ids starting with '{PEER_ID_PREFIX}' are assigned by the gateway; choose another")
    return text


METRICS_FLUSH_S = 0.2
"""The defense step sends its custom metrics at most this often (see ``mia_defense.Telemetry``);
readers that must see a burst of requests they just sent should wait twice this long first."""

# --- tensor names (the ensembles' and the defense step's inputs and outputs) ---------------------

TEXT = "text"
"""Ensemble input: TYPE_STRING [batch, 1]."""
PROBABILITIES = "probabilities"
"""Ensemble and defense-step output: FP32 [batch, C]."""
LABEL = "label"
"""Ensemble and defense-step output: INT64 [batch, 1]."""
LOGITS = "logits"
"""Classifier output, defense-step input: FP32 [batch, C]."""
FINGERPRINT = "fingerprint"
"""Tokenizer output, defense-step input: INT32 [batch, SIGNATURE_SIZE], MinHash and content sketch of the tokens."""
SEQUENCE = "sequence"
"""Tokenizer output, defense-step input: INT64 [batch, 1], a hash of the token ids in order (the
member gate tells an exact copy of a training text from a reordered or repeated-word edit by it)."""
LABEL_NAMES_PARAMETER = "label_names"
"""Ensemble config parameter: JSON list naming the classes."""
