"""What a restore accepts: only what :func:`indexer.backup.create_backup` of this project writes.

A backup folder is input from outside (another host, a shared drive, an attacker who swapped it),
so :func:`indexer.backup.restore_backup` checks it against these allow-lists before anything of the
data home or the catalogue is replaced:

- **paths** (:func:`check_member`): relative, inside one of :data:`TOP_FOLDERS` (``media/``,
  ``indexes/``, ``models/``, ``uploads/``); no top-level file (a ``.env`` there would be read by the
  settings of a service whose working directory is the data home; a ``catalogue.db`` would replace
  the catalogue), no component starting with a dot, no database sidecar (``-wal``, ``-shm``,
  ``-journal``: a WAL is replayed onto the database that opens it);
- **model folders** (:func:`check_member`, :func:`check_model_folders`): only JSON configs,
  safetensors weights and tokenizer text files (no pickled weights, no code); configs without
  ``trust_remote_code`` or ``auto_map`` anywhere, tokenizer kwargs and tokenizer config keys from an
  allow-list, text towers named by hub id only (never a path on the restoring host);
- **the PostgreSQL dump** (:func:`check_pg_toc`, :func:`check_pg_schema_sql`): only this schema's
  tables, sequences, indexes, constraints, triggers and ``biomedsearch_*`` functions in SQL or
  PL/pgSQL (no extensions, languages, roles, grants, ``SECURITY DEFINER``, server programs); and
  :func:`privileged_role` says when the restoring role is a superuser (refused unless the operator
  says so), because a dump is SQL that ``pg_restore`` runs with the restoring role's rights.
- **job rows** are checked by :mod:`indexer.job_inputs` (restore neutralises a job that names a
  file outside ``uploads/`` / ``downloads/``; the worker checks again when it starts one).

Every refusal is a :class:`BackupError` that names the rule (and at most 200 characters of the path).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

TOP_FOLDERS = ("media", "indexes", "models", "uploads")
SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 255
MAX_CONFIG_BYTES = 64 * 1024**2

MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".txt")
FORBIDDEN_CONFIG_KEYS = frozenset({"trust_remote_code", "auto_map", "custom_pipelines", "code_revision"})
# open_clip passes text_cfg["tokenizer_kwargs"] to HFTokenizer / AutoTokenizer.from_pretrained.
TOKENIZER_KWARGS = frozenset({"clean", "strip_sep_token", "language", "clean_up_tokenization_spaces"})
# Keys transformers writes into tokenizer_config.json for the WordPiece / BPE tokenizers we use.
TOKENIZER_CONFIG_KEYS = frozenset({
    "added_tokens_decoder", "additional_special_tokens", "backend", "bos_token", "clean_up_tokenization_spaces",
    "cls_token", "do_basic_tokenize", "do_lower_case", "eos_token", "errors", "extra_special_tokens",
    "is_local", "local_files_only", "mask_token", "max_len", "max_length", "model_input_names",
    "model_max_length", "name_or_path", "never_split", "pad_to_multiple_of", "pad_token", "pad_token_type_id",
    "padding_side", "sep_token", "special_tokens_map_file", "stride", "strip_accents", "tokenize_chinese_chars",
    "tokenizer_class", "tokenizer_file", "truncation_side", "truncation_strategy", "unk_token", "add_prefix_space",
    "trim_offsets", "add_bos_token", "add_eos_token", "legacy", "split_special_tokens", "vocab_file",
    "merges_file", "use_fast",
})  # fmt: skip
_FILE_KEYS = ("special_tokens_map_file", "tokenizer_file", "vocab_file", "merges_file")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")

# pg_restore --list entry types a dump of this project's schema holds (longest first for parsing).
PG_ENTRY_TYPES = (
    "SEQUENCE OWNED BY", "SEQUENCE SET", "FK CONSTRAINT", "TABLE DATA", "CONSTRAINT", "SEQUENCE",
    "FUNCTION", "TRIGGER", "DEFAULT", "INDEX", "TABLE", "COMMENT",
)  # fmt: skip
PG_EXTRA_TABLES = frozenset({"alembic_version", "figure_lexical"})
_PG_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PG_FORBIDDEN_SQL = (
    (re.compile(r"\bSECURITY\s+DEFINER\b", re.I), "SECURITY DEFINER functions"),
    (re.compile(r"\bLANGUAGE\s+(?!(?:sql|plpgsql)\b)\w+", re.I), "functions in languages other than SQL and PL/pgSQL"),
    (re.compile(r"\b(?:CREATE|ALTER|DROP)\s+(?:EXTENSION|LANGUAGE|ROLE|USER|GROUP|SERVER|DATABASE|"
                r"EVENT\s+TRIGGER|FOREIGN|PUBLICATION|SUBSCRIPTION|RULE|POLICY)\b", re.I),
     "extensions, languages, roles, servers, rules or policies"),
    (re.compile(r"\b(?:GRANT|REVOKE)\b", re.I), "privilege statements"),
    (re.compile(r"\bSET\s+(?:SESSION\s+)?(?:ROLE|SESSION\s+AUTHORIZATION)\b", re.I), "role switches"),
    (re.compile(r"\bALTER\s+SYSTEM\b", re.I), "server configuration"),
    (re.compile(r"\bPROGRAM\b", re.I), "server programs"),
    (re.compile(r"\b(?:lo_import|lo_export|pg_read_file|pg_read_binary_file|pg_ls_dir|dblink\w*)\b", re.I),
     "server file or connection functions"),
)  # fmt: skip


class BackupError(ValueError):
    """A backup cannot be written or restored; ``str(exc)`` says why."""


def _short(text: str) -> str:
    return repr(text[:200])


def safe_relative(rel: str) -> PurePosixPath:
    """``rel`` as a path that stays inside the data home; BackupError for anything else."""
    pure = PurePosixPath(rel)
    if (
        not isinstance(rel, str)
        or not rel
        or "\\" in rel
        or "\x00" in rel
        or pure.is_absolute()
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise BackupError(f"refused: the backup names a path outside the data home: {_short(str(rel))}")
    return pure


def check_member(rel: str) -> PurePosixPath:
    """``rel`` (a manifest path) when a backup of this project could hold it; BackupError otherwise."""
    pure = safe_relative(rel)
    parts = pure.parts
    if len(rel) > MAX_PATH_CHARS or any(len(p) > MAX_PART_CHARS for p in parts):
        raise BackupError(f"refused: path too long in the backup: {_short(rel)}")
    if len(parts) < 2 or parts[0] not in TOP_FOLDERS:
        raise BackupError(
            f"refused: {_short(rel)} is not something a BiomedSearch backup holds "
            f"(only files under {', '.join(f'{t}/' for t in TOP_FOLDERS)})"
        )
    if any(p.startswith(".") for p in parts):
        raise BackupError(f"refused: hidden file or folder in the backup: {_short(rel)}")
    if parts[-1].endswith(SIDECAR_SUFFIXES):
        raise BackupError(f"refused: database sidecar file in the backup: {_short(rel)}")
    if parts[0] == "models":
        if len(parts) < 3:
            raise BackupError(f"refused: a file directly in models/ (models are folders): {_short(rel)}")
        if not parts[-1].lower().endswith(MODEL_FILE_SUFFIXES):
            raise BackupError(
                f"refused: {_short(rel)}: a model folder may hold only JSON configs, safetensors weights "
                "and tokenizer text files (no pickled weights, no code)"
            )
    return pure


# --- model folders ----------------------------------------------------------------------------------


def _forbidden_keys(value: Any, where: str) -> None:
    """BackupError when a key of :data:`FORBIDDEN_CONFIG_KEYS` appears anywhere in ``value``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            bad = FORBIDDEN_CONFIG_KEYS.intersection(item)
            if bad:
                raise BackupError(f"refused: {where} sets {sorted(bad)[0]} (remote code is never loaded)")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _load_json(path: Path, where: str) -> Any:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BackupError(f"refused: {where} is over {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise BackupError(f"refused: {where} is not valid JSON: {str(exc)[:200]}") from exc


def check_open_clip_config(doc: Any, where: str) -> None:
    """An ``open_clip_config.json`` document: an object with ``model_cfg``; its text tower named by
    hub id (never a path), its tokenizer kwargs from :data:`TOKENIZER_KWARGS`; no remote code."""
    if not isinstance(doc, dict) or not isinstance(doc.get("model_cfg"), dict):
        raise BackupError(f"refused: {where} has no model_cfg object")
    _forbidden_keys(doc, where)
    text_cfg = doc["model_cfg"].get("text_cfg", {})
    if not isinstance(text_cfg, dict):
        raise BackupError(f"refused: {where}: text_cfg is not an object")
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key)
        if name is not None and (not isinstance(name, str) or not _HUB_ID.fullmatch(name) or ".." in name):
            raise BackupError(f"refused: {where}: {key} must be a hub id like org/name, not {_short(str(name))}")
    kwargs = text_cfg.get("tokenizer_kwargs", {})
    if not isinstance(kwargs, dict):
        raise BackupError(f"refused: {where}: tokenizer_kwargs is not an object")
    unknown = sorted(set(kwargs) - TOKENIZER_KWARGS)
    if unknown:
        raise BackupError(f"refused: {where}: tokenizer kwarg {unknown[0][:100]!r} is not allowed")


def check_tokenizer_config(doc: Any, where: str) -> None:
    """A ``tokenizer_config.json``: keys from :data:`TOKENIZER_CONFIG_KEYS`, a plain class name,
    file keys naming files of the same folder; no remote code."""
    if not isinstance(doc, dict):
        raise BackupError(f"refused: {where} is not an object")
    _forbidden_keys(doc, where)
    unknown = sorted(set(doc) - TOKENIZER_CONFIG_KEYS)
    if unknown:
        raise BackupError(f"refused: {where}: tokenizer setting {unknown[0][:100]!r} is not allowed")
    cls = doc.get("tokenizer_class")
    if cls is not None and (not isinstance(cls, str) or not _CLASS_NAME.fullmatch(cls)):
        raise BackupError(f"refused: {where}: tokenizer_class {_short(str(cls))} is not a class name")
    for key in _FILE_KEYS:
        value = doc.get(key)
        if value is not None and (not isinstance(value, str) or "/" in value or "\\" in value or ".." in value):
            raise BackupError(f"refused: {where}: {key} must name a file of the model folder")


def check_model_folders(models_root: Path) -> int:
    """Check every JSON config under a staged ``models/`` folder; return how many were checked.

    ``open_clip_config.json`` and ``tokenizer_config.json`` get their own rules; every other JSON
    (the text tower's ``config.json``, special-token maps) must not ask for remote code.
    ``tokenizer.json`` (the tokenizers library's vocabulary data, no kwargs) is only parsed.
    """
    checked = 0
    if not models_root.is_dir():
        return 0
    for path in sorted(models_root.rglob("*.json")):
        where = f"models/{path.relative_to(models_root).as_posix()}"
        doc = _load_json(path, where)
        if path.name == "open_clip_config.json":
            check_open_clip_config(doc, where)
        elif path.name == "tokenizer_config.json":
            check_tokenizer_config(doc, where)
        elif path.name != "tokenizer.json":
            _forbidden_keys(doc, where)
        checked += 1
    return checked


# --- PostgreSQL dumps -------------------------------------------------------------------------------


def check_pg_toc(listing: str, tables: frozenset[str]) -> int:
    """Check ``pg_restore --list`` output: each entry of an allowed type, in schema ``public``, on a
    table of ``tables`` (plus :data:`PG_EXTRA_TABLES`) or a ``biomedsearch_*`` function. Returns the
    number of entries; BackupError names the first that is not."""
    allowed_tables = tables | PG_EXTRA_TABLES
    entries = 0
    for raw in listing.splitlines():
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        m = re.fullmatch(r"\d+;\s+\d+\s+\d+\s+(.*)", line)
        if m is None:
            raise BackupError(f"refused: unreadable entry in the database dump: {_short(line)}")
        rest = m.group(1)
        kind = next((t for t in PG_ENTRY_TYPES if rest.startswith(t + " ")), None)
        if kind is None:
            raise BackupError(f"refused: the database dump holds an entry this project never writes: {_short(rest)}")
        fields = rest[len(kind) + 1:].split()
        if len(fields) < 2 or fields[0] != "public":
            raise BackupError(f"refused: the database dump holds an object outside schema public: {_short(rest)}")
        name = fields[1]
        if kind == "FUNCTION":
            if not re.match(r"biomedsearch_[a-z0-9_]{1,50}\(", name):
                raise BackupError(f"refused: the database dump defines an unknown function: {_short(rest)}")
        elif kind in ("TABLE", "TABLE DATA", "CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "DEFAULT") and (
            name not in allowed_tables
        ):
            raise BackupError(f"refused: the database dump holds an unknown table: {_short(rest)}")
        elif not _PG_NAME.fullmatch(name):
            raise BackupError(f"refused: unexpected name in the database dump: {_short(rest)}")
        entries += 1
    if entries == 0:
        raise BackupError("refused: the database dump holds no entries")
    return entries


def check_pg_schema_sql(sql: str) -> None:
    """Check the schema SQL a dump would run (``pg_restore --schema-only -f -``): BackupError for
    anything of :data:`_PG_FORBIDDEN_SQL` (server programs, roles, grants, extensions, ...)."""
    for pattern, what in _PG_FORBIDDEN_SQL:
        m = pattern.search(sql)
        if m is not None:
            raise BackupError(f"refused: the database dump contains {what} ({_short(m.group(0))})")


PRIVILEGED_ROLE_SQL = """
SELECT r.rolsuper,
       pg_has_role(current_user, 'pg_execute_server_program', 'USAGE'),
       pg_has_role(current_user, 'pg_read_server_files', 'USAGE'),
       pg_has_role(current_user, 'pg_write_server_files', 'USAGE')
FROM pg_roles r WHERE r.rolname = current_user
"""


def privileged_role(row: tuple[Any, ...] | None, role: str) -> str | None:
    """Why the restoring role (``row``: the result of :data:`PRIVILEGED_ROLE_SQL`) may not restore an
    untrusted dump, or None: a superuser, or a member of the server-program / server-file roles."""
    if row is None:
        return None
    superuser, program, read_files, write_files = (bool(v) for v in row)
    if superuser:
        return f"the restoring database role {role!r} is a superuser"
    if program or read_files or write_files:
        return f"the restoring database role {role!r} may run server programs or read/write server files"
    return None
