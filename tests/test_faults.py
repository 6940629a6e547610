"""API faults through the real SDK and the local server: the run ends as a clean one would."""
from __future__ import annotations

import time

from conftest import API_KEY, REAL, SAMPLE_TRANSCRIPT


def fill(project, n=4):
    for i in range(n):
        project.add(f"t{i}.txt", "\n\n".join(SAMPLE_TRANSCRIPT.replace("harbour", f"harbour {i}.{k}")
                                             for k in range(4)))


def stored_tokens(project):
    return sum(m["token_count"] for _, m in project.chunks().values())


def assert_clean_finish(project, api, slack=0):
    q = project.queue
    assert q["pending"] == q["processing"] == q["failed"] == [], q
    # nothing paid twice (slack: a request that timed out on our side may still be billed)
    assert stored_tokens(project) <= api.stats()["tokens"] <= stored_tokens(project) + slack


def test_429_storm_with_retry_after_ms_is_ridden_out(project, api):
    fill(project)
    api.set_faults(fail_next=[{"status": 429, "retry_after_ms": 30}] * 8)
    r = project.ingest_all(OPENAI_MAX_RETRIES="5", EMBED_CONCURRENCY="1")
    assert "4 completed" in r.stdout
    assert api.stats()["status_counts"]["429"] == 8
    assert_clean_finish(project, api)


def test_server_errors_resets_and_timeouts_are_retried(project, api):
    fill(project)
    api.set_faults(fail_next=[{"status": 500}, {"status": 503}, {"action": "reset"},
                              {"action": "hang", "seconds": 3}, {"status": 502}])
    project.ingest_all(OPENAI_MAX_RETRIES="6", OPENAI_TIMEOUT="1", EMBED_CONCURRENCY="1", EMBED_BATCH_SIZE="2")
    # the hung request was answered after our timeout: at most one request (2 chunks) billed twice
    assert_clean_finish(project, api, slack=2 * 500)


def test_random_5xx_at_a_30_percent_rate(project, api):
    fill(project)
    api.set_faults(fault_rate=0.3, fault_statuses=[500, 503])
    project.ingest_all(OPENAI_MAX_RETRIES="8")
    assert_clean_finish(project, api)


def test_api_down_requeues_then_a_later_run_finishes(project, api):
    fill(project, 2)
    project.run("generate_file_queue.py")
    api.set_faults(fault_rate=1.0, fault_statuses=[503])
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", OPENAI_MAX_RETRIES="1")
    assert r.returncode == 4, r.stderr
    assert "stopping this run" in r.stderr
    q = project.queue
    assert len(q["pending"]) == 2 and not q["failed"] and not q["processing"]
    assert all("503" in q["files"][p]["last_error"] for p in q["pending"])
    api.set_faults(fault_rate=0)
    api.reset()
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0")
    assert r.returncode == 0
    assert_clean_finish(project, api)


def test_api_400_fails_only_that_file_with_the_reason(project, api):
    fill(project, 2)
    project.run("generate_file_queue.py")
    api.set_faults(fail_next=[{"status": 400}])
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", EMBED_CONCURRENCY="1")
    assert r.returncode == 0
    q = project.queue
    assert len(q["failed"]) == 1 and len(q["completed"]) == 1
    reason = q["files"][q["failed"][0]]["reason"]
    assert "HTTP 400" in reason and "\n" not in reason
    assert project.checkpoint["failed_files"][q["failed"][0]]["reason"] == reason


def test_rate_limit_headers_pace_requests(project, api):
    """Under a tokens-per-minute limit the client paces itself from the headers: no 429 storm,
    throughput close to the limit. (Takes about a minute: the limit is per minute.)"""
    project.add(REAL[0].name, REAL[0].read_text())  # about 60,000 tokens
    limit = 50_000
    api.set_faults(tpm=limit)
    started = time.monotonic()
    # 2-chunk requests (1,000 tokens) are 2% of this small limit, like 10 chunks of a real one
    r = project.ingest_all(EMBED_CONCURRENCY="4", EMBED_BATCH_SIZE="2", OPENAI_MAX_RETRIES="8")
    elapsed = time.monotonic() - started
    assert "1 completed" in r.stdout
    stats = api.stats()
    assert stats["tokens"] > limit  # the limit was reached: pacing had work to do
    assert stats["status_counts"].get("429", 0) <= 1, stats
    assert stats["tokens"] / elapsed >= 0.75 * limit / 60, (stats["tokens"], elapsed)
    assert_clean_finish(project, api)


def test_key_is_never_printed_even_when_refused(project, api):
    fill(project, 1)
    api.set_faults(auth_always_fail=True)
    project.run("generate_file_queue.py")
    r = project.run("process_queue_worker.py", MAX_ITERATIONS="0", LOG_LEVEL="DEBUG")
    assert r.returncode == 5
    assert API_KEY not in r.stdout + r.stderr
    assert API_KEY not in (project.checkpoints / "file_queue.json").read_text()
