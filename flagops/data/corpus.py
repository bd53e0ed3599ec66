"""Corpus builders: the Python standard library's own documentation, or a user's data.

The stdlib corpus is real text no one on this project wrote, present on every machine:
the docstrings of public functions, classes and methods. Each record keeps the whole
docstring; ``synthesize_queries`` later splits the summary line off as the query.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from flagops.data.formats import DataError, Passage, read_corpus

# Modules with side effects on import (open browsers, print, need a display) or that are
# test suites, platform-specific or deprecated.
SKIP_MODULES = frozenset(
    "antigravity this idlelib tkinter turtle turtledemo test lib2to3 ensurepip pydoc_data "
    "msvcrt winreg winsound nt msilib curses xxsubtype distutils __main__ _msi "
    "crypt nis spwd ossaudiodev sndhdr imghdr audioop chunk cgi cgitb mailcap nntplib pipes "
    "sunau telnetlib uu xdrlib aifc asynchat asyncore smtpd imp".split()
)
MAX_DOC_CHARS = 2000  # very long docstrings (module tutorials) are truncated
# C functions often open with a signature ("group([g1, ...]) -> str"), which is no query.
SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$|->")


def _public(name: str) -> bool:
    return not name.startswith("_")


def _import_quietly(name: str):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional/platform modules simply drop out
            return None


def _stdlib_objects() -> Iterator[tuple[str, str, object]]:
    """(top-level module, qualified name, object) for public stdlib API, in a stable order."""
    for top in sorted(sys.stdlib_module_names):
        if not _public(top) or top in SKIP_MODULES:
            continue
        module = _import_quietly(top)
        if module is None:
            continue
        for name, obj in sorted(vars(module).items()):
            if not _public(name) or getattr(obj, "__module__", None) is None:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            # Keep objects defined in this module (or its private C accelerator, e.g. _json).
            home = obj.__module__.lstrip("_").split(".")[0]
            if home != top:
                continue
            yield top, f"{top}.{name}", obj
            if inspect.isclass(obj):
                for mname, member in sorted(vars(obj).items()):
                    if _public(mname) and (inspect.isfunction(member) or inspect.ismethoddescriptor(member)):
                        yield top, f"{top}.{name}.{mname}", member


def stdlib_passages(min_chars: int) -> list[Passage]:
    """One passage per documented public object whose docstring body has >= min_chars."""
    out: list[Passage] = []
    seen_docs: set[str] = set()
    for top, qualname, obj in _stdlib_objects():
        doc = inspect.getdoc(obj) or ""
        summary, _, body = doc.strip().partition("\n")
        body = body.strip()
        if not summary.strip() or SIGNATURE.search(summary) or len(body) < min_chars or doc in seen_docs:
            continue
        seen_docs.add(doc)  # aliases and inherited docstrings would duplicate passages
        out.append(Passage(id=qualname, title=qualname, text=doc[:MAX_DOC_CHARS], group=top))
    return out


def load_user_corpus(source: str) -> list[Passage]:
    """A corpus JSONL ({_id, title, text}) or a BEIR folder containing corpus.jsonl."""
    path = Path(source)
    if path.is_dir():
        path = path / "corpus.jsonl"
        if not path.is_file():
            raise DataError(f"{source}: a BEIR folder must contain corpus.jsonl")
    elif not path.exists():
        raise DataError(f"{source}: corpus.source not found; give 'stdlib', a corpus JSONL or a BEIR folder")
    return read_corpus(path)


def build(source: str, min_chars: int, max_passages: int | None) -> list[Passage]:
    passages = stdlib_passages(min_chars) if source == "stdlib" else load_user_corpus(source)
    if not passages:
        raise DataError(f"{source}: no passages found (min_chars={min_chars}); lower corpus.min_chars")
    if max_passages and len(passages) > max_passages:
        stride = len(passages) / max_passages  # evenly spaced, so every module stays represented
        passages = [passages[int(i * stride)] for i in range(max_passages)]
    return passages


def stdlib_extra_texts(taken: set[str]) -> list[str]:
    """Every stdlib docstring that is not already one of ``taken`` (a corpus's texts): those
    ``stdlib_passages`` filtered out (short, signature-only) or a cap left out. Pretraining
    wants all real text, not only what makes a good query/passage pair; each appears once."""
    out: list[str] = []
    seen = set(taken)
    for _, _, obj in _stdlib_objects():
        text = (inspect.getdoc(obj) or "").strip()[:MAX_DOC_CHARS]
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out
