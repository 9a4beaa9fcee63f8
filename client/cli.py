"""``veil-classify``: classify texts through a served Veil ensemble over HTTP or gRPC.

    veil-classify "a gripping, funny film" "flat and tedious"
    veil-classify --protocol grpc --url 127.0.0.1:8001 --file sentences.txt
    echo "some text" | veil-classify --file -
    VEIL_API_KEY=... veil-classify --url gw:8443 --tls-ca ca.pem "text"   # through the front door

Prints one line per text: label and probabilities. Exits 1 with the server's message on error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from veil.client.triton import InferenceServerException, VeilClient


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="one text per line ('-' reads standard input)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--url", help="host:port (default 127.0.0.1:8000 for HTTP, :8001 for gRPC)")
    p.add_argument("--model", default="veil_defended")
    p.add_argument("--client-id", help="identifies the caller for adaptive intensity")
    p.add_argument("--batch-size", type=int, default=64)
    door = p.add_argument_group("through the gateway's front door (docs/front-door.md)")
    door.add_argument("--api-key-file", help="a file holding the API key (default: $VEIL_API_KEY, if set)")
    door.add_argument("--tls-ca", help="the server's CA certificate (PEM): connect over TLS")
    door.add_argument("--tls-cert", help="client certificate (PEM), for mTLS")
    door.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    a = p.parse_args(argv)
    texts = list(a.texts)
    if a.file:
        stream = sys.stdin if a.file == "-" else open(a.file, encoding="utf-8")  # noqa: SIM115
        with stream:
            texts += [line.rstrip("\n") for line in stream if line.strip()]
    if not texts:
        p.error("give texts as arguments or --file")
    url = a.url or ("127.0.0.1:8000" if a.protocol == "http" else "127.0.0.1:8001")
    # The key comes from a file or the environment, never the command line (readable in the process list).
    key = Path(a.api_key_file).read_text().strip() if a.api_key_file else os.environ.get("VEIL_API_KEY")
    try:
        door = {"api_key": key, "ca_file": a.tls_ca, "cert_file": a.tls_cert, "key_file": a.tls_key}
        with VeilClient(url, protocol=a.protocol, **door) as client:
            names = client.label_names(a.model)
            probs, labels = client.classify(texts, model=a.model, client_id=a.client_id, batch_size=a.batch_size)
    except InferenceServerException as err:
        print(f"error from {url} ({a.protocol}): {err.message()}", file=sys.stderr)
        return 1
    except Exception as err:
        print(f"error talking to {url} ({a.protocol}): {err}", file=sys.stderr)
        return 1
    for text, row, label in zip(texts, probs, labels, strict=True):
        name = names[label] if label < len(names) else str(label)
        if a.json:
            print(
                json.dumps(
                    {
                        "text": text,
                        "label": int(label),
                        "label_name": name,
                        "probabilities": [float(x) for x in row],
                    }
                )
            )
        else:
            shown = " ".join(f"{(names[i] if i < len(names) else i)}={x:.4f}" for i, x in enumerate(row))
            print(f"{name}\t{shown}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
