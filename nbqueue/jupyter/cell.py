"""Running a notebook cell as a job, and finding the notebook names a cell reads.

This module runs on the worker, so it imports nothing from IPython. The ``%%enqueue`` magic turns IPython
syntax into plain Python (and rejects what would need IPython) before a cell gets here.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import symtable
from collections.abc import Mapping
from types import CodeType
from typing import NamedTuple

#: The file name that tracebacks show for a cell when the caller gives none.
CELL_FILENAME = "<cell enqueued from notebook>"


class CompiledCell(NamedTuple):
    """A cell compiled as IPython runs it: the statements, then the last expression, whose value is returned."""

    body: CodeType
    last_expression: CodeType | None
    """None when the cell does not end with an expression statement."""


def compile_cell(source: str, filename: str = CELL_FILENAME) -> CompiledCell:
    """Compile a cell's source. Raise SyntaxError, with ``filename`` and the line, if it is not valid Python."""
    tree = ast.parse(source, filename=filename, mode="exec")

    last_expression = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body.pop()
        last_expression = compile(ast.Expression(last.value), filename, "eval")

    body = compile(tree, filename, "exec")
    return CompiledCell(body, last_expression)


def run_cell(source: str, captured: Mapping[str, object], filename: str = CELL_FILENAME) -> object:
    """Run a cell in a fresh namespace made of ``captured`` and the builtins, and return its last expression's value.

    The value is None when the last statement is not an expression. ``captured`` itself is not changed.
    Exceptions raised by the cell propagate, and their tracebacks show ``filename`` and the cell's lines.
    """
    compiled = compile_cell(source, filename)

    # Registering the source lets traceback show the cell's lines. An entry whose mtime is None is never
    # evicted by linecache.checkcache, and each filename has one entry, which the next cell of that name replaces.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)

    # Functions and classes defined in the cell get __module__ "__main__", as in the notebook, so cloudpickle
    # pickles a returned function or instance by value instead of trying to import it on the client.
    namespace: dict[str, object] = {"__name__": "__main__"}
    namespace.update(captured)
    namespace["__builtins__"] = builtins

    exec(compiled.body, namespace)
    if compiled.last_expression is None:
        return None
    return eval(compiled.last_expression, namespace)


def free_names(source: str) -> set[str]:
    """Find the global names that a cell may read before it binds them itself.

    The analysis is conservative: a name is left out only when a top-level statement binds it
    unconditionally (assignment, import, def or class) before any statement that mentions it. Names bound
    inside if, for, while, try or with blocks, or only inside functions, are kept. Builtins such as ``len``
    are included, so the caller keeps only the names its namespace defines. Raise SyntaxError for invalid
    Python.
    """
    tree = ast.parse(source, mode="exec")
    table = symtable.symtable(source, "<cell>", "exec")

    candidates = _global_reads(table)
    implicit_reads = _ImplicitGlobalReads()
    implicit_reads.visit(tree)
    candidates |= implicit_reads.names

    mentioned: set[str] = set()
    bound_first: set[str] = set()
    for statement in tree.body:
        mentioned |= _mentioned_names(statement)
        for name in _unconditional_bindings(statement):
            if name not in mentioned:
                bound_first.add(name)

    return candidates - bound_first


def _global_reads(table: symtable.SymbolTable) -> set[str]:
    """Collect the referenced names that resolve to the global namespace, in ``table`` and its children."""
    names: set[str] = set()
    scope_type = table.get_type()

    for symbol in table.get_symbols():
        if not symbol.is_referenced():
            continue
        if scope_type == "module" or symbol.is_global():
            names.add(symbol.get_name())
        elif scope_type == "class" and not symbol.is_free():
            # A class body looks a name up in the class namespace, then in the globals, so a name that the
            # class assigns may still be read from the globals if it is read before the assignment.
            names.add(symbol.get_name())

    for child in table.get_children():
        names |= _global_reads(child)
    return names


class _ImplicitGlobalReads(ast.NodeVisitor):
    """Collect global names that ``x += 1`` and ``del x`` read, which symtable records only as bindings."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        # For each enclosing function, the names it declares global. None for a class body or the module,
        # where every such name may be a global.
        self._declared_globals: list[set[str] | None] = [None]

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        declared = {name for child in ast.walk(node) if isinstance(child, ast.Global) for name in child.names}
        self._declared_globals.append(declared)
        self.generic_visit(node)
        self._declared_globals.pop()

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._declared_globals.append(None)
        self.generic_visit(node)
        self._declared_globals.pop()

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):
            self._add_if_global(node.target.id)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Del):
            self._add_if_global(node.id)

    def _add_if_global(self, name: str) -> None:
        declared = self._declared_globals[-1]
        if declared is None or name in declared:
            self.names.add(name)


def _mentioned_names(statement: ast.stmt) -> set[str]:
    """Collect every name that a statement reads or deletes, in any scope. This over-approximation is deliberate."""
    names: set[str] = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            names.update(node.names)
    return names


def _unconditional_bindings(statement: ast.stmt) -> set[str]:
    """Collect the names that a top-level statement always binds when it completes."""
    if isinstance(statement, ast.Assign):
        return {name for target in statement.targets for name in _target_names(target)}
    if isinstance(statement, ast.AnnAssign) and statement.value is not None:
        return _target_names(statement.target)
    if isinstance(statement, ast.Import):
        return {alias.asname or alias.name.partition(".")[0] for alias in statement.names}
    if isinstance(statement, ast.ImportFrom):
        return {alias.asname or alias.name for alias in statement.names if alias.name != "*"}
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {statement.name}
    return set()


def _target_names(target: ast.expr) -> set[str]:
    """Collect the plain names an assignment target binds. Attribute and subscript targets bind none."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Tuple | ast.List):
        return {name for element in target.elts for name in _target_names(element)}
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return set()
