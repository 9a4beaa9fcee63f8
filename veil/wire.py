"""Names shared by the Triton adapters and the clients (no Triton import here)."""

CLIENT_ID_KEY = "veil-client-id"
"""Request parameter (or forwarded HTTP/gRPC header) naming the caller for adaptive intensity."""

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
"""Tokenizer output, defense-step input: INT32 [batch, SIGNATURE_SIZE] MinHash of the tokens."""
LABEL_NAMES_PARAMETER = "label_names"
"""Ensemble config parameter: JSON list naming the classes."""
