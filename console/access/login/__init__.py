"""Signing in to the pages: failed-attempt lockout, TOTP second factor, optional OpenID Connect.

The API is not affected: tokens authenticate through DRF, never through these views.
"""
