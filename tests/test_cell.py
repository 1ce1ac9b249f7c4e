"""Tests of running a cell as a job and of finding the names it reads, without a worker or a kernel."""

from __future__ import annotations

import linecache
import subprocess
import sys
import traceback

import cloudpickle
import pytest

from nbqueue.jupyter.cell import CELL_FILENAME, compile_cell, free_names, run_cell


def test_run_cell_returns_last_expression():
    assert run_cell("y = x * 2\ny + 1", {"x": 3}, CELL_FILENAME) == 7


def test_run_cell_returns_none_without_final_expression():
    assert run_cell("y = 1", {}, CELL_FILENAME) is None


def test_run_cell_of_only_an_expression():
    assert run_cell("40 + 2", {}, CELL_FILENAME) == 42


def test_run_cell_of_empty_source():
    assert run_cell("", {}, CELL_FILENAME) is None


def test_run_cell_leaves_captured_unchanged():
    captured = {"x": 1}

    run_cell("x = 100\ny = 2\nx + y", captured, CELL_FILENAME)

    assert captured == {"x": 1}


def test_run_cell_functions_see_captured_globals():
    source = "def scale(value):\n    return value * factor\n[scale(n) for n in numbers]"

    assert run_cell(source, {"factor": 10, "numbers": [1, 2]}, CELL_FILENAME) == [10, 20]


def test_run_cell_has_builtins():
    assert run_cell("len(items)", {"items": [1, 2, 3]}, CELL_FILENAME) == 3


def test_run_cell_defines_functions_in_main():
    """Functions defined in a cell belong to __main__, so cloudpickle pickles a returned one by value."""
    add = run_cell("def add(a, b):\n    return a + b\nadd", {}, CELL_FILENAME)

    assert add.__module__ == "__main__"
    assert cloudpickle.loads(cloudpickle.dumps(add))(2, 3) == 5


def test_run_cell_traceback_shows_filename_and_line():
    filename = "<cell In[7] enqueued from notebook>"

    with pytest.raises(ZeroDivisionError) as raised:
        run_cell("a = 1\nb = a / 0\nb", {}, filename)

    text = "".join(traceback.format_exception(raised.value))
    assert f'File "{filename}", line 2' in text
    assert "b = a / 0" in text


def test_run_cell_replaces_source_of_same_filename():
    filename = "<cell In[8] enqueued from notebook>"

    run_cell("first = 1", {}, filename)
    run_cell("second = 2", {}, filename)

    assert linecache.getline(filename, 1) == "second = 2"


def test_run_cell_raises_syntax_error_with_filename():
    with pytest.raises(SyntaxError) as raised:
        run_cell("x = (", {}, "<cell In[9] enqueued from notebook>")

    assert raised.value.filename == "<cell In[9] enqueued from notebook>"


def test_compile_cell_splits_last_expression():
    compiled = compile_cell("x = 1\nx + 1")

    assert compiled.last_expression is not None
    assert compile_cell("x = 1").last_expression is None


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x + 1", {"x"}),
        ("x = 1\nx + 1", set()),
        ("x = x + 1", {"x"}),
        ("total += 1", {"total"}),
        ("del old", {"old"}),
        ("import math\nmath.pi", set()),
        ("import os.path\nos.sep", set()),
        ("from math import pi as circle\ncircle", set()),
        ("a, (b, *c) = pair\na + b", {"pair"}),
        ("x: int = 3\nx", {"int"}),
        ("x: int\nx", {"int", "x"}),
        ("def f(a):\n    return a + b\nf(1)", {"b"}),
        ("def f():\n    return later\nlater = 1\nf()", {"later"}),
        ("f = lambda v: v * k\nf(2)", {"k"}),
        ("[n * factor for n in numbers]", {"factor", "numbers"}),
        ("total = sum(add(n, n) for n in numbers)\ntotal * 10", {"add", "numbers", "sum"}),
        ("class A:\n    size = default_size\n    double = size * 2", {"default_size", "size"}),
        ("def bump():\n    global counter\n    counter += 1", {"counter"}),
        ("def f():\n    local = 1\n    local += 1\n    return local", set()),
        ("def outer():\n    v = 1\n    def inner():\n        return v + w\n    return inner", {"w"}),
        ("if flag:\n    y = 1\ny", {"flag", "y"}),
        ("len(items)", {"items", "len"}),
    ],
)
def test_free_names(source, expected):
    assert free_names(source) == expected


def test_cell_module_imports_no_ipython():
    """Workers may lack IPython, and they import this module to run enqueued cells."""
    check = "import sys, nbqueue.jupyter.cell; print(sorted(m for m in sys.modules if m.startswith('IPython')))"

    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "[]\n"


def test_free_names_raises_syntax_error():
    with pytest.raises(SyntaxError):
        free_names("x = (")
