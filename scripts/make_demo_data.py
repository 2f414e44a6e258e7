"""Stage-2 training texts for the demo model, all from the CPython standard library of this machine.

    python scripts/make_demo_data.py OUT.jsonl [--stdlib DIR] [--strip-docstrings] [--functions-only]

Writes one JSONL record {"name", "text"} per text:
- every non-test module file as it is (tests are mostly `self.assertEqual(...)`, which a model this
  small copies into every completion);
- every function and method of the non-test modules, cut out with `ast` and dedented, so the model
  sees many `def name(args):` at the top level followed by a 4-space body (in the files most
  definitions are methods, indented 4 spaces, with 8-space bodies).

"name" is the source file's path, so the trainer's held-out split (a hash of the name) keeps a
held-out file and the functions cut out of it on the same side.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sysconfig
import textwrap

SKIP_PARTS = ("/test/", "/tests/", "/idle_test/", "/site-packages/")  # tests, and what pip installed


def _docstring_lines(fn: ast.AST) -> tuple[int, int] | None:
    """0-based [start, end) source lines of a function's docstring, or None when it has none."""
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.lineno - 1, first.end_lineno
    return None


def functions(source: str, strip_docstrings: bool = False) -> list[str]:
    """Source of each module-level function and each method of a module-level class, dedented.

    With strip_docstrings, the function's own docstring lines are left out, and a function that is
    only a docstring is skipped (a model this small that sees `def f():` followed by a docstring most
    of the time writes docstrings, and loops in them, instead of code).
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines(keepends=True)
    nodes = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            nodes += [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nodes.append(node)
    out = []
    for n in nodes:
        start = min([d.lineno for d in n.decorator_list] + [n.lineno]) - 1
        keep = list(range(start, n.end_lineno))
        doc = _docstring_lines(n) if strip_docstrings else None
        if doc is not None:
            if len(n.body) == 1:
                continue
            # a docstring sharing a line with other code (`"""x"""; y`) cannot be cut by lines
            if lines[doc[0]].strip().startswith(("'", '"', "r'", 'r"')) and doc[0] > n.lineno - 1:
                keep = [i for i in keep if not doc[0] <= i < doc[1]]
        out.append(textwrap.dedent("".join(lines[i] for i in keep)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--strip-docstrings", action="store_true",
                    help="leave the docstrings out of the cut-out functions (the module files stay whole)")
    ap.add_argument("--functions-only", action="store_true", help="write the cut-out functions, not the module files")
    args = ap.parse_args()
    if not os.path.isdir(args.stdlib):
        ap.error(f"--stdlib {args.stdlib}: not a directory")
    files = records = chars = 0
    with open(args.out, "w", encoding="utf-8") as fh:
        for root, dirs, names in os.walk(args.stdlib):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(root, name)
                if not name.endswith(".py") or any(p in path for p in SKIP_PARTS) or name.startswith("test_"):
                    continue
                try:
                    with open(path, encoding="utf-8") as src:
                        text = src.read()
                except UnicodeDecodeError:
                    continue
                files += 1
                for t in ([] if args.functions_only else [text]) + functions(text, args.strip_docstrings):
                    fh.write(json.dumps({"name": path, "text": t}) + "\n")
                    records += 1
                    chars += len(t)
    print(json.dumps({"files": files, "records": records, "characters": chars, "out": args.out}))


if __name__ == "__main__":
    main()
