"""Issue 15, the parts that need no tritonserver: the key file and its CLI, the authenticator, the
token bucket, sub-ids, per-principal caps and the audit log through the gateway with a fake
upstream, mTLS principals, the argv-secrets shim and the command line's refusals. The end-to-end
cases (real gateway process + real tritonserver) are in tests/integration/test_front_door.py.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from veil.model_repository.spec import DEFENDED
from veil.serving import cli, keys
from veil.serving.auth import UNAUTHENTICATED, Authenticator, Identity, Unauthenticated
from veil.serving.devcerts import make_pki
from veil.serving.frontdoor import AUDIT
from veil.serving.gateway import Gateway
from veil.serving.launcher import RUNTIME_DIR
from veil.serving.limits import Quota, RateLimited, RowLimiter, TokenBucket
from veil.serving.secret_args import build_shim, env_ref, prepare
from veil.serving.tls import TlsConfig
from veil.serving.validation import CallerError
from veil.wire import CLIENT_ID_KEY

from ..integration.wire import Wire
from .upstream import FakeUpstream

PROTOCOLS = ("http", "grpc")


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the key file and its CLI ------------------------------------------------------------------


def test_the_cli_prints_a_key_once_and_stores_only_its_hash(tmp_path, capsys):
    path = tmp_path / "keys.jsonl"
    assert keys.main(["--file", str(path), "add", "--principal", "alice", "--rows-per-s", "5"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("veil_") and len(key.split("_", 2)[2]) >= 40
    text = path.read_text()
    assert key.split("_", 2)[2] not in text and key not in text  # the secret is nowhere on disk
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(text)
    assert record["principal"] == "alice" and record["rows_per_s"] == 5 and record["revoked"] is None
    assert keys.main(["--file", str(path), "list"]) == 0
    listed = capsys.readouterr().out
    assert record["id"] in listed and key.split("_", 2)[2] not in listed
    auth = Authenticator(mode="keys", keys_file=path)
    assert auth.authenticate(f"Bearer {key}", None) == Identity("alice", Quota(rows_per_s=5), record["id"])
    assert keys.main(["--file", str(path), "revoke", record["id"]]) == 0
    assert keys.main(["--file", str(path), "revoke", record["id"]]) == 1  # already revoked
    auth.reload()
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {key}", None)
    assert keys.main(["--file", str(path), "add", "--principal", "bad/name"]) == 2  # '/' separates sub-ids


def test_every_key_failure_gets_the_same_answer_and_a_distinct_audit_reason(tmp_path):
    path = tmp_path / "keys.jsonl"
    clock = Clock(0.0)
    good = keys.add(path, "alice", quota={})
    old = keys.add(path, "bob", quota={}, expires="1970-01-01T00:10:00Z")
    auth = Authenticator(mode="keys", keys_file=path, clock=clock)
    wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    tries = {
        None: "no key",
        "": "no key",
        f"Basic {good}": "malformed",
        "Bearer veil_nothex______": "malformed",
        f"Bearer {wrong}": "wrong secret",
        "Bearer veil_000000000000_" + "A" * 43: "unknown or revoked",
    }
    clock.t = 3600.0
    tries[f"Bearer {old}"] = "expired"
    for header, reason in tries.items():
        with pytest.raises(Unauthenticated) as err:
            auth.authenticate(header, None)
        assert str(err.value) == UNAUTHENTICATED and err.value.status == 401 and reason in err.value.reason
    assert auth.authenticate(f"bearer  {good} ", None).principal == "alice"  # scheme is case-insensitive


def test_a_broken_key_file_on_reload_keeps_the_previous_keys(tmp_path, caplog):
    path = tmp_path / "keys.jsonl"
    key = keys.add(path, "alice", quota={})
    gw = Gateway("127.0.0.1:1", "127.0.0.1:2", auth=Authenticator(mode="keys", keys_file=path))
    path.write_text(path.read_text() + "{not json\n")
    with caplog.at_level(logging.INFO, logger=AUDIT.name):
        assert "reload failed" in gw.reload() and "line 2" in gw.reload()
    assert gw.door.identify(f"Bearer {key}", None).principal == "alice"
    assert "reload-failed" in caplog.text


# -- limits and sub-ids ------------------------------------------------------------------------


def test_the_token_bucket_refuses_with_the_wait_and_refills():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, capacity=4, clock=clock)
    assert bucket.take(4) == 0
    assert bucket.take(1) == pytest.approx(0.5)
    clock.t += 1.0
    assert bucket.take(2) == 0 and bucket.take(1) == pytest.approx(0.5)
    clock.t += 100
    assert bucket.take(5) == pytest.approx(0.5)  # never more than the capacity
    limiter = RowLimiter(clock=clock)
    quota = Quota(rows_per_s=1.0, burst=3)
    limiter.take("alice", 3, quota)
    with pytest.raises(RateLimited) as err:
        limiter.take("alice", 2, quota)
    assert err.value.status == 429 and err.value.retry_after == 2 and err.value.reason == "rate-limited"
    limiter.take("bob", 3, quota)  # another principal has its own bucket
    with pytest.raises(CallerError, match="over this key's burst") as err:
        limiter.take("carol", 4, quota)
    assert err.value.status == 413
    limiter.take("dave", 10_000, Quota(rows_per_s=0))  # unlimited


def test_caller_ids_stay_inside_their_principal_and_are_bounded(tmp_path):
    auth = Authenticator(mode="keys", keys_file=_keyfile(tmp_path))
    alice, bob = Identity("alice", Quota(max_sub_ids=2)), Identity("bob", Quota())
    assert auth.client_id(bob, "alice") == "bob"  # no sub-ids: the caller's id is ignored
    assert auth.client_id(bob, None) == "bob"
    assert auth.client_id(alice, "bob") == "alice/bob" and auth.client_id(alice, "x/y") == "alice/x/y"
    assert auth.client_id(alice, "bob") == "alice/bob"  # a known sub-id again
    with pytest.raises(CallerError, match="at most 2 client ids") as err:
        auth.client_id(alice, "third")
    assert err.value.status == 403


def _keyfile(tmp_path) -> os.PathLike:
    path = tmp_path / "keys.jsonl"
    path.touch(mode=0o600)
    return path


# -- through the gateway (fake upstream) -------------------------------------------------------


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream()
    yield fake
    fake.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_keys_name_the_caller_cap_its_requests_and_every_refusal_is_audited(upstream, tmp_path, protocol, caplog):
    path = tmp_path / "keys.jsonl"
    alice = keys.add(path, "alice", quota={"concurrent": 2})
    auth = Authenticator(mode="keys", keys_file=path)
    with Gateway(upstream.http_url, upstream.grpc_url, auth=auth) as gw, caplog.at_level(logging.INFO, AUDIT.name):
        url = gw.http_url if protocol == "http" else gw.grpc_url
        with Wire(protocol, url) as anonymous, Wire(protocol, url, headers={"authorization": f"Bearer {alice}"}) as w:
            refused = anonymous.classify(DEFENDED, ["secret text 1234"], parameters={CLIENT_ID_KEY: "alice"})
            assert refused.status in ("401", "UNAUTHENTICATED") and refused.message == UNAUTHENTICATED
            assert w.classify(DEFENDED, ["a"], parameters={CLIENT_ID_KEY: "mallory"}).ok
            assert _forwarded_id(upstream, protocol) == ("alice", None)  # the parameter is gone
            upstream.close_gate()
            try:
                with ThreadPoolExecutor(3) as pool:
                    held = [pool.submit(w.classify, DEFENDED, ["a"]) for _ in range(2)]
                    _wait_until(lambda: gw.admission.by_caller.get("alice") == 2)
                    status, retry = _third(gw, protocol, alice)
                    upstream.open_gate()
                    assert all(f.result().ok for f in held)
            finally:
                upstream.open_gate()
            assert status in ("429", "RESOURCE_EXHAUSTED") and retry == "1"
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert any("principal=unauthenticated" in line and '"unauthenticated: no key"' in line for line in lines)
    assert any('principal="alice"' in line and '"too-many-in-flight"' in line for line in lines)
    assert "secret text" not in caplog.text and alice not in caplog.text  # never the body, never the key


def _third(gw, protocol: str, key: str) -> tuple[str, str | None]:
    """A third request while two are held: (status, retry-after)."""
    if protocol == "http":
        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}]})
        resp = requests.post(
            f"http://{gw.http_url}/v2/models/{DEFENDED}/infer", data=body, headers={"authorization": f"Bearer {key}"}
        )
        return str(resp.status_code), resp.headers.get("Retry-After")
    request = service_pb2.ModelInferRequest(model_name=DEFENDED)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append(b"a")
    with grpc.insecure_channel(gw.grpc_url) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        try:
            call(request, metadata=[("authorization", f"Bearer {key}")])
        except grpc.RpcError as err:
            return err.code().name, dict(err.trailing_metadata()).get("retry-after")
    return "OK", None


def _forwarded_id(upstream, protocol: str) -> tuple[str | None, str | None]:
    """(header, parameter) of the last request upstream."""
    if protocol == "http":
        _, _, headers, body = upstream.http_seen[-1]
        size = int(headers.get("Inference-Header-Content-Length", len(body)))
        params = json.loads(body[:size]).get("parameters", {})
        return {k.lower(): v for k, v in headers.items()}.get(CLIENT_ID_KEY), params.get(CLIENT_ID_KEY)
    raw, metadata = upstream.grpc_seen[-1]
    request = service_pb2.ModelInferRequest.FromString(raw)
    param = request.parameters[CLIENT_ID_KEY].string_param if CLIENT_ID_KEY in request.parameters else None
    return metadata.get(CLIENT_ID_KEY), param


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_mtls_names_the_caller_by_its_certificate(upstream, tmp_path):
    pki = make_pki(tmp_path, client_cn="svc-billing")
    tls = TlsConfig(pki.server.cert, pki.server.key, pki.ca.cert)
    with Gateway(upstream.http_url, upstream.grpc_url, tls=tls, auth=Authenticator(mode="mtls")) as gw:
        options = {"ca_certs": str(pki.ca.cert), "certfile": str(pki.client.cert), "keyfile": str(pki.client.key)}
        http = httpclient.InferenceServerClient(gw.http_url, ssl=True, ssl_options=options)
        inp = httpclient.InferInput("text", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"a"]], dtype=object))
        http.infer(DEFENDED, [inp], headers={CLIENT_ID_KEY: "someone-else"})
        assert _forwarded_id(upstream, "http") == ("svc-billing", None)
        http.close()
        g = grpcclient.InferenceServerClient(
            gw.grpc_url,
            ssl=True,
            root_certificates=str(pki.ca.cert),
            private_key=str(pki.client.key),
            certificate_chain=str(pki.client.cert),
        )
        ginp = grpcclient.InferInput("text", [1, 1], "BYTES")
        ginp.set_data_from_numpy(np.array([[b"a"]], dtype=object))
        g.infer(DEFENDED, [ginp])
        assert _forwarded_id(upstream, "grpc") == ("svc-billing", None)
        g.close()
        no_cert = grpcclient.InferenceServerClient(gw.grpc_url, ssl=True, root_certificates=str(pki.ca.cert))
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            no_cert.infer(DEFENDED, [ginp], client_timeout=10)
        no_cert.close()


# -- keys off tritonserver's command line ------------------------------------------------------


def test_the_shim_fills_arguments_from_the_environment_and_wipes_it():
    shim = build_shim(RUNTIME_DIR)
    assert shim is not None, "needs a C compiler (gcc)"
    env = {"PATH": os.environ["PATH"]}
    command = ["/bin/sh", "-c", 'echo "$0"; env', f"--key=x:{env_ref('VEIL_T_KEY')}"]
    args = prepare(command, env, {"VEIL_T_KEY": "s3"}, RUNTIME_DIR)
    assert "s3" not in " ".join(args)
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "--key=x:s3"  # the program sees the key...
    assert "VEIL_T_KEY" not in out and "LD_PRELOAD" not in out  # ...and its children inherit neither
    del env["VEIL_T_KEY"]
    missing = subprocess.run(args, env=env, capture_output=True, text=True)
    assert missing.returncode == 78 and "VEIL_T_KEY" in missing.stderr  # never the marker as a key


# -- the command line --------------------------------------------------------------------------


def test_the_command_line_refuses_anonymous_serving_beyond_loopback_and_warns_loudly(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--host", "0.0.0.0", "--repository", "x"])
    assert "without authentication" in capsys.readouterr().err
    p = cli.parser()
    args = p.parse_args(["--host", "0.0.0.0", "--auth", "none"])
    tls, auth = cli.front_door(p, args)
    cli.announce(auth, tls, "0.0.0.0:8000")
    err = capsys.readouterr().err
    assert "AUTHENTICATION IS OFF" in err and "TLS is off" in err
    with pytest.raises(SystemExit):
        cli.front_door(p, p.parse_args(["--auth", "mtls"]))
