"""Corpus builders: the Python standard library's own documentation, or a user's data.

The stdlib corpus is real text no one on this project wrote, present on every machine:
the docstrings of public functions, classes and methods. Each record keeps the whole
docstring; ``synthesize_queries`` later splits the summary line off as the query.
Installed packages' docstrings (numpy, scipy) are built the same way into a second,
out-of-domain evaluation set that no step trains on (``build_ood_eval``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
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


def _api_objects(
    module, group: str, belongs: Callable[[str], bool], routine: Callable[[object], bool], method: Callable[[object], bool]
) -> Iterator[tuple[str, str, object]]:
    """(group, qualified name, object) for the public classes and ``routine`` objects of ``module``
    defined where ``belongs`` (by ``__module__``), and the classes' public ``method`` members, in a
    stable order."""
    for name, obj in sorted(vars(module).items()):
        if not _public(name) or getattr(obj, "__module__", None) is None:
            continue
        if not (inspect.isclass(obj) or routine(obj)):
            continue
        if not belongs(obj.__module__):  # re-exports from elsewhere would repeat others' docs
            continue
        yield group, f"{group}.{name}", obj
        if inspect.isclass(obj):
            for mname, member in sorted(vars(obj).items()):
                if _public(mname) and method(member):
                    yield group, f"{group}.{name}.{mname}", member


def _stdlib_objects() -> Iterator[tuple[str, str, object]]:
    """(top-level module, qualified name, object) for public stdlib API, in a stable order."""
    for top in sorted(sys.stdlib_module_names):
        if not _public(top) or top in SKIP_MODULES:
            continue
        module = _import_quietly(top)
        if module is None:
            continue
        # Keep objects defined in this module (or its private C accelerator, e.g. _json).
        yield from _api_objects(
            module,
            top,
            lambda home, top=top: home.lstrip("_").split(".")[0] == top,
            lambda obj: inspect.isfunction(obj) or inspect.isbuiltin(obj),
            lambda obj: inspect.isfunction(obj) or inspect.ismethoddescriptor(obj),
        )


def _passages(objects: Iterable[tuple[str, str, object]], min_chars: int) -> list[Passage]:
    """One passage per documented object whose summary line is no signature and whose docstring
    body has >= min_chars; an identical docstring seen before (an alias, an inherited one) is skipped."""
    out: list[Passage] = []
    seen_docs: set[str] = set()
    for group, qualname, obj in objects:
        doc = inspect.getdoc(obj) or ""
        summary, _, body = doc.strip().partition("\n")
        body = body.strip()
        if not summary.strip() or SIGNATURE.search(summary) or len(body) < min_chars or doc in seen_docs:
            continue
        seen_docs.add(doc)
        out.append(Passage(id=qualname, title=qualname, text=doc[:MAX_DOC_CHARS], group=group))
    return out


def stdlib_passages(min_chars: int) -> list[Passage]:
    """One passage per documented public stdlib object whose docstring body has >= min_chars."""
    return _passages(_stdlib_objects(), min_chars)


def _import_listed(name: str):
    """Import a module named in ``ood_eval.modules``; failing that is the user's to fix, not to skip."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise DataError(
                f"ood_eval.modules: cannot import {name!r} ({reason}); install its package or remove it from ood_eval.modules"
            ) from None


def module_passages(modules: Sequence[str], min_chars: int) -> list[Passage]:
    """Passages from installed packages' docstrings (e.g. numpy, scipy.stats), as ``stdlib_passages``
    builds them: text no one trains on, for an out-of-domain evaluation. An object counts when its
    ``__module__`` lies in the listed module's top-level package; its group is the listed module."""
    loaded = [(name, _import_listed(name)) for name in modules]  # every import first: nothing is half-built

    def objects() -> Iterator[tuple[str, str, object]]:
        for name, module in loaded:
            top = name.split(".")[0]
            # Packages wrap many functions (numpy's array-function dispatchers, Cython functions,
            # a hidden generator's bound methods): any routine counts, not only plain functions.
            yield from _api_objects(
                module, name, lambda home, top=top: home == top or home.startswith(top + "."), inspect.isroutine, inspect.isroutine
            )

    return _passages(objects(), min_chars)


def package_versions(modules: Sequence[str]) -> dict[str, str | None]:
    """The installed version of each listed module's top-level package: what ``module_passages`` read."""
    tops = sorted({name.split(".")[0] for name in modules})
    return {top: getattr(importlib.import_module(top), "__version__", None) for top in tops}


def evenly_spaced(passages: list[Passage], max_passages: int | None) -> list[Passage]:
    """At most ``max_passages``, evenly spaced, so every module stays represented."""
    if not max_passages or len(passages) <= max_passages:
        return passages
    stride = len(passages) / max_passages
    return [passages[int(i * stride)] for i in range(max_passages)]


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
    return evenly_spaced(passages, max_passages)


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
