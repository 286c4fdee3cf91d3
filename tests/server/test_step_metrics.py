"""The engine's step counters (``swaa_engine_steps_total`` / ``swaa_engine_step_seconds_total``): they advance with
steps, reach /metrics per replica, and read back into the replica benchmark's per-replica step table (no Ray)."""

from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from bench.replicas_bench import step_rows, step_summary
from swaa_engine.config import CacheConfig, SchedulerConfig
from swaa_engine.engine import LLM
from swaa_engine.sampling_params import SamplingParams
from swaa_engine.swaa import SWAAConfig
from swaa_server.frontend import snapshot
from swaa_server.telemetry import Metrics, step_totals


def test_counters_advance_with_every_step(tiny_qwen3):
    eng = LLM(tiny_qwen3[0], swaa=SWAAConfig(window=16, sinks=2, fa_layers=[1]), max_model_len=256,
              cache=CacheConfig(block_size=8, budget_bytes=4 << 20), scheduler=SchedulerConfig(max_waiting=8)).engine
    assert (eng.steps, eng.step_seconds) == (0, 0.0)
    eng.step()  # nothing to do: not a step that ran a batch
    assert eng.load.steps == 0
    eng.add_request(list(range(1, 30)), SamplingParams(max_tokens=5, ignore_eos=True))
    seconds = [0.0]
    ran = 0
    while eng.has_work():
        eng.step()
        ran += 1
        assert eng.load.steps == ran  # published after every step, for readers that take no lock
        assert eng.load.step_seconds > seconds[-1]
        seconds.append(eng.load.step_seconds)
    assert ran >= 5  # a prefill and at least four decodes
    snap = snapshot(eng)
    assert (snap.steps, snap.step_seconds) == (ran, seconds[-1])


def _load(steps, secs):
    return SimpleNamespace(running=0, waiting=0, usage={}, prefix={}, preemptions={}, steps=steps, step_seconds=secs)


def test_exposed_per_replica_and_read_back():
    m = Metrics(extra_label_names=("replica",))
    m.watch(lambda: [({"replica": "0"}, _load(5, 0.5)), ({"replica": "1"}, _load(7, 1.25))], ready=lambda: 2)
    text = generate_latest(m.registry).decode()
    assert 'swaa_engine_steps_total{replica="1"} 7.0' in text
    assert 'swaa_engine_step_seconds_total{replica="0"} 0.5' in text
    assert step_totals(text) == {"0": (5, 0.5), "1": (7, 1.25)}


def test_in_process_engine_reads_as_replica_0():
    m = Metrics()
    m.watch(lambda: [({}, _load(3, 0.75))])
    assert step_totals(generate_latest(m.registry).decode()) == {"0": (3, 0.75)}
    assert step_totals("") == {}


def test_step_summary_deltas_share_and_odd_cases():
    before = {"0": (10, 1.0), "1": (20, 2.0), "2": (5, 0.5), "3": (1, 0.1)}
    after = {"0": (110, 9.0), "1": (20, 2.0), "2": (2, 0.2), "4": (4, 0.4)}
    s = step_summary(before, after, wall_s=10.0)
    assert s["0"] == dict(steps=100, step_s=8.0, mean_step_ms=80.0, step_share=0.8)
    assert s["1"] == dict(steps=0, step_s=0.0, mean_step_ms=None, step_share=0.0)  # idle replica: no mean
    assert "restarted" in s["2"]["note"]
    assert "not ready" in s["3"]["note"]
    assert s["4"]["steps"] == 4  # not ready at the start: counted from its start
    assert list(s) == ["0", "1", "2", "3", "4"]
    rows = step_rows([dict(replicas=2, replica_steps=s), dict(replicas=1)])  # the second: an older JSON
    assert rows[0] == "| 2 | 0 | 100 | 8.00 s | 80.0 ms | 80 % |"
    assert rows[1] == "| 2 | 1 | 0 | 0.00 s | – | 0 % |"
    assert len(rows) == 5 and "restarted" in rows[2]


def test_step_summary_needs_wall_time():
    assert step_summary({"0": (0, 0.0)}, {"0": (1, 0.1)}, wall_s=0.0)["0"]["step_share"] is None
    with pytest.raises(ValueError):  # replica labels are indices
        step_summary({"x": (0, 0.0)}, {}, wall_s=1.0)


def test_profile_summary_self_time_per_thread(tmp_path):
    from bench.replicas_bench import profile_summary

    frames = [dict(name="main", file="/x/a.py", line=1), dict(name="step", file="/x/engine.py", line=9),
              dict(name="matmul", file="/x/linear.py", line=3), dict(name="select", file="", line=0)]
    prof = [dict(type="sampled", name='Thread 1 "swaa-engine"', samples=[[0, 1, 2], [0, 1, 2], [0, 1], []],
                 weights=[0.01, 0.01, 0.01, 0.01]),
            dict(type="sampled", name='Thread 2 "AsyncIO"', samples=[[3]], weights=[0.5])]
    path = tmp_path / "p.json"
    path.write_text(__import__("json").dumps(dict(shared=dict(frames=frames), profiles=prof)))
    out = profile_summary(str(path))
    assert [t["thread"] for t in out] == ['Thread 2 "AsyncIO"', 'Thread 1 "swaa-engine"']  # busiest first
    assert out[1]["active_s"] == 0.04
    assert out[1]["self_s"] == [["matmul (linear.py:3)", 0.02], ["step (engine.py:9)", 0.01]]  # innermost frame
    assert out[0]["self_s"] == [["select (?:0)", 0.5]]


def test_profile_lines():
    from bench.replicas_bench import profile_lines

    assert profile_lines(None) == []
    missing = profile_lines(dict(replica=0, pid=7, path="/o/p.json", error="py-spy not found"))
    assert missing[-1] == "no profile: py-spy not found"
    p = dict(replica=1, pid=7, path="/o/p.json", seconds=2.0, error=None,
             threads=[dict(thread="T1", active_s=1.5, self_s=[["f (a.py:1)", 1.0], ["g (b.py:2)", 0.5]])])
    lines = profile_lines(p)
    assert "replica 1 (pid 7), 2.0 s" in lines[1]
    assert lines[-1] == "| T1 | 1.50 s | f (a.py:1) 1.00 s; g (b.py:2) 0.50 s |"
