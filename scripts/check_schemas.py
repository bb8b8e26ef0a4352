"""The schema contract of schemas/, checked (run through scripts/check-schemas).

What it checks, for a folder of Avro schemas and its lock file:

* every top-level file is a schema family member, ``Name.vN.avsc``, whose record is named
  ``Name``; a family's versions run 1, 2, ... with no gap; each file's ``schema_version`` field
  is an int whose doc says ``always N for this file``;
* consecutive versions are compatible both ways under Avro schema resolution: the reader of
  version N reads what version N+1 writes, and the reader of N+1 reads what N writes. Two
  independent ways: a rule-based check written from the specification's "Schema Resolution"
  section, and datums generated from the writer schema (every union branch, empty and
  non-empty arrays, defaults) written with fastavro and read back with the other reader;
* a published file never changes: ``fingerprints.lock`` lists every ``.avsc`` under the folder
  with the CRC-64-AVRO fingerprint of its Parsing Canonical Form and the SHA-256 of the file.
  A file that differs from its line, a listed file that is gone and a file not listed all fail.
  ``--add-new`` appends lines for new files and never rewrites an existing one.

``--self-test`` runs the check against broken copies of the real folder in a temporary
directory (an incompatible v3, an edited and a removed published file, a gap, ...) and fails
unless each is refused with the expected message and the untouched copy passes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

FAMILY_FILE = re.compile(r"^(?P<name>[A-Z][A-Za-z0-9]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")
LOCK_NAME = "fingerprints.lock"
LOCK_HEADER = """\
# Published schema files of this folder, one per line: path, CRC-64-AVRO fingerprint of the
# file's Parsing Canonical Form (little-endian hex, the bytes a record's header carries), and
# SHA-256 of the file. A published file never changes: scripts/check-schemas fails on an edited
# or removed one, and on a file missing here. Add a new file with
# scripts/check-schemas --add-new (docs/schema-evolution.md).
"""
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
# The promotions the specification allows: writer type -> reader types that read it.
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


class Problems(list):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


# ---------------------------------------------------------------------------------------------
# Reading a folder.


def load(path: Path) -> dict:
    return parse_schema(json.loads(path.read_text(encoding="utf-8")), _write_hint=False)


def schema_fingerprint(schema: dict) -> str:
    return fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def schema_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.avsc") if p.is_file())


def read_lock(folder: Path, problems: Problems) -> dict[str, tuple[str, str]]:
    lock = folder / LOCK_NAME
    if not lock.exists():
        problems.add(str(lock), "missing; create it with scripts/check-schemas --add-new")
        return {}
    entries = {}
    for number, line in enumerate(lock.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            problems.add(f"{lock}:{number}", "expected 'path fingerprint sha256'")
            continue
        path, fp, digest = parts
        if path in entries:
            problems.add(f"{lock}:{number}", f"{path} is listed twice")
        entries[path] = (fp, digest)
    return entries


# ---------------------------------------------------------------------------------------------
# Avro schema resolution, rule by rule (specification, "Schema Resolution").


def named_types(schema, names: dict | None = None) -> dict:
    """Every named type (record, enum, fixed) of a parsed schema, by full name."""
    names = {} if names is None else names
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, names)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            names[schema["name"]] = schema
        if kind in ("record", "error"):
            for field in schema["fields"]:
                named_types(field["type"], names)
        elif kind == "array":
            named_types(schema["items"], names)
        elif kind == "map":
            named_types(schema["values"], names)
    return names


def deref(schema, names: dict):
    """A name becomes its definition; a primitive in object form becomes its name."""
    if isinstance(schema, str):
        return schema if schema in PRIMITIVES else names[schema]
    if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
        return schema["type"]
    return schema


def short_name(schema: dict) -> str:
    return schema["name"].rsplit(".", 1)[-1]


def kind_of(schema) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    return "record" if schema["type"] == "error" else schema["type"]


def resolve(reader, writer, rnames, wnames, where: str, problems: Problems, seen=None) -> None:
    """Add to `problems` every way data written with `writer` cannot be read with `reader`."""
    seen = set() if seen is None else seen
    reader, writer = deref(reader, rnames), deref(writer, wnames)
    if isinstance(writer, list):
        for i, branch in enumerate(writer):
            resolve(reader, branch, rnames, wnames, f"{where}[writer branch {i}]", problems, seen)
        return
    if isinstance(reader, list):
        for branch in reader:
            trial = Problems()
            resolve(branch, writer, rnames, wnames, where, trial, seen)
            if not trial:
                return
        problems.add(where, f"no branch of the reader's union reads the writer's {kind_of(writer)}")
        return
    rkind, wkind = kind_of(reader), kind_of(writer)
    if rkind in PRIMITIVES or wkind in PRIMITIVES:
        if rkind != wkind and rkind not in PROMOTIONS.get(wkind, set()):
            problems.add(where, f"the writer's {wkind} cannot be read as {rkind}")
        return
    if rkind != wkind:
        problems.add(where, f"the writer's {wkind} cannot be read as {rkind}")
        return
    if rkind in ("record", "enum", "fixed"):
        rname, wname = short_name(reader), short_name(writer)
        aliases = {a.rsplit(".", 1)[-1] for a in reader.get("aliases", [])}
        if rname != wname and wname not in aliases:
            problems.add(where, f"the writer's {wkind} {wname} is not the reader's {rname}")
            return
        key = (reader["name"], writer["name"])
        if key in seen:
            return
        seen.add(key)
    if rkind == "record":
        wfields = {f["name"]: f for f in writer["fields"]}
        for field in reader["fields"]:
            names = [field["name"], *field.get("aliases", [])]
            match = next((wfields[n] for n in names if n in wfields), None)
            at = f"{where}.{field['name']}"
            if match is None:
                if "default" not in field:
                    problems.add(at, "the reader needs this field, the writer lacks it, "
                                     "and it has no default")
            else:
                resolve(field["type"], match["type"], rnames, wnames, at, problems, seen)
    elif rkind == "enum":
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            problems.add(where, f"the reader's enum lacks symbols {missing} and has no default")
    elif rkind == "fixed":
        if reader["size"] != writer["size"]:
            problems.add(where, f"fixed size {writer['size']} read as {reader['size']}")
    elif rkind == "array":
        resolve(reader["items"], writer["items"], rnames, wnames, f"{where}[]", problems, seen)
    elif rkind == "map":
        resolve(reader["values"], writer["values"], rnames, wnames, f"{where}{{}}", problems, seen)


# ---------------------------------------------------------------------------------------------
# Datums: generated from a writer schema, written and read back under another reader.


def example(schema, names: dict, k: int, depth: int = 0):
    """Datum number `k` of `schema`: union branch k mod n everywhere, k mod 3 array items."""
    if isinstance(schema, dict) and schema.get("logicalType") == "uuid":
        return f"00000000-0000-4000-8000-{k:012d}"
    if isinstance(schema, dict) and schema.get("logicalType", "").startswith("timestamp"):
        return 1_717_171_717_123_456 + k
    s = deref(schema, names)
    if isinstance(s, list):
        return example(s[k % len(s)], names, k, depth)
    if isinstance(s, str):
        return {
            "null": None,
            "boolean": k % 2 == 1,
            "int": 7 * k - 3,
            "long": 1_000_003 * k - 11,
            "float": 0.5 * k,
            "double": 0.25 * k,
            "bytes": bytes(range(k % 7)),
            "string": f"s{k}-ü",
        }[s]
    kind = kind_of(s)
    if kind == "record":
        if depth > 8:
            raise ValueError(f"{s['name']} nests too deep to generate examples")
        return {f["name"]: example(f["type"], names, k, depth + 1) for f in s["fields"]}
    if kind == "enum":
        return s["symbols"][k % len(s["symbols"])]
    if kind == "fixed":
        return bytes([k % 256]) * s["size"]
    if kind == "array":
        return [example(s["items"], names, k + i, depth + 1) for i in range(k % 3)]
    if kind == "map":
        return {f"k{i}": example(s["values"], names, k + i, depth + 1) for i in range(k % 3)}
    raise ValueError(f"no example for {kind}")


def union_width(schema, names: dict, seen=None) -> int:
    seen = set() if seen is None else seen
    s = deref(schema, names)
    if isinstance(s, list):
        return max(len(s), *(union_width(b, names, seen) for b in s))
    if isinstance(s, dict):
        kind = kind_of(s)
        if kind == "record":
            if s["name"] in seen:
                return 1
            seen.add(s["name"])
            return max([1] + [union_width(f["type"], names, seen) for f in s["fields"]])
        if kind == "array":
            return union_width(s["items"], names, seen)
        if kind == "map":
            return union_width(s["values"], names, seen)
    return 1


def round_trip(writer: dict, reader: dict, where: str, problems: Problems) -> int:
    """Write datums of `writer`, read them with `reader`; returns how many were tried."""
    wnames = named_types(writer)
    count = max(3, union_width(writer, wnames))
    for k in range(count):
        datum = example(writer, wnames, k)
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, writer, datum)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            problems.add(where, f"example {k} does not fit the writer schema: {e}")
            continue
        try:
            as_written = fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), writer, None)
            as_read = fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), writer, reader)
        except Exception as e:  # noqa: BLE001
            problems.add(where, f"example {k} written by the writer is unreadable: {e}")
            continue
        if not (isinstance(as_read, dict) and isinstance(as_written, dict)):
            continue
        rfields = {f["name"]: f for f in reader.get("fields", [])}
        wfields = {f["name"] for f in writer.get("fields", [])}
        for name, field in rfields.items():
            if name in wfields:
                same_type = field["type"] == next(
                    f["type"] for f in writer["fields"] if f["name"] == name)
                if same_type and as_read.get(name) != as_written.get(name):
                    problems.add(f"{where}.{name}",
                                 f"example {k} reads back as {as_read.get(name)!r}, "
                                 f"written {as_written.get(name)!r}")
            elif as_read.get(name) != field.get("default"):
                problems.add(f"{where}.{name}",
                             f"example {k}: the reader's default was not applied "
                             f"({as_read.get(name)!r})")
    return count


# ---------------------------------------------------------------------------------------------
# The check.


def check(folder: Path) -> tuple[Problems, list[str]]:
    problems, notes = Problems(), []
    families: dict[str, dict[int, tuple[Path, dict]]] = {}
    parsed: dict[str, dict] = {}
    for path in schema_files(folder):
        rel = path.relative_to(folder).as_posix()
        try:
            parsed[rel] = load(path)
        except Exception as e:  # noqa: BLE001
            problems.add(rel, f"does not parse as an Avro schema: {e}")
            continue
        if path.parent != folder:
            continue
        match = FAMILY_FILE.match(path.name)
        if not match:
            problems.add(rel, "an event schema is named Name.vN.avsc (N from 1)")
            continue
        name, version = match["name"], int(match["version"])
        schema = parsed[rel]
        if not (isinstance(schema, dict) and schema.get("type") == "record"):
            problems.add(rel, "is not a record schema")
            continue
        if short_name(schema) != name:
            problems.add(rel, f"its record is named {short_name(schema)}, the file says {name}")
        field = next((f for f in schema["fields"] if f["name"] == "schema_version"), None)
        if field is None or deref(field["type"], {}) != "int":
            problems.add(rel, "needs an int field schema_version")
        elif f"always {version} for this file" not in field.get("doc", ""):
            problems.add(rel, f"the doc of schema_version must say 'always {version} for this "
                              f"file' (it says {field.get('doc', '')!r})")
        families.setdefault(name, {})[version] = (path, schema)

    for name, versions in sorted(families.items()):
        expected = list(range(1, max(versions) + 1))
        if sorted(versions) != expected:
            missing = sorted(set(expected) - set(versions))
            problems.add(name, f"versions must run 1 to {max(versions)} without a gap; "
                               f"missing v{', v'.join(map(str, missing))}")
        for v in sorted(versions):
            if v + 1 not in versions:
                continue
            (old_path, old), (new_path, new) = versions[v], versions[v + 1]
            pair = f"{name} v{v} <-> v{v + 1}"
            for reader, writer, direction in ((old, new, f"v{v} reads v{v + 1}"),
                                              (new, old, f"v{v + 1} reads v{v}")):
                where = f"{pair} ({direction})"
                found = Problems()
                resolve(reader, writer, named_types(reader), named_types(writer), name, found)
                for p in found:
                    problems.add(where, f"incompatible: {p}")
                found = Problems()
                tried = round_trip(writer, reader, name, found)
                for p in found:
                    problems.add(where, f"incompatible: {p}")
            notes.append(f"{pair}: compatible both ways ({tried} example datums each way)")

    lock = read_lock(folder, problems)
    fingerprints: dict[str, str] = {}
    for rel, schema in parsed.items():
        fp, digest = schema_fingerprint(schema), sha256(folder / rel)
        if fp in fingerprints:
            problems.add(rel, f"has the fingerprint of {fingerprints[fp]}: give it another shape")
        fingerprints[fp] = rel
        if rel not in lock:
            problems.add(rel, f"is not in {LOCK_NAME}: a new schema is added with "
                              "scripts/check-schemas --add-new")
            continue
        locked_fp, locked_digest = lock[rel]
        if (locked_fp, locked_digest) != (fp, digest):
            what = "its canonical form (a wire change)" if locked_fp != fp else "its text"
            problems.add(rel, f"was published and has changed since ({what}: fingerprint {fp}, "
                              f"sha256 {digest}; {LOCK_NAME} says {locked_fp} {locked_digest}). "
                              "A published schema never changes: restore it and add a new "
                              "version instead")
    for rel in sorted(set(lock) - set(parsed)):
        problems.add(rel, f"is listed in {LOCK_NAME} but gone: a published schema is never "
                          "removed (records written with it stay on the log and in archives)")
    notes.append(f"{len(parsed)} schema files, {len(families)} families, all in {LOCK_NAME}"
                 if not problems else "")
    return problems, [n for n in notes if n]


def add_new(folder: Path) -> list[str]:
    problems = Problems()
    lock = read_lock(folder, problems) if (folder / LOCK_NAME).exists() else {}
    added = []
    lines = [] if (folder / LOCK_NAME).exists() else [LOCK_HEADER.rstrip("\n")]
    for path in schema_files(folder):
        rel = path.relative_to(folder).as_posix()
        if rel not in lock:
            lines.append(f"{rel} {schema_fingerprint(load(path))} {sha256(path)}")
            added.append(rel)
    if lines:
        with (folder / LOCK_NAME).open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return added


# ---------------------------------------------------------------------------------------------
# The self-test: broken copies of the real folder, each refused for its own reason.


def self_test(real: Path) -> int:
    def edit_json(path: Path, change) -> None:
        doc = json.loads(path.read_text(encoding="utf-8"))
        change(doc)
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def next_version(folder: Path, change=None, lock=True) -> Path:
        """OrderCreated v(N+1) from the newest vN, changed by `change`, added to the lock."""
        versions = sorted(int(FAMILY_FILE.match(p.name)["version"])
                          for p in folder.glob("OrderCreated.v*.avsc"))
        new = folder / f"OrderCreated.v{versions[-1] + 1}.avsc"
        shutil.copy(folder / f"OrderCreated.v{versions[-1]}.avsc", new)

        def bump(doc):
            for f in doc["fields"]:
                if f["name"] == "schema_version":
                    f["doc"] = f"Version of this event type's schema; always {versions[-1] + 1} for this file."
            if change:
                change(doc)
        edit_json(new, bump)
        if lock:
            add_new(folder)
        return new

    def field(doc, name):
        return next(f for f in doc["fields"] if f["name"] == name)

    def required_contact(doc):
        contact = field(doc, "contact")
        contact["type"] = contact["type"][1]
        del contact["default"]

    def line_field(doc, name):
        return next(f for f in field(doc, "lines")["type"]["items"]["fields"] if f["name"] == name)

    cases = [
        ("the untouched copy passes", lambda d: None, None),
        ("a compatible v3 (a field with a default) passes",
         lambda d: next_version(d, lambda doc: doc["fields"].append(
             {"name": "channel", "type": "string", "default": "web", "doc": "Sales channel."})),
         None),
        ("v3 adds a field without a default",
         lambda d: next_version(d, lambda doc: doc["fields"].append(
             {"name": "channel", "type": "string", "doc": "Sales channel."})),
         ("(v3 reads v2): incompatible: OrderCreated.channel: the reader needs this field",
          "(v3 reads v2): incompatible: OrderCreated: example 0 written by the writer is "
          "unreadable")),
        ("v3 changes a field's type",
         lambda d: next_version(d, lambda doc: line_field(doc, "quantity").update(type="string")),
         ("(v3 reads v2): incompatible: OrderCreated.lines[].quantity: the writer's int cannot "
          "be read as string",
          "(v2 reads v3): incompatible: OrderCreated.lines[].quantity: the writer's string "
          "cannot be read as int",
          "(v2 reads v3): incompatible: OrderCreated: example 1 written by the writer is "
          "unreadable")),
        ("v3 drops a field v2 reads without a default",
         lambda d: next_version(d, lambda doc: doc["fields"].remove(field(doc, "currency"))),
         ("(v2 reads v3): incompatible: OrderCreated.currency: the reader needs this field",
          "(v2 reads v3): incompatible: OrderCreated: example 0 written by the writer is "
          "unreadable")),
        ("v3 makes an optional record required",
         lambda d: next_version(d, required_contact),
         ("(v3 reads v2): incompatible: OrderCreated.contact[writer branch 0]: the writer's "
          "null cannot be read as record",
          "(v3 reads v2): incompatible: OrderCreated: example 0 written by the writer is "
          "unreadable")),
        ("a published file's doc is edited",
         lambda d: edit_json(d / "OrderCreated.v1.avsc",
                             lambda doc: doc.update(doc="An order.")),
         "OrderCreated.v1.avsc: was published and has changed since (its text"),
        ("a published file's shape is edited",
         lambda d: edit_json(d / "PaymentVoided.v1.avsc",
                             lambda doc: field(doc, "reason").update(type=["null", "string"])),
         "PaymentVoided.v1.avsc: was published and has changed since (its canonical form"),
        ("a published file is removed",
         lambda d: (d / "InventoryReserved.v1.avsc").unlink(),
         "InventoryReserved.v1.avsc: is listed in fingerprints.lock but gone"),
        ("the archive's schema is edited",
         lambda d: edit_json(d / "archive" / "LogRecord.avsc",
                             lambda doc: doc["fields"].pop()),
         "archive/LogRecord.avsc: was published and has changed since"),
        ("a new file is not in the lock",
         lambda d: next_version(d, lock=False),
         "OrderCreated.v3.avsc: is not in fingerprints.lock"),
        ("a version is skipped",
         lambda d: (next_version(d), next_version(d).rename(d / "OrderCreated.v5.avsc"), add_new(d)),
         "OrderCreated: versions must run 1 to 5 without a gap; missing v4"),
        ("schema_version's doc names another version",
         lambda d: next_version(d, lambda doc: field(doc, "schema_version").update(
             doc="Version of this event type's schema; always 2 for this file.")),
         "OrderCreated.v3.avsc: the doc of schema_version must say 'always 3 for this file'"),
        ("a file outside the naming rule",
         lambda d: (shutil.copy(d / "OrderCompleted.v1.avsc", d / "OrderCompleted.avsc"),
                    add_new(d)),
         "OrderCompleted.avsc: an event schema is named Name.vN.avsc"),
    ]
    passed = failed = 0
    for name, breaking, expected in cases:
        with tempfile.TemporaryDirectory(prefix="check-schemas-") as tmp:
            folder = Path(tmp) / "schemas"
            shutil.copytree(real, folder)
            breaking(folder)
            problems, _ = check(folder)
            if expected is None:
                ok = not problems
                detail = "; ".join(problems)
            else:
                # Each expected message (for an incompatibility: the rule-based finding and the
                # datum round trip's) must be among the problems.
                wanted = (expected,) if isinstance(expected, str) else expected
                ok = all(any(w in p for p in problems) for w in wanted)
                detail = "; ".join(problems) or "no problem found"
            if ok:
                passed += 1
                print(f"ok   {name}")
            else:
                failed += 1
                want = "no problem" if expected is None else repr(expected)
                print(f"FAIL {name}: wanted {want}, got: {detail}")
    print(f"check-schemas self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=Path(__file__).resolve().parent.parent / "schemas")
    parser.add_argument("--self-test", action="store_true",
                        help="check that broken copies of the folder are refused")
    parser.add_argument("--add-new", action="store_true",
                        help=f"append lines for files missing from {LOCK_NAME}, then check")
    args = parser.parse_args()
    if args.self_test:
        return self_test(args.folder)
    if args.add_new:
        for rel in add_new(args.folder):
            print(f"added {rel} to {args.folder / LOCK_NAME}")
    problems, notes = check(args.folder)
    for note in notes:
        print(note)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"check-schemas: {len(problems)} problems in {args.folder} "
              "(docs/schema-evolution.md says how to add a version)", file=sys.stderr)
        return 1
    print(f"check-schemas: {args.folder} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
