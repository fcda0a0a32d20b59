"""Re-encrypting what is stored: after a key rotation (`manage.py rotate_encryption_key`) and in
the migrations that encrypt values written before encryption at rest existed."""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.db import connection, models, transaction

from console.encryption.fields import EncryptedTextField
from console.encryption.keys import decrypt, encrypted_with_first_key


def encrypted_fields(*, apps: Any = global_apps) -> list[tuple[type[models.Model], list[str]]]:
    """Every model with encrypted fields, and their names."""
    found = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
        if names:
            found.append((model, names))
    return found


@transaction.atomic
def model_reencrypt(model: type[models.Model], fields: list[str]) -> int:
    """Encrypt every value of `fields` again with the first key (a plain one for the first
    time); returns how many values were written. Reading decrypts with any configured key."""
    written = 0
    for pk, *values in model._default_manager.values_list("pk", *fields).iterator():
        changes = {name: value for name, value in zip(fields, values, strict=True) if value is not None}
        if changes:
            model._default_manager.filter(pk=pk).update(**changes)
            written += len(changes)
    return written


def stale_values(model: type[models.Model], fields: list[str]) -> int:
    """How many stored values of `fields` are plain, or encrypted with another key than the first
    (read raw: these are what an old key is still needed for)."""
    rows = _raw_rows(model, fields)
    return sum(
        1
        for _pk, *values in rows
        for value in values
        if value is not None and not encrypted_with_first_key(value)
    )


def _columns(model: type[models.Model], fields: list[str]) -> tuple[str, list[str]]:
    """The primary key's column and those of `fields`."""
    by_name = {field.name: str(field.column) for field in model._meta.concrete_fields}
    return str(model._meta.pk.column if model._meta.pk else "id"), [by_name[name] for name in fields]


def _raw_rows(model: type[models.Model], fields: list[str]) -> list[tuple[Any, ...]]:
    quote = connection.ops.quote_name
    pk, columns = _columns(model, fields)
    select = ", ".join(quote(column) for column in [pk, *columns])
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {select} FROM {quote(model._meta.db_table)}")  # noqa: S608 - quoted names
        return list(cursor.fetchall())


@transaction.atomic
def model_decrypt_in_place(model: type[models.Model], fields: list[str]) -> None:
    """Write the plain values back, for a migration that is undone (the older code reads them)."""
    quote = connection.ops.quote_name
    pk, columns = _columns(model, fields)
    table = quote(model._meta.db_table)
    with connection.cursor() as cursor:
        for pk_value, *values in _raw_rows(model, fields):
            for column, value in zip(columns, values, strict=True):
                if value is not None:
                    cursor.execute(
                        f"UPDATE {table} SET {quote(column)} = %s WHERE {quote(pk)} = %s",  # noqa: S608 - quoted names
                        [decrypt(value), pk_value],
                    )
