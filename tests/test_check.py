"""python -m fastconv check: the randomized cross-checks pass on every backend and device present,
and they catch a wrong operator."""
import pytest
import torch

import fastconv
from fastconv import check
from conftest import BACKENDS, DEVICES, skip_unless_backend


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_check_passes(device, backend, capsys):
    skip_unless_backend(backend, device)
    before = (fastconv.get_backend(), torch.backends.cudnn.allow_tf32)
    rows = check.run(device, backend, cases=4 if backend == "native" else 2, seed=1)
    assert {r[0] for r in rows} == set(check.OPS)
    assert all(r[3] == 0 for r in rows), capsys.readouterr().out
    assert (fastconv.get_backend(), torch.backends.cudnn.allow_tf32) == before  # both restored


def test_check_catches_a_wrong_operator(monkeypatch, capsys):
    relu = check.OPS["relu"]

    def off_by_a_little(rng, dtype, device):
        case, ours, reference = relu(rng, dtype, device)
        return case, (lambda x: ours(x) * 1.1), reference
    monkeypatch.setitem(check.OPS, "relu", off_by_a_little)
    rows = check.run(cases=2, ops=["relu"])
    assert all(r[3] == 2 for r in rows)  # every case of every dtype fails
    assert check.main(["--cases", "2", "--ops", "relu"]) == 1

    def wrong_gradient(rng, dtype, device):  # right values, gradient 50% off
        case, ours, reference = relu(rng, dtype, device)
        return case, (lambda x: ours(x) + 0.5 * (x - x.detach())), reference
    monkeypatch.setitem(check.OPS, "relu", wrong_gradient)
    assert all(r[3] == 2 for r in check.run(cases=2, ops=["relu"]))
    assert check.main(["--ops", "nope"]) == 2
    assert "unknown operator" in capsys.readouterr().err


def test_check_cli_ok(capsys):
    from fastconv.__main__ import main
    assert main(["check", "--cases", "1", "--ops", "relu,sort"]) == 0
    cases = 2 * len(check._dtypes(torch.device("cpu")))
    assert capsys.readouterr().out.rstrip().endswith(f"ok: 0 of {cases} cases outside tolerance")
