"""`distill serve`: the official openai client (plain and streaming) against the real server over
real HTTP, the replay loop behind it (loopback Ollama as the local model, the session's real index),
every request logged like `replay`, search, metrics, 429 when the queue is full, bearer auth."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from distill.config import load_settings
from distill.jsonl import iter_json
from runtime.serve import check_bind, create_app, open_session, required_key
from tests.fixtures_reliability import DISTILL, run_cli
from tests.fixtures_runtime import GROUNDED_ANSWER, ROUTING_TASK, write_runtime_config
from tests.ollama_server import OllamaLoopback, Reply


@dataclass
class Running:
    url: str
    root: Path
    ollama: OllamaLoopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path, session_searcher: Any, request: pytest.FixtureRequest) -> Iterator[Running]:
    extra: str = getattr(request, "param", "")
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    with OllamaLoopback(models=["qwen2.5:7b-instruct"]) as ollama:
        ollama.set_default(Reply(content=GROUNDED_ANSWER))
        write_runtime_config(root, ollama.url)
        with (root / "distill.toml").open("a") as fh:
            fh.write('backend = "ollama"\n\n[serve]\nallow_escalation = false\n' + extra)
        settings = load_settings(root)
        session = open_session(root, settings)
        session.searcher = session_searcher
        key = required_key(settings.serve, {"TEST_SERVE_KEY": "sk-serve"})
        with _serving(create_app(session, settings, key)) as url:
            yield Running(url, root, ollama)


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """The app on a real uvicorn server on a free loopback port, in a thread; its base URL."""
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        threading.Event().wait(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def _logged(root: Path) -> list[dict[str, Any]]:
    path = root / "_kb" / "replay_runs.jsonl"
    return list(iter_json(path)) if path.exists() else []


def test_openai_client_gets_a_grounded_answer_with_its_evidence(server: Running) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    resp = client.chat.completions.create(model="distill", messages=[{"role": "system", "content": "be brief"},
                                                                      {"role": "user", "content": ROUTING_TASK}])
    assert resp.choices[0].message.content == GROUNDED_ANSWER
    ext = resp.model_extra["distill"]
    assert ext["final_verdict"] == "validated_local" and ext["retrieved"] and ext["attempts"][0]["gate"]["passed"]
    (logged,) = _logged(server.root)
    assert logged["run_id"] == ext["run_id"] and logged["task"] == ROUTING_TASK
    assert [i["id"] for i in logged["retrieved"]] == ext["retrieved"]


def test_streaming_through_the_openai_client(server: Running) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(model="distill", stream=True, messages=[{"role": "user", "content": ROUTING_TASK}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == GROUNDED_ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["distill"]["run_id"]
    assert len(_logged(server.root)) == 1


def test_search_health_and_metrics(server: Running) -> None:
    hits = httpx.post(server.url + "/v1/search", json={"query": "provider routing fallback", "k": 3, "mode": "bm25"}).json()["data"]
    assert 1 <= len(hits) <= 3 and all({"id", "score", "text"} <= set(h) for h in hits)
    everything = httpx.post(server.url + "/v1/search", json={"query": "provider routing fallback", "k": 20, "mode": "bm25"}).json()["data"]
    category = everything[-1]["category"]
    assert len({h["category"] for h in everything}) > 1, "the filter must have something to remove"
    only = httpx.post(server.url + "/v1/search", json={"query": "provider routing fallback", "k": 20, "mode": "bm25",
                                                        "categories": [category]}).json()["data"]
    assert only and {h["category"] for h in only} == {category}
    assert [h["id"] for h in only] == [h["id"] for h in everything if h["category"] == category][: len(only)]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]}, timeout=60)
    text = httpx.get(server.url + "/metrics").text
    assert 'distill_requests_total{endpoint="chat",outcome="200"} 1.0' in text
    assert 'distill_replay_verdicts_total{verdict="validated_local"} 1.0' in text
    assert "distill_stage_seconds_bucket" in text and 'distill_gate_attempts_total{passed="true"} 1.0' in text


def test_a_rebuilt_index_is_searched_without_a_restart(ws: Any) -> None:
    """`distill run --every` re-indexes beside a running server: the server searched the index it
    started with until it was restarted (BM25 and the vectors both). It reopens the index when the
    manifest changes, keeping its model, and closes the store it replaces."""
    from tests.fixtures_index import rag_row
    from tests.fixtures_reliability import DISTILL

    root = ws.root
    with OllamaLoopback(models=["qwen2.5:7b-instruct"]) as ollama:
        write_runtime_config(root, ollama.url)
        settings = load_settings(root)
        session = open_session(root, settings)
        with _serving(create_app(session, settings, None)) as url:
            query = {"query": "wombat burrow fjord telemetry", "k": 1}
            before = {m: httpx.post(url + "/v1/search", json={**query, "mode": m}, timeout=60).json()["data"] for m in ("bm25", "dense")}
            assert before["bm25"] == [] and before["dense"]
            first = session.searcher
            new = rag_row(900, title="Wombat burrow fjord telemetry", text="Check the wombat burrow fjord telemetry feed before the deploy.")
            with ws.rag_path.open("a") as fh:
                fh.write(json.dumps(new) + "\n")
            done = run_cli([*DISTILL, "index", "--root", str(root)], timeout=300)  # another process, as `distill run` is
            assert done.returncode == 0, done.stderr
            for mode in ("bm25", "dense", "hybrid"):
                hits = httpx.post(url + "/v1/search", json={**query, "mode": mode}, timeout=60).json()["data"]
                assert [h["id"] for h in hits] == [new["id"]], mode
            assert session.searcher is not first and first._store is None  # the replaced store was released
            assert not session.warnings


def test_a_search_overlapping_a_rebuilds_switch_is_answered_from_the_new_index(ws: Any, monkeypatch: Any) -> None:
    """A rebuild writes its manifest, then drops the collection it replaced. A query still running
    in that collection while it is dropped may get no hits or some of them from Chroma rather than
    an error (CI once saw a search during `distill index --rebuild` answered 200 with other ids).
    The session searches again when the manifest changed while it searched, so the hits are the
    new index's: here the rebuild runs, in another process, while the first query is in the store."""
    from index.store import ChromaStore
    from runtime.replay import ReplayOptions, ReplaySession
    from tests.fixtures_index import rag_row
    from tests.fixtures_reliability import DISTILL

    root = ws.root
    settings = load_settings(root)
    session = ReplaySession(ws, settings, ReplayOptions.from_settings(settings.runtime))
    query = "wombat burrow fjord telemetry"
    (old,) = session.search(query, k=1, mode="dense")
    new = rag_row(900, title="Wombat burrow fjord telemetry", text="Check the wombat burrow fjord telemetry feed before the deploy.")
    searched = ChromaStore.query
    rebuilds: list[int] = []

    def query_then_rebuild(store: Any, *args: Any, **kwargs: Any) -> Any:
        hits = searched(store, *args, **kwargs)
        if not rebuilds:  # the old collection answered; the rebuild switches and drops it before the answer is used
            with ws.rag_path.open("a") as fh:
                fh.write(json.dumps(new) + "\n")
            rebuilds.append(run_cli([*DISTILL, "index", "--rebuild", "--root", str(root)], timeout=300).returncode)
        return hits

    monkeypatch.setattr(ChromaStore, "query", query_then_rebuild)
    hits = session.search(query, k=1, mode="dense")
    assert rebuilds == [0]
    assert old.id != new["id"] and [h.id for h in hits] == [new["id"]]
    assert not session.warnings


def test_searches_during_a_rebuild_are_answered_and_a_lost_store_is_a_503(ws: Any) -> None:
    """`distill index --rebuild` in another process beside a running server: every dense search
    during it is answered (the rebuild fills the other collection and switches when done; before,
    it dropped the live one first and every dense or hybrid search was a 500 until it finished).
    A store that is gone with no new manifest is a 503 with Retry-After, not a 500."""
    from index.search import workspace_paths
    from index.store import ChromaStore, HnswParams, drop_collection
    from tests.fixtures_reliability import DISTILL

    root = ws.root
    with OllamaLoopback(models=["qwen2.5:7b-instruct"]) as ollama:
        ollama.set_default(Reply(content=GROUNDED_ANSWER))
        write_runtime_config(root, ollama.url)
        settings = load_settings(root)
        session = open_session(root, settings)
        with _serving(create_app(session, settings, None)) as url:
            query = {"query": ROUTING_TASK, "k": 3, "mode": "dense", "categories": ["accepted"]}
            expected = [h["id"] for h in httpx.post(url + "/v1/search", json=query, timeout=60).json()["data"]]
            assert expected
            statuses: list[tuple[int, list[str]]] = []
            done = threading.Event()

            def hammer() -> None:
                while not done.is_set():
                    r = httpx.post(url + "/v1/search", json=query, timeout=60)
                    statuses.append((r.status_code, [h["id"] for h in r.json().get("data", [])] if r.status_code == 200 else []))

            thread = threading.Thread(target=hammer)
            thread.start()
            try:
                rebuilt = run_cli([*DISTILL, "index", "--rebuild", "--root", str(root)], timeout=300)
            finally:
                done.set()
                thread.join()
            assert rebuilt.returncode == 0, rebuilt.stderr
            assert len(statuses) > 5 and {code for code, _ in statuses} == {200}, statuses[:5]
            assert all(ids == expected for _, ids in statuses)

            # the store vanishes under the server while the manifest stays: a clear 503, BM25 still answers
            manifest_collection = json.loads((workspace_paths(ws).manifest).read_text())["store_collection"]
            store = ChromaStore.open(workspace_paths(ws).chroma, manifest_collection, HnswParams())
            assert drop_collection(store.client, manifest_collection)
            lost = httpx.post(url + "/v1/search", json=query, timeout=60)
            assert "could not be searched" in _error(lost, 503) and lost.headers["retry-after"] == "5"
            chat = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]},
                              timeout=60)
            assert "could not be searched" in _error(chat, 503) and not _logged(root)  # nothing ran
            assert httpx.post(url + "/v1/search", json={**query, "mode": "bm25"}, timeout=60).status_code == 200


def test_an_index_that_cannot_be_reopened_keeps_the_one_open_and_says_so(ws: Any, embedder: Any) -> None:
    from index.search import open_searcher
    from runtime.replay import ReplayOptions, ReplaySession

    settings = load_settings(ws.root)
    session = ReplaySession(ws, settings, ReplayOptions.from_settings(settings.runtime))
    expected = [h.id for h in session.search("provider routing fallback", k=3, mode="bm25")]
    manifest = ws.index_dir / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good.replace('"corpus_hash": "', '"corpus_hash": "0'))  # out of step with the BM25 files
    assert [h.id for h in session.search("provider routing fallback", k=3, mode="bm25")] == expected
    (warning,) = session.warnings
    assert "could not be reopened" in warning and "out of step" in warning
    session.search("provider routing fallback", k=3, mode="bm25")
    assert session.warnings == [warning]  # one warning, not one per request
    manifest.write_text(good)
    assert [h.id for h in session.search("provider routing fallback", k=3, mode="bm25")] == expected
    assert session.warnings == []
    assert open_searcher(ws, settings, embedder=embedder).count == session.searcher.count


def _error(r: httpx.Response, status: int) -> str:
    """The OpenAI error shape every refusal has; returns its message."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    return str(err["message"])


@pytest.mark.parametrize("server", ["max_request_bytes = 4096\n"], indirect=True)
def test_bad_requests_are_clear_errors(server: Running) -> None:
    chat, search = server.url + "/v1/chat/completions", server.url + "/v1/search"
    assert "user message" in _error(httpx.post(chat, json={"messages": [{"role": "system", "content": "x"}]}), 400)
    assert "messages" in _error(httpx.post(chat, json={"messages": []}), 400)
    assert "invalid request" in _error(httpx.post(chat, content=b"not json", headers={"content-type": "application/json"}), 400)
    assert "invalid request" in _error(httpx.post(chat, content=b"[1, 2]"), 400)
    assert "content" in _error(httpx.post(chat, json={"messages": [{"role": "user", "content": [1, 2]}]}), 400)
    # a text part whose text is not a string was answered as its Python repr ("{'a': 1}")
    for part in ({"type": "text", "text": {"a": 1}}, {"type": "text", "text": 7}, {"type": "text"}):
        assert "text" in _error(httpx.post(chat, json={"messages": [{"role": "user", "content": [part]}]}), 400)
    user = [{"role": "user", "content": "x"}]
    assert "max_tokens" in _error(httpx.post(chat, json={"messages": user, "max_tokens": -1}), 400)
    assert "temperature" in _error(httpx.post(chat, json={"messages": user, "temperature": 9}), 400)
    assert "k" in _error(httpx.post(search, json={"query": "x", "k": 0}), 400)
    assert "mode" in _error(httpx.post(search, json={"query": "x", "mode": "psychic"}), 400)
    assert "categories" in _error(httpx.post(search, json={"query": "x", "categories": ["acepted"]}), 400)
    assert "query" in _error(httpx.post(search, json={"query": " \n "}), 400)
    # a task or query with no character that shows (a NUL, zero-width spaces, a BOM) is blank too:
    # answered, its run would reach the SFT export as an instruction nobody can read
    for invisible in ("\x00", "\u200b\u200d", "\ufeff \u2028"):
        assert "user message" in _error(httpx.post(chat, json={"messages": [{"role": "user", "content": invisible}]}), 400)
        assert "query" in _error(httpx.post(search, json={"query": invisible}), 400)
    assert "stream" in _error(httpx.post(chat, json={"messages": user, "stream": "yes"}), 400)
    # what the reply cannot honour is refused by name, not ignored (3 more 400s)
    assert "n:" in _error(httpx.post(chat, json={"messages": user, "n": 2}), 400)
    assert "response_format" in _error(httpx.post(chat, json={"messages": user, "response_format": {"type": "json_object"}}), 400)
    assert "tool_choice" in _error(httpx.post(chat, json={"messages": user, "tool_choice": "required"}), 400)
    huge = {"messages": [{"role": "user", "content": "routing " * 1000}]}
    assert "max_request_bytes=4096" in _error(httpx.post(chat, json=huge), 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"routing " * 10
        yield b'"}]}'

    assert "max_request_bytes=4096" in _error(httpx.post(chat, content=chunked()), 413)
    assert _logged(server.root) == []
    assert 'distill_requests_total{endpoint="chat",outcome="400"} 17.0' in httpx.get(server.url + "/metrics").text


def test_an_agent_that_offers_tools_gets_the_grounded_text(server: Running) -> None:
    """Agent frameworks send `tools` (and `tool_choice: auto`, `n: 1`, a text response_format):
    accepted, and the answer is the grounded text with no tool call."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}}}]
    reply = client.chat.completions.create(model="distill", messages=[{"role": "user", "content": ROUTING_TASK}],
                                           tools=tools, tool_choice="auto", n=1, response_format={"type": "text"})
    assert reply.choices[0].message.content == GROUNDED_ANSWER and not reply.choices[0].message.tool_calls


def test_a_message_in_content_parts_is_answered_from_its_text_parts(server: Running) -> None:
    """Clients that send content as parts (text beside an image) get the answer to the text."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
             {"type": "text", "text": ROUTING_TASK}]
    reply = client.chat.completions.create(model="distill", messages=[{"role": "user", "content": parts}])
    assert reply.choices[0].message.content == GROUNDED_ANSWER
    assert _logged(server.root)[-1]["task"] == ROUTING_TASK


def test_models_are_listed_for_frameworks_that_ask(server: Running) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["distill"]


def test_an_unreachable_model_is_a_503_not_an_empty_answer(server: Running) -> None:
    server.ollama.set_default(Reply(fault="http500"))
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]},
                   timeout=60)
    assert "could not answer" in _error(r, 503) and r.headers["retry-after"] == "5"
    (logged,) = _logged(server.root)  # the run is evidence even so
    assert logged["final_verdict"] == "error" and r.json()["distill"]["run_id"] == logged["run_id"]


UNGROUNDED = "Hello! How can I assist you today?"


def test_an_answer_that_failed_the_gate_is_returned_with_its_verdict_by_default(server: Running) -> None:
    server.ollama.set_default(Reply(content=UNGROUNDED))
    body = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]},
                      timeout=60).json()
    assert body["choices"][0]["message"]["content"] == UNGROUNDED and body["choices"][0]["finish_reason"] == "stop"
    assert body["distill"]["final_verdict"] == "failed" and "withheld_answer" not in body["distill"]


@pytest.mark.parametrize("server", ['unvalidated_answers = "withhold"\n'], indirect=True)
def test_withheld_answers_never_reach_the_content(server: Running) -> None:
    from openai import OpenAI

    server.ollama.set_default(Reply(content=UNGROUNDED))
    client = OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages: Any = [{"role": "user", "content": ROUTING_TASK}]
    resp = client.chat.completions.create(model="distill", messages=messages)
    assert resp.choices[0].message.content is None and resp.choices[0].finish_reason == "content_filter"
    assert resp.model_extra["distill"]["withheld_answer"] == UNGROUNDED
    chunks = list(client.chat.completions.create(model="distill", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    server.ollama.set_default(Reply(content=GROUNDED_ANSWER))  # a validated answer is never withheld
    assert client.chat.completions.create(model="distill", messages=messages).choices[0].message.content == GROUNDED_ANSWER
    assert len(_logged(server.root)) == 3


@pytest.mark.parametrize("server", ["max_queue = 0\n"], indirect=True)
def test_a_full_queue_is_429_with_retry_after(server: Running) -> None:
    server.ollama.set_default(Reply(content=GROUNDED_ANSWER, delay_s=1.5))
    body = {"messages": [{"role": "user", "content": ROUTING_TASK}]}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, server.url + "/v1/chat/completions", json=body, timeout=60)
        threading.Event().wait(0.5)
        second = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert first.result().status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "5"
    assert len(_logged(server.root)) == 1


@pytest.mark.parametrize("server", ['api_key_env = "TEST_SERVE_KEY"\n'], indirect=True)
def test_bearer_auth_when_a_key_is_configured(server: Running) -> None:
    body = {"query": "routing", "k": 1, "mode": "bm25"}
    assert httpx.post(server.url + "/v1/search", json=body).status_code == 401
    assert httpx.post(server.url + "/v1/search", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(server.url + "/v1/search", json=body, headers={"Authorization": "Bearer sk-serve"}).status_code == 200
    # the caller is checked before the body is read: a stranger learns nothing about the schema
    assert httpx.post(server.url + "/v1/chat/completions", content=b"not json").status_code == 401
    assert httpx.get(server.url + "/v1/models").status_code == 401
    # health stays open to probes, without saying where the workspace is
    assert "workspace" not in httpx.get(server.url + "/healthz").json()
    assert httpx.get(server.url + "/healthz", headers={"Authorization": "Bearer sk-serve"}).json()["workspace"] == str(server.root)


def test_non_loopback_bind_needs_a_key(tmp_path: Path) -> None:
    from distill.errors import UsageError

    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "k")
    with pytest.raises(UsageError, match="refusing to bind"):
        check_bind("0.0.0.0", None)
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    done = run_cli([*DISTILL, "serve", "--root", str(root), "--host", "0.0.0.0"], timeout=60)
    assert done.returncode == 2 and "refusing to bind" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    (root / "distill.toml").write_text('[serve]\napi_key_env = "SURELY_UNSET_KEY_VAR"\n')
    done = run_cli([*DISTILL, "serve", "--root", str(root)], timeout=60)
    assert done.returncode == 2 and "SURELY_UNSET_KEY_VAR" in done.stderr


def test_replay_sends_the_task_to_a_running_server(server: Running) -> None:
    from tests.fixtures_reliability import REPLAY

    done = run_cli([*REPLAY, "--server", server.url, "--task", ROUTING_TASK, "--json"], timeout=120)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["choices"][0]["message"]["content"] == GROUNDED_ANSWER
    assert [r["run_id"] for r in _logged(server.root)] == [body["distill"]["run_id"]]
    down = run_cli([*REPLAY, "--server", "http://127.0.0.1:9", "--task", "x"], timeout=60)
    assert down.returncode == 2 and len(down.stderr.strip().splitlines()) == 1
    from tests.openai_server import OpenAILoopback

    with OpenAILoopback() as plain:  # an OpenAI-compatible server that is not distill: was a traceback-free "run None"
        other = run_cli([*REPLAY, "--server", plain.base_url.removesuffix("/v1"), "--task", "x"], timeout=60)
    assert other.returncode == 2 and "did not answer as `distill serve` does" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_curl_gets_an_answer(server: Running) -> None:
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed on this machine")
    body = json.dumps({"model": "distill", "messages": [{"role": "user", "content": ROUTING_TASK}]})
    done = subprocess.run([curl, "-sS", "-f", "-H", "Content-Type: application/json", "-d", body,
                           server.url + "/v1/chat/completions"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == GROUNDED_ANSWER


def test_a_port_it_cannot_listen_on_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = run_cli([*DISTILL, "serve", "--root", str(root), "--port", str(port)], timeout=60)
    assert done.returncode == 2 and "cannot listen on 127.0.0.1" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = run_cli([*DISTILL, "serve", "--root", str(root), "--port", "70000"], timeout=60)
    assert done.returncode == 2 and "0..65535" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_no_model_answering_even_after_escalation_is_a_503(tmp_path: Path, session_searcher: Any) -> None:
    from fastapi.testclient import TestClient

    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    with OllamaLoopback(models=["qwen2.5:7b-instruct"]) as ollama:
        ollama.set_default(Reply(fault="http500"))
        write_runtime_config(root, ollama.url, "http://127.0.0.1:9")  # nothing listens on port 9
        with (root / "distill.toml").open("a") as fh:
            fh.write('backend = "ollama"\n\n[serve]\nallow_escalation = true\n')
        settings = load_settings(root)
        session = open_session(root, settings)
        session.searcher = session_searcher
        r = TestClient(create_app(session, settings, None)).post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]})
    assert "could not answer" in _error(r, 503)
    attempts = r.json()["distill"]["attempts"]
    assert [a["escalation"] for a in attempts] == [False, True] and all(a["error"] for a in attempts)
    assert _logged(root)[0]["final_verdict"] == "escalated_failed"


def _timed_stream(url: str) -> tuple[list[tuple[float, Any]], float]:
    """The chunks of one streamed answer through the official client, each with the seconds since
    the request was sent."""
    import time

    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused")
    start = time.perf_counter()
    stream = client.chat.completions.create(model="distill", stream=True, messages=[{"role": "user", "content": ROUTING_TASK}])
    return [(time.perf_counter() - start, chunk) for chunk in stream], start


def _first_text_at(chunks: list[tuple[float, Any]]) -> float:
    return next(at for at, c in chunks if c.choices and c.choices[0].delta.content)


@pytest.mark.parametrize("server", ['stream = "live"\n', ""], indirect=True, ids=["live", "gated"])
def test_a_live_stream_sends_the_answer_as_the_model_writes_it(server: Running) -> None:
    """`[serve] stream = "live"`: the first words reach the client while the model is still
    writing (three pieces 0.6 s apart), the gate's verdict comes in the last chunk. Gated (the
    default), nothing is sent before the whole answer has been judged."""
    live = (server.root / "distill.toml").read_text().count('stream = "live"') == 1
    server.ollama.set_default(Reply(content=GROUNDED_ANSWER, piece_delay_s=0.6))
    chunks, _ = _timed_stream(server.url)
    first, last = _first_text_at(chunks), chunks[-1][0]
    assert "".join(c.choices[0].delta.content or "" for _, c in chunks if c.choices) == GROUNDED_ANSWER
    final = chunks[-1][1]
    assert final.choices[0].finish_reason == "stop"
    ext = final.model_extra["distill"]
    assert ext["final_verdict"] == "validated_local" and ext["retrieved"] and ext["attempts"][0]["gate"]["passed"]
    if live:
        assert last - first >= 1.0, f"first text at {first:.2f} s, answer done at {last:.2f} s"
        assert "local_first_text" in ext["timings_ms"]
    else:
        assert last - first < 0.6 and first >= 1.2
    (logged,) = _logged(server.root)
    assert logged["run_id"] == ext["run_id"] and logged["final_output"] == GROUNDED_ANSWER


@pytest.mark.parametrize("server", ['stream = "live"\n'], indirect=True)
def test_a_live_stream_ends_with_the_verdict_of_an_answer_that_failed_the_gate(server: Running) -> None:
    server.ollama.set_default(Reply(content=UNGROUNDED))
    chunks, _ = _timed_stream(server.url)
    assert "".join(c.choices[0].delta.content or "" for _, c in chunks if c.choices) == UNGROUNDED
    assert chunks[-1][1].model_extra["distill"]["final_verdict"] == "failed"
    assert _logged(server.root)[0]["final_verdict"] == "failed"


@pytest.mark.parametrize("server", ['stream = "live"\n'], indirect=True)
def test_a_model_that_breaks_mid_answer_is_an_error_event_not_a_finished_answer(server: Running) -> None:
    """The connection to the model drops after its first piece: the client has that piece, and
    then an error (the openai client raises it) rather than a last chunk that says "stop"."""
    import openai

    server.ollama.set_default(Reply(content=GROUNDED_ANSWER, fault="drop"))
    received: list[str] = []
    with pytest.raises(openai.APIError, match="failed mid-answer"):
        for _, chunk in _timed_stream_lazy(server.url):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received) and GROUNDED_ANSWER.startswith("".join(received))
    (logged,) = _logged(server.root)
    assert logged["final_verdict"] == "error"


def _timed_stream_lazy(url: str) -> Iterator[tuple[float, Any]]:
    import time

    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused")
    start = time.perf_counter()
    for chunk in client.chat.completions.create(model="distill", stream=True,
                                                messages=[{"role": "user", "content": ROUTING_TASK}]):
        yield time.perf_counter() - start, chunk


@pytest.mark.parametrize("server", ['stream = "live"\n'], indirect=True)
def test_a_live_stream_whose_model_never_answers_is_a_503(server: Running) -> None:
    server.ollama.set_default(Reply(fault="http500"))
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"stream": True, "messages": [{"role": "user", "content": ROUTING_TASK}]})
    assert "could not answer" in _error(r, 503) and r.headers["retry-after"] == "5"
    assert _logged(server.root)[0]["final_verdict"] == "error"


@pytest.mark.parametrize("server", ['stream = "live"\nmax_queue = 0\n'], indirect=True)
def test_a_live_stream_holds_the_model_until_its_run_ends_even_when_the_client_leaves(server: Running) -> None:
    """A client that hangs up mid-stream: the run still ends whole in the log, and the model is
    busy (429) until it has, not from the moment the client left."""
    import time

    server.ollama.set_default(Reply(content=GROUNDED_ANSWER, piece_delay_s=0.8))
    body = {"stream": True, "messages": [{"role": "user", "content": ROUTING_TASK}]}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        for line in resp.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first words: hang up
    left = time.perf_counter()
    busy = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert busy.status_code == 429
    for _ in range(100):
        if _logged(server.root):
            break
        time.sleep(0.1)
    (logged,) = _logged(server.root)
    assert logged["final_output"] == GROUNDED_ANSWER and time.perf_counter() - left >= 1.0
    for _ in range(50):  # the slot is free once the run has ended
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": body["messages"]}, timeout=60)
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200


def test_a_live_stream_cannot_be_escalated_or_withheld(tmp_path: Path) -> None:
    from distill.errors import ConfigError

    for serve in ('stream = "live"\n', 'stream = "live"\nallow_escalation = false\nunvalidated_answers = "withhold"\n'):
        (tmp_path / "distill.toml").write_text("[serve]\n" + serve)
        with pytest.raises(ConfigError, match="neither escalated nor withheld"):
            load_settings(tmp_path)
    (tmp_path / "distill.toml").write_text('[serve]\nstream = "live"\nallow_escalation = false\n')
    assert load_settings(tmp_path).serve.stream == "live"


@pytest.mark.parametrize("server", ["", 'stream = "live"\n'], indirect=True)
def test_a_run_that_cannot_be_logged_is_a_503_not_an_answer(server: Running) -> None:
    """A run log the workspace refuses (a full disk; here a folder where the log belongs) gave
    FastAPI's plain-text `Internal Server Error` and a traceback, plain and streaming. Now: the
    OpenAI error shape naming the log and why, 503 with Retry-After; a live stream that already
    sent the model's text ends with an error event (the openai client raises it), not a last
    chunk that says "stop"."""
    import openai

    log = server.root / "_kb" / "replay_runs.jsonl"
    log.mkdir()
    live = (server.root / "distill.toml").read_text().count('stream = "live"') == 1
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": ROUTING_TASK}]},
                   timeout=60)
    message = _error(r, 503)
    assert message.startswith("the run could not be logged as evidence") and str(log) in message, message
    assert r.headers["retry-after"] == "5"
    if not live:
        stream = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                            json={"stream": True, "messages": [{"role": "user", "content": ROUTING_TASK}]})
        assert "could not be logged" in _error(stream, 503)
        return
    received: list[str] = []
    with pytest.raises(openai.APIError, match="could not be logged"):
        for _, chunk in _timed_stream_lazy(server.url):
            received.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert "".join(received) == GROUNDED_ANSWER  # what the model wrote, then the error
