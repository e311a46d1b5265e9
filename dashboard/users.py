"""Dashboard users: argon2 password hashes in the `app_user` table, managed by `sonopacs user add`."""

from __future__ import annotations

import getpass
import logging
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sonopacs.db.models import DashboardSession, User, utcnow

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger(__name__)

ROLES = ("viewer", "admin")
MIN_PASSWORD_LENGTH = 8
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name costs as much time as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def validate_new_user(username: str, role: str, password: str) -> None:
    """Reject names, roles and passwords we would regret storing."""
    if not username or len(username) > 64 or not username.isprintable() or username.strip() != username:
        raise ValueError("username must be 1-64 printable characters without surrounding spaces")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")


def upsert_user(session: Session, username: str, role: str, password: str, active: bool = True) -> User:
    """Create the user or replace its role and password (`user add` is also how a password is reset);
    replacing ends the user's sessions."""
    validate_new_user(username, role, password)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username)
        session.add(user)
    else:
        # A new password or role: whoever holds an old session logs in again.
        session.execute(delete(DashboardSession).where(DashboardSession.user_id == user.id))
    user.password_hash = hash_password(password)
    user.role = role
    user.active = active
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user whose password matches, else None; updates last_login_at on success."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    if not verify_password(user.password_hash, password) or not user.active:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    return user


def add_user(settings: Settings, username: str, role: str = "viewer", password: str | None = None) -> None:
    """CLI entry point (`sonopacs user add`): prompts for the password when none is given."""
    from sonopacs.db.session import Database

    if password is None:
        password = getpass.getpass(f"password for {username}: ")
        if password != getpass.getpass("repeat password: "):
            raise SystemExit("passwords do not match")
    try:
        validate_new_user(username, role, password)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    database = Database(settings.database_url)
    try:
        with database.session() as session:
            upsert_user(session, username, role, password)
    finally:
        database.dispose()
    log.info("dashboard user saved (role %s)", role)
