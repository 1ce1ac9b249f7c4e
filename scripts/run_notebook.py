"""Execute a notebook with nbclient and print each code cell's text output.

Usage: python scripts/run_notebook.py NOTEBOOK.ipynb [--save OUT.ipynb]
"""

from __future__ import annotations

import argparse
import sys

import nbclient
import nbformat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--save", help="write the executed notebook here")
    parser.add_argument("--timeout", type=float, default=120, help="seconds each cell may take")
    args = parser.parse_args()

    notebook = nbformat.read(args.notebook, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=args.timeout, kernel_name="python3")
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        if args.save:
            nbformat.write(notebook, args.save)

    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        texts = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                texts.append(output["text"])
            elif "text/plain" in output.get("data", {}):
                texts.append(output["data"]["text/plain"] + "\n")
        if texts:
            print(f"[{index}] {cell.source.splitlines()[0] if cell.source else ''}")
            print("".join(texts).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
