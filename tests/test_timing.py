"""fastconv.timing: the one timer every benchmark uses (interleaving, warm-up, spread, Compare)."""
import time

import pytest
import torch

from fastconv.timing import Timed, interleaved, time_one


def test_calls_warmup_then_rounds_in_every_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    t = interleaved(fns, repeats=6, warmup=2)
    assert set(t) == set("abc") and all(isinstance(v, Timed) and len(v.samples) == 6 for v in t.values())
    assert calls[:6] == list("abcabc")  # warm-up, untimed
    rounds = ["".join(calls[6 + 3 * i:9 + 3 * i]) for i in range(6)]
    assert sorted(rounds) == sorted(["abc", "acb", "bac", "bca", "cab", "cba"])  # each follows each alike


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_orders_balanced_for_many_functions(n):
    """Any number of functions (13! permutations would not fit in memory): each runs once per
    position per cycle and directly follows each other one equally often."""
    from fastconv.timing import _orders
    rows = _orders(list(range(n)))
    assert len(rows) == (2 * n if n % 2 else n) and all(sorted(r) == list(range(n)) for r in rows)
    for pos in range(n):
        assert sorted(r[pos] for r in rows) == sorted(list(range(n)) * (len(rows) // n))
    pairs = [(r[i], r[i + 1]) for r in rows for i in range(n - 1)]
    assert len(set(pairs)) == n * (n - 1) and all(pairs.count(p) == pairs.count(pairs[0]) for p in set(pairs))


def test_list_form_skips_none():
    out = interleaved([lambda: None, None], repeats=3, warmup=0)
    assert isinstance(out, list) and out[1] is None and len(out[0].samples) == 3


def test_timed_statistics_and_measurement():
    t = Timed([0.004, 0.001, 0.002, 0.003, 0.005])
    assert float(t) == 0.003 and t.min == 0.001 and t.samples == sorted(t.samples)
    lo, hi = t.quartiles_ms()
    assert lo < 3.0 < hi
    assert t.spread() == pytest.approx((hi - lo) / 3.0)
    m = t.measurement("conv2d", "r50_l1_3x3", "fastconv")
    assert m.median == pytest.approx(0.003)
    from torch.utils.benchmark import Compare
    Compare([m, Timed([0.006]).measurement("conv2d", "r50_l1_3x3", "torch")]).print()


def test_settle_sleeps_before_each_sample_untimed():
    t0 = time.perf_counter()
    t = interleaved({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=0, settle=0.02)
    assert time.perf_counter() - t0 >= 6 * 0.02 and float(t["a"]) < 0.01 and float(t["b"]) < 0.01


def test_sleep_is_measured():
    t = time_one(lambda: time.sleep(0.01), repeats=3, warmup=0)
    assert 0.009 < float(t) < 0.5


def test_deadline_stops_after_a_round():
    t = time_one(lambda: None, repeats=1000, warmup=0, deadline=time.time() - 1)
    assert len(t.samples) == 1


def test_scrub_and_number():
    x = torch.randn(1000)
    t = interleaved({"relu": lambda: x.relu()}, repeats=2, warmup=1, number=3, scrub=True)
    assert len(t["relu"].samples) == 2


def test_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats"):
        interleaved([lambda: None], repeats=0)


def test_table_aligns_and_marks_missing():
    from fastconv.timing import table
    rows = [{"op": "relu", "ms": 1.23456}, {"op": "max_pool2d", "ms": None}]
    cols = [("op", "op", ""), ("ours ms", "ms", ".3f"), ("x2", lambda r: r["op"].upper(), "")]
    text = table(rows, cols).splitlines()
    assert text[0].split() == ["op", "ours", "ms", "x2"]
    assert text[1].startswith("relu       ") and "  1.235 " in text[1] and text[2].split()[1] == "-"
    md = table(rows, cols, markdown=True).splitlines()
    assert md[0] == "| op | ours ms | x2 |" and md[1] == "|---|---|---|" and md[2] == "| relu | 1.235 | RELU |"
