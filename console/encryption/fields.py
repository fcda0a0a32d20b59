"""A model field whose value is plain text in Python and encrypted in the database."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.expressions import Expression
from django.db.models.lookups import Lookup

from console.encryption.keys import decrypt, encrypt

if TYPE_CHECKING:
    _TextField = models.TextField[str, str]
else:
    _TextField = models.TextField


class EncryptedTextField(_TextField):
    """Text stored as `fernet:<token>` (console.encryption.keys): reading the database gives
    nothing to use. Each encryption differs (a random IV), so SQL cannot compare values: only
    `isnull` lookups are allowed, and no unique or indexed encrypted field makes sense."""

    def from_db_value(
        self, value: str | None, expression: Expression, connection: BaseDatabaseWrapper
    ) -> str | None:
        if value is None:
            return None
        return decrypt(value, where=f"{self.model._meta.db_table}.{self.column}")

    def get_db_prep_save(self, value: Any, connection: BaseDatabaseWrapper) -> Any:
        prepared = super().get_db_prep_save(value, connection)
        return None if prepared is None else encrypt(str(prepared))

    def get_lookup(self, lookup_name: str) -> type[Lookup[Any]] | None:
        if lookup_name != "isnull":
            return None  # a query on the plain text would silently match nothing
        return super().get_lookup(lookup_name)
