"""Secrets at rest: host secrets and TOTP seeds encrypted in the database (keys.py, fields.py),
session rows keyed by a hash of the cookie (sessions.py), and `manage.py rotate_encryption_key`.
"""
