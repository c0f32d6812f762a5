"""The deployment matrix (issue 15): every public module through every capture and export.

Eval: ``torch.export.export``, ``torch.onnx.export`` with the dynamo exporter and the legacy one
(run in onnxruntime), ``torch.jit.trace`` and ``torch.jit.script`` (saved and loaded back), each
equal to eager mode (atol 1e-6). Training: ``torch.compile(fullgraph=True)`` with aot_eager and
inductor, ``torch.export`` of the training forward, ``torch.jit.trace`` and ``torch.jit.script``,
forward and backward equal to eager mode for the same ``torch.manual_seed`` (bit for bit where the
noise is counter-based; layers still on torch's RNG run Inductor with ``fallback_random``).

The rows and their expected outcomes come from tests/module_specs.py: a cell passes, or raises
the documented error its row declares (``refusals``). docs/deployment.md's table is generated from
the same declarations (tools/gen_deployment_table.py) and checked here, so the page says what this
matrix asserts. Inductor compiles are slow on 2 cores: that column is marked slow.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from dropkit import ops
from dropkit.layers import base
from tests.module_specs import CELL_KEYS, CELLS, SPECS, ModuleSpec

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-6


def _leaves(output: object) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(output)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _assert_equal_outputs(actual: object, expected: object, exact: bool, rtol: float = 0.0) -> None:
    actual, expected = _leaves(actual), _leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        a = torch.as_tensor(a)
        assert a.shape == e.shape
        if exact:
            assert torch.equal(a, e.detach())
        else:
            torch.testing.assert_close(a, e.detach(), rtol=rtol, atol=ATOL)


def _build(spec: ModuleSpec, training: bool) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    module = spec.make().train(training)
    return module, spec.inputs(3, torch.float32)


def _eager(module: nn.Module, args: tuple) -> object:
    with torch.no_grad():
        return module(*args)


# --- eval cells ---------------------------------------------------------------------------------
def _export(spec: ModuleSpec, tmp_path: Path) -> None:
    module, args = _build(spec, training=False)
    program = torch.export.export(module, args)
    _assert_equal_outputs(program.module()(*args), _eager(module, args), exact=False)


def _onnx(spec: ModuleSpec, tmp_path: Path, dynamo: bool) -> None:
    import onnxruntime

    module, args = _build(spec, training=False)
    path = tmp_path / f"{spec.name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=dynamo, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {name: arg.numpy() for name, arg in zip(names, args, strict=False)}
    outputs = [torch.from_numpy(o) for o in session.run(None, feeds)]
    _assert_equal_outputs(outputs, _eager(module, args), exact=False)


def _trace(spec: ModuleSpec, tmp_path: Path) -> None:
    module, args = _build(spec, training=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args)
    _assert_equal_outputs(traced(*args), _eager(module, args), exact=False)


def _saved_and_loaded(scripted: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _script(spec: ModuleSpec, tmp_path: Path) -> None:
    module, args = _build(spec, training=False)
    loaded = _saved_and_loaded(torch.jit.script(module))
    _assert_equal_outputs(loaded(*args), _eager(module, args), exact=False)


# --- training cells: forward and backward against eager mode, same seed -------------------------
def _train_step(run: Callable[..., object], module: nn.Module, args: tuple, seed: int):
    args = tuple(
        a.detach().clone().requires_grad_(True) if a.is_floating_point() else a for a in args
    )
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    output = run(*args)
    loss = sum((leaf.float() * (k + 1)).sum() for k, leaf in enumerate(_leaves(output)))
    loss.backward()
    grads = [a.grad for a in args if isinstance(a, torch.Tensor) and a.grad is not None]
    grads += [p.grad for p in module.parameters() if p.grad is not None]
    return [leaf.detach() for leaf in _leaves(output)], grads


def _assert_train_matches_eager(
    spec: ModuleSpec,
    module: nn.Module,
    args: tuple,
    run,
    holder: nn.Module | None = None,
    compiled_by: str | None = None,
) -> None:
    """``run`` (whose parameters ``holder`` holds: a loaded copy has its own; ``compiled_by``: the
    torch.compile backend that built it, if any) against eager."""
    holder = module if holder is None else holder
    for seed in (1, 2):  # two steps: a fresh mask each, the same as eager's for the same seed
        expected = _train_step(module, module, args, seed)
        actual = _train_step(run, holder, args, seed)
        # Counter-based noise: bit for bit. Torch's RNG draws the same numbers, but a compiler may
        # fuse the arithmetic around them (sqrt(var) · ε + mean) and round differently.
        # The sparse variational layers' noise is counter-based but enters through mean + σ·ε,
        # which Inductor fuses (a different rounding of the same draws).
        exact = spec.counter_based and not (spec.fused_noise and compiled_by == "inductor")
        _assert_equal_outputs(actual[0], expected[0], exact=exact, rtol=1e-5)
        assert len(actual[1]) == len(expected[1])
        for a, e in zip(actual[1], expected[1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    if spec.stochastic:  # and the masks change between steps (never a seed frozen in the graph)
        first = _train_step(run, holder, args, 1)[0]
        others = [_train_step(run, holder, args, seed)[0] for seed in (2, 3, 4)]
        assert any(
            not torch.equal(a, b) for other in others for a, b in zip(first, other, strict=True)
        )


def _compile(spec: ModuleSpec, tmp_path: Path, backend: str) -> None:
    module, args = _build(spec, training=True)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    if backend == "inductor" and not spec.counter_based:
        # Torch's RNG: Inductor draws its own random numbers unless told to fall back to aten's.
        with torch._inductor.config.patch(fallback_random=True):
            _assert_train_matches_eager(spec, module, args, compiled, compiled_by=backend)
    else:
        _assert_train_matches_eager(spec, module, args, compiled, compiled_by=backend)


def _export_train(spec: ModuleSpec, tmp_path: Path) -> None:
    module, args = _build(spec, training=True)
    program = torch.export.export(module, args)
    exported = program.module()
    # The unlifted module holds the same parameters; its graph draws the seeds at run time.
    _assert_train_matches_eager(spec, module, args, lambda *a: exported(*a))
    exported_parameters = dict(exported.named_parameters())
    for name, parameter in module.named_parameters():
        assert torch.equal(exported_parameters[name], parameter)


def _trace_train(spec: ModuleSpec, tmp_path: Path) -> None:
    module, args = _build(spec, training=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)
    _assert_train_matches_eager(spec, module, args, traced)


def _script_train(spec: ModuleSpec, tmp_path: Path) -> None:
    module, args = _build(spec, training=True)
    scripted = torch.jit.script(module)
    _assert_train_matches_eager(spec, module, args, scripted, holder=scripted)
    loaded = _saved_and_loaded(scripted)
    _assert_train_matches_eager(spec, module, args, loaded, holder=loaded)


RUNNERS: dict[str, Callable[[ModuleSpec, Path], None]] = {
    "export": _export,
    "onnx_dynamo": lambda spec, tmp: _onnx(spec, tmp, dynamo=True),
    "onnx_legacy": lambda spec, tmp: _onnx(spec, tmp, dynamo=False),
    "jit_trace": _trace,
    "jit_script": _script,
    "compile_aot_eager": lambda spec, tmp: _compile(spec, tmp, "aot_eager"),
    "compile_inductor": lambda spec, tmp: _compile(spec, tmp, "inductor"),
    "export_train": _export_train,
    "jit_trace_train": _trace_train,
    "jit_script_train": _script_train,
}
SLOW_CELLS = {"compile_inductor"}


def _matrix() -> list:
    params = []
    for spec in SPECS:
        for cell in CELL_KEYS:
            marks = [pytest.mark.slow] if cell in SLOW_CELLS else []
            params.append(pytest.param(spec, cell, id=f"{spec.name}-{cell}", marks=marks))
    return params


@pytest.mark.parametrize(("spec", "cell"), _matrix())
def test_cell_passes_or_raises_its_documented_error(spec, cell, tmp_path, request):
    if cell in spec.known_bugs:  # strict: once fixed, the row must be updated
        request.applymarker(pytest.mark.xfail(strict=True, reason=spec.known_bugs[cell]))
    runner = RUNNERS[cell]
    refusal = spec.refusals.get(cell)
    if refusal is None:
        runner(spec, tmp_path)
        return
    with pytest.raises(refusal.error, match=refusal.match):
        runner(spec, tmp_path)


def test_every_cell_has_a_runner_and_every_refusal_a_known_cell():
    assert set(RUNNERS) == set(CELL_KEYS)
    for spec in SPECS:
        assert set(spec.refusals) <= set(CELL_KEYS), spec.name


def test_onnx_and_onnxruntime_are_installed():
    # The matrix needs them (the test extra installs them); a missing one must fail, not skip.
    for name in ("onnx", "onnxscript", "onnxruntime"):
        assert importlib.util.find_spec(name) is not None, f"{name} is not installed"


@pytest.mark.parametrize("p", [0.0, 0.1, 0.3, 0.5, 0.8, 1 / 3, 2**-17, 1 - 2**-17, 1.0])
def test_the_torchscript_threshold_is_the_kernels_threshold(p):
    assert base.scripted_threshold(p) == ops.threshold(p)
    train_scale, eval_factor = base.scripted_scales(p, "inverted")
    assert train_scale == ops.dropout_scale(p) and eval_factor == 1.0
    assert base.scripted_scales(p, "inference") == (1.0, 1.0 - p)


def test_a_scripted_dropout_with_noise_shape_or_inplace_refuses_training_but_evaluates():
    x = torch.randn(4, 3, 5)
    for layer in (dropkit_dropout(noise_shape=(None, 1, None)), dropkit_dropout(inplace=True)):
        scripted = torch.jit.script(layer)
        with pytest.raises(torch.jit.Error, match="Dropout cannot run its training forward"):
            scripted(x)
        assert torch.equal(scripted.eval()(x), x)


def dropkit_dropout(**kwargs: object) -> nn.Module:
    import dropkit

    return dropkit.Dropout(0.3, **kwargs)


def test_the_deployment_page_shows_the_table_the_matrix_asserts():
    spec = importlib.util.spec_from_file_location("gen", ROOT / "tools" / "gen_deployment_table.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    page = (ROOT / "docs" / "deployment.md").read_text()
    assert generator.table() in page, (
        "docs/deployment.md is stale: run python tools/gen_deployment_table.py"
    )
    assert len(CELLS) == len(CELL_KEYS)
