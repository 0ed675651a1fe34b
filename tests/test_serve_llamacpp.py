"""benchmarks/serve_llamacpp.py's verdicts, from rows made by hand: issue 40's serving targets read off the
right rows, and the answer check pairs each forgetless row with llama.cpp's at the same setting. (The
servers themselves run in the benchmark; the numbers are in docs/deploy.md.)"""

from __future__ import annotations

from tests.conftest import load_benchmark


def _row(server: str, clients: int, tokens: int, rps: float, p50: float, answers=("a", "b")) -> dict:
    return {"server": server, "clients": clients, "new_tokens": tokens, "requests_per_s": rps, "p50_s": p50,
            "answers": list(answers)}  # fmt: skip


def test_the_targets_compare_mixed_adapters_with_llama_cpp_at_the_same_setting():
    bench = load_benchmark("serve_llamacpp")
    measured = {  # (clients, tokens): (requests/s, p50 s) of llama.cpp, forgetless, forgetless-mixed
        (1, 8): [(5.0, 0.20), (3.0, 0.30), (2.0, 0.50)],
        (8, 8): [(4.0, 1.0), (6.0, 1.0), (5.5, 1.2)],
        (8, 64): [(1.0, 8.0), (1.1, 7.0), (0.9, 9.0)],
    }
    rows = [_row(server, *setting, *found) for setting, three in measured.items()
            for server, found in zip(bench.SERVERS, three, strict=True)]  # fmt: skip
    found = {t["target"]: (t["measured"], t["met"]) for t in bench.targets(rows)}
    assert found["base + 3 adapters mixed, 8 clients × 8 tokens: requests/s"] == (5.5, True)
    assert found["mixed vs llama.cpp (one model), 8 clients × 8 tokens: requests/s ratio"] == (1.38, True)
    assert found["mixed vs llama.cpp (one model), 8 clients × 64 tokens: requests/s ratio"] == (0.9, False)
    assert found["forgetless, one client × 8 tokens: p50 latency vs llama.cpp's"] == (1.5, True)
    assert found["forgetless-mixed, one client × 8 tokens: p50 latency vs llama.cpp's"] == (2.5, False)


def test_answers_are_compared_with_llama_cpps_at_the_same_clients_and_tokens():
    bench = load_benchmark("serve_llamacpp")
    rows = [_row("llama.cpp", 1, 8, 1, 1, ["x", "y"]), _row("forgetless", 1, 8, 1, 1, ["x", "z"]),
            _row("llama.cpp", 8, 8, 1, 1, ["x", "z"]), _row("forgetless", 8, 8, 1, 1, ["x", "z"])]  # fmt: skip
    assert bench.same_answers(rows) == {"1x8": 0.5, "8x8": 1.0}


def test_llama_cpp_gets_every_core_and_the_mixed_server_every_adapter(tmp_path):
    bench = load_benchmark("serve_llamacpp")
    cmd, health = bench.command("llama.cpp", 8000, tmp_path / "m.gguf", ["a=/x"], 2)
    assert health == "/v1/models" and cmd[cmd.index("--n_threads") + 1] == "2" and str(tmp_path / "m.gguf") in cmd
    base, _ = bench.command("forgetless", 8000, tmp_path / "m.gguf", ["a=/x", "b=/y"], 2)
    mixed, health = bench.command("forgetless-mixed", 8000, tmp_path / "m.gguf", ["a=/x", "b=/y"], 2)
    assert "--adapter" not in base
    assert [mixed[i + 1] for i, v in enumerate(mixed) if v == "--adapter"] == ["a=/x", "b=/y"]
    assert health == "/health"
