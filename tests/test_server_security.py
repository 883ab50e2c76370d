"""`tda serve` under hostile input, over real HTTP against a real index: schemathesis fuzzes the
server's own OpenAPI schema (with and without the token) and finds no 5xx and no response off
the schema; path-like document ids read no files; bodies over the limit get 413 however they
are framed; requests over k/length limits get 4xx; the token is compared with
hmac.compare_digest; the server binds to loopback by default and warns when exposed without a
token."""
import collections
import hmac
import inspect
import json
import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tda.tests.indexing import env, fact_index, free_port, stop, tda, wait_healthy

TOKEN = "s3cret-Token_42"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 8192               # --max-body-bytes of the module's server
MAX_K = 20                    # --max-k
MAX_EXAMPLES = 50             # schemathesis examples per operation and generation mode
PROTECTED = ("POST /search", "POST /search/batch", "GET /documents/{doc_id}", "GET /info",
             "GET /config", "GET /reports", "GET /reports/{run}/queries",
             "GET /reports/{run}/queries/{example_id}")
SENT: collections.Counter = collections.Counter()     # (run, operation, status) -> requests


@pytest.fixture(scope="module")
def index(tmp_path_factory, gpt2_dir):
    return fact_index(tmp_path_factory, gpt2_dir, facts=60, shard_size=20, projection_dim=6)


@pytest.fixture(scope="module")
def sentinel(index):
    """A file next to the index that no request may read."""
    path = index.parent / "secret.txt"
    path.write_text(f"tda-sentinel-{uuid.uuid4().hex}\n")
    return path


def start(index, *args: str, stderr_path=None) -> subprocess.Popen:
    stderr = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "tda.cli", "serve", str(index), *args],
                            env=env(), stdout=subprocess.DEVNULL, stderr=stderr, text=True)


@pytest.fixture(scope="module")
def server(index, tmp_path_factory):
    """`tda serve` with a token and no --host (the default must be loopback)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    proc = start(index, "--port", str(port), "--token", TOKEN, "--workers", "1",
                 "--max-k", str(MAX_K), "--max-body-bytes", str(MAX_BODY), stderr_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        yield {"url": url, "port": port, "proc": proc, "log": log}
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def raw(port: int, data: bytes, timeout: float = 30) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side URL normalization or framing); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:          # the server may answer and close before reading it all
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def chunked(body: bytes, size: int = 1000) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def search_head(extra: bytes = b"") -> bytes:
    return (b"POST /search HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode() + extra + b"\r\n")


def assert_serving(url: str) -> None:
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    r = httpx.post(url + "/search", headers=AUTH, timeout=60,
                   json={"prompt": "Allan Peiper was born in", "target": " Alexandra", "k": 3})
    assert r.status_code == 200 and len(r.json()["fused"]) == 3


# ----------------------------------------------------------------------------- schemathesis
def fuzz(url: str, run: str, headers: dict | None) -> list[str]:
    """Every operation of the server's /openapi.json, positive and negative cases, through
    schemathesis' Python API; returns the failures (each request is counted in SENT)."""
    import hypothesis
    import schemathesis
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance,
                                                   negative_data_rejection,
                                                   response_headers_conformance,
                                                   response_schema_conformance,
                                                   status_code_conformance)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance, negative_data_rejection]
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert sorted(op.label for op in operations) == sorted(PROTECTED + ("GET /health",))
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                                 derandomize=True, phases=[Phase.explicit, Phase.generate],
                                 suppress_health_check=list(HealthCheck))
            def one(case):
                try:
                    resp = case.call(base_url=url, headers=headers, timeout=60)
                except Exception as e:  # noqa: BLE001 - a dropped connection is a failure
                    SENT[(run, op.label, "no response")] += 1
                    failures.append(f"{op.label} [{mode.value}]: {e!r}")
                    return
                SENT[(run, op.label, resp.status_code)] += 1
                # without a token: 401, or 413 for a body over the limit (refused before it
                # is read or authenticated; batch bodies often exceed it)
                if headers is None and op.label in PROTECTED and resp.status_code not in (401,
                                                                                         413):
                    failures.append(f"{op.label} [{mode.value}] without a token: "
                                    f"{resp.status_code} {resp.text[:200]}")
                body = getattr(resp.request, "body", None) or b""
                if resp.status_code == 413:
                    # refused unread for its size, whatever it holds (negative_data_rejection
                    # does not count 413 as a rejection; a negative batch is often this big)
                    if len(body) <= MAX_BODY:
                        failures.append(f"{op.label} [{mode.value}]: 413 for {len(body)} bytes")
                    return
                try:
                    case.validate_response(resp, checks=checks, headers=headers)
                except Exception as e:  # noqa: BLE001 - schemathesis' FailureGroup
                    failures.append(f"{op.label} [{mode.value}]: {str(e)[:1500]}")

            try:
                one()
            except hypothesis.errors.Unsatisfiable:    # nothing to negate (GET /health)
                assert mode is GenerationMode.NEGATIVE and op.label == "GET /health"
    return failures


def test_schemathesis_with_token(server):
    failures = fuzz(server["url"], "token", AUTH)
    assert not failures, "\n\n".join(failures[:5])
    ok = {op for (run, op, status) in SENT if run == "token" and status == 200}
    assert ok >= {"POST /search", "GET /info", "GET /health"}     # got past auth
    assert_serving(server["url"])


def test_schemathesis_without_token(server):
    failures = fuzz(server["url"], "none", None)
    assert not failures, "\n\n".join(failures[:5])
    assert_serving(server["url"])
    n = sum(SENT.values())
    errors = sum(v for (_, _, status), v in SENT.items()
                 if status == "no response" or status >= 500)
    by_status = collections.Counter()
    for (run, _, status), v in SENT.items():
        by_status[f"{run}:{status}"] += v
    print(f"\nschemathesis: {n} requests, {errors} 5xx")
    print(f"schemathesis by run:status: {dict(sorted(by_status.items()))}")
    assert n >= 300 and errors == 0


# ----------------------------------------------------------------------------- documents
def test_path_like_document_ids_read_no_files(server, index, sentinel):
    secret = sentinel.read_text().strip().encode()
    ids = ["../../etc/passwd", "/etc/passwd", "//etc/passwd", "..%2F..%2Fetc%2Fpasswd",
           "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2E%2E/%2E%2E/etc/passwd",
           "%252e%252e%252fetc%252fpasswd", "..%5C..%5Cetc%5Cpasswd", "....//....//etc/passwd",
           "%00", "s0%00", "..%00/etc/passwd", "%2Fetc%2Fpasswd%00.json",
           "file:%2F%2F%2Fetc%2Fpasswd", str(sentinel), str(index / "zarr.json"),
           "zarr.json", "shards/000000/zarr.json", "bm25/segments_1", "../index/zarr.json",
           "..", ".", "", "~", "~root/.bashrc", "%2Fproc%2Fself%2Fenviron", "/proc/self/environ"]
    ids += ["../" * i + "secret.txt" for i in range(1, 8)]
    ids += ["%2e%2e%2f" * i + "secret.txt" for i in range(1, 8)]
    for doc_id in ids:
        request = (f"GET /documents/{doc_id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
        status, body = raw(server["port"], request)
        assert 400 <= status < 500, (doc_id, status, body[:300])
        assert secret not in body and b"root:" not in body and b"zarr_format" not in body \
            and b"PATH=" not in body, (doc_id, body[:300])
    r = httpx.get(server["url"] + "/documents/s0", headers=AUTH)     # the route itself works
    assert r.status_code == 200 and r.json()["doc_id"] == "s0"


# ----------------------------------------------------------------------------- limits
def test_oversize_bodies_get_413(server):
    url, port = server["url"], server["port"]
    big = json.dumps({"prompt": "x" * (2 * MAX_BODY), "target": " y"}).encode()
    # honest Content-Length over the limit
    r = httpx.post(url + "/search", content=big, headers={**AUTH,
                                                           "content-type": "application/json"})
    assert r.status_code == 413
    # ... on any path, before auth
    assert httpx.post(url + "/search", content=big).status_code == 413
    # chunked transfer encoding, no Content-Length (httpx streams a generator chunked)
    r = httpx.post(url + "/search", content=iter([big[i:i + 1000]
                                                  for i in range(0, len(big), 1000)]),
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and "content-length" not in r.request.headers
    assert raw(port, search_head(b"Transfer-Encoding: chunked\r\n") + chunked(big))[0] == 413
    # lying Content-Length: small, with a chunked body over the limit (chunked framing wins)
    assert raw(port, search_head(b"Transfer-Encoding: chunked\r\nContent-Length: 20\r\n")
               + chunked(big))[0] == 413
    # lying Content-Length: huge, with a small body: refused from the header (a server that
    # waited for the declared bytes would send nothing before raw() times out, and fail here)
    assert raw(port, search_head(b"Content-Length: 1000000000\r\n") + b'{"prompt": "a"}',
               timeout=30)[0] == 413
    # lying Content-Length: small, followed by more bytes: only the declared bytes are the
    # body (the rest is a malformed next request): a 4xx, never the whole payload parsed
    status, _ = raw(port, search_head(b"Content-Length: 20\r\n") + big)
    assert 400 <= status < 500
    # not a number
    assert 400 <= raw(port, search_head(b"Content-Length: abc\r\n") + b"{}")[0] < 500
    # a small chunked body is still served (the limit does not break chunked requests)
    small = json.dumps({"prompt": "Allan Peiper was born in", "target": " Alexandra",
                        "k": 2, "mode": "bm25"}).encode()
    status, body = raw(port, search_head(b"Transfer-Encoding: chunked\r\n") + chunked(small, 7))
    assert status == 200 and json.loads(body)["bm25"][0]["doc_id"] == "s0"
    assert_serving(url)


def test_k_and_length_limits_get_4xx(server):
    url = server["url"]
    base = {"prompt": "Allan Peiper was born in", "target": " Alexandra"}
    cases = {"k over --max-k": (dict(base, k=MAX_K + 1), 400),
             "huge k": (dict(base, k=10**12), 400),
             "k beyond int64": (dict(base, k=2**70), 400),
             "k = 0": (dict(base, k=0), 422),
             "k negative": (dict(base, k=-5), 422),
             "k not an int": (dict(base, k=2.5), 422),
             "prompt over max_query_chars": (dict(base, prompt="w" * 2500), 400),
             "prompt + target over max_query_chars": (dict(base, prompt="w" * 1500,
                                                           target=" " + "v" * 1000), 400),
             # a query over the model's max_len keeps its end (left-truncated, warned)
             "query over the model's max_len": (dict(base, prompt="word " * 300), 200),
             "empty prompt": (dict(base, prompt=""), 422),
             "blank target": (dict(base, target="  "), 400),
             "unknown mode": (dict(base, mode="all"), 422),
             "unknown profile": (dict(base, profile="../../etc"), 400),
             "NUL in prompt": (dict(base, prompt="a\x00b", mode="bm25"), 200)}
    for name, (body, want) in cases.items():
        r = httpx.post(url + "/search", json=body, headers=AUTH, timeout=60)
        assert r.status_code == want, (name, r.status_code, r.text[:300])
    assert httpx.post(url + "/search", json=[], headers=AUTH).status_code == 422
    assert httpx.post(url + "/search", content=b"\xff\xfe", headers={
        **AUTH, "content-type": "application/json"}).status_code == 422
    assert_serving(url)


# ----------------------------------------------------------------------------- token
def test_token_is_compared_in_constant_time(monkeypatch):
    from fastapi.testclient import TestClient

    from tda.searcher import server as srv
    source = inspect.getsource(srv.create_app)
    assert "hmac.compare_digest" in source
    assert "== token" not in source and "token ==" not in source and "!= token" not in source

    class Fake:
        def info(self):
            return {"examples": 1}

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(srv.hmac, "compare_digest", spy)
    with TestClient(srv.create_app(Fake(), token=TOKEN)) as client:
        assert client.get("/info", headers=AUTH).status_code == 200
        for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"},
                    {"Authorization": b"Bearer \xc3\xa9\xff"}):
            r = client.get("/info", headers=bad)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert client.get("/health").status_code == 200
    assert (TOKEN.encode(), TOKEN.encode()) in calls and len(calls) >= 5


# ----------------------------------------------------------------------------- binding
def listening(pid: int) -> set[tuple[str, int]]:
    import psutil
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return {(c.laddr.ip, c.laddr.port) for p in procs for c in p.net_connections("inet")
            if c.status == psutil.CONN_LISTEN}


def test_binds_to_loopback_by_default(server):
    socks = listening(server["proc"].pid)
    assert ("127.0.0.1", server["port"]) in socks
    assert not any(port == server["port"] and ip != "127.0.0.1" for ip, port in socks)


def test_nothing_listens_beyond_loopback_by_default(server):
    socks = listening(server["proc"].pid)
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in socks), socks


def test_warns_when_exposed_without_token(index, tmp_path):
    log = tmp_path / "stderr.txt"
    proc = start(index, "--host", "0.0.0.0", "--port", str(free_port()), "--workers", "1",
                 stderr_path=log)
    try:
        deadline = time.time() + 60
        while "warning: serving on 0.0.0.0 without --token" not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.kill()                    # no need to let it finish binding
        proc.wait()
    # The warning comes before the index is opened, so a missing index shows it too: the
    # variants below never bind anything.
    missing = str(tmp_path / "no-index")
    for args, warn in ((["--host", "::"], True), (["--host", "0.0.0.0", "--token", "t"], False),
                       (["--host", "localhost"], False)):
        out = tda("serve", missing, "--port", "1", *args, check=False, timeout=60)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert ("without --token" in out.stderr) == warn, (args, out.stderr)
    with_env = subprocess.run([sys.executable, "-m", "tda.cli", "serve", missing, "--host",
                               "0.0.0.0", "--port", "1"], env=dict(env(), TDA_TOKEN="t"),
                              capture_output=True, text=True, timeout=60)
    assert "without --token" not in with_env.stderr
