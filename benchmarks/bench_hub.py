"""A team on a real JupyterHub: N users' servers, one `%autocoder` turn in each at once, against the test server.

The hub (`auto_coder_nb.testing.jupyterhub.TestHub`, as the tests start it: Unix users of their own when run as root)
gets the admin's setup through `c.Spawner.environment` (site file, gateway key, who is asking). Each user has two
kernels in their server: one with `%load_ext auto_coder_nb`, one without. For each N (default 2, 4, 8) the first N
users run at the same moment, REPEAT times, alternately:

- a turn: `%autocoder` with one tool round trip (list_directory, then a streamed answer): 2 model requests;
- the baseline, in the kernel without the extension: the same 2 requests and streamed answers with plain httpx.

It prints the time per turn (median and slowest) next to the baseline, the requests the gateway got per turn, and
each kernel's memory (RSS and PSS, from /proc) without the extension, with it loaded, and after the turns.
The first turn of each kernel (imports, session) is a warm-up, reported apart.

Run: `python benchmarks/bench_hub.py [--users 2 4 8] [--repeat 3]` (about 2 minutes; needs what tests/test_hub.py
needs: node and npm, and as root the system Python with venv).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from auto_coder_nb.testing.jupyterhub import HubKernel, TestHub
from auto_coder_nb.testing.server import FakeLLMServer, RecordedRequest, reply

GATEWAY_KEY = "bench-gateway-key"
SITE = """
llm:
  base_url: {base_url}
  model: team-model
  api_key: ${{TEAM_GATEWAY_KEY}}
  tool_calling: native
  user: ${{JUPYTERHUB_USER}}
  user_header: X-User
locked: [llm.base_url, llm.model, llm.api_key, llm.user, llm.user_header]
"""
ANSWER = "The folder holds the notebooks of this user. " * 20
TURN = "%autocoder --context none What is in this folder?"
# The same two exchanges with plain httpx, in a kernel without the extension (a client kept, as the provider does).
BASELINE_SETUP = """
import httpx
_client = httpx.Client(headers={{"Authorization": "Bearer {key}"}})
def _exchange():
    body = {{"model": "team-model", "stream": True,
             "messages": [{{"role": "user", "content": "What is in this folder?"}}]}}
    for step in ("call", "answer"):
        if step == "answer":
            body["messages"].append({{"role": "tool", "tool_call_id": "x", "content": "a.ipynb"}})
        with _client.stream("POST", "{base_url}/chat/completions", json=body) as response:
            for line in response.iter_lines():
                pass
    print("exchanged")
"""
BASELINE = "_exchange()"


def scripted(request: RecordedRequest) -> dict[str, Any]:
    """Each turn, whoever asks: a list_directory call, then (after its result) a streamed answer."""
    messages = (request.json or {}).get("messages", [])
    if messages and messages[-1].get("role") == "tool":
        return reply.text(ANSWER, chunks=40)
    return reply.tool_call("list_directory", {"path": "."})


def memory(pid: int) -> tuple[float, float]:
    """RSS and PSS of a process, in MB (PSS shares each shared page among the processes that map it)."""
    rss = pss = 0.0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Pss"):
            kb = float(value.split()[0]) / 1024
            rss, pss = (kb, pss) if name == "Rss" else (rss, kb)
    return rss, pss


def pid_of(kernel: HubKernel) -> int:
    return int(kernel.execute("import os; print(os.getpid())").stdout.strip())


def run_at_once(jobs: list[tuple[HubKernel, str]], expect: str = "") -> list[float]:
    """Run each code in its kernel at the same moment; the seconds each took. Each output must show `expect`."""
    def timed(kernel: HubKernel, code: str) -> float:
        start = time.perf_counter()
        output = kernel.execute(code)
        elapsed = time.perf_counter() - start
        assert output.status == "ok" and "Traceback" not in output.text and expect in output.text, output.text
        return elapsed

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(lambda job: timed(*job), jobs))


def main(user_counts: list[int], repeat: int) -> None:
    labels = [f"u{i}" for i in range(max(user_counts))]
    with FakeLLMServer() as llm:
        llm.route("POST", "/v1/chat/completions", scripted)
        hub = TestHub(labels, log=lambda text: print(f"  {text}"))
        site = hub.public / "auto-coder-site.yaml"
        site.write_text(SITE.format(base_url=llm.base_url))
        site.chmod(0o644)
        hub.environment.update({"AUTO_CODER_SITE_CONFIG": str(site), "TEAM_GATEWAY_KEY": GATEWAY_KEY})
        with hub:
            start = time.perf_counter()
            servers = hub.start_servers()
            print(f"{len(servers)} servers started at once in {time.perf_counter() - start:.1f} s "
                  f"({'a Unix user each' if hub.separate_users else 'all as one user'})")
            plain = {label: servers[label].kernel() for label in labels}
            extended = {label: servers[label].kernel() for label in labels}
            try:
                report(llm, labels, plain, extended, user_counts, repeat)
            finally:
                for kernel in [*plain.values(), *extended.values()]:
                    kernel.close()


def report(llm: FakeLLMServer, labels: list[str], plain: dict[str, HubKernel], extended: dict[str, HubKernel],
           user_counts: list[int], repeat: int) -> None:
    pids = {label: (pid_of(plain[label]), pid_of(extended[label])) for label in labels}
    before = {label: memory(pids[label][0]) for label in labels}
    run_at_once([(kernel, "%load_ext auto_coder_nb") for kernel in extended.values()])
    loaded = {label: memory(pids[label][1]) for label in labels}
    first = run_at_once([(kernel, TURN) for kernel in extended.values()], ANSWER[:40])  # warm-up: imports, session
    setup = BASELINE_SETUP.format(base_url=llm.base_url, key=GATEWAY_KEY)
    run_at_once([(kernel, f"{setup}\n{BASELINE}") for kernel in plain.values()], "exchanged")
    print(f"first turn of each of {len(labels)} kernels, all at once: median {statistics.median(first):.2f} s, "
          f"slowest {max(first):.2f} s (imports and the session, once per kernel)")

    print(f"\n{'users':>5}  {'turn median':>11}  {'slowest':>8}  {'baseline':>8}  {'ratio':>6}  requests/turn")
    for count in user_counts:
        turns: list[float] = []
        baseline: list[float] = []
        seen = len(llm.requests)
        for _ in range(repeat):
            turns += run_at_once([(extended[label], TURN) for label in labels[:count]], ANSWER[:40])
            baseline += run_at_once([(plain[label], BASELINE) for label in labels[:count]], "exchanged")
        sent = Counter(f"{request.method} {request.path}" for request in llm.requests[seen:]
                       if request.headers.get("x-user"))
        per_turn = ", ".join(f"{n / (count * repeat):g} {path}" for path, n in sent.items())
        median, base = statistics.median(turns), statistics.median(baseline)
        print(f"{count:>5}  {median:>10.2f}s  {max(turns):>7.2f}s  {base:>7.2f}s  {median / base:>5.1f}x  {per_turn}")

    after = {label: memory(pids[label][1]) for label in labels}
    plain_after = {label: memory(pids[label][0]) for label in labels}
    print("\nmemory per kernel, MB (median over the kernels): RSS / PSS")
    for name, table in (("without the extension", before), ("  after the baseline", plain_after),
                        ("with it loaded", loaded), ("  after the turns", after)):
        rss = statistics.median(value[0] for value in table.values())
        pss = statistics.median(value[1] for value in table.values())
        print(f"  {name:24} {rss:7.1f} / {pss:7.1f}")
    added = statistics.median(after[label][1] - before[label][1] for label in labels)
    print(f"  the extension's cost after a turn: {added:.1f} MB PSS per kernel "
          f"(a kernel without it: {statistics.median(value[1] for value in before.values()):.1f} MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    main(sorted(arguments.users), arguments.repeat)
