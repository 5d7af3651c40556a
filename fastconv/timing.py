"""The one timer of fastconv's benchmarks (`fastconv bench`, the demo and every `benchmarks/` script).

    times = interleaved({"fastconv": ours, "torch": peer}, device="cpu", repeats=10)
    times["torch"] / times["fastconv"]       # a Timed is a float: the median in seconds
    times["fastconv"].quartiles_ms()          # the spread the JSON files record
    times["fastconv"].measurement("conv2d", "r50_l1_3x3", "fastconv")   # for torch.utils.benchmark.Compare

Why not `torch.utils.benchmark.Timer` itself: a peer must be measured in the same run, interleaved
(the machines are shared and drift), and Timer measures one statement at a time. So the sampling loop
is here, once, and its results convert to torch.utils.benchmark's `Measurement`, so Compare and its
table tools apply.

Rules of the loop:
- warm-up calls first (not timed): first-call allocation, autotuning and compilation stay out;
- each round calls every function once, in the next order of a balanced Latin square, so each
  follows each other equally often (a function that evicts the caches makes the next one run cold);
- a sample ends when the device's work is done: CPU wall clock around the call, CUDA events
  around `number` calls on the GPU (number="auto" picks enough calls for about 1 ms per sample);
- settle=s sleeps s seconds before every sample (untimed): engines whose worker threads spin after
  a call would otherwise take the cores from the next function timed;
- scrub=True overwrites a buffer larger than the last-level cache before every sample (untimed), so
  memory-bound ops all start from the same cache state.
"""
import statistics
import time

import torch

__all__ = ["Timed", "interleaved", "time_one", "sync", "table"]


def sync(device):
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Timed(float):
    """A median time in seconds that keeps its samples (seconds per call, sorted)."""

    def __new__(cls, samples):
        if not samples:
            raise ValueError("Timed: no samples")
        t = super().__new__(cls, statistics.median(samples))
        t.samples = sorted(samples)
        return t

    @property
    def min(self):
        return self.samples[0]

    def quartiles_ms(self):
        """[first quartile, third quartile] in milliseconds."""
        q = statistics.quantiles(self.samples, n=4) if len(self.samples) > 1 else self.samples * 3
        return [q[0] * 1e3, q[-1] * 1e3]

    def spread(self):
        """Interquartile range over the median (0.05 = the middle half of the samples lies within 5%)."""
        lo, hi = self.quartiles_ms()
        return (hi - lo) / 1e3 / float(self) if float(self) > 0 else 0.0

    def measurement(self, label, sub_label, description, num_threads=None):
        """These samples as torch.utils.benchmark's Measurement (for Compare's tables)."""
        from torch.utils.benchmark import Measurement, TaskSpec
        spec = TaskSpec(stmt="", setup="", label=label, sub_label=sub_label, description=description,
                        num_threads=num_threads or torch.get_num_threads())
        return Measurement(number_per_run=1, raw_times=list(self.samples), task_spec=spec)


_SCRUB = {}


def _scrub(device):
    """Overwrite a buffer larger than the last-level cache, so every timed call starts from the same
    cache state: without it each call inherits the previous one's dirty lines (an op writing with
    non-temporal stores leaves the next one a clean cache, one writing through the cache leaves it
    write-backs to pay)."""
    key = str(device)
    if key not in _SCRUB:
        _SCRUB[key] = torch.empty(16 << 20, device=device)  # 64 MB
    _SCRUB[key].fill_(1.0)


def _calls_per_sample(fn, device):
    """On the GPU: enough back-to-back calls for about 1 ms per sample (event resolution and launch
    gaps then do not matter); on the CPU one call."""
    if torch.device(device).type != "cuda":
        return 1
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(50, int(1e-3 / one)))


def _sample(fn, device, number, clock):
    if torch.device(device).type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(number):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 1e3 / number
    t0 = clock()
    for _ in range(number):
        fn()
    return (clock() - t0) / number


def _orders(keys):
    """The rounds' call orders: a balanced Latin square (Williams design; with its mirror image for an
    odd count), so over a cycle every function runs once in each position and directly follows each
    other function equally often -- in len(keys) or 2 len(keys) rounds, where all permutations
    would be len(keys)! (for three, the two are the same six orders)."""
    n = len(keys)
    steps, lo, hi = [0], 1, n - 1
    while len(steps) < n:
        steps.append(lo)
        lo += 1
        if len(steps) < n:
            steps.append(hi)
            hi -= 1
    rows = [[keys[(r + s) % n] for s in steps] for r in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def interleaved(fns, device="cpu", repeats=10, warmup=2, number=1, scrub=False, clock=time.perf_counter,
                deadline=None, settle=0.0):
    """Seconds per call of each function, as a Timed (median, with its samples), measured in rounds.

    fns: a dict name -> callable (returns a dict) or a list of callables (returns a list); None
    entries are skipped (None in the result). number: calls per sample, or "auto". clock: the CPU
    clock (time.process_time measures CPU time, immune to descheduling). deadline: a time.time()
    after which no new round starts (at least one round always runs). settle: seconds of sleep
    before each sample (untimed), so that worker threads another engine leaves spinning after its
    call (OpenVINO's, ONNX Runtime's) have gone idle before the next one is timed."""
    keys = list(fns) if isinstance(fns, dict) else list(range(len(fns)))
    calls = {k: fns[k] for k in keys if fns[k] is not None}
    if repeats < 1:
        raise ValueError(f"interleaved: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for f in calls.values():
            f()
    sync(device)
    per = {k: (_calls_per_sample(f, device) if number == "auto" else int(number)) for k, f in calls.items()}
    times = {k: [] for k in calls}
    orders = _orders(list(calls))
    for rep in range(repeats):
        if rep and deadline is not None and time.time() > deadline:
            break
        for k in orders[rep % len(orders)]:
            if scrub:
                _scrub(device)
                sync(device)
            if settle:
                time.sleep(settle)
            times[k].append(_sample(calls[k], device, per[k], clock))
            sync(device)
    out = {k: (Timed(times[k]) if k in calls else None) for k in keys}
    return out if isinstance(fns, dict) else [out[k] for k in keys]


def time_one(fn, device="cpu", repeats=10, warmup=2, number=1, deadline=None):
    """Timed of a single function (the loop of interleaved, for runs with no peer to pair with)."""
    return interleaved([fn], device, repeats, warmup, number, deadline=deadline)[0]


def table(rows, columns, markdown=False):
    """The benchmarks' one table printer. rows: dicts (or anything the getters read); columns:
    (header, key or callable, format spec) triples, e.g. ("ours ms", "fastconv_ms", ".3f"). A
    missing or None value prints "-"; numbers are right-aligned, text left-aligned. markdown=True
    writes a Markdown table (the demo's report), otherwise aligned plain text."""
    def cell(row, get, spec):
        v = get(row) if callable(get) else (row.get(get) if isinstance(row, dict) else getattr(row, get, None))
        if v is None:
            return "-", True
        if isinstance(v, str):
            return v, False
        return format(v, spec), True

    cells = [[cell(r, get, spec) for _, get, spec in columns] for r in rows]
    heads = [h for h, _, _ in columns]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        lines += ["| " + " | ".join(text for text, _ in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(row[i][0]) for row in cells]) for i, h in enumerate(heads)]
    right = [any(row[i][1] for row in cells) if cells else False for i in range(len(heads))]

    def line(texts):
        return " ".join((t.rjust(w) if r else t.ljust(w)) for t, w, r in zip(texts, widths, right)).rstrip()
    return "\n".join([line(heads)] + [line([text for text, _ in row]) for row in cells])
