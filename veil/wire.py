"""Names shared by the Triton adapters and the clients (no Triton import here)."""

CLIENT_ID_KEY = "veil-client-id"
"""Request parameter (or forwarded HTTP/gRPC header) naming the caller for adaptive intensity."""

METRICS_FLUSH_S = 0.2
"""The defense step sends its custom metrics at most this often (see ``mia_defense.Telemetry``);
readers that must see a burst of requests they just sent should wait twice this long first."""
