"""Rosey's row-API filters, sorts and atomic updates, compiled to SQL.

Only two things ever reach SQL text: operators from the fixed tables below,
and column names that were checked against the table's registered schema
(and match IDENTIFIER) and are then double-quoted. Every value is a bound
parameter. Anything else is refused with a `StorageError` naming the problem.

Filters (MongoDB style, as Rosey's search takes them):

  {"author": "Alice"}                         equality (None: IS NULL)
  {"score": {"$gte": 10, "$lt": 20}}          several operators on a field: AND
  {"$or": [{...}, {...}]}, {"$and": [...]}, {"$not": {...}}
  top-level keys are ANDed

Field operators:
  $eq $ne                 any type (NULL-safe: `IS` / `IS NOT`)
  $gt $gte $lt $lte       integer, float, datetime, and the reserved id/created_at/updated_at
  $in $nin                a non-empty list of at most MAX_IN values
  $like $ilike            string/text; SQL LIKE pattern (% and _); SQLite's LIKE
                          is case-insensitive for ASCII, $ilike for all of Unicode lower()
  $exists $null           true/false: IS NOT NULL / IS NULL (and the opposite)

Update operators (row update `operations`): $set $inc $dec $mul $max $min.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")   # always used with fullmatch: no trailing newline
RESERVED_COLUMNS = {"id": "integer", "created_at": "datetime", "updated_at": "datetime"}
FIELD_TYPES = ("string", "text", "integer", "float", "boolean", "datetime")
SQL_TYPES = {"string": "TEXT", "text": "TEXT", "integer": "INTEGER", "float": "REAL",
             "boolean": "INTEGER", "datetime": "TEXT"}

MAX_DEPTH = 8            # nested $and/$or/$not
MAX_TERMS = 100          # field conditions in one filter
MAX_IN = 500             # values in one $in/$nin
MAX_STRING = 10_000      # characters in one filter value
MAX_PATTERN = 100        # characters in one LIKE pattern (plugindb.MAX_LIKE_PATTERN: bounds one LIKE's cost)
MAX_SORT = 5
MAX_AGGREGATES = 10
MAX_INT = 2**63 - 1

COMPARISONS = {"$eq": "IS", "$ne": "IS NOT", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
RANGE_TYPES = {"integer", "float", "datetime"}
TEXT_TYPES = {"string", "text"}
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$like", "$ilike", "$exists", "$null")
LOGICAL = ("$and", "$or", "$not")
UPDATE_OPERATORS = ("$set", "$inc", "$dec", "$mul", "$max", "$min")
AGGREGATES = {"$count": "count", "$sum": "sum", "$avg": "avg", "$min": "min", "$max": "max"}


REPLY_TOP_LEVEL = ("applied", "current_version")


class StorageError(Exception):
    """A request the storage service refuses; `code` is machine-readable."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def reply(self) -> dict[str, Any]:
        # Rosey answers a failed migration with `applied` and `current_version`
        # beside `error`, not inside it; every other detail goes in `error`.
        top = {k: v for k, v in self.extra.items() if k in REPLY_TOP_LEVEL}
        inner = {k: v for k, v in self.extra.items() if k not in REPLY_TOP_LEVEL}
        return {"success": False, "error": {"code": self.code, "message": self.message, **inner}, **top}


def invalid(message: str) -> StorageError:
    return StorageError("VALIDATION_ERROR", message)


def quote(name: str) -> str:
    """A checked identifier as SQL text."""
    if not IDENTIFIER.fullmatch(name):
        raise invalid(f"{name!r} is not a valid name: letters, digits and _, starting with a letter or _")
    return f'"{name}"'


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


# -- values ----------------------------------------------------------------------------


def coerce(field: str, ftype: str, value: Any, *, max_length: int | None = None) -> Any:
    """A JSON value -> what is stored for a column of `ftype`; None stays None."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise invalid(f"field {field!r}: expected a {ftype}, got a JSON {type(value).__name__}")
    if ftype in TEXT_TYPES:
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, (int, float)):
            value = str(value)
        if not isinstance(value, str):
            raise invalid(f"field {field!r}: expected a string")
        if "\x00" in value:
            raise invalid(f"field {field!r}: NUL characters are not allowed")
        if max_length is not None and len(value) > max_length:
            raise invalid(f"field {field!r}: {len(value)} characters, at most {max_length} allowed")
        return value
    if ftype == "integer":
        if isinstance(value, bool):
            # Rosey's service stores a boolean in an INTEGER column as 0/1 (its
            # migrations declare flags either way: countdown's is_paused INTEGER).
            return int(value)
        if isinstance(value, float):
            if not value.is_integer():
                raise invalid(f"field {field!r}: expected an integer, got {value!r}")
            value = int(value)
        elif isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise invalid(f"field {field!r}: {value[:50]!r} is not an integer") from None
        if not isinstance(value, int) or not -MAX_INT - 1 <= value <= MAX_INT:
            raise invalid(f"field {field!r}: integer out of range")
        return value
    if ftype == "float":
        if isinstance(value, bool):
            raise invalid(f"field {field!r}: expected a number, got a boolean")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise invalid(f"field {field!r}: {value[:50]!r} is not a number") from None
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise invalid(f"field {field!r}: expected a finite number")
        return float(value)
    if ftype == "boolean":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and value in (0, 1):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return int(value.strip().lower() in ("true", "1", "yes", "on"))
        raise invalid(f"field {field!r}: expected a boolean")
    if ftype == "datetime":
        if not isinstance(value, str) or len(value) > 64:
            raise invalid(f"field {field!r}: expected an ISO 8601 date-time string")
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise invalid(f"field {field!r}: {value!r} is not an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")
    raise invalid(f"field {field!r}: unknown type {ftype!r}")


# -- filters ---------------------------------------------------------------------------


class FilterCompiler:
    """`fields` maps every queryable column to its type (reserved ones included)."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.terms = 0

    def compile(self, filters: Any) -> tuple[str, list[Any]]:
        if filters is None:
            return "", []
        if not isinstance(filters, dict):
            raise invalid("filters must be a JSON object")
        params: list[Any] = []
        sql = self._group(filters, params, depth=0)
        return sql, params

    def _group(self, filters: dict, params: list, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise StorageError("TOO_DEEP", f"filters nest more than {MAX_DEPTH} levels of $and/$or/$not")
        if not isinstance(filters, dict):
            raise invalid("each filter must be a JSON object")
        clauses = []
        for key, value in filters.items():
            if key.startswith("$"):
                clauses.append(self._logical(key, value, params, depth))
            else:
                clauses.append(self._field(key, value, params))
        if not clauses:
            return "1"
        return " AND ".join(f"({c})" for c in clauses)

    def _logical(self, op: str, value: Any, params: list, depth: int) -> str:
        if op == "$not":
            if not isinstance(value, dict):
                raise invalid("$not takes one filter object")
            return f"NOT ({self._group(value, params, depth + 1)})"
        if op in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise invalid(f"{op} takes a non-empty list of filter objects")
            if len(value) > MAX_TERMS:
                raise invalid(f"{op} takes at most {MAX_TERMS} filters")
            joiner = " AND " if op == "$and" else " OR "
            return joiner.join(f"({self._group(v, params, depth + 1)})" for v in value)
        raise StorageError("UNKNOWN_OPERATOR", f"unknown logical operator {op[:40]!r}; supported: {', '.join(LOGICAL)}")

    def _column(self, name: str) -> tuple[str, str]:
        ftype = self.fields.get(name)
        if ftype is None:
            raise StorageError("UNKNOWN_FIELD", f"no field {name[:64]!r} in this table; fields: {', '.join(sorted(self.fields))}")
        return quote(name), ftype

    def _count(self) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise invalid(f"at most {MAX_TERMS} conditions per filter")

    def _value(self, name: str, ftype: str, value: Any) -> Any:
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise invalid(f"field {name!r}: filter value longer than {MAX_STRING} characters")
        return coerce(name, ftype, value)

    def _field(self, name: str, condition: Any, params: list) -> str:
        column, ftype = self._column(name)
        if not isinstance(condition, dict):
            self._count()
            params.append(self._value(name, ftype, condition))
            return f"{column} IS ?"
        if not condition:
            raise invalid(f"field {name!r}: empty operator object")
        parts = []
        for op, value in condition.items():
            self._count()
            parts.append(self._operator(name, column, ftype, op, value, params))
        return " AND ".join(parts)

    def _operator(self, name: str, column: str, ftype: str, op: str, value: Any, params: list) -> str:
        if op in COMPARISONS:
            if op not in ("$eq", "$ne") and ftype not in RANGE_TYPES:
                raise invalid(f"{op} on field {name!r} needs a number or date-time field, not {ftype}")
            if op not in ("$eq", "$ne") and value is None:
                raise invalid(f"{op} on field {name!r} needs a value, not null")
            params.append(self._value(name, ftype, value))
            return f"{column} {COMPARISONS[op]} ?"
        if op in ("$in", "$nin"):
            if not isinstance(value, list) or not value:
                raise invalid(f"{op} on field {name!r} takes a non-empty list")
            if len(value) > MAX_IN:
                raise invalid(f"{op} on field {name!r} takes at most {MAX_IN} values")
            params.extend(self._value(name, ftype, v) for v in value)
            marks = ", ".join("?" for _ in value)
            return f"{column} {'IN' if op == '$in' else 'NOT IN'} ({marks})"
        if op in ("$like", "$ilike"):
            if ftype not in TEXT_TYPES:
                raise invalid(f"{op} on field {name!r} needs a string field, not {ftype}")
            if not isinstance(value, str):
                raise invalid(f"{op} on field {name!r} takes a string pattern")
            if len(value) > MAX_PATTERN:
                raise invalid(f"{op} pattern longer than {MAX_PATTERN} characters")
            params.append(value if op == "$like" else value.lower())
            return f"{column} LIKE ?" if op == "$like" else f"lower({column}) LIKE ?"
        if op in ("$exists", "$null"):
            if not isinstance(value, bool):
                raise invalid(f"{op} on field {name!r} takes true or false")
            is_null = (op == "$null") == value
            return f"{column} IS NULL" if is_null else f"{column} IS NOT NULL"
        raise StorageError("UNKNOWN_OPERATOR",
                           f"unknown operator {op[:40]!r} on field {name!r}; supported: {', '.join(FIELD_OPERATORS)}")


# -- sort, aggregates, updates --------------------------------------------------------------


def compile_sort(sort: Any, fields: dict[str, str]) -> str:
    """{"field": "score", "order": "desc"} or a list of those -> ORDER BY text.
    "direction" is accepted for "order" (Rosey's plugins send `order_by` items that way)."""
    if sort is None:
        return ""
    items = sort if isinstance(sort, list) else [sort]
    if not items or len(items) > MAX_SORT:
        raise invalid(f"sort takes 1 to {MAX_SORT} fields")
    parts = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("field"), str):
            raise invalid('each sort item is {"field": name, "order": "asc"|"desc"}')
        if item["field"] not in fields:
            raise StorageError("UNKNOWN_FIELD", f"cannot sort by unknown field {item['field'][:64]!r}")
        if "order" in item and "direction" in item:
            raise invalid("a sort item takes 'order' or 'direction', not both")
        order = str(item.get("order", item.get("direction", "asc"))).lower()
        if order not in ("asc", "desc"):
            raise invalid("sort order must be 'asc' or 'desc'")
        parts.append(f"{quote(item['field'])} {order.upper()}")
    return " ORDER BY " + ", ".join(parts)


def compile_aggregates(aggregates: Any, fields: dict[str, str]) -> tuple[str, list[str]]:
    """{"total": {"$count": "*"}, "avg_score": {"$avg": "score"}} -> select list, names."""
    if not isinstance(aggregates, dict) or not aggregates:
        raise invalid("aggregates must be a non-empty object of {name: {function: field}}")
    if len(aggregates) > MAX_AGGREGATES:
        raise invalid(f"at most {MAX_AGGREGATES} aggregates")
    parts, names = [], []
    for name, spec in aggregates.items():
        quote(name)
        if name in ("success", "error", "rows", "count", "truncated"):
            raise invalid(f"aggregate name {name!r} is reserved")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise invalid(f"aggregate {name!r} must be one {{function: field}} pair")
        (func, target), = spec.items()
        if func not in AGGREGATES:
            raise StorageError("UNKNOWN_OPERATOR", f"unknown aggregate {func[:40]!r}; supported: {', '.join(AGGREGATES)}")
        if func == "$count" and target == "*":
            parts.append(f'count(*) AS "{name}"')
        else:
            if not isinstance(target, str) or target not in fields:
                raise StorageError("UNKNOWN_FIELD", f"aggregate {name!r}: unknown field {str(target)[:64]!r}")
            if func in ("$sum", "$avg") and fields[target] not in ("integer", "float"):
                raise invalid(f"{func} needs a number field, not {fields[target]}")
            parts.append(f'{AGGREGATES[func]}({quote(target)}) AS "{name}"')
        names.append(name)
    return ", ".join(parts), names


def compile_operations(operations: Any, fields: dict[str, str], schema_fields: dict[str, dict]) -> tuple[list[str], list[Any]]:
    """Atomic updates -> SET fragments and parameters."""
    if not isinstance(operations, dict) or not operations:
        raise invalid("operations must be a non-empty object of {field: {operator: value}}")
    sets, params = [], []
    for name, spec in operations.items():
        if name in RESERVED_COLUMNS:
            raise invalid(f"field {name!r} cannot be changed")
        if name not in schema_fields:
            raise StorageError("UNKNOWN_FIELD", f"no field {name[:64]!r} in this table")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise invalid(f"field {name!r}: exactly one {{operator: value}} per field")
        (op, value), = spec.items()
        ftype = fields[name]
        column = quote(name)
        max_length = schema_fields[name].get("max_length")
        if op == "$set":
            sets.append(f"{column} = ?")
            params.append(coerce(name, ftype, value, max_length=max_length))
            continue
        if op not in UPDATE_OPERATORS:
            raise StorageError("UNKNOWN_OPERATOR", f"unknown update operator {op[:40]!r}; supported: {', '.join(UPDATE_OPERATORS)}")
        if op in ("$inc", "$dec", "$mul"):
            if ftype not in ("integer", "float"):
                raise invalid(f"{op} needs a number field, not {ftype}")
            number = coerce(name, ftype, value)
            if number is None:
                raise invalid(f"{op} needs a number")
            if op == "$mul":
                sets.append(f"{column} = coalesce({column}, 0) * ?")
            else:
                sets.append(f"{column} = coalesce({column}, 0) {'+' if op == '$inc' else '-'} ?")
            params.append(number)
        else:  # $max / $min
            if ftype not in RANGE_TYPES:
                raise invalid(f"{op} needs a number or date-time field, not {ftype}")
            bound = coerce(name, ftype, value)
            if bound is None:
                raise invalid(f"{op} needs a value")
            func = "max" if op == "$max" else "min"
            sets.append(f"{column} = CASE WHEN {column} IS NULL THEN ? ELSE {func}({column}, ?) END")
            params.extend([bound, bound])
    return sets, params
