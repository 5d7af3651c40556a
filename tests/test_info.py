"""fastconv.info() and `python -m fastconv info` report version, build flags, CPU features, code path,
OpenMP threads and whether CUDA was built."""
import subprocess
import sys

import pytest
import torch

import fastconv
from conftest import isa_path

KEYS = ["version", "build_flags", "cpu_features", "isa", "omp_threads", "cuda_built"]


def test_info_dict():
    d = fastconv.info()
    for k in KEYS:
        assert k in d, f"fastconv.info() lacks {k!r}: {d}"
    assert d["version"] == fastconv.__version__
    assert d["isa"] in ("portable", "avx2", "avx512")
    assert isinstance(d["omp_threads"], int) and d["omp_threads"] >= 1
    assert isinstance(d["cuda_built"], bool)
    assert d["backend"]


def test_info_follows_set_isa():
    with isa_path("portable"):
        assert fastconv.info()["isa"] == "portable"


def test_set_isa_rejects_unknown():
    import pytest
    from fastconv import _ext
    with pytest.raises(ValueError, match="name"):
        _ext.require_native().set_isa("sse9")


def test_cli_info():
    out = subprocess.run([sys.executable, "-m", "fastconv", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for k in KEYS:
        assert k in out.stdout, f"`python -m fastconv info` lacks {k!r}:\n{out.stdout}"
    assert fastconv.__version__ in out.stdout


def test_bench_runs_and_checks_its_groups(tmp_path):
    """`python -m fastconv bench` end to end on its cheap groups (the fused SORT block checks its
    output against the eager block before timing), JSON included; unknown groups are refused."""
    import json
    import subprocess
    import sys
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "fastconv", "bench", "--quick", "--ops", "memory,block", "--batch", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["cpu"] and data["machine"]["torch"] == torch.__version__ and data["time"]
    rows = {r["op"]: r for r in data["rows"]}
    q1, q3 = rows["relu"]["fastconv_ms_quartiles"]
    assert q1 <= rows["relu"]["fastconv_ms"] <= q3  # the spread, not only the median
    assert {"relu", "sort(sqrt)", "sort_bottleneck[fused]", "conv1x1+bn+sort+relu"} <= set(rows)
    assert rows["sort(sqrt)"]["compile_ms"] > 0  # the memory-bound ops meet torch.compile too
    bad = subprocess.run([sys.executable, "-m", "fastconv", "bench", "--ops", "nope"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown --ops" in bad.stderr


@pytest.mark.slow
def test_gpu_scripts_smoke_on_cpu(tmp_path):
    """The scripts of the GPU calls (`make gpu-check-models`) run every code path end to end at tiny
    sizes on the CPU: whole nets against torch.compile, SORT's cost and block, numba vs native."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "benchmarks/gpu_models.py", "--device", "cpu", "--quick", "--models", "alexnet"],
                          capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "models.json").read_text())
    assert data["machine"]["cpu"] and data["time"]
    rows = data["rows"]
    assert {r["part"] for r in rows} == {"models", "sort_cost", "sort_block"}
    assert all(r.get("logits_agree", True) and r.get("agree", True) for r in rows)
    proc = subprocess.run([sys.executable, "benchmarks/numba_bench.py", "--quick", "--no-first-call", "--no-backward",
                           "--repeats", "1", "--json", str(tmp_path / "numba.json")],
                          capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "numba.json").read_text())
    assert data["machine"]["torch"] == torch.__version__ and any(r.get("op") == "relu" for r in data["rows"])


@pytest.mark.slow
def test_gpu_bench_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_bench.py (`make gpu-check`) end to end with --device cpu on the CPU kernels at tiny
    sizes: verify, fwd, bwd, fused and mem through to the table and bench.json, and --smoke, so that
    a Python error in it does not cost the scarce GPU time."""
    import json
    import os
    import re
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTCONV_BENCH_OUT=str(tmp_path), PYTHONPATH=root)
    for k in ("FASTCONV_BENCH_PARTS", "FASTCONV_BENCH_LAYERS", "FASTCONV_BENCH_DTYPES", "FASTCONV_BENCH_BATCH"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600, cwd=root, env=env)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    m = re.search(r"^verification: (\d+)/(\d+) checks passed$", proc.stdout, re.M)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 100, log
    assert "memory-bound" in proc.stdout and "Traceback" not in proc.stderr, log
    d = json.loads((tmp_path / "bench.json").read_text())
    assert d["machine"]["cpu"] and d["time"]
    assert {r["part"] for r in d["results"]} == {"fwd", "bwd", "mem"}
    assert all(r["ok"] for r in d["results"]) and all(c[3] for c in d["checks"])
    assert any(r["layer"] == "conv1x1+sort+relu" for r in d["results"])  # the fused part
    proc = subprocess.run([sys.executable, "benchmarks/gpu_bench.py", "--device", "cpu", "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert proc.returncode == 0 and "smoke: every op ran" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


FALLBACK = """
import sys, warnings
sys.modules["fastconv._C"] = None  # the native extension fails to load (as after a torch upgrade)
import torch, fastconv
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    x = torch.randn(1, 2, 5, 5)
    fastconv.relu(x)
    fastconv.relu(x)
slow = [str(w.message) for w in seen if "backend" in str(w.message)]
print(len(slow), fastconv.get_backend(), "native_error" in fastconv.info())
print(slow[0] if slow else "")
"""


def test_fallback_backend_warns_once_with_the_reason():
    out = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    first, message = out.stdout.strip().splitlines()[:2]
    assert first == "1 numba True", out.stdout
    assert "native: " in message and "halted" in message and "make build" in message


@pytest.mark.parametrize("argv,option", [
    (["bench", "--device", "cdua"], "--device"), (["bench", "--batch", "0"], "--batch"),
    (["check", "--cases", "-3"], "--cases"), (["check", "--backend", "nope"], "--backend"),
    (["demo", "--epochs", "0"], "--epochs"),
] + ([(["check", "--device", "cuda"], "--device")] if not __import__("torch").cuda.is_available() else []))
def test_cli_rejects_bad_arguments(argv, option, capsys):
    from fastconv.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_cli_version_and_exit_codes(capsys):
    from fastconv.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"fastconv {fastconv.__version__}"
    assert main(["bench", "--ops", "nope"]) == 2 and main(["check", "--ops", "nope"]) == 2
    assert main(["info"]) == 0


def test_bench_train_group():
    """`fastconv bench --ops train`: a training step of a converted ResNet against torch's, timed
    interleaved, the first loss checked, and the peak-memory probe in a fresh process."""
    from fastconv import bench
    rows = bench.train_rows((2,), 1, compile_peer=False, memory=False, models=("resnet18",))
    (row,) = rows
    assert set(row["peer_ms"]) == {"torch eager", "torch eager channels_last"} and row["ratio_fastest"] > 0
    assert abs(row["loss"]["fastconv"] - row["loss"]["torch eager"]) < 1e-3 * max(1, abs(row["loss"]["torch eager"]))
    assert "vs fastest" in bench.format_train_table(rows)
    assert bench._peak_rss_mb("resnet18", 1, "fastconv") > 50


def test_bench_pointwise_group():
    """`fastconv bench --ops pointwise`: ResNet-50's 1x1 layers (read from the model: 15 distinct, 36
    in all), forward + both gradients against torch's, every part timed."""
    from fastconv import bench
    layers = bench.resnet_1x1_layers()
    assert len(layers) == 15 and sum(layer[-1] for layer in layers) == 36
    assert (64, 28, 256, 1, 4) in layers and (1024, 7, 2048, 2, 1) in layers
    rows = bench.pointwise_rows((1,), 1)
    assert len(rows) == 15 and all(r["ratio"] > 0 and len(r["parts_ms"]) == 5 for r in rows)


def test_bench_peers_group():
    """`fastconv bench --ops peers`: fastconv against the inference peers that can run here, logits
    checked against torch eager; a peer whose package is absent is skipped with a note naming it."""
    from fastconv import bench, peers
    wanted = ("onnxruntime", "openvino")
    rows = bench.peer_rows((1,), 1, models=("resnet18",), image=64, memory=False, peers_wanted=wanted)
    (row,) = rows
    absent = peers.missing(wanted)
    assert set(row["skipped"]) == set(absent) and set(row["peer_ms"]) == set(wanted) - set(absent)
    assert all("pip install fastconv[peers]" in why for why in absent.values())
    assert row["rel_diff"]["fastconv"] <= bench.PEER_LOGIT_TOL
    assert all(d < 1e-4 for d in row["rel_diff"].values()), row["rel_diff"]
    assert "vs fastest" in bench.format_peer_table(rows)


def test_peers_arguments(monkeypatch):
    from fastconv import peers
    with pytest.raises(ValueError, match="'tvm' is not a peer"):
        peers.missing(["tvm"])
    m = torch.nn.Conv2d(3, 4, 3).eval()
    with pytest.raises(ValueError, match="x must be a float32 CPU tensor"):
        peers.runner("torch.compile freezing", m, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails as if absent
    assert "onnxruntime is not installed" in peers.missing(["onnxruntime"])["onnxruntime"]
    with pytest.raises(RuntimeError, match="onnxruntime cannot run here"):
        peers.runner("onnxruntime", m, torch.randn(1, 3, 8, 8))


def test_peer_export_failure_is_one_line(capfd):
    """A model ONNX cannot express at this size (AlexNet's adaptive pooling from 1x1 to 6x6 at 64 px)
    skips the ONNX peers with the reason, and the exporter's graph dump stays off the terminal."""
    from fastconv import bench, peers
    wanted = tuple(p for p in ("onnxruntime",) if p not in peers.missing(["onnxruntime"]))
    if not wanted:
        pytest.skip("onnxruntime is not installed")
    (row,) = bench.peer_rows((1,), 1, models=("alexnet",), image=64, memory=False, peers_wanted=wanted)
    assert "adaptive_avg_pool2d" in row["skipped"]["onnxruntime"] and not row["peer_ms"]
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err and "onnxruntime skipped" in err
