"""The test server itself: what it sends is what the other tests rely on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest

from auto_coder_nb.testing.server import FakeLLMServer, reply


def sse_data(response: httpx.Response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def chunks_of(data: list[str]) -> list[dict]:
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_text_reply_streams_in_chunks_with_usage(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("Hello world", chunks=3))
    with httpx.Client() as client, client.stream(
        "POST", f"{fake_server.base_url}/chat/completions",
        json={"model": "m", "stream": True, "stream_options": {"include_usage": True},
              "messages": [{"role": "user", "content": "hi"}]},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        chunks = chunks_of(sse_data(response))
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(c for c in contents if c) == "Hello world"
    assert len([c for c in contents if c]) == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_tool_call_reply_has_id_and_name_once_then_fragments(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.tool_call("read_file", {"path": "a.txt"}, fragments=4))
    with httpx.Client() as client, client.stream(
        "POST", f"{fake_server.base_url}/chat/completions", json={"stream": True, "messages": []}
    ) as response:
        chunks = chunks_of(sse_data(response))
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["id"] and deltas[0]["function"]["name"] == "read_file"
    assert all("id" not in d for d in deltas[1:])
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == {"path": "a.txt"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_non_streaming_request_gets_a_whole_completion(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.tool_call("list_directory", {}))
    body = httpx.post(f"{fake_server.base_url}/chat/completions", json={"messages": []}).json()
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"] == {"name": "list_directory", "arguments": "{}"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_requests_are_recorded_and_default_answer_echoes(fake_server: FakeLLMServer) -> None:
    response = httpx.post(
        f"{fake_server.base_url}/chat/completions", headers={"X-Correlation-Id": "abc"},
        json={"messages": [{"role": "user", "content": "ping"}]},
    )
    assert response.json()["choices"][0]["message"]["content"] == "You said: ping"
    [request] = fake_server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["x-correlation-id"] == "abc"
    assert request.json["messages"][0]["content"] == "ping"


def test_errors_models_and_unknown_paths(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(429, "slow down", headers={"retry-after": "0"}))
    response = httpx.post(f"{fake_server.base_url}/chat/completions", json={"messages": []})
    assert response.status_code == 429 and response.headers["retry-after"] == "0"
    assert response.json()["error"]["message"] == "slow down"
    models = httpx.get(f"{fake_server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == fake_server.models
    assert httpx.get(f"{fake_server.url}/nowhere").status_code == 404


def test_required_authorization(fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization("Bearer good")
    assert httpx.get(f"{fake_server.base_url}/models").status_code == 401
    assert httpx.get(f"{fake_server.base_url}/models", headers={"Authorization": "Bearer bad"}).status_code == 401
    assert httpx.get(f"{fake_server.base_url}/models", headers={"Authorization": "Bearer good"}).status_code == 200


def test_custom_route_sees_form_bodies(fake_server: FakeLLMServer) -> None:
    fake_server.route("POST", "/oauth/token", lambda request: reply.json_body(
        {"access_token": "t-" + request.form["grant_type"], "expires_in": 60}))
    response = httpx.post(f"{fake_server.url}/oauth/token", data={"grant_type": "client_credentials"})
    assert response.json()["access_token"] == "t-client_credentials"


def test_drop_after_breaks_the_stream(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("abcdef", chunks=6, drop_after=3))
    received = []
    with pytest.raises(httpx.RemoteProtocolError), httpx.Client() as client, client.stream(
        "POST", f"{fake_server.base_url}/chat/completions", json={"stream": True, "messages": []}
    ) as response:
        for line in response.iter_lines():
            received.append(line)
    assert any('"content":"a"' in line for line in received)
    assert not any("[DONE]" in line for line in received)


def test_wait_for_holds_the_stream_until_released(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("one two", chunks=2, wait_for="go", wait_after=2))
    first_part = threading.Event()
    lines: list[str] = []

    def read() -> None:
        with httpx.Client() as client, client.stream(
            "POST", f"{fake_server.base_url}/chat/completions", json={"stream": True, "messages": []}
        ) as response:
            for line in response.iter_lines():
                lines.append(line)
                if '"content":"one ' in line:
                    first_part.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first_part.wait(10)
    assert not any("two" in line for line in lines)  # held back until released
    fake_server.release("go")
    reader.join(10)
    assert any("two" in line for line in lines) and lines[-2] == "data: [DONE]"


def test_raw_sse_pieces_are_sent_verbatim(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.raw_sse([": keep-alive\r\n\r\n", "data:{\"x\":", "1}\r\n\r\n"], delay=0.01))
    with httpx.Client() as client, client.stream(
        "POST", f"{fake_server.base_url}/chat/completions", json={"stream": True}
    ) as response:
        assert response.read() == b': keep-alive\r\n\r\ndata:{"x":1}\r\n\r\n'


def test_runs_as_a_module_and_is_scripted_over_http() -> None:
    process = subprocess.Popen([sys.executable, "-m", "auto_coder_nb.testing.server", "--port", "0"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("FakeLLMServer listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        root = base_url.removesuffix("/v1")
        assert httpx.post(f"{root}/_script", json=[reply.text("scripted")]).json() == {"queued": 1}
        bad = httpx.post(f"{root}/_script", json=[{"type": "bogus"}])
        assert bad.status_code == 400 and "unknown reply type 'bogus'" in bad.json()["error"]["message"]
        answer = httpx.post(f"{base_url}/chat/completions", json={"messages": []}).json()
        assert answer["choices"][0]["message"]["content"] == "scripted"
        assert httpx.get(f"{root}/_requests").json()[0]["path"] == "/v1/chat/completions"
    finally:
        process.terminate()
        assert process.wait(10) == 0


def test_unscripted_request_asking_for_an_offered_tool_gets_that_call() -> None:
    tool = {"type": "function", "function": {"name": "get_current_time", "parameters": {"type": "object"}}}
    asking = {"messages": [{"role": "user", "content": "Call the get_current_time tool now."}]}
    with FakeLLMServer() as server:
        called = httpx.post(f"{server.base_url}/chat/completions", json={**asking, "tools": [tool], "stream": False})
        not_offered = httpx.post(f"{server.base_url}/chat/completions", json={**asking, "stream": False})
    call = called.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_current_time"
    assert not_offered.json()["choices"][0]["message"]["content"] == "You said: Call the get_current_time tool now."
