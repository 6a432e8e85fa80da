"""``resmlp-user-dir``: print the directory to pass to fairseq's ``--user-dir``.

fairseq's ``--user-dir`` wants a path, not a module name; after ``pip install``
this finds it from any working directory:
``fairseq-train --user-dir "$(resmlp-user-dir)" ...``.
"""
import importlib.util
import os


def path() -> str:
    return os.path.dirname(importlib.util.find_spec("resmlp_mt").origin)


def main() -> None:
    print(path())


if __name__ == "__main__":
    main()
