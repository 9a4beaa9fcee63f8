"""Names shared by the Triton adapters and the clients (no Triton import here)."""

CLIENT_ID_KEY = "veil-client-id"
"""Request parameter (or forwarded HTTP/gRPC header) naming the caller for adaptive intensity."""
