"""Tests for the local OpenAI-compatible embeddings server.

The server runs as a real subprocess (local_openai.testing) and is driven with
the real `openai` SDK over HTTP: no mocks. tiktoken needs TIKTOKEN_CACHE_DIR
(set by the caller / conftest) because it cannot download its BPE file here.
"""

import array
import base64
import json
import math
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import tiktoken

from local_openai.server import format_duration
from local_openai.testing import SERVER_SCRIPT, running_server

KEY = "sk-test-0123456789abcdefghijKLMN"
SMALL = "text-embedding-3-small"
DURATION_RE = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
ENC = tiktoken.get_encoding("cl100k_base")


def ntokens(text):
    return len(ENC.encode_ordinary(text))


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b))


@pytest.fixture(scope="module")
def shared_server():
    with running_server(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def srv(shared_server):
    """The shared server with clean stats, windows and default fault settings."""
    shared_server.set_faults(rpm=0, tpm=0, window_s=60, latency_ms=0, latency_per_1k_tokens_ms=0,
                             fault_rate=0, fault_statuses=[500, 503], seed=0,
                             auth_always_fail=False, ratelimit_headers="all")
    shared_server.reset()
    return shared_server


def client_for(srv, max_retries=0, **kw):
    return openai.OpenAI(api_key=srv.api_key, base_url=srv.base_url,
                         max_retries=max_retries, **kw)


TEXTS = [
    "The meeting discussed the embedding pipeline for transcripts.",
    "In the meeting we discussed the transcript embedding pipeline.",
    "Bananas are a yellow tropical fruit rich in potassium.",
]


def embed_all(srv, texts, **kw):
    resp = client_for(srv).embeddings.create(model=SMALL, input=texts, **kw)
    return [d.embedding for d in resp.data]


# --------------------------------------------------------------------------
# Vectors
# --------------------------------------------------------------------------


def test_embeddings_shape_usage_and_similarity(srv):
    resp = client_for(srv).embeddings.create(model=SMALL, input=TEXTS)
    assert resp.object == "list" and resp.model == SMALL
    assert [d.index for d in resp.data] == [0, 1, 2]
    vecs = [d.embedding for d in resp.data]
    assert all(len(v) == 1536 for v in vecs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-5 for v in vecs)
    expected_tokens = sum(ntokens(t) for t in TEXTS)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == expected_tokens
    # Texts sharing words are closer than unrelated ones.
    assert cosine(vecs[0], vecs[1]) > 0.5
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2]) + 0.3
    # Same text in another request: identical vector.
    assert embed_all(srv, [TEXTS[1]]) == [vecs[1]]
    # Token-id input embeds like the text it encodes; counts len(ids) tokens.
    ids = ENC.encode_ordinary(TEXTS[0])
    resp_ids = client_for(srv).embeddings.create(model=SMALL, input=[ids])
    assert resp_ids.data[0].embedding == vecs[0]
    assert resp_ids.usage.prompt_tokens == len(ids)


def test_vectors_identical_across_server_runs_and_clean_exit(shared_server):
    first = embed_all(shared_server, TEXTS)
    with running_server(api_key=KEY, verbose=True) as other:
        second = embed_all(other, TEXTS)
    assert second == first
    # SIGTERM stops it cleanly; the verbose log has a line per request, no key.
    assert other.returncode == 0
    log = other.stderr_text()
    assert "/v1/embeddings -> 200" in log
    assert KEY not in log and KEY[-8:] not in log


def test_float_and_base64_formats_agree(srv):
    client = client_for(srv)
    floats = client.embeddings.create(model=SMALL, input=TEXTS[:2], encoding_format="float")
    b64 = client.embeddings.create(model=SMALL, input=TEXTS[:2], encoding_format="base64")
    default = client.embeddings.create(model=SMALL, input=TEXTS[:2])  # SDK asks base64
    for f, b, d in zip(floats.data, b64.data, default.data):
        assert isinstance(f.embedding, list) and isinstance(b.embedding, str)
        decoded = array.array("f", base64.b64decode(b.embedding)).tolist()
        assert decoded == f.embedding == d.embedding


def test_dimensions(srv):
    client = client_for(srv)
    short = client.embeddings.create(model=SMALL, input=TEXTS, dimensions=256)
    vecs = [d.embedding for d in short.data]
    assert [len(v) for v in vecs] == [256, 256, 256]
    assert all(abs(sum(x * x for x in v) - 1) < 1e-5 for v in vecs)
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], vecs[2])
    # Truncate-then-renormalise: a prefix of the full vector, rescaled.
    full = client.embeddings.create(model=SMALL, input=TEXTS[0]).data[0].embedding
    assert cosine(full[:256], vecs[0]) > 0.9999
    large = client.embeddings.create(model="text-embedding-3-large", input="hi")
    assert len(large.data[0].embedding) == 3072
    assert len(client.embeddings.create(model="text-embedding-3-large", input="hi",
                                        dimensions=3).data[0].embedding) == 3
    for model, dims in (("text-embedding-ada-002", 512), (SMALL, 0), (SMALL, 1537)):
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=model, input="hi", dimensions=dims)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_wrong_key_is_401_with_masked_key(srv):
    wrong = "sk-wrong-9876543210zyxwvutsWXYZ"
    client = openai.OpenAI(api_key=wrong, base_url=srv.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.embeddings.create(model=SMALL, input="hello")
    err = info.value
    assert err.status_code == 401 and err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert "Incorrect API key provided: sk-" in err.message and "WXYZ." in err.message
    assert wrong not in err.message and wrong not in err.response.text
    assert wrong[3:-4] not in err.response.text
    # auth_always_fail rejects even the right key.
    srv.set_faults(auth_always_fail=True)
    with pytest.raises(openai.AuthenticationError):
        client_for(srv).embeddings.create(model=SMALL, input="hello")
    assert srv.stats()["status_counts"] == {"401": 2}


def _limit_cases():
    big = "hello " * 9000
    chunk = "hello " * 8000
    return [
        ("too_many_inputs", ["a"] * 2049, "'$.input' is invalid", None),
        ("empty_string", ["fine", ""], "'$.input' is invalid", None),
        ("input_too_long", [big],
         f"maximum context length is 8192 tokens, however you requested {ntokens(big)} "
         f"tokens ({ntokens(big)} in your prompt; 0 for the completion)", None),
        ("request_too_many_tokens", [chunk] * 40,
         f"Requested {40 * ntokens(chunk)} tokens, max 300000 tokens per request",
         "max_tokens_per_request"),
    ]


@pytest.mark.parametrize("name,inputs,message,code", _limit_cases(),
                         ids=[c[0] for c in _limit_cases()])
def test_request_limits_are_400(srv, name, inputs, message, code):
    with pytest.raises(openai.BadRequestError) as info:
        client_for(srv).embeddings.create(model=SMALL, input=inputs)
    err = info.value
    assert err.status_code == 400 and err.type == "invalid_request_error"
    assert message in err.message
    assert err.code == code
    stats = srv.stats()
    assert stats["requests"] == 1 and stats["ok_requests"] == 0 and stats["tokens"] == 0


def test_unknown_model_is_404(srv):
    with pytest.raises(openai.NotFoundError) as info:
        client_for(srv).embeddings.create(model="text-embedding-4-huge", input="hi")
    assert info.value.code == "model_not_found"
    assert "text-embedding-4-huge" in info.value.message


def test_plain_http_errors(srv):
    def call(path, data=None, headers=None):
        req = urllib.request.Request(srv.root_url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    assert call("/health") == (200, b"ok")
    status, body = call("/v1/nope")
    assert status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"
    status, body = call("/v1/embeddings", b"{not json",
                        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert status == 400 and "could not parse the JSON body" in json.loads(body)["error"]["message"]
    status, body = call("/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "x"}')
    assert status == 401  # no Authorization header at all


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------

EMBEDDING_MODELS = {SMALL, "text-embedding-3-large", "text-embedding-ada-002"}


def test_models_list_and_retrieve(srv):
    client = client_for(srv)
    listed = list(client.models.list())
    assert {m.id for m in listed} == EMBEDDING_MODELS
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by
               for m in listed)
    raw = client.models.with_raw_response.retrieve(SMALL)
    assert raw.headers["x-request-id"].startswith("req_")
    model = raw.parse()
    assert (model.id, model.object, model.owned_by) == (SMALL, "model", "system")
    assert model.created == next(m.created for m in listed if m.id == SMALL)
    stats = srv.stats()
    assert stats["status_counts"] == {"200": 2} and stats["model_requests"] == 2
    # Not embeddings: no requests, tokens or inputs counted.
    assert stats["requests"] == stats["ok_requests"] == stats["tokens"] == stats["inputs"] == 0


def test_unknown_model_retrieve_is_404_like_embeddings(srv):
    client = client_for(srv)
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("text-embedding-4-huge")
    err = info.value
    assert err.status_code == 404 and err.code == "model_not_found"
    assert err.body == {"message": "The model `text-embedding-4-huge` does not exist or you "
                                   "do not have access to it.",
                        "type": "invalid_request_error", "param": None,
                        "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError) as from_embeddings:
        client.embeddings.create(model="text-embedding-4-huge", input="hi")
    assert from_embeddings.value.body == err.body
    stats = srv.stats()
    assert stats["status_counts"] == {"404": 2} and stats["model_requests"] == 1


def test_models_need_the_key(srv):
    wrong = "sk-wrong-9876543210zyxwvutsWXYZ"
    client = openai.OpenAI(api_key=wrong, base_url=srv.base_url, max_retries=0)
    for call in (client.models.list, lambda: client.models.retrieve(SMALL)):
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        err = info.value
        assert err.status_code == 401 and err.code == "invalid_api_key"
        assert "Incorrect API key provided: sk-" in err.message and "WXYZ." in err.message
        assert wrong not in err.response.text and wrong[3:-4] not in err.response.text
    # No Authorization header at all: the missing-key 401 (before any model lookup).
    req = urllib.request.Request(srv.base_url + "/models/no-such-model")
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=5)
    assert http.value.code == 401
    assert "You didn't provide an API key" in json.loads(http.value.read())["error"]["message"]
    srv.set_faults(auth_always_fail=True)
    with pytest.raises(openai.AuthenticationError):
        client_for(srv).models.retrieve(SMALL)
    stats = srv.stats()
    assert stats["status_counts"] == {"401": 4} and stats["model_requests"] == 4
    assert stats["requests"] == 0


def test_models_skip_faults_latency_and_rate_limits(srv):
    srv.set_faults(tpm=1, rpm=1, latency_ms=3000, fault_rate=1.0,
                   fail_next=[{"status": 500}])
    client = client_for(srv)
    started = time.monotonic()
    for _ in range(3):
        assert client.models.retrieve(SMALL).id == SMALL
    assert {m.id for m in client.models.list()} == EMBEDDING_MODELS
    assert time.monotonic() - started < 2
    assert srv.faults()["fail_next"] == [{"status": 500}]  # left for /v1/embeddings
    stats = srv.stats()
    assert stats["status_counts"] == {"200": 4} and stats["requests"] == 0
    # They took nothing from the embeddings rate windows either.
    srv.set_faults(latency_ms=0, fault_rate=0, rpm=0, tpm=1000, fail_next=[])
    raw = client.embeddings.with_raw_response.create(model=SMALL, input="hello there")
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(1000 - ntokens("hello there"))


# --------------------------------------------------------------------------
# Rate limits
# --------------------------------------------------------------------------


def test_tpm_limit_headers_and_429(srv):
    srv.set_faults(tpm=1000)
    client = client_for(srv)
    text = "word " * 400  # ~400 tokens: two fit in 1000, a third does not
    n = ntokens(text)
    raw = client.embeddings.with_raw_response.create(model=SMALL, input=text)
    h = raw.headers
    assert raw.parse().usage.prompt_tokens == n
    assert h["x-ratelimit-limit-tokens"] == "1000"
    assert h["x-ratelimit-remaining-tokens"] == str(1000 - n)
    assert h["x-ratelimit-limit-requests"] == "10000"  # rpm unlimited
    assert h["x-ratelimit-remaining-requests"] == "9999"
    for name in ("x-ratelimit-reset-tokens", "x-ratelimit-reset-requests"):
        assert DURATION_RE.match(h[name]), h[name]
    # reset, as OpenAI's: what is used, refilled at the limit per minute (n of 1000 tokens: n * 60 ms)
    assert h["x-ratelimit-reset-tokens"] == format_duration(n / 1000 * 60)
    assert h["x-ratelimit-reset-requests"] == "6ms"  # 1 of 10,000 requests a minute
    assert h["x-request-id"].startswith("req_") and int(h["openai-processing-ms"]) >= 0

    client.embeddings.create(model=SMALL, input=text)  # 2n tokens used
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model=SMALL, input=text)
    err = info.value
    assert err.code == "rate_limit_exceeded" and err.type == "tokens"
    assert f"Limit 1000, Used {2 * n}, Requested {n}" in err.message
    wait_ms = int(err.response.headers["retry-after-ms"])
    # The first request's tokens free up 60 s after it was admitted.
    assert 55_000 < wait_ms <= 60_000 - (time.monotonic() - started) * 1000 + 50
    assert err.response.headers["retry-after"] == str(math.ceil(wait_ms / 1000))
    assert err.response.headers["x-ratelimit-remaining-tokens"] == str(1000 - 2 * n)
    assert err.response.headers["x-ratelimit-remaining-requests"] == "9997"
    assert srv.stats()["status_counts"] == {"200": 2, "429": 1}


def test_a_shorter_window_frees_tokens_and_says_so_in_its_headers(srv):
    """window_s: the limit holds per window_s seconds instead of 60; reset and retry-after follow."""
    srv.set_faults(tpm=1000, window_s=2)
    assert srv.faults()["window_s"] == 2
    client = client_for(srv)
    text = "word " * 400
    n = ntokens(text)
    raw = client.embeddings.with_raw_response.create(model=SMALL, input=text)
    assert raw.headers["x-ratelimit-reset-tokens"] == format_duration(n / 1000 * 2)
    client.embeddings.create(model=SMALL, input=text)
    with pytest.raises(openai.RateLimitError) as info:
        client.embeddings.create(model=SMALL, input=text)
    wait_ms = int(info.value.response.headers["retry-after-ms"])
    assert 1000 < wait_ms <= 2000, wait_ms  # the first request's tokens leave 2 s after it, not 60
    time.sleep(wait_ms / 1000)  # (the wait the server asked for: the condition is the server's own clock)
    client.embeddings.create(model=SMALL, input=text)
    with pytest.raises(RuntimeError, match="window_s"):
        srv.set_faults(window_s=0)
    srv.set_faults(window_s=60)


def test_rpm_limit_counts_rejected_requests(srv):
    srv.set_faults(rpm=2)
    client = client_for(srv)
    client.embeddings.create(model=SMALL, input="one")
    client.embeddings.create(model=SMALL, input="two")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            client.embeddings.create(model=SMALL, input="three")
        assert info.value.type == "requests"
        assert 0 < int(info.value.response.headers["retry-after-ms"]) <= 60_000
        assert info.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "Limit 2, Used 3, Requested 1" in info.value.message  # the 429 counted
    assert srv.stats()["status_counts"] == {"200": 2, "429": 2}


RATE_LIMIT_HEADERS = {f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset")
                      for kind in ("requests", "tokens")}


def test_ratelimit_headers_setting_chooses_which_are_sent(srv):
    client = client_for(srv)

    def sent(raw_headers):
        return {name for name in raw_headers if name.startswith("x-ratelimit-")}

    def answer():
        return client.embeddings.with_raw_response.create(model=SMALL, input="hello there")

    assert srv.faults()["ratelimit_headers"] == "all"
    assert sent(answer().headers) == RATE_LIMIT_HEADERS
    srv.set_faults(ratelimit_headers="limit-tokens")
    raw = answer()
    assert sent(raw.headers) == {"x-ratelimit-limit-tokens"}
    assert raw.headers["x-ratelimit-limit-tokens"] == "10000000"  # tpm unlimited
    srv.set_faults(ratelimit_headers="remaining")
    assert sent(answer().headers) == {"x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"}
    srv.set_faults(ratelimit_headers="none")
    raw = answer()
    assert sent(raw.headers) == set() and raw.headers["x-request-id"].startswith("req_")
    # the limit itself still applies; a 429 still says when to come back
    srv.reset()
    srv.set_faults(tpm=5)
    answer()  # 2 tokens
    answer()  # 4
    with pytest.raises(openai.RateLimitError) as info:
        answer()
    headers = info.value.response.headers
    assert sent(headers) == set() and int(headers["retry-after-ms"]) > 0
    assert "Limit 5, Used 4, Requested 2" in info.value.message
    with pytest.raises(RuntimeError, match="ratelimit_headers"):
        srv.set_faults(ratelimit_headers="some")
    assert srv.faults()["ratelimit_headers"] == "none"  # a refused change leaves the setting alone
    srv.set_faults(ratelimit_headers="all", tpm=0)
    srv.reset()
    assert sent(answer().headers) == RATE_LIMIT_HEADERS


def test_ratelimit_headers_from_the_command_line():
    with running_server(api_key=KEY, ratelimit_headers="limit-tokens", tpm=1234) as other:
        raw = client_for(other).embeddings.with_raw_response.create(model=SMALL, input="hi")
        assert {n for n in raw.headers if n.startswith("x-ratelimit-")} == {"x-ratelimit-limit-tokens"}
        assert raw.headers["x-ratelimit-limit-tokens"] == "1234"


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------


def test_fail_next_429_then_sdk_retry_succeeds(srv):
    srv.set_faults(fail_next=[{"status": 429, "retry_after_ms": 50}])
    started = time.monotonic()
    resp = client_for(srv, max_retries=2).embeddings.create(model=SMALL, input="retry me")
    assert len(resp.data[0].embedding) == 1536
    assert time.monotonic() - started < 5
    stats = srv.stats()
    assert stats["status_counts"] == {"429": 1, "200": 1}
    assert stats["requests"] == 2 and stats["ok_requests"] == 1


def test_fail_next_statuses_in_order(srv):
    srv.set_faults(fail_next=[{"status": 500}, {"status": 503}, {"status": 400}])
    client = client_for(srv)
    for exc in (openai.InternalServerError, openai.InternalServerError, openai.BadRequestError):
        with pytest.raises(exc):
            client.embeddings.create(model=SMALL, input="x")
    client.embeddings.create(model=SMALL, input="x")
    assert srv.stats()["status_counts"] == {"500": 1, "503": 1, "400": 1, "200": 1}


def test_fail_next_reset_is_connection_error(srv):
    srv.set_faults(fail_next=[{"action": "reset"}])
    client = client_for(srv)
    with pytest.raises(openai.APIConnectionError) as info:
        client.embeddings.create(model=SMALL, input="x")
    assert not isinstance(info.value, openai.APITimeoutError)
    client.embeddings.create(model=SMALL, input="x")  # the client recovers
    stats = srv.stats()
    assert stats["connection_resets"] == 1 and stats["status_counts"] == {"200": 1}


def test_hang_triggers_client_timeout():
    with running_server(api_key=KEY) as srv:
        srv.set_faults(fail_next=[{"action": "hang", "seconds": 3}])
        client = client_for(srv, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.embeddings.create(model=SMALL, input="x")
        assert time.monotonic() - started < 2.5
        client.embeddings.create(model=SMALL, input="x")  # next request is served


def test_fault_rate_is_seeded_and_deterministic(srv):
    def run():
        srv.reset()
        srv.set_faults(fault_rate=0.5, fault_statuses=[500, 429], seed=7)
        client = client_for(srv)
        out = []
        for i in range(12):
            try:
                client.embeddings.create(model=SMALL, input=f"text {i}")
                out.append(200)
            except openai.APIStatusError as e:
                out.append(e.status_code)
                if e.status_code == 429:
                    assert e.response.headers["retry-after-ms"] == "200"
        return out

    first = run()
    assert first == run()
    assert 200 in first and (500 in first or 429 in first)
    assert set(first) <= {200, 500, 429}


def test_latency_and_max_concurrent(srv):
    srv.set_faults(latency_ms=300)
    client = client_for(srv)
    errors = []

    def work():
        try:
            client.embeddings.create(model=SMALL, input="concurrent")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert not errors
    assert 0.3 <= elapsed < 1.2  # in parallel, not 4 x 300 ms
    stats = srv.stats()
    assert stats["max_concurrent"] >= 3 and stats["ok_requests"] == 4


# --------------------------------------------------------------------------
# Stats and CLI
# --------------------------------------------------------------------------


def test_stats_count_tokens_and_inputs(srv):
    client = client_for(srv)
    batches = [TEXTS, ["a single line of a transcript"], [[1, 2, 3, 4, 5]]]
    for batch in batches:
        client.embeddings.create(model=SMALL, input=batch)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=SMALL, input=[""])
    expected = sum(ntokens(t) for t in TEXTS) + ntokens("a single line of a transcript") + 5
    stats = srv.stats()
    assert stats["tokens"] == expected
    assert stats["inputs"] == len(TEXTS) + 2
    assert stats["requests"] == 4 and stats["ok_requests"] == 3
    assert stats["status_counts"] == {"200": 3, "400": 1}
    assert stats["max_concurrent"] == 1
    srv.reset()
    assert srv.stats()["requests"] == 0 and srv.stats()["tokens"] == 0


def test_help_exits_zero():
    result = subprocess.run([sys.executable, SERVER_SCRIPT, "--help"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0
    assert "--tpm" in result.stdout and "--fault-rate" in result.stdout
    assert "--ratelimit-headers" in result.stdout
