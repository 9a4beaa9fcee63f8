"""Issue 15: the front door, end to end. The documented command (``python -m veil.serving.gateway``)
runs in its own process with TLS, client certificates and an API key file, in front of the real
tritonserver; clients are tritonclient with its own SSL options (raw grpc / requests where a
test needs a trailing header). One stack for the module.

Cases: no key, wrong key; a key revoked by SIGHUP (open connections stay); expired and untrusted
client certificates; the rate limit hit and recovered; a caller-sent id that tries to reach
another principal's adaptive state; key rotation under load with no request lost; tritonserver's
keys off its command line; the audit log.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from veil.export.data import dedupe, load_file
from veil.export.pipeline import load_splits
from veil.export.train import packaged_minilm
from veil.model_repository.spec import DEFENDED
from veil.serving import keys
from veil.serving.auth import UNAUTHENTICATED
from veil.serving.devcerts import Pair, Pki, make_pki
from veil.serving.production import GATEWAY_KEY_ENV
from veil.wire import CLIENT_ID_KEY

from ..conftest import tiny_repository

pytestmark = pytest.mark.integration
PROTOCOLS = ("http", "grpc")


@dataclass
class Front:
    root: Path
    pki: Pki
    keys_file: Path
    audit: Path
    process: subprocess.Popen
    http_url: str
    grpc_url: str
    keys: dict[str, str]
    """Principal -> its current API key."""
    established_at: float


def _add(front_keys: dict[str, str], path: Path, principal: str, **quota: object) -> None:
    front_keys[principal] = keys.add(path, principal, quota=quota)


@functools.cache
def _vocabulary() -> list[str]:
    words = packaged_minilm().joinpath("vocab.txt").read_text().split()
    return [w for w in words if w.isalpha() and len(w) > 3][:3000]


def _distinct_rows(n: int, seed: int) -> list[str]:
    """Distinct 8-word texts from 3,000 words: benign traffic. (Rows drawn from a few dozen words
    would each be mostly contained in the rows before them, which adaptive intensity counts as
    probing by crops.)"""
    rng = random.Random(seed)
    return [" ".join(rng.sample(_vocabulary(), 8)) for _ in range(n)]


@pytest.fixture(scope="module")
def front(tiny_build, tmp_path_factory):
    root = tmp_path_factory.mktemp("front")
    repo = tiny_repository(tiny_build, root / "repo", mode="production", variants=("veil",))
    pki = make_pki(root / "pki")
    path, issued = root / "keys.jsonl", {}
    _add(issued, path, "main", rows_per_s=0, concurrent=16)
    for p in PROTOCOLS:
        _add(issued, path, f"limited-{p}", rows_per_s=2, burst=3)
        _add(issued, path, f"revokee-{p}")
        _add(issued, path, f"keeper-{p}")
        _add(issued, path, f"victim-{p}")
        _add(issued, path, f"control-{p}")
        _add(issued, path, f"spoofer-{p}", max_sub_ids=2)
    _add(issued, path, "rotor", rows_per_s=0, concurrent=16)
    _add(issued, path, "cli")
    command = [sys.executable, "-m", "veil.serving.gateway", "--repository", str(repo)]
    command += ["--http-port", "0", "--grpc-port", "0", "--log-file", str(root / "tritonserver.log")]
    command += [
        "--tls-cert",
        str(pki.server.cert),
        "--tls-key",
        str(pki.server.key),
        "--tls-client-ca",
        str(pki.ca.cert),
    ]
    command += ["--keys-file", str(path), "--audit-log", str(root / "audit.log")]
    stderr = open(root / "gateway.err", "wb")  # noqa: SIM115 - closed below
    t0 = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        banner = _banner(process, root)  # "Veil gateway: HTTP <host:port>, gRPC <host:port> (only ..."
        print(f"front door stack up in {time.monotonic() - t0:.1f}s")
        http_url, grpc_url = banner.split("HTTP ")[1].split(",")[0], banner.split("gRPC ")[1].split(" ")[0]
        stack = Front(root, pki, path, root / "audit.log", process, http_url, grpc_url, issued, 0.0)
        # Victims and controls of the id-spoofing test become established callers (32 rows, 6 s).
        for i, principal in enumerate(f"{r}-{p}" for r in ("victim", "control") for p in PROTOCOLS):
            _infer(stack, "http", principal, _distinct_rows(32, seed=i))
        stack.established_at = time.monotonic()
        yield stack
    finally:
        children = _children(process)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        for child in children:
            if child.is_running():
                child.kill()
        stderr.close()


def _banner(process: subprocess.Popen, root: Path, timeout: float = 180.0) -> str:
    found: list[str] = []

    def read() -> None:
        for line in process.stdout:
            if line.startswith("Veil gateway:"):
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        process.kill()
        raise AssertionError(f"the gateway did not start:\n{(root / 'gateway.err').read_text()[-3000:]}")
    return found[0]


def _children(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        return psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# -- clients -------------------------------------------------------------------------------------


def _client(front: Front, protocol: str, cert: Pair | None = None):
    cert = cert or front.pki.client
    if protocol == "http":
        options = {"ca_certs": str(front.pki.ca.cert), "certfile": str(cert.cert), "keyfile": str(cert.key)}
        return httpclient.InferenceServerClient(front.http_url, ssl=True, ssl_options=options, network_timeout=30)
    return grpcclient.InferenceServerClient(
        front.grpc_url,
        ssl=True,
        root_certificates=str(front.pki.ca.cert),
        private_key=str(cert.key),
        certificate_chain=str(cert.cert),
    )


def _request(client, protocol: str, texts: list[str], key: str | None, **kwargs) -> np.ndarray:
    mod = httpclient if protocol == "http" else grpcclient
    inp = mod.InferInput("text", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    headers = dict(kwargs.pop("headers", {}))
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return client.infer(DEFENDED, [inp], headers=headers, **kwargs).as_numpy("probabilities")


def _infer(front: Front, protocol: str, principal: str | None, texts: list[str], *, key: str | None = None, **kw):
    client = _client(front, protocol)
    try:
        return _request(client, protocol, texts, key or (front.keys[principal] if principal else None), **kw)
    finally:
        client.close()


def _status(err: InferenceServerException) -> str:
    return str(err.status()).removeprefix("StatusCode.")


def _refused(front: Front, protocol: str, texts: list[str], key: str | None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        _infer(front, protocol, None, texts, key=key)
    return err.value


def _raw(front: Front, protocol: str, key: str, rows: int) -> tuple[str, str | None]:
    """One request of ``rows`` rows without tritonclient: (status, retry-after)."""
    pki = front.pki
    if protocol == "http":
        doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [rows, 1], "data": ["a film"] * rows}]}
        resp = requests.post(
            f"https://{front.http_url}/v2/models/{DEFENDED}/infer",
            json=doc,
            headers={"authorization": f"Bearer {key}"},
            cert=(str(pki.client.cert), str(pki.client.key)),
            verify=str(pki.ca.cert),
            timeout=30,
        )
        return str(resp.status_code), resp.headers.get("Retry-After")
    creds = grpc.ssl_channel_credentials(
        pki.ca.cert.read_bytes(), pki.client.key.read_bytes(), pki.client.cert.read_bytes()
    )
    request = service_pb2.ModelInferRequest(model_name=DEFENDED)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[rows, 1])
    tensor.contents.bytes_contents.extend([b"a film"] * rows)
    with grpc.secure_channel(front.grpc_url, creds) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=[("authorization", f"Bearer {key}")], timeout=30
            )
        except grpc.RpcError as err:
            return err.code().name, dict(err.trailing_metadata() or ()).get("retry-after")
    return "OK", None


def _eventually(check, timeout: float = 10.0) -> None:
    """Until ``check()`` neither raises nor returns False (a reload is asynchronous: a signal)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert check() is not False
            return
        except (AssertionError, InferenceServerException, pytest.fail.Exception):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_key_and_a_wrong_key_get_the_same_refusal(front, protocol):
    marker = f"confidential-body-{protocol}"
    good = front.keys["main"]
    wrong = good[:-6] + ("xxxxxx" if not good.endswith("xxxxxx") else "yyyyyy")
    answers = [_refused(front, protocol, [marker], key) for key in (None, wrong, "not-a-key")]
    expected = "401" if protocol == "http" else "UNAUTHENTICATED"
    assert {_status(a) for a in answers} == {expected}
    assert {a.message() for a in answers} == {UNAUTHENTICATED}
    assert _infer(front, protocol, "main", ["a good film"]).shape == (1, 2)
    audit = front.audit.read_text()
    key_id = good.split("_")[1]
    route = f"/v2/models/{DEFENDED}/infer" if protocol == "http" else "ModelInfer"
    lines = [line for line in audit.splitlines() if f"protocol={protocol}" in line and route in line]
    assert any('"unauthenticated: no key"' in line for line in lines)
    assert any(f'"unauthenticated: wrong secret for key {key_id}"' in line for line in lines)
    assert all("principal=unauthenticated" in line for line in lines if "unauthenticated:" in line)
    assert marker not in audit and good.split("_", 2)[2] not in audit and wrong not in audit


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("which", ["expired", "untrusted"])
def test_an_expired_or_untrusted_client_certificate_is_refused(front, protocol, which):
    client = _client(front, protocol, getattr(front.pki, which))
    try:
        # The handshake fails (TLS 1.3: the server's alert arrives at the first read); no HTTP answer.
        with pytest.raises((InferenceServerException, ssl.SSLError, OSError, http.client.HTTPException)) as err:
            _request(client, protocol, ["a good film"], front.keys["main"])
        if protocol == "grpc":
            assert _status(err.value) == "UNAVAILABLE"
        else:
            assert not isinstance(err.value, InferenceServerException), err.value
    finally:
        client.close()
    assert _infer(front, protocol, "main", ["a good film"]).shape == (1, 2)  # the valid certificate works


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_key_revoked_by_sighup_is_refused_and_open_connections_stay(front, protocol):
    revokee, keeper = front.keys[f"revokee-{protocol}"], front.keys[f"keeper-{protocol}"]
    client = _client(front, protocol)  # one connection for the keeper, across the reload
    conn = _https(front) if protocol == "http" else None
    try:
        assert _request(client, protocol, ["a good film"], keeper).shape == (1, 2)
        assert _infer(front, protocol, None, ["a good film"], key=revokee).shape == (1, 2)
        if conn is not None:
            assert _keepalive_infer(conn, keeper) == 200
            sock = conn.sock
        assert keys.main(["--file", str(front.keys_file), "--hup", str(front.process.pid), "revoke", _id(revokee)]) == 0

        def revoked() -> None:
            assert _status(_refused(front, protocol, ["a good film"], revokee)) in ("401", "UNAUTHENTICATED")

        _eventually(revoked)
        assert _request(client, protocol, ["a good film"], keeper).shape == (1, 2)
        if conn is not None:
            assert _keepalive_infer(conn, keeper) == 200 and conn.sock is sock  # the same connection
    finally:
        client.close()
        if conn is not None:
            conn.close()


def _id(key: str) -> str:
    return key.split("_")[1]


def _https(front: Front) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(front.pki.ca.cert))
    ctx.load_cert_chain(front.pki.client.cert, front.pki.client.key)
    host, port = front.http_url.rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)


def _keepalive_infer(conn: http.client.HTTPSConnection, key: str) -> int:
    doc = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a good film"]}]}
    conn.request(
        "POST",
        f"/v2/models/{DEFENDED}/infer",
        body=json.dumps(doc),
        headers={"authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    resp.read()
    return resp.status


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_rate_limit_is_hit_and_recovered(front, protocol):
    key = front.keys[f"limited-{protocol}"]  # 2 rows per second, bursts of 3
    assert _raw(front, protocol, key, 3) == ("200" if protocol == "http" else "OK", None)
    status, retry = _raw(front, protocol, key, 2)
    assert status == ("429" if protocol == "http" else "RESOURCE_EXHAUSTED") and retry is not None
    assert int(retry) >= 1
    assert _infer(front, protocol, "main", ["a good film"]).shape == (1, 2)  # other principals unaffected
    time.sleep(int(retry))
    assert _raw(front, protocol, key, 2)[0] in ("200", "OK")
    assert '"rate-limited"' in front.audit.read_text()


@pytest.fixture(scope="module")
def member_texts(tiny_build) -> list[str]:
    info = json.loads((tiny_build / "build.json").read_text())
    ds = dedupe(load_file(info["config"]["dataset"]))
    return load_splits(tiny_build).take(ds, "member_eval").texts[:8]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_caller_sent_id_cannot_reach_another_principals_state(front, protocol, member_texts):
    """The spoofer probes one text 40 times under the victim's name (header and parameter): were it
    the victim's state, the victim's threat would rise and its answers sharpen less than an
    untouched established caller's. The victim answers exactly as the control does; the spoofer's
    own namespace (``spoofer/victim``) carries the threat."""
    victim, spoofer = f"victim-{protocol}", f"spoofer-{protocol}"
    time.sleep(max(0.0, front.established_at + 6.5 - time.monotonic()))  # victims are established
    client = _client(front, protocol)
    try:
        for i in range(40):
            sent = {"headers": {CLIENT_ID_KEY: victim}} if i % 2 else {"parameters": {CLIENT_ID_KEY: victim}}
            _request(client, protocol, ["a gripping and funny film"], front.keys[spoofer], **sent)
        spoofed = _request(client, protocol, member_texts, front.keys[spoofer], headers={CLIENT_ID_KEY: victim})
        victim_answer = _request(client, protocol, member_texts, front.keys[victim])
        control_answer = _request(client, protocol, member_texts, front.keys[f"control-{protocol}"])
    finally:
        client.close()
    np.testing.assert_array_equal(victim_answer, control_answer)
    assert (spoofed != control_answer).any(), "the flood raised no threat: the test cannot tell states apart"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_veil_classify_goes_through_the_front_door(front, protocol, tmp_path, capsys, monkeypatch):
    """The shipped client: key from a file, TLS with a client certificate; without the key, the
    gateway's refusal is printed and the exit code is 1."""
    from veil.client.cli import main as classify

    key_file = tmp_path / "key"
    key_file.write_text(front.keys["cli"] + "\n")
    url = front.http_url if protocol == "http" else front.grpc_url
    tls = ["--tls-ca", str(front.pki.ca.cert), "--tls-cert", str(front.pki.client.cert)]
    tls += ["--tls-key", str(front.pki.client.key)]
    monkeypatch.delenv("VEIL_API_KEY", raising=False)
    args = ["--protocol", protocol, "--url", url, *tls, "--json", "a gripping and funny film"]
    assert classify([*args, "--api-key-file", str(key_file)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["label"] in (0, 1) and sum(row["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert classify(args) == 1
    assert "authentication required" in capsys.readouterr().err


def test_key_rotation_under_load_loses_no_request(front):
    old = front.keys["rotor"]
    current = {"key": old}
    results: list[tuple[str, str, bool]] = []
    stop = threading.Event()

    def worker(name: str, protocol: str) -> None:
        client = _client(front, protocol)
        try:
            while not stop.is_set():
                key = current["key"]
                try:
                    ok = _request(client, protocol, ["a good film"], key).shape == (1, 2)
                except InferenceServerException:
                    ok = False
                results.append((name, key, ok))
        finally:
            client.close()

    names = [(f"{p}{i}", p) for p in PROTOCOLS for i in range(2)]
    threads = [threading.Thread(target=worker, args=n) for n in names]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        new = keys.add(front.keys_file, "rotor", quota={"rows_per_s": 0, "concurrent": 16})
        os.kill(front.process.pid, signal.SIGHUP)
        _eventually(lambda: _infer(front, "http", None, ["a good film"], key=new))
        current["key"] = new
        _eventually(lambda: {n for n, k, _ in results if k == new} >= {n for n, _ in names})
        assert keys.main(["--file", str(front.keys_file), "--hup", str(front.process.pid), "revoke", _id(old)]) == 0
        _eventually(lambda: _refused(front, "grpc", ["a good film"], old))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(results) > 40 and {k for _, k, _ in results} == {old, new}
    assert all(ok for _, _, ok in results), [r for r in results if not r[2]][:3]


def test_tritonservers_keys_are_not_on_its_command_line(front):
    triton = next(p for p in _children(front.process) if p.name() == "tritonserver")
    args = triton.cmdline()
    restricted = [a for a in args if "restricted" in a]
    assert len(restricted) == 4 and all("=@veil-env:VEIL_TRITON_" in a for a in restricted)
    name = f"{GATEWAY_KEY_ENV}=".encode()  # the shim wiped the value from the environment block too
    assert all(
        entry == name for entry in Path(f"/proc/{triton.pid}/environ").read_bytes().split(b"\0") if name in entry
    )
    port = next(a.split("=", 1)[1] for a in args if a.startswith("--http-port="))
    url = f"http://127.0.0.1:{port}/v2/models/{DEFENDED}"  # metadata: behind the gateway's key
    marker = f"@veil-env:{GATEWAY_KEY_ENV}"
    assert requests.get(url, timeout=5).status_code == 403  # unkeyed: refused
    assert requests.get(url, headers={"veil-gateway-key": marker}, timeout=5).status_code == 403
    assert requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).status_code == 200  # it is up
